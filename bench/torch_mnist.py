"""PyTorch peer for Fashion-MNIST accuracy: the MLP 784-1024-1024-10, SGD with momentum,
inputs scaled to [0, 1], the same settings as `tessel train`. Prints one JSON line.

    python3 bench/torch_mnist.py --epochs 1 --batch 256 --lr 0.05 --momentum 0.9 --seed 1
"""
import argparse
import gzip
import json
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

DIR = "/usr/share/datasets/fashion-mnist"


def idx(path, offset):
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    xtr = torch.tensor(idx(f"{DIR}/train-images-idx3-ubyte.gz", 16).reshape(-1, 784), dtype=torch.float32) / 255
    ytr = torch.tensor(idx(f"{DIR}/train-labels-idx1-ubyte.gz", 8), dtype=torch.int64)
    xte = torch.tensor(idx(f"{DIR}/t10k-images-idx3-ubyte.gz", 16).reshape(-1, 784), dtype=torch.float32) / 255
    yte = torch.tensor(idx(f"{DIR}/t10k-labels-idx1-ubyte.gz", 8), dtype=torch.int64)
    model = nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))
    opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=a.momentum)
    t0 = time.perf_counter()
    steps = 0
    for _ in range(a.epochs):
        perm = torch.randperm(len(xtr))
        for b in range(len(xtr) // a.batch):  # drop the last partial batch, as tessel does
            i = perm[b * a.batch:(b + 1) * a.batch]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xtr[i]), ytr[i])
            loss.backward()
            opt.step()
            steps += 1
    secs = time.perf_counter() - t0
    with torch.no_grad():
        acc = (model(xte).argmax(1) == yte).float().mean().item()
    print(json.dumps({"framework": "pytorch " + torch.__version__, "seed": a.seed, "steps": steps,
                      "test_accuracy": acc, "final_loss": loss.item(), "samples_per_s": steps * a.batch / secs}))


if __name__ == "__main__":
    main()
