"""Thin Flax linen modules over the functional cells and models (same numbers).

Each module stores the functional parameter dict under one name, so
``module.apply({"params": {"cell": p}}, ...)`` equals ``cell.apply(p, ...)`` and
parameters move freely between the two APIs::

    mod = ConvLSTMCell(hidden_channels=64)
    variables = mod.init(key, carry, x)                # variables["params"]["cell"] is a plain dict
    carry, h = mod.apply(variables, carry, x)

Hyper-parameters are passed as keyword arguments to the functional factory.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax

from nowcast_jax import cells as cells_lib
from nowcast_jax import models as models_lib


class ConvLSTMCell(nn.Module):
    """Linen wrapper of :func:`nowcast_jax.cells.conv_lstm`. ``__call__(carry, x [B,H,W,C])``."""

    hidden_channels: int
    kernel_x: int = 5
    kernel_h: int = 5
    options: dict[str, Any] | None = None  # other keyword arguments of cells.conv_lstm

    def _cell(self) -> cells_lib.Cell:
        return cells_lib.conv_lstm(self.hidden_channels, self.kernel_x, self.kernel_h, **(self.options or {}))

    @nn.compact
    def __call__(self, carry: cells_lib.LSTMState, x: jax.Array):
        cell = self._cell()
        params = self.param("cell", lambda key: cell.init(key, x.shape[-1]))
        return cell.apply(params, carry, x)

    def initial_carry(self, batch_size: int, spatial_shape: Sequence[int]) -> cells_lib.LSTMState:
        return self._cell().initial_carry(batch_size, spatial_shape)


class LSTMCell(nn.Module):
    """Linen wrapper of :func:`nowcast_jax.cells.lstm`. ``__call__(carry, x [B, F])``."""

    hidden_size: int
    options: dict[str, Any] | None = None

    def _cell(self) -> cells_lib.Cell:
        return cells_lib.lstm(self.hidden_size, **(self.options or {}))

    @nn.compact
    def __call__(self, carry: cells_lib.LSTMState, x: jax.Array):
        cell = self._cell()
        params = self.param("cell", lambda key: cell.init(key, x.shape[-1]))
        return cell.apply(params, carry, x)

    def initial_carry(self, batch_size: int) -> cells_lib.LSTMState:
        return self._cell().initial_carry(batch_size)


class EncoderForecaster(nn.Module):
    """Linen wrapper of :func:`nowcast_jax.models.encoder_forecaster`.

    ``__call__(inputs [B,J,H,W,C], output_steps, targets=None, teacher_mask=None) -> [B,K,H,W,C]``.
    """

    options: dict[str, Any] | None = None  # keyword arguments of models.encoder_forecaster

    @nn.compact
    def __call__(self, inputs, output_steps: int = 10, targets=None, teacher_mask=None):
        model = models_lib.encoder_forecaster(**(self.options or {}))
        params = self.param("model", lambda key: model.init(key, inputs.shape[2:]))
        return model.apply(params, inputs, output_steps=output_steps, targets=targets, teacher_mask=teacher_mask)


class StationLSTM(nn.Module):
    """Linen wrapper of :func:`nowcast_jax.models.station_lstm`. ``__call__(x [B,T,F]) -> dict``."""

    options: dict[str, Any] | None = None

    @nn.compact
    def __call__(self, x):
        model = models_lib.station_lstm(**(self.options or {}))
        params = self.param("model", lambda key: model.init(key, x.shape[-1], x.shape[1]))
        return model.apply(params, x)
