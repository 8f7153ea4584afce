"""Every JAX transformation of the core, for every conv_impl, against conv_impl="xla" (autodiff of lax.conv).

Random cotangents and tangents; first order (vjp, jvp), second order (a gradient penalty:
reverse over reverse; a Hessian-vector product: forward over reverse; forward over forward),
vmap of grad over a parameter ensemble, at conv, cell, stack and model level, both
forecaster modes, plus remat/unroll, jit/checkpoint inside a user's scan body, bf16 compute
and a multi-platform export that keeps the vendor convolution for CUDA.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from nowcast_jax import cells, models, rollout
from nowcast_jax import _spectral as spectral
from nowcast_jax.conv import conv2d_same

IMPLS = ("auto", "direct", "spectral", "im2col")


def _rand(key, shape, scale=1.0):
    return scale * jax.random.normal(jax.random.PRNGKey(key), shape)


def _like(tree, key, scale=1.0):
    """A random pytree shaped like ``tree`` (cotangents, tangents, ensemble offsets)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = jax.random.split(jax.random.PRNGKey(key), len(leaves))
    return treedef.unflatten([scale * jax.random.normal(k, jnp.shape(a), jnp.result_type(a)) for k, a in zip(keys, leaves)])


def _close(got, want, rtol=2e-4, what=""):
    """Leafwise: |got - want| <= rtol * max|want| (+ a tiny floor), with the same tree structure."""
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want), what
    paths = jax.tree_util.tree_leaves_with_path(want)
    for (path, ref), g in zip(paths, jax.tree_util.tree_leaves(got)):
        ref, g = np.asarray(ref, np.float64), np.asarray(g, np.float64)
        scale = float(np.abs(ref).max())
        np.testing.assert_allclose(g, ref, rtol=0, atol=rtol * scale + 1e-30,
                                   err_msg=f"{what} {jax.tree_util.keystr(path)} (max |ref| {scale:.3g})")


def _jitted(transform, fn):
    """``transform(fn)`` under jit (the impl side runs compiled, the reference eagerly)."""
    return jax.jit(lambda: transform(fn))()


_REFERENCE: dict = {}  # reference results per test configuration, shared by the impl parametrisations


def _check_all(f, args, impl_f, ref_key, key=0):
    """Compare ``impl_f`` with the reference ``f`` (both ``args -> pytree``) under vjp, jvp, a gradient
    penalty on the first argument (reverse over reverse) and a Hessian-vector product (forward
    over reverse), with random cotangents and tangents. ``ref_key`` names the configuration,
    so that the reference runs once per configuration, not once per impl."""
    out = jax.eval_shape(f, *args)
    ct, tangents = _like(out, key + 1), _like(args, key + 2, 0.1)
    rest = args[1:]
    sq = lambda tree: sum(jnp.sum(leaf ** 2) for leaf in jax.tree_util.tree_leaves(tree))
    dot = lambda a, b: sum(jnp.vdot(u, v) for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))
    transforms = {
        "vjp": lambda g: jax.vjp(g, *args)[1](ct),
        "jvp": lambda g: jax.jvp(g, args, tangents)[1],
        "gradient penalty": lambda g: jax.grad(lambda a: sq(jax.vjp(g, a, *rest)[1](ct)[1]))(args[0]),
        "hvp": lambda g: jax.jvp(jax.grad(lambda a: dot(g(a, *rest), ct)), (args[0],), (tangents[0],))[1],
    }
    if ref_key not in _REFERENCE:
        _REFERENCE[ref_key] = _jitted(lambda g: {n: t(g) for n, t in transforms.items()}, f)
    got = _jitted(lambda g: {n: t(g) for n, t in transforms.items()}, impl_f)
    for name in transforms:
        _close(got[name], _REFERENCE[ref_key][name], what=name)


# --------------------------------------------------------------------------- conv level


@pytest.mark.parametrize("impl", IMPLS)
def test_conv2d_same_all_transformations_match_lax(impl):
    w, x = _rand(0, (5, 5, 3, 4), 0.3), _rand(1, (2, 6, 7, 3))
    ref = lambda w, x: jnp.tanh(conv2d_same(x, w, impl="xla"))
    got = lambda w, x: jnp.tanh(conv2d_same(x, w, impl=impl))
    _check_all(ref, (w, x), got, "conv")
    # forward over forward, and vmap of grad over an ensemble of kernels
    ffwd = lambda g: jax.jacfwd(lambda w: jax.jacfwd(lambda v: g(v, x).sum())(w).sum())(w)
    _close(ffwd(got), ffwd(ref), what="jacfwd(jacfwd)")
    ensemble = jnp.stack([w, 0.5 * w, -w])
    ens = lambda g: jax.vmap(jax.grad(lambda w: jnp.sum(g(w, x) ** 2)))(ensemble)
    _close(_jitted(ens, got), ens(ref), what="vmap(grad)")


def test_the_issue_case_bare_spectral_conv_gradient_penalty():
    """grad_w ||d<y, r>/dx||^2 through conv2d_same(impl="spectral"): was off by 85 in 426."""
    w, x, r = _rand(0, (5, 5, 4, 6)), _rand(1, (3, 8, 8, 4)), _rand(2, (3, 8, 8, 6))
    penalty = lambda impl: jax.grad(lambda w: jnp.sum(jax.grad(lambda x: jnp.sum(conv2d_same(x, w, impl=impl) * r))(x) ** 2))
    _close(penalty("spectral")(w), penalty("xla")(w), what="spectral gradient penalty")


# --------------------------------------------------------------------------- cell level


def _cell(impl, **kw):
    return cells.conv_lstm(4, 3, 5, conv_impl=impl, **kw)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("prepared", [False, True])
def test_conv_lstm_cell_all_transformations_match_lax(impl, prepared):
    cell, ref_cell = _cell(impl), _cell("xla")
    params = cell.init(jax.random.PRNGKey(0), 2)
    carry = cells.LSTMState(_rand(1, (2, 5, 6, 4), 0.3), _rand(2, (2, 5, 6, 4), 0.3))
    x = _rand(3, (2, 5, 6, 2))
    prep = (lambda p: cell.prepare(p, (5, 6))) if prepared else (lambda p: p)
    got = lambda p, c, x: cell.apply(prep(p), c, x)
    ref = lambda p, c, x: ref_cell.apply(p, c, x)
    _check_all(ref, (params, carry, x), got, "cell")


def _lstm_by_hand(p, c, x):
    """The LSTM equations written out (peepholes where the parameters have them)."""
    z = x @ p["w_x"] + c.h @ p["w_h"] + p["b"]
    zi, zf, zg, zo = jnp.split(z, 4, axis=-1)
    peep = lambda name, state: p[name] * state if name in p else 0.0
    c_new = jax.nn.sigmoid(zf + peep("w_cf", c.c)) * c.c + jax.nn.sigmoid(zi + peep("w_ci", c.c)) * jnp.tanh(zg)
    return cells.LSTMState(c_new, jax.nn.sigmoid(zo + peep("w_co", c_new)) * jnp.tanh(c_new))


def test_dense_lstm_cell_all_transformations_match_a_numpy_free_reference():
    """The dense cell has one path; check it against its own equations written out."""
    cell = cells.lstm(5, peepholes=True)
    params = cell.init(jax.random.PRNGKey(0), 3)
    carry, x = cells.LSTMState(_rand(1, (2, 5)), _rand(2, (2, 5))), _rand(3, (2, 3))
    by_hand = _lstm_by_hand
    _check_all(by_hand, (params, carry, x), lambda p, c, x: cell.apply(p, c, x)[0], "dense cell")


# --------------------------------------------------------------------------- stack level


def _stack(impl):
    return [cells.conv_lstm(4, 3, 3, conv_impl=impl), cells.conv_lstm(3, 5, 5, conv_impl=impl, peephole_shape=(4, 4))]


# direct and im2col hold no state across steps: the cell-level test covers them under every transformation;
# the stack level is where the spectral path's prepared spectrum crosses the scan. auto = spectral on CPU inside
# lax.platform_dependent (3-4x the compile time): it is checked once per level, the remat / unroll variants on
# the spectral path they resolve to.
@pytest.mark.parametrize("impl,remat,unroll", [("auto", False, 1), ("spectral", False, 1), ("spectral", False, 2),
                                               ("spectral", True, 1)])
def test_stack_scan_all_transformations_match_lax(impl, remat, unroll):
    stack, ref_stack = _stack(impl), _stack("xla")
    params = rollout.stack_init(jax.random.PRNGKey(0), stack, 2)
    carry = [cells.LSTMState(_rand(10 + i, (2, 4, 4, c.hidden), 0.3), _rand(20 + i, (2, 4, 4, c.hidden), 0.3))
             for i, c in enumerate(stack)]
    xs = _rand(3, (2, 3, 4, 4, 2))

    def run(cells_, p, c, x):
        final, hs = rollout.stack_scan(cells_, p, c, x, remat=remat, unroll=unroll)
        return hs, final[0].c

    _check_all(functools.partial(run, ref_stack), (params, carry, xs), functools.partial(run, stack),
               ("stack", remat, unroll))


# --------------------------------------------------------------------------- model level


def _model(impl, mode, **kw):
    return models.encoder_forecaster(1, 2, (4,), kernel_x=5, kernel_h=3, conv_impl=impl, forecaster_input=mode, **kw)


# direct: at the cell level (no state across steps); auto once (the default, zeros), as at the stack level
@pytest.mark.parametrize("impl, mode", [("auto", "zeros"), ("spectral", "zeros"), ("spectral", "autoregressive")])
def test_encoder_forecaster_all_transformations_match_lax(impl, mode):
    model, ref = _model(impl, mode), _model("xla", mode)
    params = model.init(jax.random.PRNGKey(0), (8, 8, 1))
    x, y = jax.random.uniform(jax.random.PRNGKey(1), (2, 2, 8, 8, 1)), jax.random.uniform(jax.random.PRNGKey(2),
                                                                                       (2, 3, 8, 8, 1))
    teach = dict(targets=y, teacher_mask=jnp.array([1, 0, 1])) if mode == "autoregressive" else {}
    apply = lambda m: (lambda p, x: m.apply(p, x, 3, **teach))
    _check_all(apply(ref), (params, x), apply(model), ("model", mode))
    ensemble = jax.tree.map(lambda a, d: jnp.stack([a, a + d]), params, _like(params, 7, 0.05))
    loss = lambda m: (lambda p: jnp.mean((apply(m)(p, x) - y) ** 2))
    ens = lambda m: jax.vmap(jax.grad(loss(m)))(ensemble)
    if ("model ensemble", mode) not in _REFERENCE:
        _REFERENCE[("model ensemble", mode)] = _jitted(ens, ref)
    _close(_jitted(ens, model), _REFERENCE[("model ensemble", mode)], what="vmap(grad) over an ensemble")


def test_the_issue_case_gradient_penalty_with_default_settings():
    """grad_params ||dL/dx||^2 through encoder_forecaster with the defaults: was exactly 0 for the encoder's w_h."""
    default = models.encoder_forecaster(1, 2, (4, 3), kernel_x=5, kernel_h=3)
    ref = models.encoder_forecaster(1, 2, (4, 3), kernel_x=5, kernel_h=3, conv_impl="xla")
    params = default.init(jax.random.PRNGKey(0), (8, 8, 1))
    x, y = jax.random.uniform(jax.random.PRNGKey(1), (2, 3, 8, 8, 1)), jax.random.uniform(jax.random.PRNGKey(2),
                                                                                       (2, 4, 8, 8, 1))
    def penalty(m):
        loss = lambda p, x: jnp.mean((m.apply(p, x, 4) - y) ** 2)
        return jax.grad(lambda p: jnp.sum(jax.grad(loss, argnums=1)(p, x) ** 2))(params)

    got, want = jax.jit(lambda: penalty(default))(), penalty(ref)
    assert float(jnp.abs(want["encoder"][0]["w_h"]).max()) > 0
    _close(got, want, what="gradient penalty")


@pytest.mark.parametrize("remat,unroll", [(False, 1), (True, 2), (False, None), (True, None)])
def test_station_lstm_all_transformations_match_a_python_loop(remat, unroll):
    model = models.station_lstm((6, 5), horizons=3, remat=remat, unroll=unroll)
    params = model.init(jax.random.PRNGKey(0), 4)
    x = _rand(1, (3, 7, 4))

    def by_hand(p, x):
        states = [cells.LSTMState(jnp.zeros((3, n)), jnp.zeros((3, n))) for n in (6, 5)]
        for t in range(x.shape[1]):
            h = x[:, t]
            for layer, lp in enumerate(p["lstm"]):
                states[layer] = _lstm_by_hand(lp, states[layer], h)
                h = states[layer].h
        return h @ p["head"]["w"] + p["head"]["b"]

    _check_all(by_hand, (params, x), lambda p, x: model.apply(p, x)["value"], ("station", remat, unroll))


# --------------------------------------------------------------------------- user scan bodies, bf16, export


@pytest.mark.parametrize("wrap", ["jit", "checkpoint"])
@pytest.mark.parametrize("impl", ("auto", "spectral", "direct"))
def test_prepared_cell_inside_a_users_jit_or_checkpoint_scan_body(wrap, impl):
    cell, ref_cell = _cell(impl), _cell("xla")
    params = cell.init(jax.random.PRNGKey(0), 2)
    xs, carry = _rand(1, (3, 2, 5, 6, 2)), cell.initial_carry(2, (5, 6))
    wrapper = jax.jit if wrap == "jit" else jax.checkpoint

    def run(c, p, xs):
        apply = wrapper(c.apply)
        prepared = c.prepare(p, (5, 6))
        return jax.lax.scan(lambda carry, x: apply(prepared, carry, x), carry, xs)[1]

    _check_all(functools.partial(run, ref_cell), (params, xs), functools.partial(run, cell), ("user scan", wrap))


def test_prepared_scan_accepts_any_carry():
    """The batch size is no longer read from the first carry leaf (a scalar used to raise IndexError)."""
    stack = _stack("spectral")
    params = rollout.stack_init(jax.random.PRNGKey(0), stack, 2)
    xs = rollout.time_major(_rand(3, (2, 3, 4, 4, 2)))

    def step(p, carry, x, sinks):
        count, states = carry
        states, outs, xbs = rollout.stack_step_sinks(stack, p, states, x, sinks)
        return (count + 1.0, states), outs[-1], xbs

    def run(p):
        carry = (jnp.float32(0.0), rollout.stack_initial_carry(stack, 2, (4, 4)))
        prepare = lambda p: rollout.stack_prepare(stack, p, (4, 4))
        (count, _), hs = rollout.prepared_scan(step, p, prepare, carry, xs)
        return count, jnp.sum(jnp.sin(hs))

    count, value = run(params)
    assert float(count) == 3.0
    plain = lambda p: jnp.sum(jnp.sin(rollout.stack_scan(_stack("xla"), p, rollout.stack_initial_carry(
        stack, 2, (4, 4)), rollout.batch_major(xs))[1]))
    np.testing.assert_allclose(value, plain(params), rtol=1e-5)
    _close(jax.grad(lambda p: run(p)[1])(params), jax.grad(plain)(params), what="grad")


@pytest.mark.parametrize("impl", ("auto", "direct", "spectral"))
def test_bf16_compute_gradients_track_the_float32_reference(impl):
    model = models.encoder_forecaster(1, 2, (4,), kernel_x=3, kernel_h=3, conv_impl=impl, compute_dtype=jnp.bfloat16)
    ref = models.encoder_forecaster(1, 2, (4,), kernel_x=3, kernel_h=3, conv_impl="xla")
    params = ref.init(jax.random.PRNGKey(0), (8, 8, 1))
    x, y = jax.random.uniform(jax.random.PRNGKey(1), (2, 2, 8, 8, 1)), jax.random.uniform(jax.random.PRNGKey(2),
                                                                                       (2, 2, 8, 8, 1))
    loss = lambda m: (lambda p: jnp.mean((m.apply(p, x, 2) - y) ** 2))
    got, want = jax.jit(jax.grad(loss(model)))(params), jax.grad(loss(ref))(params)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(got))
    _close(got, want, rtol=5e-2, what="bf16 grad")


def test_multi_platform_export_keeps_the_vendor_convolution_for_cuda():
    model = models.encoder_forecaster(1, 2, (4,), kernel_x=5, kernel_h=5)  # defaults: conv_impl="auto"
    params = model.init(jax.random.PRNGKey(0), (8, 8, 1))
    x = jax.ShapeDtypeStruct((2, 2, 8, 8, 1), jnp.float32)
    fn = jax.jit(lambda p, x: model.apply(p, x, 2))
    cpu_only = export.export(fn, platforms=("cpu",))(params, x).mlir_module()
    both = export.export(fn, platforms=("cpu", "cuda"))(params, x).mlir_module()
    assert "stablehlo.convolution" not in cpu_only  # on CPU these 4x4 grids run spectrally
    assert "stablehlo.convolution" in both  # ... and the CUDA lowering keeps cuDNN's convolution


def test_derivatives_with_respect_to_a_prepared_spectrum():
    """A user who prepares once and differentiates w.r.t. the prepared parameters (spectrum
    included): the deferred scan must match the same scan without deferral (remat=True runs
    the prepared cells step by step), first and second order."""
    stack = _stack("spectral")
    prepared = rollout.stack_prepare(stack, rollout.stack_init(jax.random.PRNGKey(0), stack, 2), (4, 4))
    carry = rollout.stack_initial_carry(stack, 2, (4, 4))
    xs, r = _rand(3, (2, 3, 4, 4, 2)), _rand(4, (2, 3, 4, 4, 3))
    out = lambda remat: (lambda p, xs: jnp.sum(rollout.stack_scan(stack, p, carry, xs, remat=remat)[1] * r))
    grad = lambda remat: jax.jit(jax.grad(out(remat)))(prepared, xs)
    _close(grad(False), grad(True), what="grad w.r.t. prepared params")
    penalty = lambda remat: jax.jit(jax.grad(lambda p: jnp.sum(jax.grad(out(remat), argnums=1)(p, xs) ** 2)))(prepared)
    _close(penalty(False), penalty(True), what="gradient penalty w.r.t. prepared params")


def test_a_spectrum_used_outside_its_sinked_product_is_still_differentiated():
    spec = spectral.kernel_spectrum(_rand(0, (3, 3, 2, 2)), 4, 4)
    xs = _rand(1, (3, 1, 4, 4, 2))

    def step(p, c, x, sinked):  # one sinked product plus a second, ordinary use of the same spectrum
        y, xb = spectral.conv_parts(x + c, p["s"], sinked[0])
        return c + y, y + spectral.spectral_conv2d(x, p["s"]), [xb]

    deferred = lambda s: jnp.sum(jnp.sin(rollout.prepared_scan(step, {"s": s}, lambda p: p, jnp.zeros((1, 4, 4, 2)),
                                                               xs)[1]))
    plain = lambda s: jnp.sum(jnp.sin(jax.lax.scan(lambda c, x: step({"s": s}, c, x, [None])[:2],
                                                   jnp.zeros((1, 4, 4, 2)), xs)[1]))
    _close(jax.grad(deferred)(spec), jax.grad(plain)(spec), what="grad")
    _close(jax.jvp(deferred, (spec,), (spec,))[1], jax.jvp(plain, (spec,), (spec,))[1], what="jvp")


def test_a_step_closing_over_a_differentiated_array_is_refused_clearly():
    spec = spectral.kernel_spectrum(_rand(0, (3, 3, 2, 2)), 4, 4)
    xs = _rand(1, (3, 1, 4, 4, 2))

    def f(scale):
        def step(p, c, x, sinked):
            y, xb = spectral.conv_parts(x * scale + c, p["s"], sinked[0])
            return c + y, y, [xb]
        return jnp.sum(rollout.prepared_scan(step, {"s": spec}, lambda p: p, jnp.zeros((1, 4, 4, 2)), xs)[1])

    with pytest.raises(ValueError, match="closes over an array that is being transformed"):
        jax.grad(f)(2.0)
