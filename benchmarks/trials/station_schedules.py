"""Trial (not adopted): two other schedules of the station LSTM step, vs ``station_lstm`` and ``nn.LSTM``.

* wavefront: layer l at scan step s works on time s - l, so all layers of a step read the
  previous step's hidden states only; their matmuls merge into one ``[B, L*F] x [L*F, 4LF]``
  product (block upper-bidiagonal weight), their gate arithmetic into one fusion, and the
  first layer's input projection leaves the scan.
* deferred: per step ``z = inp @ stop_gradient(w) + sink``; a ``custom_jvp`` adds ``w``'s
  tangent through the sinks, so the weight gradient is one ``[K, T*B] x [T*B, 4F]`` matmul
  per layer after the backward scan (the ConvLSTM's spectral deferral, on dense weights).

Both check their outputs (and the deferred one its gradients) against ``station_lstm`` first.

    benchmarks/.venv/bin/python benchmarks/trials/station_schedules.py [runs] [inner]

2026-12-04, AVX-512 host, 7 interleaved samples of 20 steps, ms/step median (min-max):
ours 7.90 (7.80-9.97), wavefront 12.1 (11.8-18.4), deferred 9.42 (9.07-11.5),
deferred unroll 2 10.7 (10.4-13.2), nn.LSTM 2 threads 4.64 (4.57-5.41), 1 thread 7.14
(6.89-8.03). An earlier run, before "deferred" was written: ours 9.48, wavefront 17.3,
wavefront unroll 2 18.2, nn.LSTM 2 threads 6.84, 1 thread 7.52. Both schedules are slower than the scan as it is.
"""


from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import _common  # noqa: E402
import bench_station as bs  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

from nowcast_jax import models  # noqa: E402


def wavefront_apply(params, x, unroll=1):
    """``x [B, T, Fin]`` -> top-layer hidden at the last step ``[B, F]``; same params as station_lstm."""
    layers = params["lstm"]
    L, F, (B, T, _) = len(layers), layers[0]["w_h"].shape[0], x.shape
    # W [L*F, 4*L*F]: row block k (h of layer k) feeds column block k (w_h) and k + 1 (w_x).
    w = jnp.zeros((L * F, 4 * L * F), x.dtype)
    for k, p in enumerate(layers):
        w = w.at[k * F:(k + 1) * F, 4 * k * F:4 * (k + 1) * F].set(p["w_h"])
        if k + 1 < L:
            w = w.at[k * F:(k + 1) * F, 4 * (k + 1) * F:4 * (k + 2) * F].set(layers[k + 1]["w_x"])
    b = jnp.concatenate([p["b"] for p in layers])  # [4LF]
    zx = jnp.einsum("btf,fg->tbg", x, layers[0]["w_x"])  # [T, B, 4F]
    zx = jnp.concatenate([zx, jnp.zeros((T, B, 4 * (L - 1) * F), x.dtype)], axis=-1)
    zx = jnp.concatenate([zx, jnp.zeros((L - 1, B, 4 * L * F), x.dtype)])  # [T+L-1, B, 4LF]
    steps = jnp.arange(T + L - 1)

    def body(carry, inp):
        c, h = carry  # [B, L, F]
        zxs, s = inp
        z = (h.reshape(B, L * F) @ w + zxs + b).reshape(B, L, 4, F)
        zi, zf, zg, zo = z[:, :, 0], z[:, :, 1], z[:, :, 2], z[:, :, 3]
        c_new = jax.nn.sigmoid(zf) * c + jax.nn.sigmoid(zi) * jnp.tanh(zg)
        h_new = jax.nn.sigmoid(zo) * jnp.tanh(c_new)
        t = s - jnp.arange(L)
        valid = ((t >= 0) & (t < T))[None, :, None]
        return (jnp.where(valid, c_new, c), jnp.where(valid, h_new, h)), None

    zeros = jnp.zeros((B, L, F), x.dtype)
    (c, h), _ = lax.scan(body, (zeros, zeros), (zx, steps), unroll=unroll)
    last = h[:, -1]
    return {"value": last @ params["head"]["w"] + params["head"]["b"]}


def deferred_apply(params, x, unroll=1):
    """station_lstm with every weight's tangent deferred: per step ``z = inp @ sg(w) + sink``;
    the rule adds ``w``'s tangent through the sinks, one ``[T*B, K] x [K, 4F]`` matmul per layer."""
    layers = params["lstm"]
    ws = [jnp.concatenate([p["w_x"], p["w_h"]]) for p in layers]  # [K_l, 4F]
    bs_ = [p["b"] for p in layers]
    xs = jnp.swapaxes(x, 0, 1)  # [T, B, Fin]
    B, T = x.shape[0], x.shape[1]
    Fs = [p["w_h"].shape[0] for p in layers]

    def scan_steps(ws, bs_, xs, sinks):
        def body(carry, inp):
            xt, s = inp
            new, inps = [], []
            h_in = xt
            for l, (w, b, (c, h)) in enumerate(zip(ws, bs_, carry)):
                a = jnp.concatenate([h_in, h], axis=-1)  # [B, K]
                z = a @ (w if s is None else lax.stop_gradient(w)) + b
                if s is not None:
                    z = z + s[l]
                zi, zf, zg, zo = jnp.split(z, 4, axis=-1)
                c = jax.nn.sigmoid(zf) * c + jax.nn.sigmoid(zi) * jnp.tanh(zg)
                h = jax.nn.sigmoid(zo) * jnp.tanh(c)
                new.append((c, h)); inps.append(a); h_in = h
            return new, (h_in, inps)
        carry = [(jnp.zeros((B, f), x.dtype), jnp.zeros((B, f), x.dtype)) for f in Fs]
        carry, (hs, inps) = lax.scan(body, carry, (xs, sinks), unroll=unroll)
        return hs[-1], inps

    @jax.custom_jvp
    def run(ws, bs_, xs):
        return scan_steps(ws, bs_, xs, None)[0]

    @run.defjvp
    def run_jvp(primals, tangents):
        ws, bs_, xs = primals
        t_ws, t_bs, t_xs = tangents
        sinks = [jnp.zeros((T, B, w.shape[1]), x.dtype) for w in ws]
        out, linear, inps = jax.linearize(scan_steps, ws, bs_, xs, sinks, has_aux=True)
        t_sinks = [jnp.einsum("tbk,kg->tbg", a, tw) for a, tw in zip(inps, t_ws)]
        return out, linear(t_ws, t_bs, t_xs, t_sinks)

    last = run(ws, bs_, xs)
    return {"value": last @ params["head"]["w"] + params["head"]["b"]}


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    inner = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((bs.B, bs.T, bs.F), dtype=np.float32))
    y = jnp.asarray(rng.standard_normal((bs.B, bs.NH), dtype=np.float32))
    model = models.station_lstm((bs.H, bs.H), bs.NH)
    params = model.init(jax.random.key(0), bs.F, bs.T)
    ref = model.apply(params, x)["value"]
    got = wavefront_apply(params, x)["value"]
    print("max |wavefront - station_lstm| =", float(jnp.max(jnp.abs(ref - got))))
    got = deferred_apply(params, x)["value"]
    print("max |deferred - station_lstm| =", float(jnp.max(jnp.abs(ref - got))))
    lf = lambda f: (lambda p: jnp.sum(jnp.sin(f(p, x)["value"])))
    g_ref, g_def = jax.grad(lf(model.apply))(params), jax.grad(lf(deferred_apply))(params)
    print("max grad diff deferred:", max(float(jnp.max(jnp.abs(a - b))) for a, b in
          zip(jax.tree_util.tree_leaves(g_ref), jax.tree_util.tree_leaves(g_def))))

    def wf(unroll, fn=wavefront_apply):
        loss = lambda p, x, y: jnp.mean((fn(p, x, unroll)["value"] - y) ** 2)
        grad = jax.jit(jax.value_and_grad(loss))
        return lambda: [jax.block_until_ready(grad(params, x, y)) for _ in range(inner)]

    contenders = {"ours": bs.ours(x, y, inner), "wavefront": wf(1), "deferred": wf(1, deferred_apply),
                  "deferred_u2": wf(2, deferred_apply),
                  "torch2": bs.torch_peer(x, y, inner, 2), "torch1": bs.torch_peer(x, y, inner, 1)}
    res = _common.time_rounds(contenders, runs, warmup=2, log=_common.log)
    ref_t = res["ours"]["median"]
    for n, r in res.items():
        print(f"{n:14s} {1e3 * r['median'] / inner:7.2f} ms/step ({1e3 * r['min'] / inner:.3g}-"
              f"{1e3 * r['max'] / inner:.3g}, n = {r['n']})  t / t(ours) = {r['median'] / ref_t:.3f}")


if __name__ == "__main__":
    main()
