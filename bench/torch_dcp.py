#!/usr/bin/env python3
"""PyTorch's torch.distributed.checkpoint, timed as bench/checkpoint_bench.cc times tessel's
checkpoints: the same GPT (bench/torch_step.py) with AdamW after a few steps on synthetic
tokens; each round a synchronous dcp.save (its time), and a dcp.async_save between two steps
(the stall: the time until it returns plus what the next 5 steps lose against the median
step while it writes). One process, a gloo group of one. Prints one JSON line of medians.

    torch_dcp.py --model gpt:layers=4,d_model=512,heads=8,seq=128,vocab=256 --batch 4 --dir DIR
"""
import argparse
import json
import os
import shutil
import statistics
import time

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn.functional as F

from torch_step import Gpt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gpt:layers=4,d_model=512,heads=8,seq=128,vocab=256")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", os.environ.get("TORCH_DCP_PORT", "29731"))
    dist.init_process_group("gloo", rank=0, world_size=1)
    torch.manual_seed(1)
    c = {k: int(v) for k, v in (kv.split("=") for kv in a.model.split(":", 1)[1].split(","))}
    model = Gpt(c["layers"], c["d_model"], c["heads"], c["vocab"], c["seq"])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.0)
    x = torch.randint(0, 256, (a.batch, c["seq"]))
    y = torch.randint(0, 256, (a.batch, c["seq"]))

    def step():
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x).reshape(-1, c["vocab"]), y.reshape(-1)).backward()
        opt.step()
        return time.perf_counter() - t0

    for _ in range(3):
        step()
    step_s = statistics.median(step() for _ in range(5))
    state = lambda: {"model": model.state_dict(), "optim": opt.state_dict()}
    nbytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    nbytes += sum(v.numel() * v.element_size() for s in opt.state_dict()["state"].values() for v in s.values()
                  if torch.is_tensor(v))
    sync, stall, wait = [], [], []
    for r in range(a.rounds):
        d = os.path.join(a.dir, f"sync{r}")
        t0 = time.perf_counter()
        dcp.save(state(), checkpoint_id=d)
        sync.append(time.perf_counter() - t0)
        shutil.rmtree(d, ignore_errors=True)
        d = os.path.join(a.dir, f"async{r}")
        t0 = time.perf_counter()
        fut = dcp.async_save(state(), checkpoint_id=d)
        waited = time.perf_counter() - t0
        lost = sum(max(0.0, step() - step_s) for _ in range(5))
        fut.result()
        wait.append(waited)
        stall.append(waited + lost)
        shutil.rmtree(d, ignore_errors=True)
    print(json.dumps({"framework": "pytorch " + torch.__version__ + " dcp", "model": a.model, "bytes": nbytes,
                      "step_s": step_s, "sync_s": statistics.median(sync), "async_wait_s": statistics.median(wait),
                      "async_stall_s": statistics.median(stall)}), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
