#!/usr/bin/env python3
"""In-process all-reduce vs this machine's memcpy, side by side in one run.

Each member of a k-rank in-place f32 sum reads its 1/k share of every member's buffer and
writes that share of every member's output: per rank 2 x bytes of memory traffic, as a
memcpy of the same bytes moves (read + write). So the memcpy time of the buffer is the
physical floor to compare with when the ranks run on separate cores. Several rounds; the
figures are medians over rounds of each round's median call.

    python3 bench/compare_allreduce.py [--build build] [--rounds 3] [--iters 20] [--record]

--record rewrites the "In-process all-reduce" section of bench/RESULTS.md.
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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(HERE, "..", "build"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--record", action="store_true")
    a = ap.parse_args()
    bench = os.path.join(a.build, "bench", "allreduce_bench")
    rounds = {}
    for _ in range(a.rounds):
        out = subprocess.run([bench, str(a.iters)], check=True, capture_output=True, text=True).stdout
        for line in out.strip().splitlines():
            j = json.loads(line)
            rounds.setdefault((j["ranks"], j["bytes"]), []).append(j)
    rows = []
    for (k, b), js in sorted(rounds.items()):
        t = statistics.median(j["allreduce_s"] for j in js)
        c = statistics.median(j["memcpy_s"] for j in js)
        bus = b * 2 * (k - 1) / k / t / 1e9
        rows.append((k, b, t, bus, c, t / c))
        print(f"{k} ranks, {b / 2**20:.2f} MiB: all-reduce {t * 1e3:.3f} ms (bus {bus:.2f} GB/s), "
              f"memcpy {c * 1e3:.3f} ms, ratio {t / c:.2f}", flush=True)
    if a.record:
        lines = [f"Command: `python3 bench/compare_allreduce.py --rounds {a.rounds} --iters {a.iters} --record`  ",
                 f"Recorded {time.strftime('%Y-%m-%d')} on {platform.machine()}, {os.cpu_count()} cores "
                 f"(ranks beyond the core count share them). Medians over {a.rounds} rounds of {a.iters} calls; "
                 "a call ends when its slowest member returns.", "",
                 "| ranks | buffer | all-reduce ms | bus bandwidth GB/s | memcpy ms (1 thread) | ratio all-reduce/memcpy |",
                 "|---|---|---|---|---|---|"]
        for k, b, t, bus, c, ratio in rows:
            size = f"{b // 2**20} MiB" if b >= 2**20 else f"{b // 1024} KiB"
            lines.append(f"| {k} | {size} | {t * 1e3:.3f} | {bus:.2f} | {c * 1e3:.3f} | {ratio:.2f} |")
        results.record("In-process all-reduce vs memcpy", lines)


if __name__ == "__main__":
    sys.exit(main())
