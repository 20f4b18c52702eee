#!/usr/bin/env python3
"""`tessel calibrate` against the peers' own measurements of the same things, side by side in
one run with the rounds alternating: OpenBLAS's SGEMM rate (numpy's matmul on a 1024^3 f32
product, OPENBLAS_NUM_THREADS=1 and = all cores) and one thread's memcpy bandwidth (numpy's
copyto of 128 MiB). Also how long the whole calibration takes (target: under 60 s; figures
within 10 % of the peers').

tessel's figures are the ones it writes into the cluster spec: the 1024 x 1024 x 1024 product
at 1 and all threads, memcpy_bandwidth.

    python3 bench/compare_calibrate.py [--build build] [--python build/peers/bin/python] [--rounds 3] [--record]
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import results

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")

PEER = r"""
import json, sys, time
import numpy as np
what = sys.argv[1]
def med(f, n):
    f()
    t = []
    for _ in range(n):
        t0 = time.perf_counter(); f(); t.append(time.perf_counter() - t0)
    return statistics.median(t)
import statistics
if what == "gemm":
    a = np.full((1024, 1024), 0.5, np.float32); b = np.full((1024, 1024), 0.25, np.float32); c = np.empty_like(a)
    t = med(lambda: np.matmul(a, b, out=c), 40)
    print(json.dumps({"flops_per_s": 2 * 1024 ** 3 / t}))
else:
    x = np.ones(32 << 20, np.float32); y = np.empty_like(x)
    t = med(lambda: np.copyto(y, x), 25)
    print(json.dumps({"bytes_per_s": x.nbytes / t}))
"""


def peer(python, what, threads):
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    r = subprocess.run([python, "-c", PEER, what], capture_output=True, text=True, env=env, timeout=300)
    if r.returncode:
        sys.exit(r.stderr)
    return json.loads(r.stdout.strip().splitlines()[-1])


def tessel(build, path):
    cli = os.path.join(build, "frontend", "tessel")
    t0 = time.perf_counter()
    r = subprocess.run([cli, "calibrate", "--output", path, "--format", "json"], capture_output=True, text=True,
                       timeout=600)
    wall = time.perf_counter() - t0
    if r.returncode:
        sys.exit(r.stderr)
    j = json.loads(r.stdout.strip().splitlines()[-1])
    square = {g["threads"]: g["flops_per_s"] for g in j["gemm"] if (g["m"], g["n"], g["k"], g["batch"]) == (1024, 1024, 1024, 1)}
    return {"wall": wall, "gemm1": square[1], "gemm_all": square[max(square)], "memcpy": j["memcpy_bandwidth"],
            "threads": max(square)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--python", default=None, help="interpreter with numpy (default: BUILD/peers/bin/python, else python3)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--record", action="store_true")
    a = ap.parse_args()
    py = a.python or os.path.join(a.build, "peers", "bin", "python")
    if not os.path.exists(py):
        py = sys.executable
    cores = os.cpu_count()
    t = {k: [] for k in ("wall", "gemm1", "gemm_all", "memcpy", "p_gemm1", "p_gemm_all", "p_memcpy")}
    with tempfile.TemporaryDirectory() as d:
        for r in range(a.rounds):
            x = tessel(a.build, os.path.join(d, "cal.pbtxt"))
            for k in ("wall", "gemm1", "gemm_all", "memcpy"):
                t[k].append(x[k])
            t["p_gemm1"].append(peer(py, "gemm", 1)["flops_per_s"])
            t["p_gemm_all"].append(peer(py, "gemm", cores)["flops_per_s"])
            t["p_memcpy"].append(peer(py, "memcpy", 1)["bytes_per_s"])
            print(f"round {r + 1}: calibrate {x['wall']:.1f} s; SGEMM 1 thread {x['gemm1'] / 1e9:.1f} vs OpenBLAS "
                  f"{t['p_gemm1'][-1] / 1e9:.1f} GFLOP/s, {cores} threads {x['gemm_all'] / 1e9:.1f} vs "
                  f"{t['p_gemm_all'][-1] / 1e9:.1f}; memcpy {x['memcpy'] / 1e9:.2f} vs numpy {t['p_memcpy'][-1] / 1e9:.2f} GB/s",
                  flush=True)
    m = {k: statistics.median(v) for k, v in t.items()}
    rows = [("SGEMM 1024^3, 1 thread (GFLOP/s)", m["gemm1"] / 1e9, "OpenBLAS (numpy)", m["p_gemm1"] / 1e9),
            (f"SGEMM 1024^3, {cores} threads (GFLOP/s)", m["gemm_all"] / 1e9, "OpenBLAS (numpy)", m["p_gemm_all"] / 1e9),
            ("memcpy 128 MiB, 1 thread (GB/s)", m["memcpy"] / 1e9, "numpy copyto", m["p_memcpy"] / 1e9)]
    for label, a_, peer_name, b in rows:
        print(f"{label}: tessel {a_:.2f}, {peer_name} {b:.2f}, ratio {a_ / b:.3f}")
    print(f"calibrate took {m['wall']:.1f} s (median)")
    if a.record:
        body = [f"Command: `python3 bench/compare_calibrate.py --rounds {a.rounds} --record`  ",
                f"Recorded {time.strftime('%Y-%m-%d')} on {platform.machine()}, {cores} cores. Medians over {a.rounds} "
                "alternating rounds: a whole `tessel calibrate`, then the peers measuring the same quantities. Targets: "
                "calibration under 60 s, each figure within 10 % of the peer's (ratio 0.90-1.10).", "",
                "| figure | tessel calibrate | peer | peer's figure | ratio |", "|---|---|---|---|---|"]
        for label, a_, peer_name, b in rows:
            body.append(f"| {label} | {a_:.2f} | {peer_name} | {b:.2f} | {a_ / b:.3f} |")
        body += ["", f"`tessel calibrate` took {m['wall']:.1f} s (median; range {min(t['wall']):.1f}-{max(t['wall']):.1f} s)."]
        results.record("Calibration: tessel calibrate vs the peers' own measurements", body)


if __name__ == "__main__":
    main()
