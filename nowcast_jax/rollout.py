"""Scanned stacks of cells: one ``lax.scan`` over time, the layers unrolled inside its body.

Compile time therefore does not grow with the sequence length. Knobs: ``remat`` wraps the
per-step body in ``jax.checkpoint`` (activations of a step are recomputed in the backward
pass instead of stored), ``unroll`` is passed to ``lax.scan``.

Also here: space-to-depth patching (the paper cuts 64x64 frames into 16x16x16 with 4x4
patches) and its exact inverse.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from nowcast_jax.cells import Cell, LSTMState, Params


def stack_init(key: jax.Array, cells: Sequence[Cell], in_channels: int) -> list[Params]:
    """Initialise a stack: layer ``l`` reads the hidden output of layer ``l - 1``."""
    params, width = [], in_channels
    for layer, cell in enumerate(cells):
        params.append(cell.init(jax.random.fold_in(key, layer), width))
        width = cell.hidden
    return params


def stack_initial_carry(cells: Sequence[Cell], batch_size: int, spatial_shape: Sequence[int] = ()) -> list[LSTMState]:
    """Zero states for every layer (``spatial_shape`` is ``(H, W)`` for ConvLSTM, ``()`` for LSTM)."""
    return [cell.initial_carry(batch_size, spatial_shape) if cell.spatial else cell.initial_carry(batch_size)
            for cell in cells]


def stack_step(cells: Sequence[Cell], params: Sequence[Params], carry: Sequence[LSTMState],
               x: jax.Array) -> tuple[list[LSTMState], list[jax.Array]]:
    """One time step through all layers; returns new states and every layer's output."""
    if len(params) != len(cells) or len(carry) != len(cells):
        raise ValueError(f"stack_step: {len(cells)} cells but {len(params)} parameter sets and {len(carry)} states")
    new_carry, outputs = [], []
    for cell, p, c in zip(cells, params, carry):
        c, x = cell.apply(p, c, x)
        new_carry.append(c)
        outputs.append(x)
    return new_carry, outputs


def time_major(xs: jax.Array) -> jax.Array:
    """``[B, T, ...]`` -> ``[T, B, ...]`` (lax.scan iterates over the leading axis)."""
    return jnp.swapaxes(xs, 0, 1)


def batch_major(xs: jax.Array) -> jax.Array:
    """``[T, B, ...]`` -> ``[B, T, ...]``."""
    return jnp.swapaxes(xs, 0, 1)


def scan(body: Callable, carry, xs, *, length: int | None = None, remat: bool = False, unroll: int = 1):
    """``lax.scan`` with the package's knobs; ``xs`` leaves are time-major."""
    if remat:
        body = jax.checkpoint(body)
    return lax.scan(body, carry, xs, length=length, unroll=unroll)


def stack_scan(cells: Sequence[Cell], params: Sequence[Params], carry: Sequence[LSTMState], xs: jax.Array, *,
               remat: bool = False, unroll: int = 1) -> tuple[list[LSTMState], jax.Array]:
    """Run a stack over a sequence.

    Args:
      xs: ``[B, T, H, W, C]`` (ConvLSTM) or ``[B, T, F]`` (LSTM).

    Returns:
      ``(final states per layer, top-layer outputs [B, T, ..., F_top])``.
    """
    if xs.ndim < 3:
        raise ValueError(f"stack_scan: xs must be [B, T, ...]; got shape {tuple(xs.shape)}")

    def body(c, x):
        c, outs = stack_step(cells, params, c, x)
        return c, outs[-1]

    carry, hs = scan(body, list(carry), time_major(xs), remat=remat, unroll=unroll)
    return carry, batch_major(hs)


def space_to_depth(x: jax.Array, patch: int) -> jax.Array:
    """``[..., H, W, C]`` -> ``[..., H/p, W/p, p*p*C]`` (non-overlapping p x p patches)."""
    *lead, height, width, ch = x.shape
    if height % patch or width % patch:
        raise ValueError(f"space_to_depth: frame {height}x{width} is not divisible by patch size {patch}")
    x = x.reshape(*lead, height // patch, patch, width // patch, patch, ch)
    n = len(lead)
    x = jnp.moveaxis(x, n + 2, n + 1)  # [..., H/p, W/p, p, p, C]
    return x.reshape(*lead, height // patch, width // patch, patch * patch * ch)


def depth_to_space(x: jax.Array, patch: int) -> jax.Array:
    """Exact inverse of :func:`space_to_depth`: ``[..., h, w, p*p*C]`` -> ``[..., h*p, w*p, C]``."""
    *lead, h, w, depth = x.shape
    if depth % (patch * patch):
        raise ValueError(f"depth_to_space: {depth} channels are not divisible by patch^2 = {patch * patch}")
    x = x.reshape(*lead, h, w, patch, patch, depth // (patch * patch))
    n = len(lead)
    x = jnp.moveaxis(x, n + 2, n + 1)  # [..., h, p, w, p, C]
    return x.reshape(*lead, h * patch, w * patch, depth // (patch * patch))
