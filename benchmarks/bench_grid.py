"""Where each spectral variant pays: training step, whole-grid vs tiled spectral vs direct, by grid.

The ``conv_impl="auto"`` choice (``nowcast_jax._spectral.MAX_POSITIONS``: whole grid up to it,
``TILE x TILE`` overlap-save tiles above it) is read off this table. Workload as in
bench_convlstm (2x64 + 2x64 ConvLSTM, 5x5, batch 8, 10 -> 10, 4x4 patches) with frames of 64,
80, 96 and 128 pixels, i.e. patched grids of 16, 20, 24 and 32. Per grid, the three are timed in
the same process, interleaved. The whole/tiled variants are forced by replacing
``_spectral.tile_size`` while the step is traced (the library has no public switch for it: the
choice is made by grid size).

    benchmarks/.venv/bin/python benchmarks/bench_grid.py [--runs 4] [--frames 64,80,96,128]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from nowcast_jax import _spectral, models  # noqa: E402

VARIANTS = {"whole": ("spectral", 0), "tiled": ("spectral", _spectral.TILE), "direct": ("direct", None)}


def step_fn(frame: int, impl: str, tile: int | None):
    """A blocking training step, compiled (traced with ``tile`` forced when not None)."""
    x = jax.random.uniform(jax.random.key(0), (8, 10, frame, frame, 1))
    y = jax.random.uniform(jax.random.key(1), (8, 10, frame, frame, 1))
    model = models.encoder_forecaster(1, 4, (64, 64), kernel_x=5, kernel_h=5, conv_impl=impl)
    params = model.init(jax.random.key(0), (frame, frame, 1))
    f = jax.jit(jax.value_and_grad(lambda p: jnp.mean((model.apply(p, x, 10) - y) ** 2)))
    default = _spectral.tile_size
    if tile is not None:
        _spectral.tile_size = lambda h, w, k: tile
    try:
        jax.block_until_ready(f(params))  # traces and compiles under the forced tile
    finally:
        _spectral.tile_size = default
    return lambda: jax.block_until_ready(f(params))


def span(r: dict) -> str:
    return f"{r['median']:.3g} ({r['min']:.3g}-{r['max']:.3g})"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--frames", default="64,80,96,128")
    args = ap.parse_args()
    rows = []
    for frame in (int(f) for f in args.frames.split(",")):
        grid = frame // 4
        fns = {name: step_fn(frame, impl, tile) for name, (impl, tile) in VARIANTS.items()}
        res = _common.time_rounds(fns, args.runs, warmup=1, log=_common.log)
        auto = "tiled" if _spectral.tile_size(grid, grid, 5) else "whole"
        direct = res["direct"]["median"]
        rows.append([f"{grid}x{grid}", grid * grid, auto, span(res["whole"]), span(res["tiled"]), span(res["direct"]),
                     res["direct"]["n"], direct / res["whole"]["median"], direct / res["tiled"]["median"]])
    print(_common.header("Whole-grid vs tiled spectral vs direct convolution by grid size (training step)",
                         {"workload": "2x64 + 2x64 ConvLSTM, 5x5, batch 8, 10 -> 10, 4x4 patches",
                          "tile": f"{_spectral.TILE}x{_spectral.TILE} outputs per tile (window {_spectral.TILE + 4})",
                          "timing": f"per grid: interleaved rounds, median (min-max) of {args.runs} after a "
                                    "compiling call and a warm-up"}))
    print(_common.table(["patched grid", "positions", "auto uses", "whole s", "tiled s", "direct s", "n",
                         "direct / whole", "direct / tiled"], rows))


if __name__ == "__main__":
    main()
