"""Trial (not adopted): tiled spectral path vs direct at small batches, paper workload otherwise.

Forces the tile by replacing ``_spectral.tile_size`` while each step is traced (as bench_grid
does). Interleaved rounds, median (min-max) of the training step and the forecast.

    benchmarks/.venv/bin/python benchmarks/trials/batch1_tiles.py BATCH [FRAME] [TILES] [RUNS]
    e.g. 1 64 8,4 5  (2026-12-03: train 0.499 s tile 4 vs 0.555 direct; forecast 0.238 vs 0.158)
"""

import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from nowcast_jax import _spectral, models


def build(x, frame, impl, tile):
    model = models.encoder_forecaster(1, 4, (64, 64), kernel_x=5, kernel_h=5, conv_impl=impl)
    params = model.init(jax.random.key(0), (frame, frame, 1))
    grad = jax.jit(jax.value_and_grad(lambda p: jnp.mean((model.apply(p, x, 10) - x) ** 2)))
    fwd = jax.jit(lambda p: model.apply(p, x, 10))
    default = _spectral.tile_size
    if tile is not None:
        _spectral.tile_size = lambda h, w, k: tile
    try:
        jax.block_until_ready(grad(params))
        jax.block_until_ready(fwd(params))
    finally:
        _spectral.tile_size = default
    return (lambda: jax.block_until_ready(grad(params))), (lambda: jax.block_until_ready(fwd(params)))


def main():
    batch = int(sys.argv[1])
    frame = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    tiles = [int(t) for t in (sys.argv[3] if len(sys.argv) > 3 else "0,8,4").split(",")]
    runs = int(sys.argv[4]) if len(sys.argv) > 4 else 5
    x = jnp.asarray(np.random.default_rng(0).random((batch, 10, frame, frame, 1), np.float32))
    contenders = {"direct": build(x, frame, "direct", None)}
    contenders.update({f"spectral tile {t}": build(x, frame, "spectral", t) for t in tiles})
    times = {k: ([], []) for k in contenders}
    for _ in range(runs):
        for name, fns in contenders.items():
            for fn, out in zip(fns, times[name]):
                t0 = time.perf_counter()
                fn()
                out.append(time.perf_counter() - t0)
    for name, (train, fwd) in times.items():
        print(f"B={batch} frame={frame} {name:18s} train {statistics.median(train):.3f} ({min(train):.3f}-"
              f"{max(train):.3f})  forecast {statistics.median(fwd):.3f} ({min(fwd):.3f}-{max(fwd):.3f})  n={runs}")


if __name__ == "__main__":
    main()
