#!/usr/bin/env python3
"""One rank of PyTorch's gloo all-reduce, timed as bench/gloo_allreduce_bench.cc times
tessel's: torchrun-style variables (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) set by the
caller; rank 0 prints one JSON line per buffer size (1-256 MiB of f32): the median over
ITERS calls of an in-place sum after 5 uncounted ones, a call's time being the slowest
rank's."""
import json
import os
import sys
import time

import torch
import torch.distributed as dist


def main():
    iters = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    k = dist.get_world_size()
    for mib in (1, 4, 16, 64, 256):
        n = mib * (1 << 20) // 4
        buf = torch.ones(n, dtype=torch.float32)
        times = []
        for i in range(iters + 5):
            dist.barrier()
            t0 = time.perf_counter()
            dist.all_reduce(buf)
            s = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
            dist.all_reduce(s, op=dist.ReduceOp.MAX)
            if i >= 5:
                times.append(s.item())
        times.sort()
        med = times[len(times) // 2]
        b = n * 4
        if dist.get_rank() == 0:
            print(json.dumps({"engine": "pytorch gloo", "ranks": k, "bytes": b, "allreduce_s": med,
                              "bus_gbps": b * 2 * (k - 1) / k / med / 1e9}), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
