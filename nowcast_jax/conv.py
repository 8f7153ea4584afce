"""One 2-D convolution ('same' padding, stride 1, NHWC/HWIO), implemented per platform.

Implementations (``impl``), all equal to ``lax.conv`` up to float rounding and all
supporting every JAX transformation (``grad`` to any order, ``jvp``/``jacfwd``/``hessian``,
``vmap``, ``jit``, ``jax.checkpoint``, export):

* ``"direct"``: a bilinear primitive (:data:`_direct_conv_p`) that lowers to XLA's
  convolution and whose two transposes are forward-form (NHWC/HWIO) convolutions of the
  same primitive: the input gradient convolves ``dy`` with the flipped, in/out-transposed
  kernel; the weight gradient convolves ``x`` (Cin as batch) with ``dy`` over the whole frame.
  Autodiff's own weight-gradient convolution contracts over batch and space, which XLA:CPU
  runs ~20x slower inside a ``lax.scan``. Being bilinear, its JVP is two more convolutions,
  so forward mode works too.
* ``"spectral"``: :mod:`nowcast_jax._spectral` (DFT-domain products; a recurrent cell
  precomputes the kernel's spectrum once per sequence in ``Cell.prepare``).
* ``"im2col"``: im2col + matmul, plain autodiff. ``"xla"``: ``lax.conv_general_dilated``.
* ``"auto"`` (default): chosen per *lowering platform* with ``lax.platform_dependent``:
  ``"direct"`` when the computation is lowered for CPU, the vendor convolution (cuDNN, the
  TPU conv unit) elsewhere. A multi-platform export therefore keeps the vendor convolution
  in its CUDA/TPU lowering. (Recurrent cells additionally use ``"spectral"`` on CPU where it
  applies, see :func:`nowcast_jax._spectral.use_spectral`, in scans of a batch of at least
  ``nowcast_jax._spectral.MIN_BATCH``.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from nowcast_jax import _spectral as spectral

IMPLS = ("auto", "direct", "im2col", "xla", "spectral")

Padding = tuple[tuple[int, int], tuple[int, int]]


def same_padding(k: int) -> tuple[int, int]:
    """(low, high) zero padding that keeps the size for a kernel of width ``k`` (XLA 'SAME')."""
    low = (k - 1) // 2
    return low, k - 1 - low


def conv2d_same(x: jax.Array, w: jax.Array, *, impl: str = "auto") -> jax.Array:
    """'Same'-padded stride-1 convolution.

    Args:
      x: input ``[B, H, W, Cin]``.
      w: kernel ``[kh, kw, Cin, Cout]``.
      impl: ``"auto"`` (``"direct"`` when lowered for CPU, ``"xla"`` elsewhere), ``"direct"``,
        ``"im2col"``, ``"xla"`` or ``"spectral"`` (square kernels; computed in float32).

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
    padding = (same_padding(w.shape[0]), same_padding(w.shape[1]))
    if impl == "auto":
        return lax.platform_dependent(x, w, cpu=lambda x, w: _direct(x, w, padding),
                                      default=lambda x, w: _conv_xla(x, w, padding))
    if impl == "direct":
        return _direct(x, w, padding)
    if impl == "xla":
        return _conv_xla(x, w, padding)
    if impl == "spectral":  # the spectrum is recomputed per call; cells precompute it per sequence
        return spectral.spectral_conv2d(x, spectral.kernel_spectrum(w, *x.shape[1:3])).astype(x.dtype)
    return _conv_im2col(x, w)


def _conv_xla(x: jax.Array, w: jax.Array, padding: Padding) -> jax.Array:
    return lax.conv_general_dilated(x, w, window_strides=(1, 1), padding=padding,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _patches(x: jax.Array, kh: int, kw: int) -> jax.Array:
    """im2col: ``[B, H, W, C]`` -> ``[B, H, W, kh*kw*C]`` (kernel row, kernel col, channel order)."""
    _, height, width, _ = x.shape
    xp = jnp.pad(x, ((0, 0), same_padding(kh), same_padding(kw), (0, 0)))
    cols = [xp[:, i:i + height, j:j + width, :] for i in range(kh) for j in range(kw)]
    return jnp.concatenate(cols, axis=-1)


def _conv_im2col(x: jax.Array, w: jax.Array) -> jax.Array:
    kh, kw, cin, cout = w.shape
    return _patches(x, kh, kw) @ w.reshape(kh * kw * cin, cout)


# --------------------------------------------------------------------------- the "direct" primitive

_direct_conv_p = Primitive("nowcast_direct_conv2d")


def _direct(x: jax.Array, w: jax.Array, padding: Padding) -> jax.Array:
    """Stride-1 NHWC/HWIO convolution with explicit ``padding`` as the bilinear primitive."""
    return _direct_conv_p.bind(x, w, padding=tuple(tuple(int(p) for p in pair) for pair in padding))


def _direct_abstract_eval(x, w, *, padding):
    (lo_h, hi_h), (lo_w, hi_w) = padding
    out_h = x.shape[1] + lo_h + hi_h - w.shape[0] + 1
    out_w = x.shape[2] + lo_w + hi_w - w.shape[1] + 1
    return jax.core.ShapedArray((x.shape[0], out_h, out_w, w.shape[3]), jnp.result_type(x.dtype, w.dtype))


def _input_transpose(dy, x, w, *, padding):
    """dX: ``dy`` convolved with the flipped, in/out-transposed kernel (the padding mirrors)."""
    kh, kw = w.shape[:2]  # w is known here; x is the linear argument
    (lo_h, hi_h), (lo_w, hi_w) = padding
    flipped = jnp.transpose(w[::-1, ::-1], (0, 1, 3, 2))  # [kh, kw, Cout, Cin]
    dx = _direct(dy.astype(flipped.dtype), flipped, ((kh - 1 - lo_h, kh - 1 - hi_h), (kw - 1 - lo_w, kw - 1 - hi_w)))
    return dx.astype(x.aval.dtype)


def _weight_transpose(dy, x, w, *, padding):
    """dW ``[kh, kw, Cin, Cout]`` as a forward-form convolution.

    ``dW[i, j, c, o] = sum_{b,h,w} xpad[b, h+i, w+j, c] dy[b, h, w, o]``: a convolution whose
    "batch" is Cin, whose contracted "features" are the batch B and whose kernel is ``dy``
    over the whole output frame, written with explicit transposes in plain NHWC/HWIO form.
    """
    lhs = jnp.transpose(x, (3, 1, 2, 0))  # [Cin, H, W, B]
    rhs = jnp.transpose(dy.astype(lhs.dtype), (1, 2, 0, 3))  # [Ho, Wo, B, Cout]
    return jnp.transpose(_direct(lhs, rhs, padding), (1, 2, 0, 3)).astype(w.aval.dtype)


def _direct_batch(args, dims, *, padding):
    """vmap: a batched input folds into the conv's batch; a batched kernel uses lax.conv's rule."""
    (x, w), (bx, bw) = args, dims
    if bw is None:
        x = jnp.moveaxis(x, bx, 0)
        y = _direct(x.reshape(-1, *x.shape[2:]), w, padding)
        return y.reshape(*x.shape[:2], *y.shape[1:]), 0
    return jax.vmap(lambda a, b: _conv_xla(a, b, padding), (bx, bw))(x, w), 0


_direct_conv_p.def_impl(jax.jit(_conv_xla, static_argnames="padding"))
_direct_conv_p.def_abstract_eval(_direct_abstract_eval)
mlir.register_lowering(_direct_conv_p, mlir.lower_fun(_conv_xla, multiple_results=False))
ad.defbilinear(_direct_conv_p, _input_transpose, _weight_transpose)
batching.primitive_batchers[_direct_conv_p] = _direct_batch


def pointwise(x: jax.Array, w: jax.Array, b: jax.Array | None = None) -> jax.Array:
    """1x1 convolution / dense layer over the last axis: ``[..., Cin] @ [Cin, Cout] (+ b)``."""
    if x.shape[-1] != w.shape[0]:
        raise ValueError(f"pointwise: input has {x.shape[-1]} channels but the weight expects {w.shape[0]}")
    y = x @ w
    return y if b is None else y + b
