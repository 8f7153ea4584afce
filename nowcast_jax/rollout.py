"""Scanned stacks of cells: one ``lax.scan`` over time, the layers unrolled inside its body.

Compile time therefore does not grow with the sequence length. Knobs: ``remat`` wraps the
per-step body in ``jax.checkpoint`` (activations of a step are recomputed in the backward
pass instead of stored), ``unroll`` is passed to ``lax.scan``.

Cells are prepared once per sequence (``Cell.prepare``: e.g. a kernel's spectrum) outside
the scan. When prepared parameters hold spectra, :func:`scan_params` defers their weight
gradients: the backward scan only stacks each step's spectral inputs and output cotangents,
and the gradient of the whole sequence is one large batched matmul per layer afterwards
(per-step accumulation into a large loop-carried gradient is what it avoids).

Also here: space-to-depth patching (the paper cuts 64x64 frames into 16x16x16 with 4x4
patches) and its exact inverse.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from nowcast_jax import spectral
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


def stack_prepare(cells: Sequence[Cell], params: Sequence[Params], spatial_shape: Sequence[int] = ()) -> list[Params]:
    """Each layer's ``Cell.prepare`` for this grid (``()`` for dense cells).

    Scans with ``remat=True`` skip it: per-sequence spectra and the deferred-gradient stacks
    are memory that rematerialisation cannot drop, so remat keeps the direct convolution.
    """
    return [cell.prepare(p, tuple(spatial_shape)) if cell.spatial else cell.prepare(p) for cell, p in zip(cells, params)]


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


def _is_spectrum(node) -> bool:
    return isinstance(node, spectral.Spectrum)


def scan_params(body: Callable, params, carry, xs, *, length: int | None = None, remat: bool = False,
                unroll: int = 1):
    """:func:`scan` of ``body(params, carry, x) -> (carry, y)`` over prepared ``params``.

    Without spectra in ``params`` this is ``scan(partial(body, params), ...)``. With them, a
    custom VJP defers the spectra's gradients to after the backward scan (module docstring).
    Carry leaves must be batch-major (``[B, ...]``): the batch size sizes the sinks.
    """
    leaves, treedef = jax.tree_util.tree_flatten(params, is_leaf=_is_spectrum)
    where = {i for i, leaf in enumerate(leaves) if _is_spectrum(leaf)}
    if not where:
        return scan(lambda c, x: body(params, c, x), carry, xs, length=length, remat=remat, unroll=unroll)
    steps = length if xs is None else jax.tree_util.tree_leaves(xs)[0].shape[0]
    batch = jax.tree_util.tree_leaves(carry)[0].shape[0]
    rest = [leaf for i, leaf in enumerate(leaves) if i not in where]

    def rebuild(rest_leaves, spectra):
        out, r, s = [], iter(rest_leaves), iter(spectra)
        for i in range(len(leaves)):
            out.append(next(s) if i in where else next(r))
        return jax.tree_util.tree_unflatten(treedef, out)

    def run_with_sinks(spectra, rest_leaves, carry, xs, sinks):
        """The scan with each spectrum's product exporting through its sink; also returns
        every step's spectral inputs ``xb`` (stacked over time) as auxiliary output."""
        def step(c, inp):
            x, sink = inp
            collected = [[] for _ in spectra]
            p = rebuild(rest_leaves, [sp._replace(sinks=(sk, col)) for sp, sk, col in zip(spectra, sink, collected)])
            c, y = body(p, c, x)
            if any(len(col) != 1 for col in collected):
                raise ValueError("scan_params: every prepared spectrum must be used exactly once per step "
                                 f"(uses: {[len(col) for col in collected]})")
            return c, (y, [col[0] for col in collected])
        carry, (ys, xbs) = scan(step, carry, (xs, sinks), length=steps, remat=remat, unroll=unroll)
        return (carry, ys), xbs

    @jax.custom_vjp
    def run(spectra, rest_leaves, carry, xs):
        return scan(lambda c, x: body(rebuild(rest_leaves, spectra), c, x), carry, xs, length=length,
                    remat=remat, unroll=unroll)

    def run_fwd(spectra, rest_leaves, carry, xs):
        frozen = [spectral.Spectrum(*(lax.stop_gradient(a) for a in sp[:3]), sp.kernel_size) for sp in spectra]
        sinks = [spectral.zero_sinks(sp, batch, steps) for sp in spectra]
        out, vjp_fn, xbs = jax.vjp(lambda r, c, x, s: run_with_sinks(frozen, r, c, x, s), rest_leaves, carry, xs,
                                   sinks, has_aux=True)
        return out, (vjp_fn, xbs)

    spectra = [leaves[i] for i in sorted(where)]

    def run_bwd(res, ct):
        vjp_fn, xbs = res
        d_rest, d_carry, d_xs, d_sinks = vjp_fn(ct)  # d_sinks: the products' output cotangents, stacked
        d_spectra = [spectral.Spectrum(spectral.deferred_grad(xb, dy), None, None, sp.kernel_size)
                     for sp, xb, dy in zip(spectra, xbs, d_sinks)]
        return d_spectra, d_rest, d_carry, d_xs

    run.defvjp(run_fwd, run_bwd)
    return run(spectra, rest, carry, xs)


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

    spatial_shape = xs.shape[2:4] if cells and cells[0].spatial else ()
    prepared = params if remat else stack_prepare(cells, params, spatial_shape)

    def body(p, c, x):
        c, outs = stack_step(cells, p, c, x)
        return c, outs[-1]

    carry, hs = scan_params(body, prepared, list(carry), time_major(xs), remat=remat, unroll=unroll)
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
