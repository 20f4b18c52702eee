#!/usr/bin/env python3
"""The planner on this machine: each plan's predicted step (what `tessel train` prints from the
planner's simulation of local:N) against the step it measures, for a fixed set of plans chosen
before the cost model was tuned: an MLP and a small GPT on 1, 2, 4 and 8 simulated devices
under data parallelism, ZeRO 1/2/3, tensor and sequence parallelism, pipelines and
recomputation. The rounds alternate over the plans; each figure is a median over rounds.

Targets (the planner issue): median |predicted - measured| / measured <= 10 %, worst <= 25 %,
and the plans ranked alike by predicted and measured step (Spearman >= 0.8), with no per-plan
factor anywhere. This machine's speed drifts by tens of percent over minutes (it is shared), so
each round first runs `tessel calibrate` (into a file of its own, TESSEL_CALIBRATION) and predicts
from what it measured then; --no-calibrate uses whatever local:N is (the table says which).

    python3 bench/plan_local_fidelity.py [--build build] [--rounds 3] [--steps 30] [--record]
"""
import argparse
import json
import os
import platform
import statistics
import shutil
import subprocess
import sys
import tempfile
import time

import results

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")

MLP = ["--model", "mlp:784-1024-1024-10", "--dataset", "fashion-mnist", "--batch", "256", "--optimizer", "sgd",
       "--momentum", "0.9"]
GPT = ["--model", "gpt:layers=2,d_model=128,heads=4,seq=64,vocab=256", "--dataset", "text:" + os.path.join(ROOT, "README.md"),
       "--batch", "16", "--optimizer", "adamw", "--lr", "3e-4"]

# (label, model args, devices, pins): fixed before tuning.
PLANS = [
    ("MLP, 1 device", MLP, 1, []),
    ("MLP, dp=2", MLP, 2, ["--dp", "2", "--zero", "0"]),
    ("MLP, tp=2", MLP, 2, ["--tp", "2"]),
    ("MLP, pp=2 x 4 microbatches", MLP, 2, ["--pp", "2", "--microbatches", "4"]),
    ("MLP, dp=4 ZeRO-1", MLP, 4, ["--dp", "4", "--zero", "1"]),
    ("MLP, dp=2 x tp=2", MLP, 4, ["--dp", "2", "--tp", "2"]),
    ("MLP, pp=4", MLP, 4, ["--pp", "4"]),
    ("MLP, dp=8 ZeRO-3", MLP, 8, ["--dp", "8", "--zero", "3"]),
    ("GPT, 1 device", GPT, 1, []),
    ("GPT, dp=2 ZeRO-2", GPT, 2, ["--dp", "2", "--zero", "2"]),
    ("GPT, tp=2 + sequence parallel", GPT, 2, ["--tp", "2", "--sp"]),
    ("GPT, dp=2 x tp=2, full recompute", GPT, 4, ["--dp", "2", "--tp", "2", "--recompute", "full"]),
    ("GPT, tp=2 x pp=2", GPT, 4, ["--tp", "2", "--pp", "2"]),
    ("GPT, dp=2 x tp=2 x pp=2", GPT, 8, ["--dp", "2", "--tp", "2", "--pp", "2"]),
]


def run(build, model, devices, pins, steps, env=None):
    cli = os.path.join(build, "frontend", "tessel")
    cmd = [cli, "train"] + model + ["--devices", str(devices), "--steps", str(steps), "--seed", "1", "--format", "json",
                                    "--quiet"] + pins
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    if r.returncode:
        sys.exit(" ".join(cmd) + "\n" + r.stderr[-2000:])
    j = json.loads(r.stdout.strip().splitlines()[-1])
    return j


def ranks(v):
    order = sorted(range(len(v)), key=lambda i: v[i])
    r = [0.0] * len(v)
    i = 0
    while i < len(order):  # ties share their mean rank
        j = i
        while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2
        i = j + 1
    return r


def spearman(a, b):
    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.mean(ra), statistics.mean(rb)
    num = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    den = (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
    return num / den if den else 1.0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--record", action="store_true")
    ap.add_argument("--no-calibrate", action="store_true", help="predict from local:N as it is, not a fresh calibration")
    a = ap.parse_args()
    measured = {p[0]: [] for p in PLANS}
    predicted_all = {p[0]: [] for p in PLANS}
    config, parts = {}, {}
    tmp = tempfile.mkdtemp()
    for r in range(a.rounds):
        env = None
        if not a.no_calibrate:
            env = dict(os.environ, TESSEL_CALIBRATION=os.path.join(tmp, f"round{r}.pbtxt"))
            c = subprocess.run([os.path.join(a.build, "frontend", "tessel"), "calibrate"], capture_output=True, text=True,
                               env=env, timeout=300)
            if c.returncode:
                sys.exit(c.stderr)
        for label, model, devices, pins in PLANS:
            j = run(a.build, model, devices, pins, a.steps, env)
            measured[label].append(j["step_ms_median"])
            predicted_all[label].append(j["predicted_step_ms"])
            config[label] = j["plan"]
            parts[label] = (j["predicted"], j["measured"])
            print(f"round {r + 1}: {label}: {j['plan']}: predicted {j['predicted_step_ms']:.2f} ms, measured "
                  f"{j['step_ms_median']:.2f} ms", flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    rows = []
    for label, *_ in PLANS:
        m = statistics.median(measured[label])
        p = statistics.median(predicted_all[label])
        rows.append((label, config[label], p, m, (p - m) / m))
    errs = [abs(x[4]) for x in rows]
    rho = spearman([x[2] for x in rows], [x[3] for x in rows])
    per_model = {k: spearman([x[2] for x in rows if x[0].startswith(k)], [x[3] for x in rows if x[0].startswith(k)])
                 for k in ("MLP", "GPT")}
    cal = subprocess.run([os.path.join(a.build, "frontend", "tessel"), "plan", "--model", "mlp:784-10", "--batch", "8",
                          "--cluster", "local:2"], capture_output=True, text=True).stdout
    calibrated = not a.no_calibrate or "calibrated" in cal
    for x in rows:
        print(f"{x[0]:36s} {x[1]:36s} predicted {x[2]:8.2f} ms measured {x[3]:8.2f} ms  {100 * x[4]:+6.1f} %")
    print(f"median |error| {100 * statistics.median(errs):.1f} %, worst {100 * max(errs):.1f} %, Spearman {rho:.2f} "
          f"(MLP {per_model['MLP']:.2f}, GPT {per_model['GPT']:.2f}); local:N {'calibrated' if calibrated else 'NOT calibrated'}")
    if a.record:
        body = [f"Command: `python3 bench/plan_local_fidelity.py --rounds {a.rounds} --steps {a.steps} --record`  ",
                f"Recorded {time.strftime('%Y-%m-%d')} on {platform.machine()}, {os.cpu_count()} cores; local:N "
                f"{'calibrated by `tessel calibrate`' + ('' if a.no_calibrate else ' at the start of each round') if calibrated else 'NOT calibrated (datasheet estimates)'}. "
                f"Predicted: the step `tessel train` prints from the planner's simulation (median over rounds); measured: the median step of "
                f"a {a.steps}-step run, median over {a.rounds} alternating rounds. Targets: median |error| <= 10 %, "
                "worst <= 25 %, Spearman >= 0.8.", "",
                "| plan | configuration | predicted ms | measured ms | error |", "|---|---|---|---|---|"]
        for x in rows:
            body.append(f"| {x[0]} | {x[1]} | {x[2]:.2f} | {x[3]:.2f} | {100 * x[4]:+.1f} % |")
        body += ["", f"Median |error| {100 * statistics.median(errs):.1f} %, worst {100 * max(errs):.1f} %; Spearman "
                     f"{rho:.2f} over all {len(rows)} plans (MLP {per_model['MLP']:.2f}, GPT {per_model['GPT']:.2f})."]
        results.record("Planner fidelity on this machine: predicted vs measured step", body)


if __name__ == "__main__":
    main()
