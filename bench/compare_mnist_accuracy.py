#!/usr/bin/env python3
"""Fashion-MNIST test accuracy, tessel vs PyTorch, same settings, over several seeds.

MLP 784-1024-1024-10, batch 256, SGD lr 0.05 momentum 0.9, inputs scaled to [0, 1], the
last partial batch dropped by both. Seeds change initialization and shuffling, so a single
seed says little: the table gives mean, min and max per framework.

    python3 bench/compare_mnist_accuracy.py [--build build] [--seeds 1-5] [--epochs 1] [--record]
"""
import argparse
import json
import os
import statistics
import subprocess
import time

import results

HERE = os.path.dirname(os.path.abspath(__file__))


def last_json(cmd, env):
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(HERE, "..", "build"))
    ap.add_argument("--seeds", default="1-5")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--python", default="/usr/bin/python3")
    ap.add_argument("--record", action="store_true")
    a = ap.parse_args()
    lo, hi = (int(x) for x in a.seeds.split("-"))
    env = dict(os.environ, OMP_NUM_THREADS="2", OMP_WAIT_POLICY="passive")
    tessel = os.path.join(a.build, "frontend", "tessel")
    ours, theirs = [], []
    for seed in range(lo, hi + 1):
        common = ["--epochs", str(a.epochs), "--batch", "256", "--lr", "0.05", "--momentum", "0.9", "--seed", str(seed)]
        t = last_json([tessel, "train", "--model", "mlp:784-1024-1024-10", "--dataset", "fashion-mnist",
                       "--optimizer", "sgd", "--format", "json", "--quiet"] + common, env)
        p = last_json([a.python, os.path.join(HERE, "torch_mnist.py")] + common, env)
        ours.append(t["test_accuracy"])
        theirs.append(p["test_accuracy"])
        print(f"seed {seed}: tessel {100 * t['test_accuracy']:.2f} %  pytorch {100 * p['test_accuracy']:.2f} %", flush=True)
    def stats(v):
        return f"{100 * statistics.mean(v):.2f} % (min {100 * min(v):.2f}, max {100 * max(v):.2f})"
    print(f"tessel  {stats(ours)}\npytorch {stats(theirs)}")
    if a.record:
        results.record("Fashion-MNIST accuracy: tessel vs PyTorch", [
            f"Command: `python3 bench/compare_mnist_accuracy.py --seeds {a.seeds} --epochs {a.epochs} --record`  ",
            f"Recorded {time.strftime('%Y-%m-%d')}. MLP 784-1024-1024-10, batch 256, SGD lr 0.05 momentum 0.9, "
            f"{a.epochs} epoch(s), seeds {a.seeds}.", "",
            "| framework | mean test accuracy (min, max) | per seed |", "|---|---|---|",
            f"| tessel | {stats(ours)} | {', '.join(f'{100 * x:.2f}' for x in ours)} |",
            f"| PyTorch (torch_mnist.py) | {stats(theirs)} | {', '.join(f'{100 * x:.2f}' for x in theirs)} |"])

if __name__ == "__main__":
    main()
