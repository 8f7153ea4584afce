"""ConvLSTM encoder-forecaster: training step (fwd + bwd, MSE) and forecast rollout time.

Ours (``nowcast_jax.models.encoder_forecaster``) and its variants vs Flax linen
``nn.ConvLSTMCell`` + ``nn.RNN``, Keras 3 ``ConvLSTM2D`` (JAX backend) and a plain PyTorch
ConvLSTM (2 threads). Paper workload: 64x64x1 frames -> 16x16x16 units, batch 8, encoder
2 x 64 + forecaster 2 x 64, 5x5 kernels, 10 -> 10. All in one process, interleaved rounds,
medians; ratios are "how many times faster ours (default settings) is" (> 1 = ours faster).

    benchmarks/.venv/bin/python benchmarks/bench_convlstm.py [--runs 10] [--only ours,flax,...]
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import peers_convlstm as peers  # noqa: E402
from nowcast_jax import models  # noqa: E402

ALL = ("ours", "ours_direct", "ours_im2col", "ours_xla", "ours_bf16", "ours_unroll2", "ours_sgd", "ours_sgd_donate",
       "flax", "keras", "torch", "torch_best")


def mse(a, b):
    return jnp.mean((a - b) ** 2)


def block(tree):
    return jax.block_until_ready(tree)


def ours(args, x, y, **kw):
    model = models.encoder_forecaster(1, 4, (64, 64), kernel_x=5, kernel_h=5, **kw)  # hidden 2 x 64
    params = model.init(jax.random.key(0), (args.frame, args.frame, 1))
    loss = lambda p, x, y: mse(model.apply(p, x, args.out_steps), y)
    grad = jax.jit(jax.value_and_grad(loss))
    fwd = jax.jit(lambda p, x: model.apply(p, x, args.out_steps))
    return (lambda: block(grad(params, x, y))), (lambda: block(fwd(params, x))), (model, params, loss)


def ours_sgd(args, x, y, donate):
    """A full SGD training step (grad + update); ``donate`` donates the parameter buffers."""
    _, _, (model, params, loss) = ours(args, x, y)

    def step(p, x, y):
        value, g = jax.value_and_grad(loss)(p, x, y)
        return jax.tree.map(lambda a, b: a - 1e-3 * b, p, g), value

    step = jax.jit(step, donate_argnums=(0,) if donate else ())
    state = {"p": jax.tree.map(jnp.copy, params)}

    def run():
        state["p"], v = step(state["p"], x, y)
        block(v)

    return run, None


def flax_peer(args, x, y):
    module = peers.flax_model(args.out_steps)
    variables = module.init(jax.random.key(0), x)
    loss = lambda v, x, y: mse(module.apply(v, x), y)
    grad = jax.jit(jax.value_and_grad(loss))
    fwd = jax.jit(module.apply)
    return (lambda: block(grad(variables, x, y))), (lambda: block(fwd(variables, x)))


def keras_peer(args, x, y):
    model = peers.keras_model(args.in_steps, args.out_steps)
    tv = [v.value for v in model.trainable_variables]
    ntv = [v.value for v in model.non_trainable_variables]
    zeros = jnp.zeros((x.shape[0], args.out_steps, 16, 16, 1), x.dtype)

    def predict(tv, ntv, x):
        out, _ = model.stateless_call(tv, ntv, [peers.s2d(x), zeros])
        return peers.d2s(out)

    loss = lambda tv, ntv, x, y: mse(predict(tv, ntv, x), y)
    grad = jax.jit(jax.value_and_grad(loss))
    fwd = jax.jit(predict)
    return (lambda: block(grad(tv, ntv, x, y))), (lambda: block(fwd(tv, ntv, x)))


def torch_peer(args, x, y, best=False):
    """Eager NCHW as written, or (``best``) channels_last + ``torch.compile`` of the module."""
    import torch

    torch.set_num_threads(args.torch_threads)
    torch.manual_seed(0)
    model = peers.torch_model(channels_last=best)
    xt = torch.from_numpy(np.array(x)).permute(0, 1, 4, 2, 3).contiguous()
    yt = torch.from_numpy(np.array(y)).permute(0, 1, 4, 2, 3).contiguous()
    run = torch.compile(model) if best else model

    def train():
        model.zero_grad(set_to_none=True)
        loss = torch.mean((run(xt, args.out_steps) - yt) ** 2)
        loss.backward()
        return loss.item()

    def forecast():
        with torch.inference_mode():
            return run(xt, args.out_steps).sum().item()

    return train, forecast


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--slow-runs", type=int, default=None,
                    help="timed runs for 'slow' contenders, see --slow-factor (default: --runs)")
    ap.add_argument("--slow-factor", type=float, default=3.0,
                    help="a contender is 'slow' when its first (compiling) call takes more than this many times "
                         "that of ours (the training step of ours for training contenders)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--frame", type=int, default=64, help="frame side in pixels (patched grid: frame / 4)")
    ap.add_argument("--in-steps", type=int, default=10)
    ap.add_argument("--out-steps", type=int, default=10)
    ap.add_argument("--torch-threads", type=int, default=2)
    ap.add_argument("--only", default=",".join(ALL), help="comma-separated subset of " + ",".join(ALL))
    ap.add_argument("--no-forecast", action="store_true", help="time training steps only")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n]
    unknown = set(names) - set(ALL)
    if unknown:
        ap.error(f"unknown contenders {sorted(unknown)}")

    x = jnp.asarray(peers.fake_frames(args.batch, args.in_steps, 0, args.frame))
    y = jnp.asarray(peers.fake_frames(args.batch, args.out_steps, 1, args.frame))
    builders = {
        "ours": lambda: ours(args, x, y)[:2],
        "ours_direct": lambda: ours(args, x, y, conv_impl="direct")[:2],
        "ours_im2col": lambda: ours(args, x, y, conv_impl="im2col")[:2],
        "ours_xla": lambda: ours(args, x, y, conv_impl="xla")[:2],
        "ours_bf16": lambda: ours(args, x, y, compute_dtype=jnp.bfloat16)[:2],
        "ours_unroll2": lambda: ours(args, x, y, unroll=2)[:2],
        "ours_sgd": lambda: ours_sgd(args, x, y, donate=False),
        "ours_sgd_donate": lambda: ours_sgd(args, x, y, donate=True),
        "flax": lambda: flax_peer(args, x, y),
        "keras": lambda: keras_peer(args, x, y),
        "torch": lambda: torch_peer(args, x, y),
        "torch_best": lambda: torch_peer(args, x, y, best=True),
    }
    labels = {
        "ours": "ours (defaults: conv_impl=auto, f32, unroll 1)",
        "ours_direct": "ours, conv_impl=direct (bilinear conv primitive, forward-form transposes)",
        "ours_im2col": "ours, conv_impl=im2col (all-matmul conv)",
        "ours_xla": "ours, conv_impl=xla (lax.conv)",
        "ours_bf16": "ours, compute_dtype=bf16",
        "ours_unroll2": "ours, unroll=2",
        "ours_sgd": "ours, grad + SGD update in one jit",
        "ours_sgd_donate": "ours, grad + SGD update, params donated",
        "flax": "Flax linen nn.ConvLSTMCell + nn.RNN",
        "keras": "Keras 3 ConvLSTM2D (JAX backend, stateless_call)",
        "torch": f"PyTorch ConvLSTM (fused Conv2d, eager NCHW, {args.torch_threads} threads)",
        "torch_best": f"PyTorch ConvLSTM, channels_last + torch.compile ({args.torch_threads} threads)",
    }
    train, fcst = {}, {}
    for n in names:
        _common.log(f"building {n}")
        tr, fc = builders[n]()
        train[n] = tr
        if fc is not None and not args.no_forecast:
            fcst[n] = fc

    # One warm-up (compiling) call each; "slow" contenders (see --slow-factor) get --slow-runs.
    contenders = {f"train:{n}": f for n, f in train.items()} | {f"forecast:{n}": f for n, f in fcst.items()}
    first = {}
    for k, f in contenders.items():
        t0 = _common.time.perf_counter()
        f()
        first[k] = _common.time.perf_counter() - t0
        _common.log(f"  first call {k}: {first[k]:.1f} s")
    slow_runs = args.slow_runs if args.slow_runs is not None else args.runs
    ref_first = {kind: first.get(f"{kind}:ours") for kind in ("train", "forecast")}
    runs_for = {k: slow_runs for k, t in first.items()
                if ref_first[k.split(":")[0]] and t > args.slow_factor * ref_first[k.split(":")[0]]}
    res = _common.time_rounds(contenders, args.runs, warmup=0, runs_for=runs_for, log=_common.log)

    g = args.frame // 4  # patched grid side
    flops = 2 * args.batch * g * g * K2 * 4 * 64 * ((16 + 64 + 64 + 64) * args.in_steps + (64 + 64 + 64) * args.out_steps)
    print(_common.header(f"ConvLSTM encoder-forecaster, {args.in_steps} -> {args.out_steps}, batch {args.batch}, "
                         f"{g}x{g} patched grid",
                         {"workload": f"{args.frame}x{args.frame}x1 frames -> {g}x{g}x16 units, encoder 2x64 + forecaster 2x64, 5x5 kernels, MSE",
                          "timing": f"interleaved rounds, median of n timed runs after a compiling warm-up call (contenders whose first call took > {args.slow_factor:g}x that of ours: n = --slow-runs); "
                                    f"ratio = t(contender) / t(ours) (> 1: ours is faster)",
                          "conv FLOPs of one forward pass": f"{flops / 1e9:.1f} GFLOP (training step counted as 3x)"}))
    for kind in ("train", "forecast"):
        ref = res.get(f"{kind}:ours")
        rows = []
        for n in names:
            r = res.get(f"{kind}:{n}")
            if r is None:
                continue
            ratio = r["median"] / ref["median"] if ref else float("nan")
            gf = (3 if kind == "train" else 1) * flops / r["median"] / 1e9
            rows.append([labels[n], r["median"], f'{r["min"]:.3g}-{r["max"]:.3g}', r["n"], first[f"{kind}:{n}"], gf, ratio])
        title = "Training step (value_and_grad of MSE)" if kind == "train" else "Forecast rollout (forward only)"
        print(f"**{title}**\n")
        print(_common.table(["contender", "median s", "min-max s", "n", "first call s (compile+run)", "conv GFLOP/s",
                             "t / t(ours)"], rows))


K2 = 25
if __name__ == "__main__":
    main()
