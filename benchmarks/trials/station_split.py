"""Trial (not adopted): the station LSTM step with its batch split into 2 or 4 independent
recurrences (for XLA:CPU to run concurrently) vs one. 7 interleaved samples of 20 steps.

    benchmarks/.venv/bin/python benchmarks/trials/station_split.py
    (2026-12-03: 26.0 ms whole, 32.6 split in 2, 37.4 split in 4)
"""

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from nowcast_jax import models

B, T, F = 256, 12, 8


def main():
    rng = np.random.default_rng(0)
    x, y = jnp.asarray(rng.random((B, T, F), np.float32)), jnp.asarray(rng.random((B, 3), np.float32))
    model = models.station_lstm((64, 64), 3)
    params = model.init(jax.random.key(0), F, T)

    def loss(p, parts):
        outs = [model.apply(p, xs)["value"] for xs in jnp.split(x, parts)]
        return jnp.mean((jnp.concatenate(outs) - y) ** 2)

    steps = {f"split {k}": jax.jit(jax.value_and_grad(lambda p, k=k: loss(p, k))) for k in (1, 2, 4)}
    for f in steps.values():
        jax.block_until_ready(f(params))
    times = {k: [] for k in steps}
    for _ in range(7):
        for name, f in steps.items():
            t0 = time.perf_counter()
            for _ in range(20):
                jax.block_until_ready(f(params))
            times[name].append((time.perf_counter() - t0) / 20 * 1e3)
    for name, v in times.items():
        print(f"{name}: {statistics.median(v):.2f} ms/step ({min(v):.2f}-{max(v):.2f}), n = 7")


if __name__ == "__main__":
    main()
