#!/usr/bin/env python3
"""`tessel calibrate` against the peers' own measurements of the same things, side by side in
one run with the rounds alternating: OpenBLAS's SGEMM rate (numpy's matmul on a 1024^3 f32
product, OPENBLAS_NUM_THREADS=1 and = all cores, set beside the OpenBLAS SGEMM figures the
calibration records for reference) and one thread's memcpy bandwidth (mbw's MEMCPY test of
128 MiB, Debian's `mbw`: the same method, plain memcpy between two ordinary allocations; numpy's
copyto, which may get transparent huge pages, shown beside it for information). Also how long the whole calibration
takes. Targets: under 60 s; figures within 10 % of the peers' (ratio 0.90-1.10).

For information, not a target: the rates of tessel's own kernel on the same product (what the
planner uses: oneDNN's sgemm, split over tessel's pool), beside OpenBLAS's.

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
elif what == "memcpy":
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


def mbw():
    """mbw's MEMCPY average over 10 copies of 128 MiB, in bytes/s (None without mbw)."""
    try:
        r = subprocess.run(["mbw", "-q", "-n", "10", "-t0", "128"], capture_output=True, text=True, timeout=300)
    except FileNotFoundError:
        return None
    for line in r.stdout.splitlines():
        if line.startswith("AVG") and "MEMCPY" in line:
            return float(line.split("Copy:")[1].split()[0]) * 1048576
    sys.exit("mbw printed no MEMCPY average:\n" + r.stdout)


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
            "blas1": j["openblas_sgemm"][0], "blas_all": j["openblas_sgemm"][-1]}


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
    have_mbw = mbw() is not None
    if not have_mbw:
        print("mbw is not installed (apt install mbw): memcpy against numpy's copyto only", file=sys.stderr)
    keys = ("wall", "gemm1", "gemm_all", "memcpy", "blas1", "blas_all", "p_blas1", "p_blas_all", "p_memcpy", "p_mbw")
    t = {k: [] for k in keys}
    with tempfile.TemporaryDirectory() as d:
        for r in range(a.rounds):
            x = tessel(a.build, os.path.join(d, "cal.pbtxt"))
            for k in ("wall", "gemm1", "gemm_all", "memcpy", "blas1", "blas_all"):
                t[k].append(x[k])
            t["p_blas1"].append(peer(py, "gemm", 1)["flops_per_s"])
            t["p_blas_all"].append(peer(py, "gemm", cores)["flops_per_s"])
            t["p_memcpy"].append(peer(py, "memcpy", 1)["bytes_per_s"])
            if have_mbw:
                t["p_mbw"].append(mbw())
            print(f"round {r + 1}: calibrate {x['wall']:.1f} s; OpenBLAS SGEMM 1 thread {x['blas1'] / 1e9:.1f} vs numpy "
                  f"{t['p_blas1'][-1] / 1e9:.1f} GFLOP/s, {cores} threads {x['blas_all'] / 1e9:.1f} vs "
                  f"{t['p_blas_all'][-1] / 1e9:.1f}; memcpy {x['memcpy'] / 1e9:.2f} vs mbw "
                  f"{(t['p_mbw'][-1] / 1e9) if have_mbw else float('nan'):.2f}, numpy {t['p_memcpy'][-1] / 1e9:.2f} GB/s; "
                  f"tessel's kernel {x['gemm1'] / 1e9:.1f} / {x['gemm_all'] / 1e9:.1f} GFLOP/s", flush=True)
    m = {k: statistics.median(v) if v else float("nan") for k, v in t.items()}
    rows = [("OpenBLAS SGEMM 1024^3, 1 thread (GFLOP/s)", m["blas1"] / 1e9, "numpy matmul (OpenBLAS)", m["p_blas1"] / 1e9),
            (f"OpenBLAS SGEMM 1024^3, {cores} threads (GFLOP/s)", m["blas_all"] / 1e9, "numpy matmul (OpenBLAS)",
             m["p_blas_all"] / 1e9)]
    memcpy_numpy = ("memcpy 128 MiB, 1 thread (GB/s)", m["memcpy"] / 1e9, "numpy copyto", m["p_memcpy"] / 1e9)
    if have_mbw:
        rows.append(("memcpy 128 MiB, 1 thread (GB/s)", m["memcpy"] / 1e9, "mbw MEMCPY", m["p_mbw"] / 1e9))
    else:
        rows.append(memcpy_numpy)
    info = ([memcpy_numpy] if have_mbw else []) + [("tessel's kernel, SGEMM 1024^3, 1 thread (GFLOP/s)", m["gemm1"] / 1e9, "OpenBLAS (numpy)", m["p_blas1"] / 1e9),
            (f"tessel's kernel, SGEMM 1024^3, {cores} threads (GFLOP/s)", m["gemm_all"] / 1e9, "OpenBLAS (numpy)",
             m["p_blas_all"] / 1e9)]
    for label, a_, peer_name, b in rows + info:
        print(f"{label}: tessel calibrate {a_:.2f}, {peer_name} {b:.2f}, ratio {a_ / b:.3f}")
    print(f"calibrate took {m['wall']:.1f} s (median)")
    if a.record:
        body = [f"Command: `python3 bench/compare_calibrate.py --rounds {a.rounds} --record`  ",
                f"Recorded {time.strftime('%Y-%m-%d')} on {platform.machine()}, {cores} cores. Medians over {a.rounds} "
                "alternating rounds: a whole `tessel calibrate`, then the peers measuring the same quantities. Targets: "
                "calibration under 60 s, each figure within 10 % of the peer's (ratio 0.90-1.10).", "",
                "| figure | tessel calibrate | peer | peer's figure | ratio |", "|---|---|---|---|---|"]
        for label, a_, peer_name, b in rows:
            body.append(f"| {label} | {a_:.2f} | {peer_name} | {b:.2f} | {a_ / b:.3f} |")
        body += ["", f"`tessel calibrate` took {m['wall']:.1f} s (median; range {min(t['wall']):.1f}-{max(t['wall']):.1f} s).",
                 "", "Not targets, for information: numpy's copy (its large arrays may sit on transparent huge pages, which "
                 "copy faster than ordinary pages here), and tessel's own kernel on the same product (what the planner's "
                 "local:N uses; oneDNN's sgemm split over tessel's pool) against OpenBLAS:", ""]
        for label, a_, peer_name, b in info:
            body.append(f"- {label}: {a_:.1f} vs {peer_name} {b:.1f} ({a_ / b:.2f}x).")
        results.record("Calibration: tessel calibrate vs the peers' own measurements", body)


if __name__ == "__main__":
    main()
