#!/usr/bin/env python3
"""Training step time, tessel vs PyTorch (eager and torch.compile) and JAX jit, side by side
in one run, with OpenBLAS's own SGEMM rate as the physical limit.

Same models (MLP 784-1024-1024-10 batch 256 SGD+momentum; GPT 4 layers d_model 256, 4 heads,
seq 128, vocab 256, batch 16, AdamW), synthetic inputs, 2 threads. Every framework runs once
per round, in alternation, several rounds; each run reports the median step time of its
steps and the figure quoted is the median over rounds. PyTorch runs with
OMP_WAIT_POLICY=passive so its two thread pools do not fight over the cores; XLA sizes its
own pool (all cores). tessel's MLP step is also given as a share of the GEMM peak: the
step's matrix-product FLOPs over its time, against gemm_peak's 2-thread SGEMM rate
measured in the same round.

Peers: a Python with torch and jax (python3 -m venv build/peers && build/peers/bin/pip
install torch jax), found at build/peers by default; Debian's python3-torch (1.13, no
torch.compile) for /usr/bin/python3 is run too when present.

    python3 bench/compare_step_time.py [--build build] [--rounds 3] [--record]

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
MLP = "mlp:784-1024-1024-10"
GPT = "gpt:layers=4,d_model=256,heads=4,seq=128,vocab=256"
CASES = [(MLP, 256, "sgd", 30), (GPT, 16, "adamw", 8)]


def mlp_flops(batch):
    """Matrix-product FLOPs of one MLP training step: forward, weight gradients, and input
    gradients of every layer but the first."""
    sizes = [int(s) for s in MLP.split(":")[1].split("-")]
    layers = list(zip(sizes, sizes[1:]))
    fwd = sum(2 * batch * i * o for i, o in layers)
    return fwd + fwd + sum(2 * batch * i * o for i, o in layers[1:])


def run(cmd, env, timeout=900):
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def has_module(python, module):
    return os.path.exists(python) and subprocess.run(
        [python, "-c", f"import {module}"], capture_output=True).returncode == 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(HERE, "..", "build"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--python", default=None, help="interpreter with torch and jax (default: BUILD/peers/bin/python)")
    ap.add_argument("--debian-python", default="/usr/bin/python3", help="interpreter with Debian's torch")
    ap.add_argument("--record", action="store_true")
    a = ap.parse_args()
    py = a.python or os.path.join(a.build, "peers", "bin", "python")
    bench = os.path.join(a.build, "bench", "step_bench")
    gemm = os.path.join(a.build, "bench", "gemm_peak")
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), OMP_WAIT_POLICY="passive", OPENBLAS_NUM_THREADS="1")
    peers = []  # (label, command prefix)
    if has_module(py, "torch"):
        peers.append(("PyTorch eager", [py, os.path.join(HERE, "torch_step.py")]))
        peers.append(("torch.compile", [py, os.path.join(HERE, "torch_step.py"), "--compile"]))
    if has_module(a.debian_python, "torch"):
        peers.append(("PyTorch eager (Debian)", [a.debian_python, os.path.join(HERE, "torch_step.py")]))
    if has_module(py, "jax"):
        peers.append(("JAX jit", [py, os.path.join(HERE, "jax_step.py")]))
    if not peers:
        sys.exit(f"no peer: neither {py} nor {a.debian_python} has torch or jax (see --help)")
    rows, gemm_rates, names = [], [], {}
    for model, batch, opt, steps in CASES:
        common = ["--model", model, "--batch", str(batch), "--optimizer", opt, "--threads", str(a.threads),
                  "--steps", str(steps)]
        ours, theirs = [], {label: [] for label, _ in peers}
        for r in range(a.rounds):
            if model == MLP:
                gemm_rates.append(run([gemm, "--threads", str(a.threads)], env)["gflops_median"])
            ours.append(run([bench] + common, env)["step_ms_median"])
            for label, cmd in peers:
                t = run(cmd + common, env)
                theirs[label].append(t["step_ms_median"])
                names[label] = t["framework"]
            print(f"{model} round {r + 1}: tessel {ours[-1]:.1f} ms, " +
                  ", ".join(f"{label} {v[-1]:.1f} ms" for label, v in theirs.items()), flush=True)
        row = {"model": model, "batch": batch, "opt": opt, "tessel": statistics.median(ours),
               "peers": {label: statistics.median(v) for label, v in theirs.items()},
               "round_ratios": {label: [t / p for t, p in zip(ours, v)] for label, v in theirs.items()}}
        rows.append(row)
        print(f"{model}: tessel {row['tessel']:.1f} ms; " +
              ", ".join(f"{label} {v:.1f} ms (ratio {row['tessel'] / v:.2f})" for label, v in row["peers"].items()),
              flush=True)
    peak = statistics.median(gemm_rates)
    mlp = rows[0]
    share = mlp_flops(256) / (mlp["tessel"] / 1e3) / 1e9 / peak
    print(f"GEMM peak (OpenBLAS, {a.threads} threads, 2048^3): {peak:.1f} GFLOP/s; tessel MLP step at "
          f"{100 * share:.0f} % of it ({mlp_flops(256) / 1e9:.3f} GFLOP of matrix products per step)")
    if a.record:
        labels = [label for label, _ in peers]
        lines = [f"Command: `python3 bench/compare_step_time.py --rounds {a.rounds} --record`  ",
                 f"Recorded {time.strftime('%Y-%m-%d')} on {platform.machine()}, {os.cpu_count()} cores, "
                 f"{a.threads} threads, synthetic inputs, median over {a.rounds} alternating rounds. Peers: " +
                 "; ".join(f"{label} = {names[label]}" for label in labels) + ".", "",
                 "| model | batch | optimizer | tessel ms/step | " +
                 " | ".join(f"{label} ms/step (tessel ratio)" for label in labels) + " |",
                 "|---|---|---|---|" + "---|" * len(labels)]
        for row in rows:
            lines.append(f"| `{row['model']}` | {row['batch']} | {row['opt']} | {row['tessel']:.1f} | " +
                         " | ".join(f"{row['peers'][label]:.1f} ({row['tessel'] / row['peers'][label]:.2f})"
                                    for label in labels) + " |")
        lines += ["", f"GEMM peak, OpenBLAS's own 2-thread SGEMM (2048^3, `build/bench/gemm_peak`, median of the "
                      f"rounds): {peak:.1f} GFLOP/s. The MLP step's matrix products are {mlp_flops(256) / 1e9:.3f} "
                      f"GFLOP: tessel's step runs at {100 * share:.0f} % of that peak" +
                      "".join(f", {label} at {100 * mlp_flops(256) / (mlp['peers'][label] / 1e3) / 1e9 / peak:.0f} %"
                              for label in labels) + "."]
        lines += ["", "Ratios within each round (tessel / peer, both timed in that round), median and range: " +
                  "; ".join(f"`{row['model'].split(':')[0]}` " + ", ".join(
                      f"{label} {statistics.median(row['round_ratios'][label]):.2f} "
                      f"({min(row['round_ratios'][label]):.2f}-{max(row['round_ratios'][label]):.2f})"
                      for label in labels) for row in rows) + "."]
        results.record("Training step time: tessel vs PyTorch (eager, torch.compile) and JAX jit", lines + [""])


if __name__ == "__main__":
    sys.exit(main())
