"""Spectral 'same' convolution for small grids (the ConvLSTM's patched 16x16 frames).

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
``xb [Fq, 2B, 2Cin] = [[Xr, -Xi], [Xi, Xr]]`` (``Fq`` frequencies) and the spectrum is
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
enters through the sinks as ONE batched matmul over all ``T x 2B`` rows outside the scan
(:func:`sink_tangents`), instead of a large gradient accumulated in the backward scan's
carry at every step. Memory: the spectra and the stacked ``xb`` are extra (the 20 -> 20
benchmark step's peak was ~1.2 GB against ~0.6 GB for the direct path, measured before
issue 12's rewrite); ``remat=True`` therefore keeps the direct convolution.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero
import numpy as np

# "auto" uses the spectral path on CPU up to this many grid positions. benchmarks/bench_grid.py
# (2x64 + 2x64, 5x5, batch 8, 10 -> 10), spectral vs direct training step: 16x16 1.62x,
# 20x20 1.53x, 24x24 1.46x faster; 32x32 0.77x (dense DFTs and spectra grow with the grid squared).
MAX_POSITIONS = 24 * 24
# ... and from this batch size up (batch = rows of each frequency's product). Below it the
# products are matrix-vector products bound by reading the spectrum; bench_convlstm.py
# (paper workload, ours vs conv_impl=direct, n = 5, 2026-12-02): batch 1 direct 1.16x faster
# to train, 2.3x to forecast; batch 2 direct 0.94x to train, 1.5x to forecast; batch 4
# spectral 1.34x faster to train, a tie (1.03x) to forecast. So "auto" goes direct at batch 1
# only (training, the default's purpose, is faster spectral from batch 2).
MIN_BATCH = 2


class Spectrum(NamedTuple):
    """A kernel's DFT on one grid as one real block per frequency, ``block [Fq, 2Cin, Cout]``
    (rows: real parts of all input channels, then imaginary parts). ``cpu_only`` marks a
    spectrum that ``conv_impl="auto"`` made: it is used where the computation is lowered for
    CPU, and the vendor convolution of the same kernel elsewhere. ``block`` is the only
    array: everything else is derived from it where it is needed, so a Spectrum can be
    differentiated (or built by hand) like any other pytree."""

    block: jax.Array
    kernel_size: int
    cpu_only: bool = False


jax.tree_util.register_pytree_node(
    Spectrum, lambda s: ((s.block,), (s.kernel_size, s.cpu_only)), lambda aux, c: Spectrum(c[0], *aux))


class SinkedProduct(NamedTuple):
    """What the deferred scan hands one spectral product per step (:func:`conv_parts`): the
    ``sink [Fq, 2B, Cout]`` added to its output, through which the spectrum's tangent enters,
    and ``re_t``/``im_t [Fq, Cout, Cin]``, the block's two halves transposed, which the input
    tangent multiplies by (a transposed operand is ~4x slower in XLA:CPU's batched matmul)."""

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


@functools.lru_cache(maxsize=32)
def dft_matrices(height: int, width: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Real DFT matrices for a ``height x width`` frame and a ``k x k`` kernel (float32).

    Returns ``(forward [Fq, 2, H*W], kernel [2, Fq, k*k], inverse [2, Fq, H*W])`` with
    ``Fq = (H + hi) * ((W + hi) // 2 + 1)``: forward maps a frame to (re, im) of its
    half-spectrum, kernel maps kernel taps to the spectrum of the equivalent circular filter,
    inverse maps (re, im) back to the frame's positions (Hermitian weights folded in).
    """
    _, hi = _lo_hi(k)
    n1, n2 = height + hi, width + hi
    u = np.arange(n1)[:, None, None, None]
    v = np.arange(n2 // 2 + 1)[None, :, None, None]
    rows, cols = np.arange(height)[:, None], np.arange(width)[None, :]
    theta = 2 * np.pi * (u * rows / n1 + v * cols / n2)  # [n1, V, H, W]
    theta = theta.reshape(-1, height * width)
    forward = np.stack([np.cos(theta), -np.sin(theta)], axis=1)
    taps = np.arange(k) - _lo_hi(k)[0]
    phi = 2 * np.pi * (u * taps[:, None] / n1 + v * taps[None, :] / n2)  # [n1, V, k, k]
    phi = phi.reshape(-1, k * k)
    kernel = np.stack([np.cos(phi), np.sin(phi)], axis=0)
    vv = np.arange(n2 // 2 + 1)
    weight = np.where((vv == 0) | ((n2 % 2 == 0) & (vv == n2 // 2)), 1.0, 2.0) / (n1 * n2)
    weight = np.broadcast_to(weight, (n1, vv.size)).reshape(-1, 1)
    inverse = np.stack([np.cos(theta) * weight, -np.sin(theta) * weight], axis=0)
    return tuple(a.astype(np.float32) for a in (forward, kernel, inverse))


def kernel_spectrum(w: jax.Array, height: int, width: int, *, cpu_only: bool = False) -> Spectrum:
    """Spectrum of a ``[k, k, Cin, Cout]`` kernel (square; computed in float32) on a ``height x width`` grid."""
    k, k2, cin, cout = w.shape
    if k != k2:
        raise ValueError(f"kernel_spectrum wants a square kernel; got {w.shape}")
    _, kernel, _ = dft_matrices(int(height), int(width), k)  # [2, Fq, k*k]
    # The tap axis is zero-padded to a multiple of 8: XLA:CPU's GEMM was up to 4x slower at K=25.
    taps = -(-k * k // 8) * 8
    kernel = np.pad(kernel, ((0, 0), (0, 0), (0, taps - k * k)))
    per_freq = np.ascontiguousarray(np.swapaxes(kernel, 0, 1)).reshape(-1, taps)  # rows (f, re/im)
    w_taps = jnp.pad(w.astype(jnp.float32).reshape(k * k, cin * cout), ((0, taps - k * k), (0, 0)))
    block = jnp.dot(per_freq, w_taps, precision=_HI).reshape(-1, 2 * cin, cout)
    return Spectrum(block, k, cpu_only)


def use_spectral(impl: str, kernel_size: int, spatial_shape, dtype) -> bool:
    """Whether a cell should prepare a spectrum: always for ``impl="spectral"``; for ``"auto"``
    when float32, k >= 3 and the grid is small (the spectrum is then used only where the
    computation is lowered for CPU: see :class:`Spectrum`)."""
    if impl == "spectral":
        return True
    if impl != "auto" or len(spatial_shape) != 2:
        return False
    return (jnp.dtype(dtype) == jnp.float32 and kernel_size >= 3
            and spatial_shape[0] * spatial_shape[1] <= MAX_POSITIONS)


def spectral_conv2d(x: jax.Array, spectrum: Spectrum) -> jax.Array:
    """'Same' correlation of ``x [B, H, W, Cin]`` with the kernel behind ``spectrum`` -> ``[B, H, W, Cout]`` (float32)."""
    return conv_parts(x, spectrum)[0]


def conv_parts(x: jax.Array, spectrum: Spectrum, sinked: SinkedProduct | None = None) -> tuple[jax.Array, jax.Array]:
    """:func:`spectral_conv2d` that also returns the product's input ``xb [Fq, 2B, 2Cin]``.

    With ``sinked`` (only inside the deferred scan, which made it from this spectrum's block)
    the product's output gets ``sinked.sink`` added and its tangent leaves out the block's
    term: the scan injects that term for all steps at once through the sink."""
    batch, height, width, cin = x.shape
    forward, _, inverse = dft_matrices(height, width, spectrum.kernel_size)
    fq = forward.shape[0]
    if spectrum.block.shape[:2] != (fq, 2 * cin):
        raise ValueError(f"spectral_conv2d: spectrum {spectrum.block.shape} does not fit an input {x.shape}")
    x = x.astype(jnp.float32).reshape(batch, height * width, cin)
    xs = jnp.einsum("fps,bsc->fpbc", forward, x, precision=_HI)  # [Fq, 2(re, im), B, Cin]
    x_re, x_im = xs[:, 0], xs[:, 1]
    # Real block of the complex product: [[Xr, -Xi], [Xi, Xr]] @ [Sr; Si] = [Yr; Yi].
    xb = jnp.concatenate([jnp.concatenate([x_re, -x_im], -1), jnp.concatenate([x_im, x_re], -1)], 1)
    if sinked is None:
        y = jnp.matmul(xb, spectrum.block, precision=_HI)  # [Fq, 2B, Cout]
    else:
        y = _sinked_product(xb, spectrum.block, sinked.re_t, sinked.im_t) + sinked.sink
    y = y.reshape(fq, 2, batch, -1)  # [Fq, re/im, B, Cout]
    inverse_fq = np.ascontiguousarray(np.swapaxes(inverse, 0, 1))  # [Fq, 2, H*W]
    out = jnp.einsum("fqs,fqbo->bso", inverse_fq, y, precision=_HI)
    return out.reshape(batch, height, width, -1), xb


def sink_tangents(xbs: jax.Array, block_tangent: jax.Array) -> jax.Array:
    """What a spectrum's tangent adds to every step's product output: ``xbs [T, Fq, 2B, 2Cin]``,
    ``block_tangent [Fq, 2Cin, Cout]`` -> ``[T, Fq, 2B, Cout]``, one batched matmul over all
    T x 2B rows (transposed by autodiff into the spectrum's gradient, again one matmul)."""
    return jnp.einsum("tfbc,fco->tfbo", xbs, block_tangent, precision=_HI)


@jax.custom_jvp
def _sinked_product(xb, block, re_t, im_t):
    """``xb [Fq, 2B, 2Cin] @ block [Fq, 2Cin, Cout]`` inside the deferred scan. Its tangent is
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
