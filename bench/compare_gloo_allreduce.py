#!/usr/bin/env python3
"""Gloo all-reduce between 2 processes on loopback: tessel's Gloo engine vs PyTorch's gloo
backend (torch.distributed), side by side in one run, rounds alternating.

tessel's ranks run under `tessel launch --nproc 2` (bench/gloo_allreduce_bench.cc); PyTorch's
are two processes with torchrun-style variables (bench/torch_allreduce.py). Each reports, per
buffer size (1-256 MiB of f32), the median over ITERS calls of an in-place sum, a call's time
being its slowest rank's; the figures below are medians over rounds, and the ratio is
tessel's bus bandwidth over PyTorch's (target >= 0.95: it is the same library).

    python3 bench/compare_gloo_allreduce.py [--build build] [--python build/peers/bin/python]
                                            [--rounds 5] [--iters 10] [--record]
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import results

HERE = os.path.dirname(os.path.abspath(__file__))


def lines(out):
    return [json.loads(l) for l in out.splitlines() if l.startswith("{")]


def run_tessel(build, iters):
    cli = os.path.join(build, "frontend", "tessel")
    bench = os.path.join(build, "bench", "gloo_allreduce_bench")
    out = subprocess.run([cli, "launch", "--nproc", "2", "--", bench, str(iters)], check=True, capture_output=True,
                         text=True, timeout=600).stdout
    return lines("\n".join(l.split("] ", 1)[-1] for l in out.splitlines()))


def run_torch(python, iters):
    port = results.free_port()
    procs = []
    for r in range(2):
        env = dict(os.environ, RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([python, os.path.join(HERE, "torch_allreduce.py"), str(iters)], env=env,
                                      stdout=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    if any(p.returncode for p in procs):
        sys.exit("the PyTorch ranks failed")
    return lines(outs[0])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(HERE, "..", "build"))
    ap.add_argument("--python", default=None, help="interpreter with torch (default: BUILD/peers/bin/python)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--record", action="store_true")
    a = ap.parse_args()
    py = a.python or os.path.join(a.build, "peers", "bin", "python")
    got = {"tessel": {}, "torch": {}}
    for r in range(a.rounds):
        for name, fn in (("tessel", lambda: run_tessel(a.build, a.iters)), ("torch", lambda: run_torch(py, a.iters))):
            for j in fn():
                got[name].setdefault(j["bytes"], []).append(j["allreduce_s"])
        print(f"round {r + 1}/{a.rounds} done", flush=True)
    rows = []
    for b in sorted(got["tessel"]):
        t = statistics.median(got["tessel"][b])
        p = statistics.median(got["torch"][b])
        bus = lambda s: b * 2 * (2 - 1) / 2 / s / 1e9
        within = [pt / tt for tt, pt in zip(got["tessel"][b], got["torch"][b])]
        rows.append((b, t, bus(t), p, bus(p), p / t, within))
        print(f"{b / 2**20:.0f} MiB: tessel {t * 1e3:.2f} ms ({bus(t):.2f} GB/s), PyTorch {p * 1e3:.2f} ms "
              f"({bus(p):.2f} GB/s), ratio {p / t:.3f}", flush=True)
    if a.record:
        torch_v = subprocess.run([py, "-c", "import torch; print(torch.__version__)"], capture_output=True,
                                 text=True).stdout.strip()
        body = [f"Command: `python3 bench/compare_gloo_allreduce.py --rounds {a.rounds} --iters {a.iters} --record`  ",
                f"Recorded {time.strftime('%Y-%m-%d')} on {platform.machine()}, {os.cpu_count()} cores; PyTorch "
                f"{torch_v} (gloo backend). 2 processes on loopback, in-place f32 sum; medians over {a.rounds} "
                f"alternating rounds of each round's median over {a.iters} calls (a call: its slowest rank). "
                "Bus bandwidth = bytes x 2(k-1)/k / time. Ratio = tessel's bandwidth / PyTorch's; target >= 0.95.", "",
                "| buffer | tessel ms | tessel GB/s | PyTorch ms | PyTorch GB/s | ratio |", "|---|---|---|---|---|---|"]
        for b, t, tb, p, pb, ratio, _ in rows:
            body.append(f"| {b // 2**20} MiB | {t * 1e3:.2f} | {tb:.2f} | {p * 1e3:.2f} | {pb:.2f} | {ratio:.3f} |")
        body += ["", "Ratios within each round (both timed in that round), median and range: " + "; ".join(
            f"{b // 2**20} MiB {statistics.median(w):.2f} ({min(w):.2f}-{max(w):.2f})" for b, *_, w in rows) + "."]
        results.record("Gloo all-reduce, 2 processes: tessel vs PyTorch", body)


if __name__ == "__main__":
    main()
