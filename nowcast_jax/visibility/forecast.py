"""The model's forecast of scaled windows: the evaluators' and members' one prediction path.

:func:`forecast_windows` runs a (jitted) station model over windows already turned into
model inputs by the contract (``StationWindows.x``) and maps its value head to metres with
the contract's output stage (:meth:`~nowcast_jax.visibility.preprocess.StationContract.to_metres`),
the same function the loss and the exported forecaster use. It needs the model's ``apply``
and the contract, never the task.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from nowcast_jax.visibility.preprocess import StationContract


def forecast_windows(apply, contract: StationContract, params, x: np.ndarray, batch_size: int = 4096) -> dict:
    """Scaled ``x [N, T, F]`` -> ``{"value": [N, H] metres in [0, cap], "prob": [N, H]
    below-threshold probability or None}``. ``apply(params, x)``: the model's (jitted) apply,
    e.g. ``task.apply_jit``."""
    vals, probs = [], []
    for i in range(0, len(x), batch_size):
        out = jax.device_get(apply(params, jnp.asarray(x[i:i + batch_size])))
        vals.append(np.asarray(out["value"], np.float64))
        if "logits" in out:
            probs.append(1.0 / (1.0 + np.exp(-np.asarray(out["logits"], np.float64))))
    value = np.concatenate(vals) if vals else np.zeros((0, len(contract.horizons_hours)))
    return {"value": contract.to_metres(value), "prob": np.concatenate(probs) if probs else None}

