#!/usr/bin/env python3
"""Data-parallel training throughput on 2 ranks of 1 thread each: tessel over 2 Gloo
processes (`tessel launch --nproc 2 -- tessel train ... --dp 2`) and over 2 simulated devices
of one process (`tessel train --devices 2 --dp 2`), versus PyTorch DDP over gloo (2 processes
x 1 thread, bench/torch_ddp.py), side by side in one run with the rounds alternating.

Models: the MLP 784-1024-1024-10 at global batch 512 (SGD, momentum 0.9) and a GPT of 4
layers x 256 (seq 128, vocab 256) at global batch 32 (AdamW). tessel reads Fashion-MNIST and
a text file; PyTorch synthetic tensors of the same shapes. Each run reports its median step
after warm-up; the table gives medians over rounds and ratios PyTorch step / tessel step
(> 1: tessel trains faster), and the ratios within each round (both timed in that round).
Targets: >= 1.2 over processes, >= 1.3 in one process.

tessel runs plain data parallelism, `--dp 2 --zero 0`, as DDP does: gradients all-reduced,
parameters and optimizer state replicated on both ranks. (Left to itself the planner picks
ZeRO-1 here; see bench/RESULTS.md for what that costs over processes.)

    python3 bench/compare_ddp.py [--build build] [--python build/peers/bin/python] [--rounds 3] [--record]
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
ROOT = os.path.join(HERE, "..")

MODELS = [
    ("MLP 784-1024-1024-10, batch 512", "mlp:784-1024-1024-10", 512, 40,
     ["--dataset", "fashion-mnist", "--optimizer", "sgd", "--lr", "0.05", "--momentum", "0.9"]),
    ("GPT 4 x 256, seq 128, batch 32", "gpt:layers=4,d_model=256,heads=4,seq=128,vocab=256", 32, 20,
     ["--dataset", "text:" + os.path.join(ROOT, "README.md"), "--optimizer", "adamw", "--lr", "3e-4"]),
]


def last_json(out):
    for line in reversed(out.splitlines()):
        line = line.split("] ", 1)[-1] if line.startswith("[rank") else line
        if line.startswith("{"):
            return json.loads(line)
    sys.exit("no JSON line in:\n" + out)


def tessel(build, model, batch, steps, extra, processes):
    cli = os.path.join(build, "frontend", "tessel")
    train = [cli, "train", "--model", model, "--batch", str(batch), "--steps", str(steps), "--dp", "2", "--zero", "0",
             "--format", "json", "--quiet", "--seed", "1"] + extra
    cmd = [cli, "launch", "--nproc", "2", "--"] + train if processes else train + ["--devices", "2"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if r.returncode:
        sys.exit(" ".join(cmd) + "\n" + r.stderr[-2000:])
    j = last_json(r.stdout)
    return j["step_ms_median"], j["plan"]


def ddp(python, model, batch, steps):
    port = results.free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([python, os.path.join(HERE, "torch_ddp.py"), "--model", model, "--batch",
                                       str(batch), "--steps", str(steps)], env=env, stdout=subprocess.PIPE, text=True,
                                      cwd=HERE))
    outs = [p.communicate(timeout=900)[0] for p in procs]
    if any(p.returncode for p in procs):
        sys.exit("the DDP ranks failed")
    return last_json(outs[0])["step_ms_median"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--python", default=None, help="interpreter with torch (default: BUILD/peers/bin/python)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--record", action="store_true")
    a = ap.parse_args()
    py = a.python or os.path.join(a.build, "peers", "bin", "python")
    rows = []
    for label, model, batch, steps, extra in MODELS:
        t = {"procs": [], "threads": [], "ddp": []}
        plans = set()
        for r in range(a.rounds):
            ms, plan = tessel(a.build, model, batch, steps, extra, True)
            t["procs"].append(ms)
            plans.add(plan)
            t["ddp"].append(ddp(py, model, batch, steps))
            ms, plan = tessel(a.build, model, batch, steps, extra, False)
            t["threads"].append(ms)
            plans.add(plan)
            print(f"{label} round {r + 1}: tessel processes {t['procs'][-1]:.1f} ms, DDP {t['ddp'][-1]:.1f} ms, "
                  f"tessel in-process {t['threads'][-1]:.1f} ms", flush=True)
        m = {k: statistics.median(v) for k, v in t.items()}
        within = {k: [d / x for d, x in zip(t["ddp"], t[k])] for k in ("procs", "threads")}
        rows.append((label, m, m["ddp"] / m["procs"], m["ddp"] / m["threads"], ", ".join(sorted(plans)), within))
        print(f"{label}: DDP/tessel over processes {rows[-1][2]:.2f}x, in one process {rows[-1][3]:.2f}x "
              f"(plans {rows[-1][4]})", flush=True)
    if a.record:
        torch_v = subprocess.run([py, "-c", "import torch; print(torch.__version__)"], capture_output=True,
                                 text=True).stdout.strip()
        body = [f"Command: `python3 bench/compare_ddp.py --rounds {a.rounds} --record`  ",
                f"Recorded {time.strftime('%Y-%m-%d')} on {platform.machine()}, {os.cpu_count()} cores; PyTorch "
                f"{torch_v}. 2 ranks x 1 thread each. Median step (ms) over {a.rounds} alternating rounds; "
                "ratio = DDP step / tessel step (> 1: tessel faster). Targets: >= 1.2 over Gloo processes, "
                ">= 1.3 in one process.", "",
                "| model | DDP (gloo, 2 proc) | tessel 2 Gloo processes | ratio | tessel 2 in-process devices | ratio | tessel plan |",
                "|---|---|---|---|---|---|---|"]
        for label, m, rp, rt, plans, _ in rows:
            body.append(f"| {label} | {m['ddp']:.1f} | {m['procs']:.1f} | {rp:.2f} | {m['threads']:.1f} | {rt:.2f} | {plans} |")
        body.append("")
        body.append("Ratios within each round (DDP step / tessel step, both timed in that round), median and range:")
        for label, m, rp, rt, plans, within in rows:
            parts = []
            for k, name in (("procs", "over processes"), ("threads", "in one process")):
                v = within[k]
                parts.append(f"{name} {statistics.median(v):.2f} ({min(v):.2f}-{max(v):.2f})")
            body.append(f"- {label}: " + ", ".join(parts) + ".")
        results.record("Data-parallel training on 2 ranks: tessel vs PyTorch DDP", body)


if __name__ == "__main__":
    main()
