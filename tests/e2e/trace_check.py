#!/usr/bin/env python3
"""Checks a `tessel train --trace` file against the trace-event format (the JSON object form
that Perfetto and chrome://tracing open) and against the run's own report.

    trace_check.py TRACE REPORT_JSON RANKS [--comm] [--recv] [--tolerance 0.05]

TRACE: the trace file; REPORT_JSON: a file whose last line is `tessel train --format json`'s
report; RANKS: how many ranks the trace must show. --comm: every rank must have events on its
communication stream (tid 1); --recv: some rank waits in a recv (a pipeline). Exits 1 naming
the first problem.
"""
import argparse
import json
import sys


def fail(msg):
    print("trace_check: " + msg, file=sys.stderr)
    sys.exit(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("report")
    ap.add_argument("ranks", type=int)
    ap.add_argument("--comm", action="store_true")
    ap.add_argument("--recv", action="store_true")
    ap.add_argument("--tolerance", type=float, default=0.05)
    a = ap.parse_args()

    with open(a.report) as f:
        lines = [l for l in f.read().splitlines() if l.strip()]
    report = json.loads(lines[-1].split("] ", 1)[-1])
    with open(a.trace) as f:
        trace = json.load(f)

    # The format: an object with a traceEvents array of events; complete events ("X") with
    # pid, tid, ts, dur (microseconds, dur >= 0), name and cat; metadata ("M") naming
    # processes and threads.
    if not isinstance(trace, dict) or not isinstance(trace.get("traceEvents"), list):
        fail("no traceEvents array at the top level")
    names = {}
    spans = {}
    streams = set()
    kinds = set()
    where = 0
    events = []
    for i, e in enumerate(trace["traceEvents"]):
        ph = e.get("ph")
        if ph == "M":
            if e.get("name") not in ("process_name", "thread_name", "process_sort_index"):
                fail(f"event {i}: unknown metadata {e.get('name')!r}")
            if not isinstance(e.get("pid"), int) or not isinstance(e.get("args"), dict):
                fail(f"event {i}: metadata without an integer pid and args")
            if e["name"] == "thread_name":
                names[(e["pid"], e.get("tid"))] = e["args"].get("name")
            continue
        if ph != "X":
            fail(f"event {i}: phase {ph!r}, expected X or M")
        for k, t in (("pid", int), ("tid", int), ("ts", (int, float)), ("dur", (int, float)), ("name", str), ("cat", str)):
            if not isinstance(e.get(k), t):
                fail(f"event {i} ({e.get('name')!r}): field {k} missing or of the wrong type")
        if e["ts"] < 0 or e["dur"] < 0:
            fail(f"event {i} ({e['name']!r}): negative ts or dur")
        if e["tid"] not in (0, 1):
            fail(f"event {i}: tid {e['tid']}, expected 0 (compute) or 1 (comm)")
        step = e.get("args", {}).get("step")
        if not isinstance(step, int):
            fail(f"event {i} ({e['name']!r}): no integer args.step")
        kinds.add(e["cat"])
        streams.add((e["pid"], e["tid"]))
        if e["cat"] == "step":
            lo, hi = spans.get(step, (float("inf"), 0.0))
            spans[step] = (min(lo, e["ts"]), max(hi, e["ts"] + e["dur"]))
        if e["cat"] in ("forward", "backward") and ":" in e.get("args", {}).get("where", ""):
            where += 1
        events.append(e)
    for r in range(a.ranks):
        if (r, 0) not in streams:
            fail(f"rank {r} has no events on its compute stream")
        if names.get((r, 0)) != "compute" or names.get((r, 1)) != "comm":
            fail(f"rank {r}: threads not named compute and comm")
        if a.comm and (r, 1) not in streams:
            fail(f"rank {r} has no events on its communication stream")
    if max(p for p, _ in streams) != a.ranks - 1:
        fail(f"events for ranks up to {max(p for p, _ in streams)}, expected {a.ranks}")
    for k in ("forward", "backward", "optimizer", "step"):
        if k not in kinds:
            fail(f"no {k} events (kinds: {sorted(kinds)})")
    if a.recv and "recv" not in kinds:
        fail(f"no recv events in a pipeline (kinds: {sorted(kinds)})")
    if where == 0:
        fail("no forward or backward event names its source line (args.where)")

    # Every op lies inside its rank's step (50 us of clock reads either side).
    step_of = {(e["pid"], e["args"]["step"]): e for e in events if e["cat"] == "step"}
    for e in events:
        s = step_of.get((e["pid"], e["args"]["step"]))
        if s is None:
            fail(f"rank {e['pid']} has events in step {e['args']['step']} but no step event")
        if e["ts"] < s["ts"] - 50 or e["ts"] + e["dur"] > s["ts"] + s["dur"] + 50:
            fail(f"rank {e['pid']}: {e['name']!r} ({e['ts']:.0f}+{e['dur']:.0f} us) lies outside its step "
                 f"({s['ts']:.0f}+{s['dur']:.0f} us)")

    # Per traced step: the step of rank 0, the rank that reports, against the step time the
    # run reported (its median over every timed step). Its start and end are the driver's;
    # across processes the ranks start a step at different moments on a loaded machine (tens
    # of ms apart on 2 busy cores), so a span over all of them measures that skew as well.
    totals = [step_of[(0, s)]["dur"] / 1e3 for s in sorted(spans) if (0, s) in step_of]
    want = report["step_ms_median"]
    got = sorted(totals)[len(totals) // 2]  # the report's median: the upper middle of an even count
    rel = abs(got - want) / want
    print(f"trace_check: {len(trace['traceEvents'])} events, {a.ranks} ranks, kinds {sorted(kinds)}; "
          f"traced steps {', '.join(f'{t:.2f}' for t in totals)} ms, median {got:.2f} ms vs reported {want:.2f} ms "
          f"({100 * rel:.1f} %)")
    if rel > a.tolerance:
        fail(f"the traced steps' median {got:.3f} ms is {100 * rel:.1f} % from the reported step {want:.3f} ms")
    other = trace.get("otherData", {}).get("traced_steps", [])
    if len(other) != len(totals):
        fail(f"otherData.traced_steps lists {len(other)} steps, the events {len(totals)}")


if __name__ == "__main__":
    main()
