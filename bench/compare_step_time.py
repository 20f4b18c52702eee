#!/usr/bin/env python3
"""Training step time, tessel vs PyTorch eager, side by side in one run.

Same models (MLP 784-1024-1024-10 batch 256 SGD+momentum; GPT 4 layers d_model 256, 4 heads,
seq 128, vocab 256, batch 16, AdamW), same thread count, synthetic inputs. The two run in
alternation, several rounds each; each round reports the median step time of its steps and
the figure quoted is the median over rounds. PyTorch runs with OMP_WAIT_POLICY=passive so its
two thread pools do not fight over the cores.

    python3 bench/compare_step_time.py [--build build] [--threads 2] [--rounds 3] [--record]

--record rewrites the "Training step time" section of bench/RESULTS.md.
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
CASES = [
    ("mlp:784-1024-1024-10", 256, "sgd", 30),
    ("gpt:layers=4,d_model=256,heads=4,seq=128,vocab=256", 16, "adamw", 8),
]


def run(cmd, env):
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(HERE, "..", "build"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--python", default="/usr/bin/python3", help="interpreter with torch installed")
    ap.add_argument("--record", action="store_true")
    a = ap.parse_args()
    bench = os.path.join(a.build, "bench", "step_bench")
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), OMP_WAIT_POLICY="passive",
               OPENBLAS_NUM_THREADS="1")
    rows = []
    for model, batch, opt, steps in CASES:
        common = ["--model", model, "--batch", str(batch), "--optimizer", opt, "--threads", str(a.threads),
                  "--steps", str(steps)]
        ours, theirs, peer = [], [], ""
        for r in range(a.rounds):
            ours.append(run([bench] + common, env)["step_ms_median"])
            t = run([a.python, os.path.join(HERE, "torch_step.py")] + common, env)
            theirs.append(t["step_ms_median"])
            peer = t["framework"]
        m_ours, m_theirs = statistics.median(ours), statistics.median(theirs)
        rows.append((model, batch, opt, m_ours, m_theirs, m_ours / m_theirs, peer))
        print(f"{model} batch {batch} {opt}: tessel {m_ours:.1f} ms, {peer} {m_theirs:.1f} ms, "
              f"ratio {m_ours / m_theirs:.2f} (rounds: tessel {[round(x, 1) for x in ours]}, "
              f"pytorch {[round(x, 1) for x in theirs]})", flush=True)
    if a.record:
        lines = [f"Command: `python3 bench/compare_step_time.py --threads {a.threads} --rounds {a.rounds} --record`  ",
                 f"Recorded {time.strftime('%Y-%m-%d')} on {platform.machine()}, {os.cpu_count()} cores, "
                 f"{a.threads} threads each, synthetic inputs, median over {a.rounds} alternating rounds.", "",
                 "| model | batch | optimizer | tessel ms/step | PyTorch ms/step | ratio (tessel/PyTorch) |",
                 "|---|---|---|---|---|---|"]
        for model, batch, opt, o, t, ratio, peer in rows:
            lines.append(f"| `{model}` | {batch} | {opt} | {o:.1f} | {t:.1f} ({peer}) | {ratio:.2f} |")
        results.record("Training step time: tessel vs PyTorch eager", lines)

if __name__ == "__main__":
    sys.exit(main())
