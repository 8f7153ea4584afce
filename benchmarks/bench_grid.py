"""Where the spectral convolution stops paying: training step, spectral vs direct, by grid.

The ``conv_impl="auto"`` threshold (``nowcast_jax._spectral.MAX_POSITIONS``) comes from this
table. Workload as in bench_convlstm (2x64 + 2x64 ConvLSTM, 5x5, batch 8, 10 -> 10, 4x4
patches) with frames of 64, 80, 96 and 128 pixels, i.e. patched grids of 16, 20, 24 and 32.
Per grid, both paths are timed in the same process, interleaved.

    benchmarks/.venv/bin/python benchmarks/bench_grid.py [--runs 4]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from nowcast_jax import models  # noqa: E402


def step_fn(frame: int, impl: str):
    x = jax.random.uniform(jax.random.key(0), (8, 10, frame, frame, 1))
    y = jax.random.uniform(jax.random.key(1), (8, 10, frame, frame, 1))
    model = models.encoder_forecaster(1, 4, (64, 64), kernel_x=5, kernel_h=5, conv_impl=impl)
    params = model.init(jax.random.key(0), (frame, frame, 1))
    f = jax.jit(jax.value_and_grad(lambda p: jnp.mean((model.apply(p, x, 10) - y) ** 2)))
    return lambda: jax.block_until_ready(f(params))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--frames", default="64,80,96,128")
    args = ap.parse_args()
    rows = []
    for frame in (int(f) for f in args.frames.split(",")):
        res = _common.time_rounds({impl: step_fn(frame, impl) for impl in ("spectral", "direct")}, args.runs,
                                  warmup=2, log=_common.log)
        grid = frame // 4
        rows.append([f"{grid}x{grid}", grid * grid, res["spectral"]["median"], res["direct"]["median"],
                     res["direct"]["median"] / res["spectral"]["median"]])
    print(_common.header("Spectral vs direct convolution by grid size (training step)",
                         {"workload": "2x64 + 2x64 ConvLSTM, 5x5, batch 8, 10 -> 10, 4x4 patches",
                          "timing": f"per grid: interleaved rounds, median of {args.runs} after 2 warm-ups"}))
    print(_common.table(["patched grid", "positions", "spectral s", "direct s", "direct / spectral"], rows))


if __name__ == "__main__":
    main()
