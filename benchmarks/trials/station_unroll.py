"""Trial behind ``models.FULL_UNROLL_STEPS``: the station LSTM training step (2 x 64, batch 256)
at 12, 24 and 48 steps with ``unroll=1`` and full unroll: compile time and step time, 7
interleaved samples of 20 steps each.

    .venv/bin/python benchmarks/trials/station_unroll.py

2026-12-04, AVX-512 host (ms/step median (min-max); compile s):
T=12 unroll 1 6.36 (6.13-8.54), 0.50; full 5.36 (5.13-7.26), 1.88
T=24 unroll 1 23.8 (22.6-24.0), 0.51; full 16.2 (15.8-20.8), 5.42
T=48 unroll 1 45.8 (44.4-51.9), 0.52; full 79.2 (78.2-85.2), 21.9
(the first run, before this file was tidied; this file, rerun the same evening: 7.11 / 6.17,
25.8 / 19.7, 48.0 / 87.5 ms, compile 2.0 / 5.9 / 24.7 s fully unrolled: the same verdicts)
"""
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from nowcast_jax import models

B, F, H, NH = 256, 8, 64, 3


def compiled_step(steps: int, unroll: int, rng):
    x = jnp.asarray(rng.standard_normal((B, steps, F), dtype=np.float32))  # [B, T, F]
    y = jnp.asarray(rng.standard_normal((B, NH), dtype=np.float32))
    model = models.station_lstm((H, H), NH, unroll=unroll)
    params = model.init(jax.random.key(0), F, steps)
    loss = lambda p, x, y: jnp.mean((model.apply(p, x)["value"] - y) ** 2)
    t0 = time.perf_counter()
    step = jax.jit(jax.value_and_grad(loss)).lower(params, x, y).compile()
    return (lambda: jax.block_until_ready(step(params, x, y))), time.perf_counter() - t0


def main():
    rng = np.random.default_rng(0)
    steps_fns = {(t, u): compiled_step(t, u, rng) for t in (12, 24, 48) for u in (1, t)}
    samples = {k: [] for k in steps_fns}
    for _ in range(7):
        for k, (fn, _) in steps_fns.items():
            t0 = time.perf_counter()
            for _ in range(20):
                fn()
            samples[k].append((time.perf_counter() - t0) / 20 * 1e3)
    for (t, u), (_, compile_s) in steps_fns.items():
        ts = samples[(t, u)]
        print(f"T={t:3d} unroll={u:3d} compile {compile_s:.2f} s  step {statistics.median(ts):.2f} ms "
              f"({min(ts):.2f}-{max(ts):.2f}, n=7)")


if __name__ == "__main__":
    main()
