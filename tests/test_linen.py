"""The linen wrappers give the functional API's numbers for the same parameters."""

import jax
import jax.numpy as jnp
import numpy as np

from nowcast_jax import cells, models
from nowcast_jax import linen as nflax


def test_conv_lstm_module_equals_functional():
    mod = nflax.ConvLSTMCell(hidden_channels=3, kernel_x=3, kernel_h=5)
    carry = mod.initial_carry(2, (6, 6))
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 6, 2))
    variables = mod.init(jax.random.PRNGKey(1), carry, x)
    cell = cells.conv_lstm(3, 3, 5)
    params = cell.init(jax.random.PRNGKey(7), 2)  # functional params swapped into the module
    got = mod.apply({"params": {"cell": params}}, carry, x)
    want = cell.apply(params, carry, x)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(a, b)
    assert jax.tree.structure(variables["params"]["cell"]) == jax.tree.structure(params)


def test_lstm_module_equals_functional():
    mod = nflax.LSTMCell(hidden_size=4, options={"peepholes": True})
    carry = mod.initial_carry(3)
    x = jnp.ones((3, 5))
    variables = mod.init(jax.random.PRNGKey(0), carry, x)
    cell = cells.lstm(4, peepholes=True)
    got = mod.apply(variables, carry, x)
    want = cell.apply(variables["params"]["cell"], carry, x)
    np.testing.assert_array_equal(got[1], want[1])


def test_encoder_forecaster_module_equals_functional():
    opts = dict(patch_size=2, hidden=(3,), kernel_x=3, kernel_h=3)
    mod = nflax.EncoderForecaster(options=opts)
    x = jax.random.uniform(jax.random.PRNGKey(0), (2, 3, 8, 8, 1))
    variables = mod.init(jax.random.PRNGKey(1), x, 2)
    model = models.encoder_forecaster(**opts)
    np.testing.assert_array_equal(mod.apply(variables, x, 2),
                                  model.apply(variables["params"]["model"], x, output_steps=2))


def test_station_module_equals_functional():
    mod = nflax.StationLSTM(options=dict(hidden=(4,), horizons=3))
    x = jnp.ones((2, 6, 5))
    variables = mod.init(jax.random.PRNGKey(0), x)
    model = models.station_lstm((4,), 3)
    np.testing.assert_array_equal(mod.apply(variables, x)["value"],
                                  model.apply(variables["params"]["model"], x)["value"])
