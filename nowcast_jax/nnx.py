"""Thin Flax NNX modules over the functional cells and models (same numbers).

Each module holds the functional parameter pytree (``self.params``: the same nested dicts and
lists that ``init`` returns, every array an ``nnx.Param``) and calls the pure ``apply`` on the
current values, so ``nnx.state``, ``nnx.split``/``nnx.merge``, ``nnx.jit``, ``nnx.grad`` and
``nnx.Optimizer(..., wrt=nnx.Param)`` work as usual. Parameters move between the two APIs::

    net = EncoderForecaster((64, 64, 1), rngs=nnx.Rngs(0), patch_size=4, hidden=(64, 64))
    params = net.pure_params()                          # plain pytree, as model.init returns
    net2 = EncoderForecaster.from_params(params, patch_size=4, hidden=(64, 64))
    net2(inputs, output_steps=10)                       # == net.model.apply(params, inputs, output_steps=10)

Hyper-parameters are keyword arguments of the functional factory; the functional
``init``/``apply`` API stays the primary one (see :mod:`nowcast_jax.linen` for linen).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from nowcast_jax import cells as cells_lib
from nowcast_jax import models as models_lib


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


class _Functional(nnx.Module):
    """Shared part: ``self.params`` (functional pytree of ``nnx.Param``) and the conversions."""

    def _hold(self, params: Any, rngs: nnx.Rngs | None, init) -> None:
        """Store ``params``, or ``init(key)`` with a key drawn from ``rngs.params()``."""
        if params is None:
            if rngs is None:
                raise TypeError(f"{type(self).__name__}: pass rngs=nnx.Rngs(...) or params=<functional pytree>")
            params = init(rngs.params())
        self.params = nnx.data(jax.tree.map(lambda a: nnx.Param(jnp.asarray(a)), params))

    def pure_params(self) -> Any:
        """The current parameters as the plain pytree the functional ``init`` returns."""
        return jax.tree.map(lambda v: v[...], self.params, is_leaf=_is_variable)

    @classmethod
    def from_params(cls, params: Any, **kwargs):
        """A module whose parameters are the arrays of the functional pytree ``params`` (training
        the module replaces them, ``params`` stays as it was); ``kwargs`` go to the factory."""
        return cls(None, params=params, **kwargs)


class ConvLSTMCell(_Functional):
    """NNX wrapper of :func:`nowcast_jax.cells.conv_lstm`. ``__call__(carry, x [B,H,W,Cin])``.

    ``ConvLSTMCell(in_channels, rngs=nnx.Rngs(0), hidden_channels=64, kernel_x=5, kernel_h=5)``.
    """

    def __init__(self, in_channels: int | None, *, rngs: nnx.Rngs | None = None, params: Any = None,
                 **cell_kwargs):
        self.cell = cells_lib.conv_lstm(**cell_kwargs)  # static: a Cell of pure functions
        self._hold(params, rngs, lambda key: self.cell.init(key, in_channels))

    def __call__(self, carry: cells_lib.LSTMState, x: jax.Array) -> tuple[cells_lib.LSTMState, jax.Array]:
        """One step: ``x [B, H, W, Cin]`` -> ``(LSTMState, h [B, H, W, F])``."""
        return self.cell.apply(self.pure_params(), carry, x)

    def initial_carry(self, batch_size: int, spatial_shape: Sequence[int]) -> cells_lib.LSTMState:
        """Zero state ``LSTMState(c, h)``, each ``[B, H, W, F]``."""
        return self.cell.initial_carry(batch_size, spatial_shape)


class EncoderForecaster(_Functional):
    """NNX wrapper of :func:`nowcast_jax.models.encoder_forecaster`.

    ``EncoderForecaster(frame_shape=(H, W, C), rngs=nnx.Rngs(0), **encoder_forecaster_kwargs)``;
    ``__call__(inputs [B,J,H,W,C], output_steps=K, targets=None, teacher_mask=None) -> [B,K,H,W,C]``.
    """

    def __init__(self, frame_shape: Sequence[int] | None, *, rngs: nnx.Rngs | None = None, params: Any = None,
                 **model_kwargs):
        self.model = models_lib.encoder_forecaster(**model_kwargs)  # static: a Model of pure functions
        self._hold(params, rngs, lambda key: self.model.init(key, frame_shape))

    def __call__(self, inputs: jax.Array, output_steps: int = 10, targets: jax.Array | None = None,
                 teacher_mask: jax.Array | None = None) -> jax.Array:
        """``inputs [B,J,H,W,C]`` -> raw forecast ``[B,K,H,W,C]`` (``output_steps`` is static)."""
        return self.model.apply(self.pure_params(), inputs, output_steps=output_steps, targets=targets,
                                teacher_mask=teacher_mask)


class StationLSTM(_Functional):
    """NNX wrapper of :func:`nowcast_jax.models.station_lstm`. ``__call__(x [B,T,F]) -> dict``.

    ``StationLSTM(in_features, rngs=nnx.Rngs(0), hidden=(64, 64), horizons=3)``.
    """

    def __init__(self, in_features: int | None, *, rngs: nnx.Rngs | None = None, params: Any = None,
                 **model_kwargs):
        self.model = models_lib.station_lstm(**model_kwargs)  # static: a Model of pure functions
        self._hold(params, rngs, lambda key: self.model.init(key, in_features))

    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        """``x [B, T, F]`` -> ``{"value": [B, n_h]}`` (+ ``"logits": [B, n_h]`` with ``aux_logits``)."""
        return self.model.apply(self.pure_params(), x)
