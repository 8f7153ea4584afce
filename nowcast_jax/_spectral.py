"""Spectral 'same' convolution (the ConvLSTM's patched 16x16 frames; larger grids in 16x16 tiles).

A 'same' k x k correlation over an ``H x W`` frame equals a circular convolution on an
``(H + hi) x (W + hi)`` grid (``hi = k - 1 - (k - 1) // 2``): the positions a kernel tap
can reach outside the frame wrap onto zero padding. In the 2-D real DFT of that grid the
convolution is one complex ``[Cin] x [Cin, Cout]`` product per frequency: for 5x5 kernels
on 16x16 frames, 180 frequencies x 4 real products replace 256 positions x 25 taps, about
9x fewer multiply-adds. On a small grid the DFTs themselves are dense matmuls with
precomputed cos/sin matrices (no FFT op, no layout transposes), so everything runs on the
machine's GEMM.

The kernel's spectrum depends only on the parameters, so a recurrent cell computes it
once per sequence (:func:`kernel_spectrum`, done by ``Cell.prepare`` outside the scan),
not once per step. Layout: a frame batch ``x [B, H, W, Cin]`` becomes the real block
``xb [Fq, 2B, 2Cin] = [[Xr, -Xi], [Xi, Xr]]`` (``Fq`` frequencies; on grids above
``MAX_POSITIONS`` each frame is cut into tiles, which become the rows instead of the frames:
``xb [Fq, 2R, 2Cin]`` with ``R = B x tiles``) and the spectrum is
``block [Fq, 2Cin, Cout] = [Sr; Si]``, so ``xb @ block = [Yr; Yi]``, the real and imaginary
parts of the product, in one batched matmul. Numbers agree with ``lax.conv`` to float
rounding (relative error ~1e-6 in float32).

Cost model (why it wins on CPU at batch 8): per step the products read the whole
spectrum (``Fq x 2Cin x Cout`` floats, ~47 MB for 128 -> 256 channels), so they are bound
by memory bandwidth rather than arithmetic; the direct convolution is bound by arithmetic.

Gradients are plain autodiff of these matmuls, so every transformation works (any order
of ``grad``, forward mode, ``vmap``). Inside the ConvLSTM stacks' scans,
:func:`nowcast_jax.rollout.stack_scan` defers the spectrum's gradient: each step returns its
spectral input ``xb`` and takes a per-step ``sink`` added to the product's output
(:func:`conv_parts`), and the tangent (hence, transposed, the gradient) of the spectrum
enters through the sinks as ONE batched matmul over all ``T x 2R`` rows outside the scan
(:func:`sink_tangents`), instead of a large gradient accumulated in the backward scan's
carry at every step. Memory: the spectra and the stacked ``xb`` are extra (the 20 -> 20
benchmark step's XLA peak is 974 MiB against 336 MiB for the direct path, docs/benchmarks.md);
``remat=True`` therefore keeps the direct convolution.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero
import numpy as np

# Grids up to this many positions are transformed whole; larger ones in tiles of TILE x TILE
# outputs (overlap-save: each tile reads a (TILE + k - 1)^2 window of the zero-padded input),
# so the dense DFTs and the spectrum stay the size of one window whatever the grid, and the
# tiles become extra rows of each frequency's product. benchmarks/bench_grid.py (2x64 + 2x64,
# 5x5, batch 8, 10 -> 10; benchmarks/results/grid.md, 2026-12-03, n = 4), training step vs
# direct: whole grid 2.0x faster at 16x16, 1.95x at 20x20, 1.76x at 24x24, only 1.36x at 32x32
# (the dense DFTs and the spectrum grow with the grid squared); tiled 1.83x at 32x32 but slower
# than direct at 20x20 and 24x24 (four 16x16 tiles for a grid little larger than one).
MAX_POSITIONS = 24 * 24
TILE = 16  # tiles of 8 measured the same at 32x32 (10.2 vs 10.5 s, n = 3, ad hoc); 16 stores fewer rows
# ... and from this batch size up (batch = rows of each frequency's product). Below it the
# products are matrix-vector products bound by reading the spectrum; bench_convlstm.py
# (paper workload, ours vs conv_impl=direct, n = 5, 2026-12-02): batch 1 direct 1.16x faster
# to train, 2.3x to forecast; batch 2 direct 0.94x to train, 1.5x to forecast; batch 4
# spectral 1.34x faster to train, a tie (1.03x) to forecast. So "auto" goes direct at batch 1
# only (training, the default's purpose, is faster spectral from batch 2).
MIN_BATCH = 2


class Spectrum(NamedTuple):
    """A kernel's DFT as one real block per frequency, ``block [Fq, 2Cin, Cout]`` (rows: real
    parts of all input channels, then imaginary parts), on the ``grid (H, W)`` it was made for
    (``tile == 0``) or on one tile's window (``tile > 0``; such a spectrum fits any grid).
    ``cpu_only`` marks a spectrum that ``conv_impl="auto"`` made: it is used where the
    computation is lowered for CPU, and the vendor convolution of the same kernel elsewhere. ``block`` is the only
    array: everything else is derived from it where it is needed, so a Spectrum can be
    differentiated (or built by hand) like any other pytree."""

    block: jax.Array
    kernel_size: int
    cpu_only: bool = False
    tile: int = 0  # 0: the whole grid's DFT; > 0: per tile of tile x tile outputs (fits any grid)
    grid: tuple[int, ...] = ()  # (H, W) of a whole-grid spectrum (checked where it is applied); () when tiled


jax.tree_util.register_pytree_node(
    Spectrum, lambda s: ((s.block,), (s.kernel_size, s.cpu_only, s.tile, s.grid)),
    lambda aux, c: Spectrum(c[0], *aux))


class SinkedProduct(NamedTuple):
    """What the deferred scan hands one spectral product per step (:func:`conv_parts`): the
    ``sink [Fq, 2R, Cout]`` added to its output (``R``: the batch, times the tiles per frame
    when tiled), through which the spectrum's tangent enters, and ``re_t``/``im_t [Fq, Cout,
    Cin]``, the block's two halves transposed, which the input tangent multiplies by (a transposed operand is ~4x slower in XLA:CPU's batched matmul)."""

    sink: jax.Array
    re_t: jax.Array
    im_t: jax.Array


def transposed_halves(block: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``block [Fq, 2Cin, Cout]`` -> ``(re_t, im_t)``, each ``[Fq, Cout, Cin]`` (materialised: the
    barrier keeps XLA from folding the transpose back into the matmuls that read them)."""
    cin = block.shape[1] // 2
    return tuple(jax.lax.optimization_barrier(jnp.swapaxes(half, 1, 2)) for half in (block[:, :cin], block[:, cin:]))

_HI = jax.lax.Precision.HIGHEST  # full f32 where the default is lower (TPU, TF32 GPUs); CPU is exact anyway


def _lo_hi(k: int) -> tuple[int, int]:
    lo = (k - 1) // 2
    return lo, k - 1 - lo


def tile_size(height: int, width: int, k: int) -> int:
    """The tile :func:`kernel_spectrum` uses by default: 0 (whole grid) up to ``MAX_POSITIONS``
    positions, else ``TILE``, or ``k - 1`` for a kernel whose halo is wider than that."""
    return max(TILE, k - 1) if height * width > MAX_POSITIONS else 0


@functools.lru_cache(maxsize=32)
def dft_matrices(height: int, width: int, k: int, tile: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Real DFT matrices for a ``height x width`` frame (or, ``tile > 0``, one tile's window)
    and a ``k x k`` kernel (float32).

    Returns ``(forward [Fq, 2, P_in], kernel [2, Fq, k*k], inverse [2, Fq, P_out])``: forward
    maps a frame to (re, im) of its half-spectrum on an ``n1 x n2`` circular grid, kernel maps
    kernel taps to the spectrum of the equivalent circular filter, inverse maps (re, im) back
    to the output positions (Hermitian weights folded in), ``Fq = n1 * (n2 // 2 + 1)``. Whole
    frame: ``n = H + hi``, inputs and outputs the frame's positions. Tile: ``n = tile + k - 1``,
    inputs the window's positions, outputs the ``tile x tile`` block at offset ``lo``, which
    reads only inside the window (nothing wraps).
    """
    lo, hi = _lo_hi(k)
    if tile:
        n1 = n2 = tile + k - 1
        in_rows = in_cols = np.arange(n1)
        out_rows = out_cols = lo + np.arange(tile)
    else:
        n1, n2 = height + hi, width + hi
        in_rows = out_rows = np.arange(height)
        in_cols = out_cols = np.arange(width)
    u = np.arange(n1)[:, None, None, None]
    v = np.arange(n2 // 2 + 1)[None, :, None, None]

    def phases(rows, cols):  # [n1 * V, rows * cols]
        return (2 * np.pi * (u * rows[:, None] / n1 + v * cols[None, :] / n2)).reshape(n1 * (n2 // 2 + 1), -1)

    theta_in, theta_out = phases(in_rows, in_cols), phases(out_rows, out_cols)
    forward = np.stack([np.cos(theta_in), -np.sin(theta_in)], axis=1)
    taps = np.arange(k) - lo
    phi = phases(taps, taps)  # [n1 * V, k * k]
    kernel = np.stack([np.cos(phi), np.sin(phi)], axis=0)
    vv = np.arange(n2 // 2 + 1)
    weight = np.where((vv == 0) | ((n2 % 2 == 0) & (vv == n2 // 2)), 1.0, 2.0) / (n1 * n2)
    weight = np.broadcast_to(weight, (n1, vv.size)).reshape(-1, 1)
    inverse = np.stack([np.cos(theta_out) * weight, -np.sin(theta_out) * weight], axis=0)
    return tuple(a.astype(np.float32) for a in (forward, kernel, inverse))


def kernel_spectrum(w: jax.Array, height: int, width: int, *, cpu_only: bool = False,
                    tile: int | None = None) -> Spectrum:
    """Spectrum of a ``[k, k, Cin, Cout]`` kernel (square; computed in float32) on a ``height x width``
    grid, whole or (``tile > 0``; default :func:`tile_size`) per tile of ``tile x tile`` outputs."""
    k, k2, cin, cout = w.shape
    if k != k2:
        raise ValueError(f"kernel_spectrum wants a square kernel; got {w.shape}")
    tile = tile_size(int(height), int(width), k) if tile is None else int(tile)
    if tile and k - 1 > tile:
        raise ValueError(f"kernel_spectrum: tile {tile} is smaller than the {k}x{k} kernel's halo; use tile >= {k - 1}")
    grid = () if tile else (int(height), int(width))
    _, kernel, _ = dft_matrices(*(grid or (0, 0)), k, tile)  # [2, Fq, k*k]
    # The tap axis is zero-padded to a multiple of 8: XLA:CPU's GEMM was up to 4x slower at K=25.
    taps = -(-k * k // 8) * 8
    kernel = np.pad(kernel, ((0, 0), (0, 0), (0, taps - k * k)))
    per_freq = np.ascontiguousarray(np.swapaxes(kernel, 0, 1)).reshape(-1, taps)  # rows (f, re/im)
    w_taps = jnp.pad(w.astype(jnp.float32).reshape(k * k, cin * cout), ((0, taps - k * k), (0, 0)))
    block = jnp.dot(per_freq, w_taps, precision=_HI).reshape(-1, 2 * cin, cout)
    return Spectrum(block, k, cpu_only, tile, grid)


def use_spectral(impl: str, kernel_size: int, spatial_shape, dtype) -> bool:
    """Whether a cell should prepare a spectrum: always for ``impl="spectral"``; for ``"auto"``
    when float32 and k >= 3, on grids above ``MAX_POSITIONS`` only if the halo fits a ``TILE``
    (the range measured; the spectrum is then used only where the computation is lowered for
    CPU: see :class:`Spectrum`)."""
    if impl == "spectral":
        return True
    if impl != "auto" or len(spatial_shape) != 2:
        return False
    whole_grid = spatial_shape[0] * spatial_shape[1] <= MAX_POSITIONS
    return jnp.dtype(dtype) == jnp.float32 and kernel_size >= 3 and (whole_grid or kernel_size - 1 <= TILE)


def spectral_conv2d(x: jax.Array, spectrum: Spectrum) -> jax.Array:
    """'Same' correlation of ``x [B, H, W, Cin]`` with the kernel behind ``spectrum`` -> ``[B, H, W, Cout]`` (float32)."""
    return conv_parts(x, spectrum)[0]


def conv_parts(x: jax.Array, spectrum: Spectrum, sinked: SinkedProduct | None = None) -> tuple[jax.Array, jax.Array]:
    """:func:`spectral_conv2d` that also returns the product's input ``xb [Fq, 2R, 2Cin]`` (``R``
    rows: one per frame, or per tile of each frame when the spectrum is tiled).

    With ``sinked`` (only inside the deferred scan, which made it from this spectrum's block)
    the product's output gets ``sinked.sink`` added and its tangent leaves out the block's
    term: the scan injects that term for all steps at once through the sink."""
    batch, height, width, cin = x.shape
    k, tile = spectrum.kernel_size, spectrum.tile
    if not tile and tuple(spectrum.grid) != (height, width):
        raise ValueError(f"spectral_conv2d: a spectrum made for a {tuple(spectrum.grid)} grid does not fit an input "
                         f"{x.shape}; build it with kernel_spectrum(w, {height}, {width})")
    forward, _, inverse = dft_matrices(0, 0, k, tile) if tile else dft_matrices(height, width, k, 0)
    fq = forward.shape[0]
    if spectrum.block.shape[:2] != (fq, 2 * cin):
        raise ValueError(f"spectral_conv2d: spectrum {spectrum.block.shape} does not fit an input {x.shape}")
    x = x.astype(jnp.float32)
    frames = _windows(x, tile, k) if tile else x.reshape(batch, height * width, cin)  # [R, P_in, Cin]
    xs = jnp.einsum("fps,rsc->fprc", forward, frames, precision=_HI)  # [Fq, 2(re, im), R, Cin]
    x_re, x_im = xs[:, 0], xs[:, 1]
    # Real block of the complex product: [[Xr, -Xi], [Xi, Xr]] @ [Sr; Si] = [Yr; Yi].
    xb = jnp.concatenate([jnp.concatenate([x_re, -x_im], -1), jnp.concatenate([x_im, x_re], -1)], 1)
    if sinked is None:
        y = jnp.matmul(xb, spectrum.block, precision=_HI)  # [Fq, 2R, Cout]
    else:
        y = _sinked_product(xb, spectrum.block, sinked.re_t, sinked.im_t) + sinked.sink
    y = y.reshape(fq, 2, frames.shape[0], -1)  # [Fq, re/im, R, Cout]
    inverse_fq = np.ascontiguousarray(np.swapaxes(inverse, 0, 1))  # [Fq, 2, P_out]
    out = jnp.einsum("fqs,fqro->rso", inverse_fq, y, precision=_HI)  # [R, P_out, Cout]
    if tile:
        return _untile(out, batch, height, width, tile), xb
    return out.reshape(batch, height, width, -1), xb


def _windows(x: jax.Array, tile: int, k: int) -> jax.Array:
    """``x [B, H, W, C]`` -> the tiles' overlapping windows ``[B * I * J, n * n, C]`` (``n = tile + k - 1``,
    ``I x J`` tiles): window ``(i, j)`` holds input rows ``i * tile - lo ...`` (zero outside the frame)."""
    batch, height, width, c = x.shape
    lo, _ = _lo_hi(k)
    ni, nj = -(-height // tile), -(-width // tile)
    # Padded to one tile past the last, so the next tile's first k - 1 rows exist for every tile.
    x = jnp.pad(x, ((0, 0), (lo, (ni + 1) * tile - height - lo), (lo, (nj + 1) * tile - width - lo), (0, 0)))

    def along(a, axis, n_tiles):  # split one axis into n_tiles windows of tile + k - 1
        shape = a.shape[:axis] + (n_tiles, tile) + a.shape[axis + 1:]
        body = jax.lax.slice_in_dim(a, 0, n_tiles * tile, axis=axis).reshape(shape)
        head = jax.lax.slice_in_dim(a, tile, (n_tiles + 1) * tile, axis=axis).reshape(shape)
        return jnp.concatenate([body, jax.lax.slice_in_dim(head, 0, k - 1, axis=axis + 1)], axis=axis + 1)

    x = along(along(x, 1, ni), 3, nj)  # [B, I, n, J, n, C]
    n = tile + k - 1
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(batch * ni * nj, n * n, c)


def _untile(out: jax.Array, batch: int, height: int, width: int, tile: int) -> jax.Array:
    """The tiles' outputs ``[B * I * J, tile * tile, C]`` -> the frame ``[B, H, W, C]``."""
    ni, nj = -(-height // tile), -(-width // tile)
    out = out.reshape(batch, ni, nj, tile, tile, -1).transpose(0, 1, 3, 2, 4, 5)
    return out.reshape(batch, ni * tile, nj * tile, -1)[:, :height, :width]


def sink_tangents(xbs: jax.Array, block_tangent: jax.Array) -> jax.Array:
    """What a spectrum's tangent adds to every step's product output: ``xbs [T, Fq, 2R, 2Cin]``,
    ``block_tangent [Fq, 2Cin, Cout]`` -> ``[T, Fq, 2R, Cout]``, one batched matmul over all
    T x 2R rows (transposed by autodiff into the spectrum's gradient, again one matmul)."""
    return jnp.einsum("tfbc,fco->tfbo", xbs, block_tangent, precision=_HI)


@jax.custom_jvp
def _sinked_product(xb, block, re_t, im_t):
    """``xb [Fq, 2R, 2Cin] @ block [Fq, 2Cin, Cout]`` inside the deferred scan. Its tangent is
    ``t_xb @ block`` written against ``re_t``/``im_t`` (the block's transposed halves, derived
    from it by the scan), so that its transpose, the input gradient, is two plain matmuls; the
    block's own term ``xb @ t_block`` is left out because the scan adds it through the sink."""
    return jnp.matmul(xb, block, precision=_HI)


@functools.partial(_sinked_product.defjvp, symbolic_zeros=True)
def _sinked_product_jvp(primals, tangents):
    xb, block, re_t, im_t = primals
    t_xb = tangents[0]
    out = _sinked_product(xb, block, re_t, im_t)
    if isinstance(t_xb, SymbolicZero):
        return out, jnp.zeros_like(out)
    cin = re_t.shape[-1]
    t_out = (jnp.einsum("fbc,foc->fbo", t_xb[..., :cin], re_t, precision=_HI)
             + jnp.einsum("fbc,foc->fbo", t_xb[..., cin:], im_t, precision=_HI))
    return out, t_out
