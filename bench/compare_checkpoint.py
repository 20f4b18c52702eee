#!/usr/bin/env python3
"""Checkpoint cost: tessel's checkpoints against this disk's sequential write bandwidth and
against PyTorch's torch.distributed.checkpoint (sync dcp.save and dcp.async_save), for the
same GPT with AdamW (parameters and both moments, about 154 MB), side by side in one run with
the rounds alternating (bench/checkpoint_bench.cc, bench/torch_dcp.py; each run does 3 saves of
each kind and reports medians). Figures are medians over rounds:
  - write throughput = checkpoint bytes / time of a synchronous save (fsynced), against the
    disk's bandwidth for the same bytes to one file, fsynced, measured in the same run;
  - stall = what one checkpoint costs the training loop: the wait in the loop plus what the
    next 5 steps lose while a background save writes (tessel's is the only kind `tessel train`
    does; PyTorch's both kinds).

    python3 bench/compare_checkpoint.py [--build build] [--python build/peers/bin/python] [--rounds 3] [--record]
"""
import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import results

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = "gpt:layers=4,d_model=512,heads=8,seq=128,vocab=256"


def last_json(out):
    for line in reversed(out.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    sys.exit("no JSON line in:\n" + out)


def run(cmd, cwd=None):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=cwd)
    if r.returncode:
        sys.exit(" ".join(cmd) + "\n" + r.stderr[-2000:])
    return last_json(r.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(HERE, "..", "build"))
    ap.add_argument("--python", default=None, help="interpreter with torch (default: BUILD/peers/bin/python)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary directory under /tmp)")
    ap.add_argument("--record", action="store_true")
    a = ap.parse_args()
    py = a.python or os.path.join(a.build, "peers", "bin", "python")
    work = tempfile.mkdtemp(prefix="tessel_ckbench_", dir=a.dir)
    got = {"tessel": [], "torch": []}
    try:
        for r in range(a.rounds):
            for name in ("tessel", "torch"):
                d = os.path.join(work, f"{name}{r}")
                os.makedirs(d)
                if name == "tessel":
                    j = run([os.path.join(a.build, "bench", "checkpoint_bench"), "--model", MODEL, "--batch", "4",
                             "--threads", "2", "--dir", d])
                else:
                    j = run([py, os.path.join(HERE, "torch_dcp.py"), "--model", MODEL, "--batch", "4", "--threads", "2",
                             "--dir", d], cwd=HERE)
                got[name].append(j)
                shutil.rmtree(d, ignore_errors=True)
            t, p = got["tessel"][-1], got["torch"][-1]
            print(f"round {r + 1}: tessel sync {t['sync_s'] * 1e3:.0f} ms (disk {t['disk_s'] * 1e3:.0f} ms), stall "
                  f"{t['async_stall_s'] * 1e3:.0f} ms; PyTorch DCP sync {p['sync_s'] * 1e3:.0f} ms, async stall "
                  f"{p['async_stall_s'] * 1e3:.0f} ms", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = lambda name, k: statistics.median(j[k] for j in got[name])
    tb, pb = got["tessel"][0]["bytes"], got["torch"][0]["bytes"]
    disk_bw = tb / med("tessel", "disk_s") / 1e6
    disk_best = tb / min(j["disk_best_s"] for j in got["tessel"]) / 1e6
    t_bw = tb / med("tessel", "sync_s") / 1e6
    p_bw = pb / med("torch", "sync_s") / 1e6
    rows = [("tessel, background save (`--checkpoint-every`)", med("tessel", "step_s"), t_bw, med("tessel", "sync_s"),
             med("tessel", "async_wait_s"), med("tessel", "async_stall_s")),
            ("PyTorch DCP `save` (sync)", med("torch", "step_s"), p_bw, med("torch", "sync_s"), med("torch", "sync_s"),
             med("torch", "sync_s")),
            ("PyTorch DCP `async_save` (thread)", med("torch", "step_s"), p_bw, med("torch", "sync_s"),
             med("torch", "async_wait_s"), med("torch", "async_stall_s"))]
    print(f"disk: {disk_bw:.0f} MB/s (median), {disk_best:.0f} MB/s (best); tessel writes {t_bw:.0f} MB/s "
          f"({t_bw / disk_bw:.2f} of the median, {t_bw / disk_best:.2f} of the best), PyTorch DCP {p_bw:.0f} MB/s")
    for label, step, bw, sync, wait, stall in rows:
        print(f"{label}: step {step * 1e3:.0f} ms, wait {wait * 1e3:.0f} ms, stall {stall * 1e3:.0f} ms")
    if a.record:
        torch_v = subprocess.run([py, "-c", "import torch; print(torch.__version__)"], capture_output=True,
                                 text=True).stdout.strip()
        body = [f"Command: `python3 bench/compare_checkpoint.py --rounds {a.rounds} --record`  ",
                f"Recorded {time.strftime('%Y-%m-%d')} on {platform.machine()}, {os.cpu_count()} cores, writing to "
                f"{a.dir or '/tmp'}; PyTorch {torch_v}. `{MODEL}`, batch 4, AdamW (parameters and both moments: "
                f"tessel {tb / 1e6:.1f} MB, PyTorch {pb / 1e6:.1f} MB), 2 threads each; medians over {a.rounds} "
                "alternating rounds of each run's median of 3 saves. Stall: the training loop's wait plus what the "
                "next 5 steps lose while the save writes.", "",
                f"Disk, the same bytes to one file and fsync, before and after each synchronous save in the same "
                f"runs: median {disk_bw:.0f} MB/s, best {disk_best:.0f} MB/s (this virtual disk's speed drifts by 2x "
                f"within a run). tessel's synchronous save: {t_bw:.0f} MB/s ({t_bw / disk_bw:.2f} of the median, "
                f"{t_bw / disk_best:.2f} of the best); PyTorch DCP's: {p_bw:.0f} MB/s.", "",
                "| checkpoint | step ms | wait in the loop ms | stall per checkpoint ms | stall / tessel's |",
                "|---|---|---|---|---|"]
        ts = rows[0][5]
        for label, step, bw, sync, wait, stall in rows:
            body.append(f"| {label} | {step * 1e3:.0f} | {wait * 1e3:.1f} | {stall * 1e3:.1f} | {stall / ts:.1f} |")
        results.record("Checkpoints: write throughput and training stall, tessel vs PyTorch DCP", body)


if __name__ == "__main__":
    main()
