"""Station LSTM training step (fwd + bwd, MSE): ours vs Flax OptimizedLSTMCell vs PyTorch nn.LSTM.

Workload (Li et al. 2019 style): 12 steps x 8 features, 2 stacked LSTM layers of 64 units,
dense head to 3 horizons from the last hidden state, batch 256. One process, interleaved
rounds; each timed sample runs ``--inner`` steps back to back (one step is ~ms) and is
divided by it; medians over ``--runs`` rounds.

    benchmarks/.venv/bin/python benchmarks/bench_station.py [--runs 10] [--inner 20]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from nowcast_jax import models  # noqa: E402

B, T, F, H, NH = 256, 12, 8, 64, 3


def ours(x, y, inner, **kw):
    model = models.station_lstm((H, H), NH, **kw)
    params = model.init(jax.random.key(0), F, T)
    loss = lambda p, x, y: jnp.mean((model.apply(p, x)["value"] - y) ** 2)
    grad = jax.jit(jax.value_and_grad(loss))
    return lambda: [jax.block_until_ready(grad(params, x, y)) for _ in range(inner)]


def flax_peer(x, y, inner):
    import flax.linen as nn

    class FlaxStation(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = x
            for _ in range(2):
                h = nn.RNN(nn.OptimizedLSTMCell(H))(h)
            return nn.Dense(NH)(h[:, -1])

    m = FlaxStation()
    v = m.init(jax.random.key(0), x)
    loss = lambda v, x, y: jnp.mean((m.apply(v, x) - y) ** 2)
    grad = jax.jit(jax.value_and_grad(loss))
    return lambda: [jax.block_until_ready(grad(v, x, y)) for _ in range(inner)]


def torch_peer(x, y, inner, threads):
    import torch
    from torch import nn

    torch.set_num_threads(threads)
    torch.manual_seed(0)

    class TorchStation(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(F, H, num_layers=2, batch_first=True)
            self.head = nn.Linear(H, NH)

        def forward(self, x):
            hs, _ = self.lstm(x)
            return self.head(hs[:, -1])

    m = TorchStation()
    xt, yt = torch.from_numpy(np.asarray(x)), torch.from_numpy(np.asarray(y))

    def step():
        torch.set_num_threads(threads)  # per call: the 1- and 2-thread peers share this process
        m.zero_grad(set_to_none=True)
        loss = torch.mean((m(xt) - yt) ** 2)
        loss.backward()
        return loss.item()

    return lambda: [step() for _ in range(inner)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--inner", type=int, default=20)
    ap.add_argument("--torch-threads", type=int, default=2)
    ap.add_argument("--only", default="ours,ours_unroll1,ours_unroll4,flax,torch,torch1")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((B, T, F), dtype=np.float32))
    y = jnp.asarray(rng.standard_normal((B, NH), dtype=np.float32))
    builders = {
        "ours": (f"ours (station_lstm defaults: {T} steps unrolled fully)", lambda: ours(x, y, args.inner)),
        "ours_unroll1": ("ours, unroll=1 (the default before 2026-12-04)", lambda: ours(x, y, args.inner, unroll=1)),
        "ours_unroll4": ("ours, unroll=4", lambda: ours(x, y, args.inner, unroll=4)),
        "flax": ("Flax linen OptimizedLSTMCell + nn.RNN", lambda: flax_peer(x, y, args.inner)),
        "torch": (f"PyTorch nn.LSTM ({args.torch_threads} threads)", lambda: torch_peer(x, y, args.inner, args.torch_threads)),
        "torch1": ("PyTorch nn.LSTM (1 thread)", lambda: torch_peer(x, y, args.inner, 1)),
    }
    names = [n for n in args.only.split(",") if n]
    contenders = {n: builders[n][1]() for n in names}
    res = _common.time_rounds(contenders, args.runs, warmup=2, log=_common.log)
    print(_common.header(f"Station LSTM training step, {T} steps x {F} features, 2 x {H}, batch {B}",
                         {"timing": f"interleaved rounds; each sample = {args.inner} steps back to back; "
                                    "per-step median; ratio = t(contender) / t(ours) (> 1: ours is faster)"}))
    ref = res["ours"]["median"] if "ours" in res else float("nan")
    rows = [[builders[n][0], 1e3 * r["median"] / args.inner,
             f'{1e3 * r["min"] / args.inner:.3g}-{1e3 * r["max"] / args.inner:.3g}', r["n"], r["median"] / ref]
            for n, r in res.items()]
    print(_common.table(["contender", "median ms/step", "min-max ms/step", "n", "t / t(ours)"], rows))


if __name__ == "__main__":
    main()
