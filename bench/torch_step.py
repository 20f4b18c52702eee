"""PyTorch peer for bench/compare_step_time.py: the same models, shapes and optimizers as
tessel's builders, timed per training step on synthetic inputs. Prints one JSON line."""
import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.h = h
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.k, self.v, self.proj = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x, mask):
        B, T, D = x.shape
        h = self.ln1(x)
        q, k, v = self.q(h), self.k(h), self.v(h)
        q, k, v = (t.view(B, T, self.h, D // self.h).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(D // self.h)) + mask
        y = (att.softmax(-1) @ v).transpose(1, 2).reshape(B, T, D)
        x = x + self.proj(y)
        return x + self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class Gpt(nn.Module):
    def __init__(self, layers, d, h, vocab, seq):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        nn.init.normal_(self.wte.weight, std=0.02)
        self.wpe = nn.Parameter(torch.randn(seq, d) * 0.01)
        self.blocks = nn.ModuleList(Block(d, h) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.register_buffer("mask", torch.full((seq, seq), float("-inf")).triu(1))

    def forward(self, tokens):
        x = self.wte(tokens) + self.wpe
        for b in self.blocks:
            x = b(x, self.mask)
        return self.ln_f(x) @ self.wte.weight.t()


def mlp(sizes):
    """Linear layers of the given widths with ReLU between them (tessel's mlp:...)."""
    layers = []
    for i in range(1, len(sizes)):
        layers.append(nn.Linear(sizes[i - 1], sizes[i]))
        if i + 1 < len(sizes):
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--optimizer", default="sgd")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the forward and loss (inductor), and the optimizer step")
    ap.add_argument("--fused", action="store_true", help="the fused optimizer implementation (torch >= 2.4 on CPU)")
    a = ap.parse_args()
    if a.compile and not hasattr(torch, "compile"):
        print(json.dumps({"framework": "pytorch " + torch.__version__, "error": "no torch.compile"}))
        return
    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    kind, spec = a.model.split(":", 1)
    if kind == "mlp":
        sizes = [int(s) for s in spec.split("-")]
        model = mlp(sizes)
        x = torch.rand(a.batch, sizes[0])
        y = torch.randint(0, sizes[-1], (a.batch,))
        loss_fn = lambda: F.cross_entropy(model(x), y)
    else:
        c = dict(kv.split("=") for kv in spec.split(","))
        c = {k: int(v) for k, v in c.items()}
        model = Gpt(c["layers"], c["d_model"], c["heads"], c["vocab"], c["seq"])
        x = torch.randint(0, 256, (a.batch, c["seq"]))
        y = torch.randint(0, 256, (a.batch, c["seq"]))
        loss_fn = lambda: F.cross_entropy(model(x).reshape(-1, c["vocab"]), y.reshape(-1))
    extra = {"fused": True} if a.fused else {}
    if a.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, **extra)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.0, **extra)
    step = opt.step
    if a.compile:
        loss_fn = torch.compile(loss_fn)
        step = torch.compile(opt.step)
    times = []
    for s in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        step()
        t1 = time.perf_counter()
        if s >= a.warmup:
            times.append((t1 - t0) * 1e3)
    times.sort()
    name = "pytorch " + torch.__version__ + (" compile" if a.compile else " eager") + (" fused" if a.fused else "")
    print(json.dumps({"framework": name, "model": a.model, "batch": a.batch,
                      "threads": torch.get_num_threads(), "step_ms_median": times[len(times) // 2],
                      "step_ms_min": times[0], "loss": loss.item()}))


if __name__ == "__main__":
    main()
