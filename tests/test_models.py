"""Encoder-forecaster and station models: loops, causality, gradients, retracing, errors."""

import functools

import jax
import jax.numpy as jnp
import jax.extend.core
import jax.test_util
import numpy as np
import pytest

from nowcast_jax import cells, models, rollout

TINY = dict(frame_channels=1, patch_size=2, hidden=(3, 2), kernel_x=3, kernel_h=3)


def _inputs(b=2, j=3, k=4, hw=8, seed=0):
    key = jax.random.PRNGKey(seed)
    return jax.random.uniform(key, (b, j, hw, hw, 1)), jax.random.uniform(jax.random.fold_in(key, 1), (b, k, hw, hw, 1))


def _manual_forecast(model_kw, params, inputs, steps, truth=None, mask=None, feedback=lambda y: y):
    """Python-loop reference of the encoder-forecaster built from the cells directly."""
    p = model_kw["patch_size"]
    cell = lambda f: models._make_cells(model_kw.get("cell", "convlstm"), [f], kernel_x=3, kernel_h=3,
                                        peepholes=True, forget_bias=1.0, compute_dtype=None, conv_impl="auto")[0]
    cells_ = [cell(f) for f in model_kw["hidden"]]
    u = rollout.space_to_depth(inputs, p)
    states = rollout.stack_initial_carry(cells_, u.shape[0], u.shape[2:4])
    for t in range(u.shape[1]):
        x = u[:, t]
        for l, c in enumerate(cells_):
            states[l], x = c.apply(params["encoder"][l], states[l], x)
    prev, outs = u[:, -1], []
    for k in range(steps):
        if model_kw.get("forecaster_input", "zeros") == "zeros":
            x = jnp.zeros((*prev.shape[:-1], 0))
        else:
            use = k == 0 or (mask is not None and bool(mask[k]))
            x = (u[:, -1] if k == 0 else rollout.space_to_depth(truth, p)[:, k - 1]) if use else feedback(prev)
        hs = []
        for l, c in enumerate(cells_):
            states[l], x = c.apply(params["forecaster"][l], states[l], x)
            hs.append(x)
        prev = jnp.concatenate(hs, -1) @ params["head"]["w"] + params["head"]["b"]
        outs.append(prev)
    return rollout.depth_to_space(jnp.stack(outs, 1), p)


def test_unconditioned_forecast_equals_python_loop():
    model = models.encoder_forecaster(**TINY)
    params = model.init(jax.random.PRNGKey(0), (8, 8, 1))
    inputs, _ = _inputs()
    got = model.apply(params, inputs, output_steps=4)
    assert got.shape == (2, 4, 8, 8, 1)
    np.testing.assert_allclose(got, _manual_forecast(TINY, params, inputs, 4), rtol=1e-5, atol=1e-6)


def test_scheduled_sampling_equals_python_loop():
    kw = dict(TINY, forecaster_input="autoregressive", feedback="sigmoid")
    model = models.encoder_forecaster(**kw)
    params = model.init(jax.random.PRNGKey(0), (8, 8, 1))
    inputs, targets = _inputs()
    mask = jnp.array([0, 1, 0, 1])
    got = model.apply(params, inputs, output_steps=4, targets=targets, teacher_mask=mask)
    want = _manual_forecast(kw, params, inputs, 4, truth=targets, mask=mask, feedback=jax.nn.sigmoid)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # a per-example mask [B, K] that is the same for every example gives the same answer
    got_b = model.apply(params, inputs, output_steps=4, targets=targets, teacher_mask=jnp.tile(mask, (2, 1)))
    np.testing.assert_allclose(got_b, got, rtol=1e-6)
    # with no teacher forcing, the targets must not matter
    free = model.apply(params, inputs, output_steps=4, targets=targets, teacher_mask=jnp.zeros(4))
    np.testing.assert_allclose(free, model.apply(params, inputs, output_steps=4), rtol=1e-6)


def test_unconditioned_forecast_ignores_targets():
    model = models.encoder_forecaster(**TINY)
    params = model.init(jax.random.PRNGKey(0), (8, 8, 1))
    inputs, targets = _inputs()
    a = model.apply(params, inputs, output_steps=4, targets=targets)
    b = model.apply(params, inputs, output_steps=4, targets=targets + 100.0)
    np.testing.assert_array_equal(a, b)


def test_encoder_is_causal():
    model = models.encoder_forecaster(**TINY)
    params = model.init(jax.random.PRNGKey(0), (8, 8, 1))
    inputs, _ = _inputs(j=5)
    _, hs = model.encode(params, inputs)
    t = 3
    _, hs2 = model.encode(params, inputs.at[:, t].add(1.0))
    np.testing.assert_array_equal(hs[:, :t], hs2[:, :t])  # before t: untouched
    assert not np.allclose(hs[:, t], hs2[:, t])           # at t: it does see the change


def test_gradients_pass_check_grads():
    model = models.encoder_forecaster(**dict(TINY, hidden=(2,)))
    params = model.init(jax.random.PRNGKey(0), (4, 4, 1))
    inputs, targets = _inputs(b=1, j=2, k=2, hw=4)
    loss = lambda p: jnp.mean((model.apply(p, inputs, output_steps=2) - targets) ** 2)
    jax.test_util.check_grads(loss, (params,), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)


def test_remat_gives_same_gradients():
    inputs, targets = _inputs()
    grads = []
    for remat in (False, True):
        model = models.encoder_forecaster(**TINY, remat=remat)
        params = model.init(jax.random.PRNGKey(0), (8, 8, 1))
        loss = lambda p: jnp.mean((model.apply(p, inputs, output_steps=4) - targets) ** 2)
        grads.append(jax.grad(loss)(params))
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_repeated_calls_do_not_retrace():
    model = models.encoder_forecaster(**TINY)
    params = model.init(jax.random.PRNGKey(0), (8, 8, 1))
    traces = []

    @functools.partial(jax.jit, static_argnames="steps")
    def forecast(p, x, steps):
        traces.append(1)
        return model.apply(p, x, output_steps=steps)

    for seed in range(3):
        forecast(params, _inputs(seed=seed)[0], 4).block_until_ready()
    assert len(traces) == 1


def test_fc_lstm_variant_shapes_and_loop():
    kw = dict(TINY, cell="lstm")
    model = models.encoder_forecaster(**kw)
    params = model.init(jax.random.PRNGKey(0), (8, 8, 1))
    assert params["encoder"][0]["w_x"].shape == (4 * 4 * 4, 4 * 3)  # flattened 4x4x4 units
    inputs, _ = _inputs()
    out = model.apply(params, inputs, output_steps=2)
    assert out.shape == (2, 2, 8, 8, 1)


@pytest.mark.parametrize("bad,match", [
    (np.zeros((2, 3, 8, 8)), "rank 5"),
    (np.zeros((2, 3, 8, 8, 2)), "channels"),
    (np.zeros((2, 3, 9, 8, 1)), "divisible"),
])
def test_encoder_forecaster_errors_name_the_problem(bad, match):
    model = models.encoder_forecaster(**TINY)
    params = model.init(jax.random.PRNGKey(0), (8, 8, 1))
    with pytest.raises(ValueError, match=match):
        model.apply(params, jnp.asarray(bad, jnp.float32), output_steps=2)


def test_mismatched_targets_and_teacher_mask_errors():
    model = models.encoder_forecaster(**dict(TINY, forecaster_input="autoregressive"))
    params = model.init(jax.random.PRNGKey(0), (8, 8, 1))
    inputs, targets = _inputs()
    with pytest.raises(ValueError, match="do not match"):
        model.apply(params, inputs, output_steps=4, targets=targets[:1])
    with pytest.raises(ValueError, match="without targets"):
        model.apply(params, inputs, output_steps=4, teacher_mask=jnp.ones(4))
    with pytest.raises(ValueError, match="teacher_mask"):
        model.apply(params, inputs, output_steps=4, targets=targets, teacher_mask=jnp.ones(3))
    with pytest.raises(ValueError, match="forecaster_input"):
        models.encoder_forecaster(forecaster_input="teacher")


def test_station_lstm_equals_loop_and_mlp_equals_numpy():
    model = models.station_lstm((4, 3), horizons=3, aux_logits=True)
    params = model.init(jax.random.PRNGKey(0), 5)
    x = jax.random.normal(jax.random.PRNGKey(1), (6, 7, 5))
    out = model.apply(params, x)
    stack = [cells.lstm(4), cells.lstm(3)]
    states = rollout.stack_initial_carry(stack, 6)
    for t in range(7):
        h = x[:, t]
        for l, c in enumerate(stack):
            states[l], h = c.apply(params["lstm"][l], states[l], h)
    np.testing.assert_allclose(out["value"], h @ params["head"]["w"] + params["head"]["b"], rtol=1e-5, atol=1e-6)
    assert out["logits"].shape == (6, 3)

    mlp = models.mlp((8,), horizons=3)
    p = mlp.init(jax.random.PRNGKey(2), 5, 7)
    xn = np.asarray(x).reshape(6, -1)
    hidden = np.maximum(xn @ np.asarray(p["layers"][0]["w"]) + np.asarray(p["layers"][0]["b"]), 0)
    want = hidden @ np.asarray(p["head"]["w"]) + np.asarray(p["head"]["b"])
    np.testing.assert_allclose(mlp.apply(p, x)["value"], want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="rank 3"):
        model.apply(params, x[0])
    with pytest.raises(ValueError, match="built for"):
        mlp.apply(p, x[:, :3])


def _scan_unrolls(fn, *args) -> list:
    """The ``unroll`` of every scan in ``fn``'s jaxpr (nested ones included)."""
    found = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "scan":
                found.append(eqn.params["unroll"])
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


@pytest.mark.parametrize("steps", [7, models.FULL_UNROLL_STEPS + 1])
def test_station_lstm_default_unroll_is_full_up_to_the_limit_and_same_gradients(steps):
    default, looped = models.station_lstm((4, 3), horizons=2), models.station_lstm((4, 3), horizons=2, unroll=1)
    params = default.init(jax.random.PRNGKey(0), 5)
    x = jax.random.normal(jax.random.PRNGKey(1), (6, steps, 5))
    loss = lambda m: (lambda p: jnp.sum(jnp.sin(m.apply(p, x)["value"])))
    assert _scan_unrolls(loss(default), params) == [steps if steps <= models.FULL_UNROLL_STEPS else 1]
    assert _scan_unrolls(loss(looped), params) == [1]
    for a, b in zip(jax.tree_util.tree_leaves(jax.grad(loss(default))(params)),
                    jax.tree_util.tree_leaves(jax.grad(loss(looped))(params))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for bad in (0, -1, True, 2.5, "4"):
        with pytest.raises(ValueError, match="unroll must be None or a positive int"):
            models.station_lstm((4,), unroll=bad)


def test_bf16_model_close_to_f32():
    inputs, _ = _inputs()
    f32 = models.encoder_forecaster(**TINY)
    bf16 = models.encoder_forecaster(**TINY, compute_dtype=jnp.bfloat16)
    params = f32.init(jax.random.PRNGKey(0), (8, 8, 1))
    a = f32.apply(params, inputs, output_steps=4)
    b = bf16.apply(params, inputs, output_steps=4)
    assert b.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(a - b))) < 5e-2


def test_paper_hadamard_peepholes_through_the_model():
    model = models.encoder_forecaster(**TINY, peephole_shape=(4, 4))
    params = model.init(jax.random.PRNGKey(0), (8, 8, 1))
    assert params["encoder"][0]["w_ci"].shape == (4, 4, 3)
    inputs, _ = _inputs()
    assert model.apply(params, inputs, output_steps=2).shape == (2, 2, 8, 8, 1)


# ---- the extrapolation-conditioned forecaster ----------------------------------------------


def _extrapolation_loop(params, inputs, extrap, valid, patch):
    """Python-loop reference: encoder on the inputs, forecaster reads (extrapolation, validity) per
    step, output = extrapolation + 1x1 head over the concatenated forecaster states."""
    cell = lambda f: models._make_cells("convlstm", [f], kernel_x=3, kernel_h=3, peepholes=True, forget_bias=1.0,
                                        compute_dtype=None, conv_impl="auto")[0]
    cells_ = [cell(f) for f in TINY["hidden"]]
    u = rollout.space_to_depth(inputs, patch)
    states = rollout.stack_initial_carry(cells_, u.shape[0], u.shape[2:4])
    for t in range(u.shape[1]):
        x = u[:, t]
        for l, c in enumerate(cells_):
            states[l], x = c.apply(params["encoder"][l], states[l], x)
    guide = jnp.concatenate([rollout.space_to_depth(extrap, patch), rollout.space_to_depth(valid, patch)], -1)
    outs = []
    for k in range(extrap.shape[1]):
        x, hs = guide[:, k], []
        for l, c in enumerate(cells_):
            states[l], x = c.apply(params["forecaster"][l], states[l], x)
            hs.append(x)
        outs.append(jnp.concatenate(hs, -1) @ params["head"]["w"] + params["head"]["b"])
    return extrap + rollout.depth_to_space(jnp.stack(outs, 1), patch)


def test_untrained_extrapolation_forecaster_is_the_extrapolation():
    model = models.extrapolation_forecaster(**TINY)
    params = model.init(jax.random.PRNGKey(0), (8, 8, 1))
    inputs, extrap = _inputs()
    valid = jax.random.bernoulli(jax.random.PRNGKey(3), 0.8, extrap.shape)
    np.testing.assert_array_equal(model.apply(params, inputs, extrap, valid), extrap)


def test_extrapolation_forecaster_equals_python_loop_and_trains():
    model = models.extrapolation_forecaster(**TINY)
    params = model.init(jax.random.PRNGKey(0), (8, 8, 1))
    head = params["head"]
    params["head"] = {"w": jax.random.normal(jax.random.PRNGKey(5), head["w"].shape), "b": head["b"] + 0.1}
    inputs, extrap = _inputs()
    valid = jax.random.bernoulli(jax.random.PRNGKey(3), 0.8, extrap.shape).astype(jnp.float32)
    got = jax.jit(model.apply)(params, inputs, extrap, valid)
    np.testing.assert_allclose(got, _extrapolation_loop(params, inputs, extrap, valid, 2), rtol=1e-5, atol=1e-5)
    # from the zero head, the first gradient reaches the head (the only way out of zero)
    zero = model.init(jax.random.PRNGKey(0), (8, 8, 1))
    grads = jax.grad(lambda p: jnp.mean((model.apply(p, inputs, extrap, valid) - 0.5) ** 2))(zero)
    assert float(jnp.abs(grads["head"]["w"]).max()) > 0


def test_extrapolation_forecaster_errors_name_the_problem():
    model = models.extrapolation_forecaster(**TINY)
    params = model.init(jax.random.PRNGKey(0), (8, 8, 1))
    inputs, extrap = _inputs()
    with pytest.raises(ValueError, match="extrapolation .* does not match inputs"):
        model.apply(params, inputs, extrap[:1])
    with pytest.raises(ValueError, match="extrapolation must be"):
        model.apply(params, inputs, extrap[..., 0])
