"""The NNX wrappers give the functional API's numbers, gradients and optimizer steps."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from nowcast_jax import cells, models
from nowcast_jax import nnx as nnx_modules

CELL_KW = dict(hidden_channels=4, kernel_x=3, kernel_h=3)
EF_KW = dict(frame_channels=1, patch_size=2, hidden=(4,), kernel_x=3, kernel_h=3)
STATION_KW = dict(hidden=(4, 4), horizons=3, aux_logits=True)


def _assert_trees_equal(got, want, rtol=0.0, atol=0.0):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


def _as_pytree(module, state):
    """An ``nnx.State`` of Params (e.g. ``nnx.grad``'s) in the functional pytree's structure."""
    return nnx.merge(nnx.graphdef(module), state).pure_params()


def _check_grad_and_adam(module, params, module_loss, functional_loss, steps=3):
    """``nnx.Optimizer`` + ``nnx.jit`` steps equal an optax run on the pytree; the first step's
    ``nnx.grad`` equals ``jax.grad`` of the functional loss (one compile per side)."""
    optimizer = nnx.Optimizer(module, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def nnx_step(module, optimizer):
        loss, grads = nnx.value_and_grad(module_loss)(module)
        optimizer.update(module, grads)
        return loss, grads

    tx = optax.adam(1e-2)

    @jax.jit
    def step(p, opt_state):
        loss, grads = jax.value_and_grad(functional_loss)(p)
        updates, opt_state = tx.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, loss, grads

    p, opt_state = params, tx.init(params)
    nnx_losses, losses = [], []
    for i in range(steps):
        loss, nnx_grads = nnx_step(module, optimizer)
        p, opt_state, ref_loss, grads = step(p, opt_state)
        if i == 0:
            _assert_trees_equal(_as_pytree(module, nnx_grads), grads, rtol=1e-6, atol=1e-7)
        nnx_losses.append(float(loss))
        losses.append(float(ref_loss))
    np.testing.assert_allclose(nnx_losses, losses, rtol=1e-5)
    assert nnx_losses[-1] < nnx_losses[0]
    assert int(optimizer.step[...]) == steps
    _assert_trees_equal(module.pure_params(), p, rtol=1e-5, atol=1e-6)
    with pytest.raises(AssertionError):  # training moved the module's parameters, not the pytree it came from
        _assert_trees_equal(module.pure_params(), params)


def test_conv_lstm_cell_equals_functional():
    cell = cells.conv_lstm(**CELL_KW)
    params = cell.init(jax.random.key(7), 2)
    mod = nnx_modules.ConvLSTMCell.from_params(params, **CELL_KW)
    _assert_trees_equal(mod.pure_params(), params)
    carry = mod.initial_carry(2, (8, 8))
    _assert_trees_equal(carry, cell.initial_carry(2, (8, 8)))
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 2))
    _assert_trees_equal(mod(carry, x), cell.apply(params, carry, x))

    fresh = nnx_modules.ConvLSTMCell(2, rngs=nnx.Rngs(0), **CELL_KW)  # initialised by cell.init
    assert jax.tree.map(jnp.shape, fresh.pure_params()) == jax.tree.map(jnp.shape, params)
    assert len(jax.tree.leaves(nnx.state(fresh, nnx.Param))) == len(params)

    def module_loss(m):
        return jnp.mean(m(carry, x)[1] ** 2)

    def functional_loss(p):
        return jnp.mean(cell.apply(p, carry, x)[1] ** 2)

    _check_grad_and_adam(mod, params, module_loss, functional_loss)


def test_encoder_forecaster_equals_functional():
    model = models.encoder_forecaster(**EF_KW)
    params = model.init(jax.random.key(1), (8, 8, 1))
    frames = jax.random.uniform(jax.random.key(0), (2, 4, 8, 8, 1))
    inputs, targets = frames[:, :2], frames[:, 2:]
    mod = nnx_modules.EncoderForecaster.from_params(params, **EF_KW)
    np.testing.assert_array_equal(mod(inputs, output_steps=2), model.apply(params, inputs, output_steps=2))

    # split/merge round trip keeps the functional structure and the numbers
    graphdef, state = nnx.split(mod)
    _assert_trees_equal(nnx.merge(graphdef, state).pure_params(), params)
    fresh = nnx_modules.EncoderForecaster((8, 8, 1), rngs=nnx.Rngs(0), **EF_KW)
    assert jax.tree.structure(fresh.pure_params()) == jax.tree.structure(params)

    def module_loss(m):
        return jnp.mean((m(inputs, output_steps=2) - targets) ** 2)

    def functional_loss(p):
        return jnp.mean((model.apply(p, inputs, output_steps=2) - targets) ** 2)

    _check_grad_and_adam(mod, params, module_loss, functional_loss)


def test_encoder_forecaster_teacher_forcing_passes_through():
    kw = dict(EF_KW, forecaster_input="autoregressive")
    model = models.encoder_forecaster(**kw)
    mod = nnx_modules.EncoderForecaster((8, 8, 1), rngs=nnx.Rngs(3), **kw)
    frames = jax.random.uniform(jax.random.key(0), (2, 5, 8, 8, 1))
    inputs, targets, mask = frames[:, :2], frames[:, 2:], jnp.array([1, 1, 0])
    np.testing.assert_array_equal(mod(inputs, 3, targets, mask),
                                  model.apply(mod.pure_params(), inputs, 3, targets=targets, teacher_mask=mask))


def test_station_lstm_equals_functional():
    model = models.station_lstm(**STATION_KW)
    params = model.init(jax.random.key(2), 5)
    x = jax.random.normal(jax.random.key(0), (3, 6, 5))
    y = jax.random.normal(jax.random.key(1), (3, 3))
    mod = nnx_modules.StationLSTM.from_params(params, **STATION_KW)
    _assert_trees_equal(mod(x), model.apply(params, x))
    fresh = nnx_modules.StationLSTM(5, rngs=nnx.Rngs(0), **STATION_KW)
    assert set(fresh(x)) == {"value", "logits"}

    def module_loss(m):
        return jnp.mean((m(x)["value"] - y) ** 2)

    def functional_loss(p):
        return jnp.mean((model.apply(p, x)["value"] - y) ** 2)

    _check_grad_and_adam(mod, params, module_loss, functional_loss)


def test_needs_rngs_or_params():
    with pytest.raises(TypeError, match="rngs"):
        nnx_modules.StationLSTM(5, hidden=(4,))
