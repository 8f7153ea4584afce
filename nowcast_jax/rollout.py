"""Scanned stacks of cells: one ``lax.scan`` over time, the layers unrolled inside its body.

Compile time therefore does not grow with the sequence length. Knobs: ``remat`` wraps the
per-step body in ``jax.checkpoint`` (activations of a step are recomputed in the backward
pass instead of stored), ``unroll`` is passed to ``lax.scan``.

Cells are prepared once per sequence (``Cell.prepare``: e.g. a kernel's spectrum) outside
the scan. When prepared parameters hold spectra, :func:`prepared_scan` defers their
tangents: a ``custom_jvp`` whose rule linearizes the scan with each spectral product's block
term left out and lets each spectrum's tangent enter every step's product through a
per-step sink instead, computed for all steps at once outside the scan
(:func:`nowcast_jax._spectral.sink_tangents`).
Transposed for reverse mode, the spectrum gradient of the whole sequence is then one large
batched matmul per layer after the backward scan, not a large accumulation at every step.
Being a JVP rule written in plain JAX, it is exact for every transformation (forward mode,
any order of ``grad``, ``vmap``). With ``conv_impl="auto"`` this path is taken only where
the computation is lowered for CPU (``lax.platform_dependent``); elsewhere the same scan
runs on the vendor convolution.

Also here: space-to-depth patching (the paper cuts 64x64 frames into 16x16x16 with 4x4
patches) and its exact inverse.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from nowcast_jax import _spectral as spectral
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
    new_carry, outputs, _ = stack_step_sinks(cells, params, carry, x, None)
    return new_carry, outputs


def stack_step_sinks(cells: Sequence[Cell], params: Sequence[Params], carry: Sequence[LSTMState], x: jax.Array,
                     sinks: Sequence | None) -> tuple[list[LSTMState], list[jax.Array], list[jax.Array]]:
    """:func:`stack_step` for :func:`prepared_scan`: layers whose ``params`` hold a spectrum take
    the next of ``sinks`` (a :class:`nowcast_jax._spectral.SinkedProduct` or None; ``sinks=None``:
    plain ``apply``) and return their product input ``xb``, in layer order."""
    if len(params) != len(cells) or len(carry) != len(cells):
        raise ValueError(f"stack_step: {len(cells)} cells but {len(params)} parameter sets and {len(carry)} states")
    new_carry, outputs, xbs = [], [], []
    for cell, p, c in zip(cells, params, carry):
        if sinks is not None and isinstance(p.get("spectrum"), spectral.Spectrum):
            c, x, xb = cell.apply_with_sink(p, c, x, sinks[len(xbs)])
            xbs.append(xb)
        else:
            c, x = cell.apply(p, c, x)
        new_carry.append(c)
        outputs.append(x)
    return new_carry, outputs, xbs


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


def _batch_size(carry) -> int:
    """Leading size of the carry's arrays (the batch); large when there is none or it is
    symbolic (a shape-polymorphic export serves any batch: it keeps the spectral path)."""
    leaves = [leaf for leaf in jax.tree_util.tree_leaves(carry) if getattr(leaf, "ndim", 0) >= 1]
    dim = leaves[0].shape[0] if leaves else None
    return dim if isinstance(dim, int) else 1 << 30


def _is_spectrum(node) -> bool:
    return isinstance(node, spectral.Spectrum)


def prepared_scan(step: Callable, params, prepare: Callable, carry, xs, *, length: int | None = None,
                  remat: bool = False, unroll: int = 1):
    """Scan ``step(params, carry, x, sinks) -> (carry, y, xbs)`` over time with prepared parameters.

    ``prepare(params)`` adds the per-sequence spectra (``Cell.prepare``); ``step`` must pass each
    Spectrum leaf of the prepared params (in tree order) its entry of ``sinks`` and return the
    matching product inputs ``xbs`` (see :func:`stack_step_sinks`); ``sinks`` is None when no
    deferral is wanted. With ``remat`` nothing is prepared (module docstring), nor for spectra that
    ``conv_impl="auto"`` made when the batch is below ``_spectral.MIN_BATCH`` (measured faster direct). Returns
    ``(carry, ys)`` like ``lax.scan``; ``xs`` leaves are time-major. ``step`` must not close over
    arrays that an outer transformation differentiates (a clear ValueError says so).
    """
    def plain(p, carry, xs):
        return scan(lambda c, x: step(p, c, x, None)[:2], carry, xs, length=length, remat=remat, unroll=unroll)

    if remat:
        return plain(params, carry, xs)
    shapes = jax.eval_shape(prepare, params)  # which spectra there will be, without computing them
    spectra = [leaf for leaf in jax.tree_util.tree_leaves(shapes, is_leaf=_is_spectrum) if _is_spectrum(leaf)]
    if not spectra:
        return plain(params, carry, xs)
    if not any(sp.cpu_only for sp in spectra):
        return _deferred_scan(step, prepare(params), carry, xs, length, unroll)
    if _batch_size(carry) < spectral.MIN_BATCH:  # "auto" at a small batch: the direct path is faster
        return plain(params, carry, xs)
    return lax.platform_dependent(params, carry, xs, default=plain,
                                  cpu=lambda p, c, x: _deferred_scan(step, prepare(p), c, x, length, unroll))


def _deferred_scan(step: Callable, params, carry, xs, length: int | None, unroll: int):
    """The scan of :func:`prepared_scan` with the spectra's tangents deferred (module docstring).

    The rule linearizes the scan in everything, the spectra included, so any other use a step
    makes of a spectrum is differentiated as usual; only the sinked products leave the block's
    term out of their tangent, and the rule adds it through their sinks instead.
    """
    leaves, treedef = jax.tree_util.tree_flatten(params, is_leaf=_is_spectrum)
    where = [i for i, leaf in enumerate(leaves) if _is_spectrum(leaf)]
    steps = length if xs is None else jax.tree_util.tree_leaves(xs)[0].shape[0]
    rest = [leaf for i, leaf in enumerate(leaves) if i not in where]

    def rebuild(spectra, rest):
        s, r = iter(spectra), iter(rest)
        return jax.tree_util.tree_unflatten(treedef, [next(s) if i in where else next(r) for i in range(len(leaves))])

    def check(xbs, spectra, sinks):
        if len(xbs) != len(spectra):
            raise ValueError(f"prepared_scan: the step returned {len(xbs)} spectral inputs for {len(spectra)} spectra")
        for i, (xb, sp) in enumerate(zip(xbs, spectra)):
            if xb.shape[-1] != sp.block.shape[1] or (sinks is not None and sinks[i].shape[-2] != xb.shape[-2]):
                raise ValueError(f"prepared_scan: spectral input {i} {xb.shape} does not fit spectrum {i} "
                                 f"{sp.block.shape}; return them in the order of the spectra in the parameters")

    def scan_steps(spectra, rest, carry, xs, sinks):
        """The scan; with ``sinks`` (stacked over time, one per spectrum) the products are sinked."""
        halves = None if sinks is None else [spectral.transposed_halves(sp.block) for sp in spectra]

        def body(c, inp):
            x, s = inp
            sinked = ([None] * len(spectra) if s is None
                      else [spectral.SinkedProduct(sink, *h) for sink, h in zip(s, halves)])
            c, y, xbs = step(rebuild(spectra, rest), c, x, sinked)
            check(xbs, spectra, s)
            return c, (y, xbs)

        carry, (ys, xbs) = lax.scan(body, carry, (xs, sinks), length=steps, unroll=unroll)
        return (carry, ys), xbs

    @jax.custom_jvp
    def run(spectra, rest, carry, xs):
        return scan_steps(spectra, rest, carry, xs, None)[0]

    @run.defjvp
    def run_jvp(primals, tangents):
        spectra, rest, carry, xs = primals
        t_spectra, t_rest, t_carry, t_xs = tangents
        x0 = None if xs is None else jax.tree_util.tree_map(lambda a: a[0], xs)
        xb_shapes = jax.eval_shape(lambda: step(rebuild(spectra, rest), carry, x0, [None] * len(spectra))[2])
        check(xb_shapes, spectra, None)
        sinks = [jnp.zeros((steps, *xb.shape[:-1], sp.block.shape[-1]), xb.dtype)
                 for xb, sp in zip(xb_shapes, spectra)]
        out, linear, xbs = jax.linearize(scan_steps, spectra, rest, carry, xs, sinks, has_aux=True)
        t_sinks = [spectral.sink_tangents(xb, t.block) for xb, t in zip(xbs, t_spectra)]
        return out, linear(t_spectra, t_rest, t_carry, t_xs, t_sinks)

    try:
        return run([leaves[i] for i in where], rest, carry, xs)
    except jax.errors.UnexpectedTracerError as err:
        raise ValueError("prepared_scan: the step closes over an array that is being transformed (e.g. "
                         "differentiated); pass it to the step through params, carry or xs instead") from err


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

    def step(p, c, x, sinks):
        c, outs, xbs = stack_step_sinks(cells, p, c, x, sinks)
        return c, outs[-1], xbs

    carry, hs = prepared_scan(step, list(params), lambda p: stack_prepare(cells, p, spatial_shape), list(carry),
                              time_major(xs), remat=remat, unroll=unroll)
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
