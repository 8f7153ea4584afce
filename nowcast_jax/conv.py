"""One 2-D convolution ('same' padding, stride 1, NHWC/HWIO), implemented per backend.

Implementations (``impl``), all equal to ``lax.conv`` up to float rounding:

* ``"direct"``: XLA's forward convolution with a hand-written VJP whose two gradients are
  forward-form (NHWC/HWIO) convolutions too: the input gradient is ``dy`` convolved with
  the flipped, in/out-transposed kernel, the weight gradient is ``x`` (Cin as batch)
  convolved with ``dy`` (:func:`_weight_grad`). Autodiff's own weight-gradient convolution
  contracts over batch and space, which XLA:CPU runs ~20x slower inside a ``lax.scan``.
* ``"spectral"``: :mod:`nowcast_jax.spectral` (DFT-domain products; a recurrent cell
  precomputes the kernel's spectrum once per sequence in ``Cell.prepare``).
* ``"im2col"``: im2col + matmul forward and backward. ``"xla"``: plain
  ``lax.conv_general_dilated`` with autodiff's VJP.
* ``"auto"`` (default): on CPU, cells use ``"spectral"`` where it applies (float32, k >= 3,
  grids up to 24x24: :func:`nowcast_jax.spectral.use_spectral`) and ``"direct"`` otherwise;
  on GPU and TPU the vendor convolution (cuDNN, the TPU conv unit).
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
from jax import lax

from nowcast_jax import spectral

IMPLS = ("auto", "direct", "im2col", "xla", "spectral")


def same_padding(k: int) -> tuple[int, int]:
    """(low, high) zero padding that keeps the size for a kernel of width ``k`` (XLA 'SAME')."""
    low = (k - 1) // 2
    return low, k - 1 - low


def conv2d_same(x: jax.Array, w: jax.Array, *, impl: str = "auto") -> jax.Array:
    """'Same'-padded stride-1 convolution.

    Args:
      x: input ``[B, H, W, Cin]``.
      w: kernel ``[kh, kw, Cin, Cout]``.
      impl: ``"auto"`` (on CPU: XLA's conv forward + hand-written conv/matmul VJP; XLA's conv
        elsewhere), ``"im2col"`` (im2col + matmul forward and backward), ``"xla"``, or
        ``"spectral"`` (:mod:`nowcast_jax.spectral`; square kernels, float32).

    Returns:
      ``[B, H, W, Cout]`` in the promoted dtype of ``x`` and ``w``.
    """
    if x.ndim != 4 or w.ndim != 4:
        raise ValueError(f"conv2d_same wants x [B,H,W,Cin] and w [kh,kw,Cin,Cout]; got x{x.shape}, w{w.shape}")
    if x.shape[-1] != w.shape[2]:
        raise ValueError(f"conv2d_same: input has {x.shape[-1]} channels but the kernel expects {w.shape[2]}")
    if impl not in IMPLS:
        raise ValueError(f"unknown conv impl {impl!r}; choose one of {IMPLS}")
    if impl != "im2col" and x.dtype != w.dtype:  # lax.conv wants one dtype; im2col's matmul promotes
        dtype = jnp.result_type(x, w)
        x, w = x.astype(dtype), w.astype(dtype)
    if impl == "auto":
        return _conv_cpu(x, w) if jax.default_backend() == "cpu" else _conv_xla(x, w)
    if impl == "direct":
        return _conv_cpu(x, w)
    if impl == "xla":
        return _conv_xla(x, w)
    if impl == "spectral":  # the spectrum is recomputed per call; cells precompute it per sequence
        return spectral.spectral_conv2d(x, spectral.kernel_spectrum(w, *x.shape[1:3])).astype(x.dtype)
    return _conv_im2col(x, w)


def _conv_xla(x, w, padding=None):
    kh, kw = w.shape[:2]
    return lax.conv_general_dilated(
        x, w, window_strides=(1, 1), padding=padding or (same_padding(kh), same_padding(kw)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _patches(x: jax.Array, kh: int, kw: int, pad_h: tuple[int, int], pad_w: tuple[int, int]) -> jax.Array:
    """im2col: ``[B, H, W, C]`` -> ``[B, H, W, kh*kw*C]`` (kernel row, kernel col, channel order)."""
    _, height, width, _ = x.shape
    xp = jnp.pad(x, ((0, 0), pad_h, pad_w, (0, 0)))
    cols = [xp[:, i:i + height, j:j + width, :] for i in range(kh) for j in range(kw)]
    return jnp.concatenate(cols, axis=-1)


@jax.custom_vjp
def _conv_im2col(x, w):
    kh, kw, cin, cout = w.shape
    cols = _patches(x, kh, kw, same_padding(kh), same_padding(kw))
    return cols @ w.reshape(kh * kw * cin, cout)


def _conv_im2col_fwd(x, w):
    return _conv_im2col(x, w), (x, w)


def _conv_im2col_bwd(residuals, dy):
    x, w = residuals
    kh, kw, cin, cout = w.shape
    # dW = patches(x)^T dy, one matmul over all B*H*W positions (patches recomputed, not stored).
    cols = _patches(x, kh, kw, same_padding(kh), same_padding(kw))
    dw = jnp.einsum("bhwk,bhwo->ko", cols, dy.astype(cols.dtype)).reshape(kh, kw, cin, cout)
    # dX = full correlation of dy with the flipped kernel: the padding swaps low and high.
    flipped = jnp.transpose(w[::-1, ::-1], (0, 1, 3, 2))  # [kh, kw, Cout, Cin]
    swap = lambda p: (p[1], p[0])
    dcols = _patches(dy.astype(w.dtype), kh, kw, swap(same_padding(kh)), swap(same_padding(kw)))
    dx = dcols @ flipped.reshape(kh * kw * cout, cin)
    return dx.astype(x.dtype), dw.astype(w.dtype)


_conv_im2col.defvjp(_conv_im2col_fwd, _conv_im2col_bwd)


def _weight_grad(x: jax.Array, dy: jax.Array, kh: int, kw: int) -> jax.Array:
    """dW ``[kh, kw, Cin, Cout]`` as a forward-form convolution.

    ``dW[i, j, c, o] = sum_{b,h,w} xpad[b, h+i, w+j, c] dy[b, h, w, o]``: a convolution whose
    "batch" is Cin, whose contracted "features" are the batch B and whose kernel is ``dy``
    over the whole ``H x W`` frame. Written with explicit transposes into plain NHWC/HWIO
    form, XLA:CPU runs it on its fast convolution path; autodiff's own (non-canonical)
    weight-gradient convolution is the slow one inside a ``lax.scan``.
    """
    lhs = jnp.transpose(x, (3, 1, 2, 0))  # [Cin, H, W, B]
    rhs = jnp.transpose(dy.astype(x.dtype), (1, 2, 0, 3))  # [H, W, B, Cout]
    out = lax.conv_general_dilated(lhs, rhs, window_strides=(1, 1), padding=(same_padding(kh), same_padding(kw)),
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))  # [Cin, kh, kw, Cout]
    return jnp.transpose(out, (1, 2, 0, 3))


def _input_grad(dy: jax.Array, w: jax.Array) -> jax.Array:
    """dX: a forward-form convolution of dy with the flipped, in/out-transposed kernel."""
    kh, kw = w.shape[:2]
    swap = lambda p: (p[1], p[0])  # the 'same' padding swaps low and high
    flipped = jnp.transpose(w[::-1, ::-1], (0, 1, 3, 2))  # [kh, kw, Cout, Cin]
    return _conv_xla(dy.astype(w.dtype), flipped, (swap(same_padding(kh)), swap(same_padding(kw))))


@jax.custom_vjp
def _conv_cpu(x, w):
    return _conv_xla(x, w)


def _conv_cpu_fwd(x, w):
    return _conv_cpu(x, w), (x, w)


def _conv_cpu_bwd(residuals, dy):
    x, w = residuals
    kh, kw = w.shape[:2]
    return _input_grad(dy, w).astype(x.dtype), _weight_grad(x, dy, kh, kw).astype(w.dtype)


_conv_cpu.defvjp(_conv_cpu_fwd, _conv_cpu_bwd)


def pointwise(x: jax.Array, w: jax.Array, b: jax.Array | None = None) -> jax.Array:
    """1x1 convolution / dense layer over the last axis: ``[..., Cin] @ [Cin, Cout] (+ b)``."""
    if x.shape[-1] != w.shape[0]:
        raise ValueError(f"pointwise: input has {x.shape[-1]} channels but the weight expects {w.shape[0]}")
    y = x @ w
    return y if b is None else y + b


