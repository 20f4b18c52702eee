"""JAX peer for bench/compare_step_time.py: the models of torch_step.py (and tessel's
builders) written in plain jax.numpy, the whole training step (forward, backward, optimizer
update) under one jax.jit with the parameters and optimizer state donated. Timed per step
on synthetic inputs; prints one JSON line. XLA's CPU backend picks its own thread count
(all cores: 2 here)."""
import argparse
import json
import math
import time

import jax
import jax.numpy as jnp


def linear(key, n_in, n_out):
    bound = 1.0 / math.sqrt(n_in)
    kw, kb = jax.random.split(key)
    return {"w": jax.random.uniform(kw, (n_in, n_out), jnp.float32, -bound, bound),
            "b": jax.random.uniform(kb, (n_out,), jnp.float32, -bound, bound)}


def apply_linear(p, x):
    return x @ p["w"] + p["b"]


def layer_norm(p, x):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) * jax.lax.rsqrt(var + 1e-5) * p["g"] + p["b"]


def cross_entropy(logits, labels):
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(logp, labels[:, None], axis=-1).mean()


def mlp(sizes, key):
    keys = jax.random.split(key, len(sizes) - 1)
    params = [linear(keys[i - 1], sizes[i - 1], sizes[i]) for i in range(1, len(sizes))]

    def loss(params, x, y):
        h = x
        for i, p in enumerate(params):
            h = apply_linear(p, h)
            if i + 1 < len(params):
                h = jax.nn.relu(h)
        return cross_entropy(h, y)

    return params, loss


def gpt(c, key):
    L, D, H, V, T = c["layers"], c["d_model"], c["heads"], c["vocab"], c["seq"]
    keys = iter(jax.random.split(key, 8 * L + 2))
    ln = lambda: {"g": jnp.ones((D,), jnp.float32), "b": jnp.zeros((D,), jnp.float32)}
    params = {"wte": 0.02 * jax.random.normal(next(keys), (V, D), jnp.float32),
              "wpe": 0.01 * jax.random.normal(next(keys), (T, D), jnp.float32),
              "ln_f": ln(),
              "blocks": [{"ln1": ln(), "ln2": ln(), "q": linear(next(keys), D, D), "k": linear(next(keys), D, D),
                          "v": linear(next(keys), D, D), "proj": linear(next(keys), D, D),
                          "fc": linear(next(keys), D, 4 * D), "out": linear(next(keys), 4 * D, D)}
                         for _ in range(L)]}
    mask = jnp.triu(jnp.full((T, T), -jnp.inf, jnp.float32), 1)

    def block(p, x):
        B = x.shape[0]
        h = layer_norm(p["ln1"], x)
        heads = lambda t: t.reshape(B, T, H, D // H).transpose(0, 2, 1, 3)
        q, k, v = (heads(apply_linear(p[n], h)) for n in ("q", "k", "v"))
        att = (q @ k.transpose(0, 1, 3, 2)) * (1.0 / math.sqrt(D // H)) + mask
        y = (jax.nn.softmax(att, axis=-1) @ v).transpose(0, 2, 1, 3).reshape(B, T, D)
        x = x + apply_linear(p["proj"], y)
        return x + apply_linear(p["out"], jax.nn.gelu(apply_linear(p["fc"], layer_norm(p["ln2"], x)), approximate=True))

    def loss(params, tokens, labels):
        x = params["wte"][tokens] + params["wpe"]
        for p in params["blocks"]:
            x = block(p, x)
        logits = layer_norm(params["ln_f"], x) @ params["wte"].T
        return cross_entropy(logits.reshape(-1, V), labels.reshape(-1))

    return params, loss


def sgd(lr, momentum):
    init = lambda params: jax.tree_util.tree_map(jnp.zeros_like, params)

    def update(params, state, grads, step):
        state = jax.tree_util.tree_map(lambda m, g: momentum * m + g, state, grads)
        return jax.tree_util.tree_map(lambda p, m: p - lr * m, params, state), state

    return init, update


def adamw(lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0):
    def init(params):
        z = jax.tree_util.tree_map(jnp.zeros_like, params)
        return (z, jax.tree_util.tree_map(jnp.zeros_like, params))

    def update(params, state, grads, step):
        m, v = state
        m = jax.tree_util.tree_map(lambda m, g: b1 * m + (1 - b1) * g, m, grads)
        v = jax.tree_util.tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, v, grads)
        c1, c2 = 1 - b1 ** step, 1 - b2 ** step
        new = jax.tree_util.tree_map(
            lambda p, m, v: p * (1 - lr * weight_decay) - lr * (m / c1) / (jnp.sqrt(v / c2) + eps), params, m, v)
        return new, (m, v)

    return init, update


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--optimizer", default="sgd")
    ap.add_argument("--threads", type=int, default=2, help="recorded only: XLA sizes its own pool")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    a = ap.parse_args()
    key = jax.random.PRNGKey(1)
    kind, spec = a.model.split(":", 1)
    if kind == "mlp":
        sizes = [int(s) for s in spec.split("-")]
        params, loss = mlp(sizes, key)
        x = jax.random.uniform(jax.random.PRNGKey(2), (a.batch, sizes[0]), jnp.float32)
        y = jax.random.randint(jax.random.PRNGKey(3), (a.batch,), 0, sizes[-1])
    else:
        c = {k: int(v) for k, v in (kv.split("=") for kv in spec.split(","))}
        params, loss = gpt(c, key)
        x = jax.random.randint(jax.random.PRNGKey(2), (a.batch, c["seq"]), 0, c["vocab"])
        y = jax.random.randint(jax.random.PRNGKey(3), (a.batch, c["seq"]), 0, c["vocab"])
    init, update = sgd(0.05, 0.9) if a.optimizer == "sgd" else adamw(3e-4)
    state = init(params)

    def step(params, state, x, y, t):
        value, grads = jax.value_and_grad(loss)(params, x, y)
        params, state = update(params, state, grads, t)
        return params, state, value

    step = jax.jit(step, donate_argnums=(0, 1))
    times = []
    for s in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        params, state, value = step(params, state, x, y, jnp.float32(s + 1))
        value.block_until_ready()
        t1 = time.perf_counter()
        if s >= a.warmup:
            times.append((t1 - t0) * 1e3)
    times.sort()
    print(json.dumps({"framework": "jax " + jax.__version__ + " jit", "model": a.model, "batch": a.batch,
                      "threads": a.threads, "step_ms_median": times[len(times) // 2], "step_ms_min": times[0],
                      "loss": float(value)}))


if __name__ == "__main__":
    main()
