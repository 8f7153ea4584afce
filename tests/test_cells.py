"""Cells against an independent numpy implementation of the paper's equations."""

import functools

import jax
import jax.test_util
import jax.numpy as jnp
import numpy as np
import pytest

from nowcast_jax import cells, conv
from tests import reference as ref


def _randomize(params, key):
    """Replace every parameter (biases, peepholes too) by random values so each term matters."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(tree, [0.3 * jax.random.normal(k, l.shape) for k, l in zip(keys, leaves)])


@pytest.mark.parametrize("peepholes", [True, False])
@pytest.mark.parametrize("kx,kh", [(3, 3), (5, 3), (1, 5)])
def test_conv_lstm_matches_numpy_equations(peepholes, kx, kh):
    cell = cells.conv_lstm(4, kx, kh, peepholes=peepholes)
    key = jax.random.PRNGKey(0)
    params = _randomize(cell.init(key, 3), jax.random.PRNGKey(1))
    assert ("w_ci" in params) == peepholes
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 6, 5, 3)).astype(np.float32)
    c = rng.normal(size=(2, 6, 5, 4)).astype(np.float32)
    h = rng.normal(size=(2, 6, 5, 4)).astype(np.float32)
    (c1, h1), out = cell.apply(params, cells.LSTMState(jnp.asarray(c), jnp.asarray(h)), jnp.asarray(x))
    c_ref, h_ref = ref.conv_lstm_step(params, c, h, x)
    np.testing.assert_allclose(c1, c_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(h1, h_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out, h1)


def test_conv_lstm_spatial_peepholes_match_numpy():
    cell = cells.conv_lstm(3, 3, 3, peephole_shape=(4, 4))
    params = _randomize(cell.init(jax.random.PRNGKey(0), 2), jax.random.PRNGKey(2))
    assert params["w_ci"].shape == (4, 4, 3)
    rng = np.random.default_rng(1)
    x, c, h = (rng.normal(size=s).astype(np.float32) for s in ((2, 4, 4, 2), (2, 4, 4, 3), (2, 4, 4, 3)))
    (c1, h1), _ = cell.apply(params, cells.LSTMState(c, h), x)
    c_ref, h_ref = ref.conv_lstm_step(params, c, h, x)
    np.testing.assert_allclose(h1, h_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("peepholes", [True, False])
def test_lstm_matches_numpy_equations(peepholes):
    cell = cells.lstm(5, peepholes=peepholes)
    params = _randomize(cell.init(jax.random.PRNGKey(0), 3), jax.random.PRNGKey(3))
    rng = np.random.default_rng(2)
    x, c, h = (rng.normal(size=s).astype(np.float32) for s in ((4, 3), (4, 5), (4, 5)))
    (c1, h1), _ = cell.apply(params, cells.LSTMState(c, h), x)
    c_ref, h_ref = ref.lstm_step(params, c, h, x)
    np.testing.assert_allclose(c1, c_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(h1, h_ref, rtol=1e-5, atol=1e-5)


def test_forget_bias_and_zero_carry():
    cell = cells.conv_lstm(3, 3, 3, forget_bias=2.5)
    params = cell.init(jax.random.PRNGKey(0), 1)
    np.testing.assert_array_equal(params["b"][3:6], 2.5)
    np.testing.assert_array_equal(params["b"][:3], 0.0)
    carry = cell.initial_carry(2, (4, 5))
    assert carry.c.shape == carry.h.shape == (2, 4, 5, 3)
    assert not np.any(np.asarray(carry.h))


def test_apply_is_a_scan_body():
    cell = cells.conv_lstm(2, 3, 3)
    params = cell.init(jax.random.PRNGKey(0), 1)
    xs = jax.random.normal(jax.random.PRNGKey(1), (4, 2, 5, 5, 1))  # time-major
    carry, hs = jax.lax.scan(functools.partial(cell.apply, params), cell.initial_carry(2, (5, 5)), xs)
    assert hs.shape == (4, 2, 5, 5, 2)
    np.testing.assert_array_equal(carry.h, hs[-1])


def test_bf16_compute_close_to_f32():
    f32 = cells.conv_lstm(8, 5, 5)
    bf16 = cells.conv_lstm(8, 5, 5, compute_dtype=jnp.bfloat16)
    params = f32.init(jax.random.PRNGKey(0), 4)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 4))
    carry = f32.initial_carry(2, (8, 8))
    for _ in range(3):
        carry_a, h_a = f32.apply(params, carry, x)
        carry_b, h_b = bf16.apply(params, carry, x)
        carry = carry_a
    assert h_b.dtype == jnp.float32  # state stays in the parameter dtype
    err = float(jnp.max(jnp.abs(h_a - h_b)))
    assert 0 < err < 3e-2, err


def test_conv_impls_agree_including_gradients():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 6, 3))
    w = jax.random.normal(jax.random.PRNGKey(1), (4, 4, 3, 5))
    loss = lambda impl: lambda x, w: jnp.sum(jnp.sin(conv.conv2d_same(x, w, impl=impl)))
    ref_y = conv.conv2d_same(x, w, impl="xla")  # XLA's conv with autodiff's VJP: the reference
    ref_g = jax.grad(loss("xla"), argnums=(0, 1))(x, w)
    for impl in ("im2col", "auto"):  # "auto" is the default path (hand-written VJP on CPU)
        np.testing.assert_allclose(conv.conv2d_same(x, w, impl=impl), ref_y, rtol=1e-5, atol=1e-5)
        for u, v in zip(jax.grad(loss(impl), argnums=(0, 1))(x, w), ref_g):
            np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-4)
    jax.test_util.check_grads(conv.conv2d_same, (x, w), order=1, modes=["rev"], atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("bad_x,match", [
    (np.zeros((2, 5, 5)), "rank 4"),
    (np.zeros((2, 5, 5, 2)), "channels"),
    (np.zeros((3, 5, 5, 1)), "carry.c"),
])
def test_conv_lstm_errors_name_the_problem(bad_x, match):
    cell = cells.conv_lstm(2, 3, 3)
    params = cell.init(jax.random.PRNGKey(0), 1)
    with pytest.raises(ValueError, match=match):
        cell.apply(params, cell.initial_carry(2, (5, 5)), jnp.asarray(bad_x, jnp.float32))


def test_lstm_errors_name_the_problem():
    cell = cells.lstm(4)
    params = cell.init(jax.random.PRNGKey(0), 3)
    carry = cell.initial_carry(2)
    with pytest.raises(ValueError, match="rank 2"):
        cell.apply(params, carry, jnp.zeros((2, 1, 3)))
    with pytest.raises(ValueError, match="features"):
        cell.apply(params, carry, jnp.zeros((2, 5)))
    with pytest.raises(ValueError, match="carry"):
        cell.apply(params, cell.initial_carry(3), jnp.zeros((2, 3)))


def test_cells_without_input_have_no_input_kernel():
    """The paper's forecaster reads no input: no zero-size w_x (checkpoint formats reject empty arrays)."""
    conv_cell = cells.conv_lstm(3, 3, 5)
    p = conv_cell.init(jax.random.PRNGKey(0), 0)
    assert "w_x" not in p
    carry = cells.LSTMState(jnp.ones((2, 4, 4, 3)), jnp.ones((2, 4, 4, 3)))
    (c1, h1), _ = conv_cell.apply(p, carry, jnp.zeros((2, 4, 4, 0)))
    c_ref, h_ref = ref.conv_lstm_step(dict(p, w_x=np.zeros((3, 3, 0, 12))), np.ones((2, 4, 4, 3)),
                                      np.ones((2, 4, 4, 3)), np.zeros((2, 4, 4, 0)))
    np.testing.assert_allclose(h1, h_ref, rtol=1e-5, atol=1e-5)
    dense = cells.lstm(4)
    p = dense.init(jax.random.PRNGKey(0), 0)
    assert "w_x" not in p
    _, h = dense.apply(p, dense.initial_carry(2), jnp.zeros((2, 0)))
    assert h.shape == (2, 4)
    with pytest.raises(ValueError, match="initialised for 0"):
        dense.apply(p, dense.initial_carry(2), jnp.zeros((2, 3)))


def _scan_grad_temp_bytes(cell, params, xs):
    """XLA's scratch for the gradient of a scanned cell over ``xs [T, B, H, W, C]``."""
    def loss(p):
        carry = cell.initial_carry(xs.shape[1], xs.shape[2:4])
        _, hs = jax.lax.scan(lambda c, x: cell.apply(p, c, x), carry, xs)
        return jnp.sum(hs ** 2)
    return jax.jit(jax.grad(loss)).lower(params).compile().memory_analysis().temp_size_in_bytes


def test_conv_gate_arithmetic_is_recomputed_not_stored(monkeypatch):
    """Differentiated, a ConvLSTM step keeps its pre-activations and cell state, not every gate
    intermediate: the same gradient in less scratch than with the plain gate arithmetic."""
    cell = cells.conv_lstm(16, 3, 3, conv_impl="direct")
    params = cell.init(jax.random.key(0), 4)
    xs = jax.random.normal(jax.random.key(1), (12, 2, 8, 8, 4))
    grad = jax.grad(lambda p: jnp.sum(jax.lax.scan(
        lambda c, x: cell.apply(p, c, x), cell.initial_carry(2, (8, 8)), xs)[1] ** 2))
    remat_temp, remat_grad = _scan_grad_temp_bytes(cell, params, xs), grad(params)
    monkeypatch.setattr(cells, "_conv_gate_update", cells._lstm_update)
    plain_temp, plain_grad = _scan_grad_temp_bytes(cell, params, xs), grad(params)
    assert remat_temp < 0.7 * plain_temp, (remat_temp, plain_temp)
    for name in plain_grad:
        np.testing.assert_allclose(remat_grad[name], plain_grad[name], rtol=1e-5, atol=1e-6)
