"""Scanned stacks against Python loops; patching; retracing; gradients."""

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest

from nowcast_jax import cells, rollout


def _stack(spatial=True):
    if spatial:
        return [cells.conv_lstm(3, 3, 3), cells.conv_lstm(2, 3, 1)]
    return [cells.lstm(4), cells.lstm(3, peepholes=True)]


@pytest.mark.parametrize("spatial", [True, False])
@pytest.mark.parametrize("remat,unroll", [(False, 1), (True, 2)])
def test_stack_scan_equals_python_loop(spatial, remat, unroll):
    stack = _stack(spatial)
    shape = (2, 5, 6, 6, 2) if spatial else (2, 5, 2)
    xs = jax.random.normal(jax.random.PRNGKey(0), shape)
    params = rollout.stack_init(jax.random.PRNGKey(1), stack, 2)
    carry0 = rollout.stack_initial_carry(stack, 2, (6, 6) if spatial else ())
    final, hs = rollout.stack_scan(stack, params, carry0, xs, remat=remat, unroll=unroll)
    # the loop, layer by layer, time step by time step, through the cells' own apply
    states = list(carry0)
    tops = []
    for t in range(xs.shape[1]):
        x = xs[:, t]
        for layer, cell in enumerate(stack):
            states[layer], x = cell.apply(params[layer], states[layer], x)
        tops.append(x)
    np.testing.assert_allclose(hs, jnp.stack(tops, axis=1), rtol=1e-5, atol=1e-6)
    for got, want in zip(final, states):
        np.testing.assert_allclose(got.c, want.c, rtol=1e-5, atol=1e-6)


def test_space_to_depth_layout_and_inverse():
    x = jnp.arange(2 * 8 * 8 * 1, dtype=jnp.float32).reshape(2, 8, 8, 1)
    u = rollout.space_to_depth(x, 4)
    assert u.shape == (2, 2, 2, 16)
    # unit (0, 1) of image 0 holds rows 0..3, cols 4..7 in row-major order
    np.testing.assert_array_equal(u[0, 0, 1], np.asarray(x[0, 0:4, 4:8, 0]).reshape(-1))
    np.testing.assert_array_equal(rollout.depth_to_space(u, 4), x)
    seq = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 64, 64, 1))
    patched = rollout.space_to_depth(seq, 4)
    assert patched.shape == (2, 3, 16, 16, 16)
    np.testing.assert_array_equal(rollout.depth_to_space(patched, 4), seq)
    with pytest.raises(ValueError, match="divisible"):
        rollout.space_to_depth(jnp.zeros((1, 6, 8, 1)), 4)


def test_stack_scan_rejects_bad_rank_and_mismatch():
    stack = _stack(False)
    params = rollout.stack_init(jax.random.PRNGKey(1), stack, 2)
    with pytest.raises(ValueError, match=r"\[B, T"):
        rollout.stack_scan(stack, params, rollout.stack_initial_carry(stack, 2), jnp.zeros((2, 2)))
    with pytest.raises(ValueError, match="2 cells but 1 parameter"):
        rollout.stack_step(stack, params[:1], rollout.stack_initial_carry(stack, 2), jnp.zeros((2, 2)))
