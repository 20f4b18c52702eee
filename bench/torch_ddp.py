#!/usr/bin/env python3
"""One rank of PyTorch DDP (gloo), the peer of bench/compare_ddp.py: the models of
bench/torch_step.py at a global batch split over WORLD_SIZE ranks of 1 thread each, on
synthetic inputs; torchrun-style variables set by the caller. Rank 0 prints one JSON line:
the median step time after warm-up (a step ends when the slowest rank's does: its times are
all-reduced by max) and the throughput at the global batch."""
import argparse
import json
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from torch_step import Gpt, mlp


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch", type=int, required=True, help="global batch")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    k, rank = dist.get_world_size(), dist.get_rank()
    local = a.batch // k
    torch.manual_seed(1)
    kind, spec = a.model.split(":", 1)
    if kind == "mlp":
        sizes = [int(s) for s in spec.split("-")]
        model = DDP(mlp(sizes))
        x = torch.rand(local, sizes[0])
        y = torch.randint(0, sizes[-1], (local,))
        loss_fn = lambda: F.cross_entropy(model(x), y)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    else:
        c = {kk: int(v) for kk, v in (kv.split("=") for kv in spec.split(","))}
        model = DDP(Gpt(c["layers"], c["d_model"], c["heads"], c["vocab"], c["seq"]))
        x = torch.randint(0, 256, (local, c["seq"]))
        y = torch.randint(0, 256, (local, c["seq"]))
        loss_fn = lambda: F.cross_entropy(model(x).reshape(-1, c["vocab"]), y.reshape(-1))
        opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.0)
    times = []
    for s in range(a.warmup + a.steps):
        dist.barrier()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        opt.step()
        t = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        if s >= a.warmup:
            times.append(t.item() * 1e3)
    times.sort()
    med = times[len(times) // 2]
    if rank == 0:
        print(json.dumps({"framework": "pytorch " + torch.__version__ + " DDP gloo", "model": a.model, "batch": a.batch,
                          "ranks": k, "step_ms_median": med, "samples_per_s": a.batch / med * 1e3}), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
