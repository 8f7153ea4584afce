"""Achieved GFLOP/s of our ConvLSTM training step vs the machine's convolution roofline.

FLOPs are counted analytically from the convolutions only (gate arithmetic, the 1x1 head
and patching are not counted, so the share is a lower bound): per layer and step,
``B*H*W * kh*kw * Cin_total * 4F`` MACs, x 2 FLOPs, x 3 for a training step (forward,
input gradient, weight gradient). The roofline is measured in the SAME process, interleaved:
the same four layer convolutions (same kernel and channel shapes) done as ONE large
convolution each over all ``B*T`` images at once (forward + both gradients, each conv
implementation, the best one counts), and the equivalent plain matmuls (im2col shape
``[B*T*H*W, kh*kw*Cin] x [kh*kw*Cin, 4F]``, three per layer) as the dense-GEMM limit.

The default CPU path is spectral (``nowcast_jax._spectral``), which does about a quarter of
the direct convolution's multiply-adds. Its GFLOP/s are therefore *direct-convolution
equivalent* (direct FLOPs / time) and its share of the roofline can exceed 100 %; the
step with ``conv_impl="direct"`` is the like-for-like row.

    benchmarks/.venv/bin/python benchmarks/bench_roofline.py [--runs 10]
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

from nowcast_jax import conv, models  # noqa: E402

B, HW, D, F, K = 8, 16, 16, 64, 5


def layer_shapes(t_in, t_out):
    """(Cin_total, steps) of the four layers: encoder reads [units|h], [h1|h], forecaster [h], [h1|h]."""
    return [(D + F, t_in), (F + F, t_in), (F, t_out), (F + F, t_out)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    t = args.steps
    shapes = layer_shapes(t, t)
    macs = sum(B * HW * HW * K * K * cin * 4 * F * steps for cin, steps in shapes)
    train_flops = 3 * 2 * macs

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((B, t, 64, 64, 1), dtype=np.float32))
    y = jnp.asarray(rng.random((B, t, 64, 64, 1), dtype=np.float32))
    model = models.encoder_forecaster(1, 4, (F, F), kernel_x=K, kernel_h=K)
    params = model.init(jax.random.key(0), (64, 64, 1))
    step = jax.jit(jax.value_and_grad(lambda p, x, y: jnp.mean((model.apply(p, x, t) - y) ** 2)))
    direct = models.encoder_forecaster(1, 4, (F, F), kernel_x=K, kernel_h=K, conv_impl="direct")
    step_direct = jax.jit(jax.value_and_grad(lambda p, x, y: jnp.mean((direct.apply(p, x, t) - y) ** 2)))

    # One large convolution per layer shape over all B*T images; forward + dX + dW.
    xs = [jnp.asarray(rng.standard_normal((B * steps, HW, HW, cin), dtype=np.float32)) for cin, steps in shapes]
    ws = [jnp.asarray(0.02 * rng.standard_normal((K, K, cin, 4 * F), dtype=np.float32)) for cin, _ in shapes]
    rs = [jnp.asarray(rng.standard_normal((B * steps, HW, HW, 4 * F), dtype=np.float32)) for _, steps in shapes]

    def big_conv(impl):
        def loss(xs, ws):
            return sum(jnp.vdot(conv.conv2d_same(a, w, impl=impl), r) for a, w, r in zip(xs, ws, rs))
        return jax.jit(jax.grad(loss, argnums=(0, 1)))

    # The dense-GEMM limit: the three matmuls of each layer at the im2col shape.
    cols = [jnp.asarray(rng.standard_normal((B * steps * HW * HW, K * K * cin), dtype=np.float32))
            for cin, steps in shapes]

    def gemms(cols, ws, rs):
        out = []
        for c, w, r in zip(cols, ws, rs):
            w2 = w.reshape(-1, 4 * F)
            r2 = r.reshape(-1, 4 * F)
            out.append((c @ w2, r2 @ w2.T, c.T @ r2))  # forward, dX (as dcols), dW
        return out

    gemm = jax.jit(gemms)
    block = jax.block_until_ready
    contenders = {
        "step": lambda: block(step(params, x, y)),
        "step_direct": lambda: block(step_direct(params, x, y)),
        "conv:direct": (lambda f: lambda: block(f(xs, ws)))(big_conv("direct")),
        "conv:spectral": (lambda f: lambda: block(f(xs, ws)))(big_conv("spectral")),
        "conv:im2col": (lambda f: lambda: block(f(xs, ws)))(big_conv("im2col")),
        "conv:xla": (lambda f: lambda: block(f(xs, ws)))(big_conv("xla")),
        "gemm": lambda: block(gemm(cols, ws, rs)),
    }
    res = _common.time_rounds(contenders, args.runs, warmup=2, log=_common.log)
    gf = {k: train_flops / r["median"] / 1e9 for k, r in res.items()}
    best_conv = max((k for k in gf if k.startswith("conv:") and k != "conv:spectral"), key=gf.get)
    print(_common.header(f"Roofline: our training step ({t} -> {t}, batch {B}) vs one large conv per layer shape",
                         {"FLOPs counted": f"{train_flops / 1e9:.1f} GFLOP per training step (convolutions only, fwd + dX + dW)",
                          "timing": f"interleaved rounds, median of {args.runs} after 2 warm-up calls; every row does the same FLOPs"}))
    labels = {"step": "our training step (value_and_grad, defaults: spectral on CPU)",
              "step_direct": "our training step, conv_impl=direct",
              "conv:direct": "one large conv per layer over B*T images, conv_impl=direct",
              "conv:spectral": "one large conv per layer over B*T images, conv_impl=spectral",
              "conv:im2col": "one large conv per layer over B*T images, conv_impl=im2col",
              "conv:xla": "one large conv per layer over B*T images, conv_impl=xla (lax.conv + autodiff)",
              "gemm": "the equivalent plain matmuls (im2col shapes, 3 per layer)"}
    rows = [[labels[k], r["median"], r["n"], gf[k], gf["step"] / gf[k]] for k, r in res.items()]
    print(_common.table(["what", "median s", "n", "GFLOP/s", "our step's share"], rows))
    print(f"Our training step reaches {gf['step']:.1f} GFLOP/s (direct-conv equivalent) = "
          f"{100 * gf['step'] / gf[best_conv]:.0f} % of the direct convolution roofline ({best_conv}, "
          f"{gf[best_conv]:.1f} GFLOP/s) and {100 * gf['step'] / gf['gemm']:.0f} % of the dense-GEMM rate "
          f"({gf['gemm']:.1f} GFLOP/s); with conv_impl=direct (same FLOPs really done) "
          f"{100 * gf['step_direct'] / gf[best_conv]:.0f} %.\n")


if __name__ == "__main__":
    main()
