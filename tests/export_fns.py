"""Tiny raw-units forecasters for the export and serving tests (shared, not re-written)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from nowcast_jax import models


def tiny_precip_fn(frames, steps):
    """Encoder-forecaster with a log1p rain transform baked in: ``[b, J, H, W, 1]`` mm/h ->
    ``[b, steps, H, W, 1]`` mm/h (``frames = (J, H, W, 1)``)."""
    model = models.encoder_forecaster(1, patch_size=2, hidden=(4, 4), kernel_x=3, kernel_h=3)
    params = model.init(jax.random.key(0), frames[1:])

    def fn(rain):
        z = jnp.log1p(jnp.maximum(rain, 0.0)) / 2.0
        return jnp.maximum(jnp.expm1(model.apply(params, z, output_steps=steps) * 2.0), 0.0)

    return fn


def tiny_station_fn(lo=None, hi=None):
    """Station LSTM with a min-max scaler baked in: ``[b, T=6, F=5]`` raw -> ``[b, 3]`` miles."""
    model = models.station_lstm(hidden=(4, 4), horizons=3)
    params = model.init(jax.random.key(1), 5, 6)
    lo = jnp.arange(5.0) if lo is None else jnp.asarray(lo)
    hi = jnp.arange(5.0) * 3 + 10 if hi is None else jnp.asarray(hi)

    def fn(x):
        return model.apply(params, (x - lo) / (hi - lo))["value"] * 10.0

    return fn
