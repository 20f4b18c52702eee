#!/usr/bin/env python3
"""Planner search time, from small models and clusters up to GPT-3 on 1024 A100s.

Runs `tessel plan --format json` (the whole process: building the model, profiling, the
search and the report) several times per case and reports the median of the planner's own
`search_time_s` and of the wall time. Target: GPT-3 size on 1024 GPUs under 10 s on a
2-core machine.

    python3 bench/plan_search_time.py [--build build] [--runs 3] [--record]
"""
import argparse
import json
import os
import statistics
import subprocess
import time

import results

HERE = os.path.dirname(os.path.abspath(__file__))
GPT3 = "gpt:layers=96,d_model=12288,heads=96,seq=2048,vocab=51200"
CASES = [
    ("mlp:784-1024-1024-10", 256, "local:4"),
    ("gpt:layers=12,d_model=768,heads=12,seq=1024,vocab=50304", 512, "a100-80g:nodes=1"),
    ("gpt:layers=24,d_model=2048,heads=16,seq=2048,vocab=51200", 512, "a100-80g:nodes=4"),
    ("gpt:layers=40,d_model=6144,heads=48,seq=2048,vocab=51200", 1024, "a100-80g:nodes=32"),
    (GPT3, 1536, "a100-80g:nodes=16"),
    (GPT3, 1536, "a100-80g:nodes=128"),
    (GPT3, 1536, "h100-80g:nodes=128"),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(HERE, "..", "build"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--record", action="store_true")
    a = ap.parse_args()
    tessel = os.path.join(a.build, "frontend", "tessel")
    rows = []
    for model, batch, cluster in CASES:
        search, wall, last = [], [], None
        for _ in range(a.runs):
            t0 = time.perf_counter()
            out = subprocess.run([tessel, "plan", "--model", model, "--batch", str(batch), "--cluster", cluster,
                                  "--format", "json"], check=True, capture_output=True, text=True).stdout
            wall.append(time.perf_counter() - t0)
            last = json.loads(out)
            search.append(last["search_time_s"])
        c = last["config"]
        rows.append((model, batch, cluster, last["mesh"]["devices"], statistics.median(search), statistics.median(wall),
                     last["candidates"], last["simulated"], f"dp={c['dp']} tp={c['tp']} pp={c['pp']} mb={c['microbatches']}"))
        print(f"{model} batch {batch} on {cluster}: search {rows[-1][4]:.3f} s, wall {rows[-1][5]:.3f} s, "
              f"{last['candidates']} configurations, {last['simulated']} simulated, chose {rows[-1][8]}", flush=True)
    if a.record:
        lines = [f"Command: `python3 bench/plan_search_time.py --runs {a.runs} --record`  ",
                 f"Recorded {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores; medians of {a.runs} runs.", "",
                 "| model | batch | cluster | devices | search s | wall s | configurations | simulated | chosen |",
                 "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| `{r[0]}` | {r[1]} | {r[2]} | {r[3]} | {r[4]:.3f} | {r[5]:.3f} | {r[6]} | {r[7]} | {r[8]} |")
        results.record("Planner search time", lines)


if __name__ == "__main__":
    main()
