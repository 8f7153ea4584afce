"""Pure-function recurrent cells: LSTM and ConvLSTM (Shi et al., 2015).

A cell is built optax-style by a factory and is a :class:`Cell` of pure functions::

    cell = conv_lstm(hidden_channels=64, kernel_x=5, kernel_h=5)
    params = cell.init(key, in_channels)               # plain dict of arrays
    carry = cell.initial_carry(batch_size, (H, W))     # LSTMState(c, h), zeros
    carry, h = cell.apply(params, carry, x)            # x [B, H, W, Cin] -> h [B, H, W, F]

``apply(params, carry, x)`` has the signature of a ``lax.scan`` body once ``params`` is
bound (``functools.partial(cell.apply, params)``).

ConvLSTM equations (``*`` convolution, ``∘`` elementwise)::

    i  = σ(Wxi*X + Whi*H + Wci∘C + bi)
    f  = σ(Wxf*X + Whf*H + Wcf∘C + bf)
    C' = f∘C + i∘tanh(Wxc*X + Whc*H + bc)
    o  = σ(Wxo*X + Who*H + Wco∘C' + bo)
    H' = o∘tanh(C')

All four gates come from ONE convolution over ``concat([X, H])`` with a fused kernel; the
input-to-state and state-to-state kernels are stored separately (so their sizes can
differ) and zero-embedded into one kernel at apply time. Gate order: i, f, g, o.
The cell state and gate nonlinearities stay in the parameter dtype (float32 by default);
``compute_dtype`` (e.g. ``jnp.bfloat16``) only sets the dtype of the big products.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from nowcast_jax import _spectral as spectral
from nowcast_jax.conv import IMPLS, conv2d_same, same_padding

Params = dict[str, jax.Array]


class LSTMState(NamedTuple):
    """Recurrent state: cell ``c`` and hidden ``h``, each ``[B, ..., F]``."""

    c: jax.Array
    h: jax.Array


class Cell(NamedTuple):
    """A recurrent cell as pure functions plus its output width."""

    init: Callable[..., Params]
    apply: Callable[[Params, LSTMState, jax.Array], tuple[LSTMState, jax.Array]]
    initial_carry: Callable[..., LSTMState]
    hidden: int
    spatial: bool  # True: inputs [B, H, W, C]; False: inputs [B, F]
    # prepare(params, spatial_shape) -> params with per-sequence precomputation (e.g. the
    # kernel's spectrum) that a scan does once, outside its body; apply accepts both.
    prepare: Callable[[Params, Sequence[int]], Params] = lambda params, spatial_shape=(): params
    # apply_with_sink(prepared, carry, x, sinked) -> (carry, h, xb): apply for prepared params that
    # hold a spectrum, through spectral.conv_parts with ``sinked`` (a spectral.SinkedProduct),
    # returning the product's input ``xb`` (rollout's deferred scan; None for other cells).
    apply_with_sink: Callable[..., tuple[LSTMState, jax.Array, jax.Array]] | None = None


def _uniform(key, shape, scale, dtype):
    return jax.random.uniform(key, shape, dtype, -scale, scale)


def _gate_bias(hidden: int, forget_bias: float, dtype) -> jax.Array:
    return jnp.zeros((4 * hidden,), dtype).at[hidden:2 * hidden].set(forget_bias)


def _peephole_params(key, shape, dtype) -> Params:
    ki, kf, ko = jax.random.split(key, 3)
    return {name: _uniform(k, shape, 0.1, dtype) for name, k in (("w_ci", ki), ("w_cf", kf), ("w_co", ko))}


def _lstm_update(z: jax.Array, c: jax.Array, params: Params) -> LSTMState:
    """Shared gate arithmetic: pre-activations ``z`` [..., 4F] and cell ``c`` [..., F]."""
    zi, zf, zg, zo = jnp.split(z.astype(c.dtype), 4, axis=-1)
    if "w_ci" in params:
        zi = zi + params["w_ci"] * c
        zf = zf + params["w_cf"] * c
    c_new = jax.nn.sigmoid(zf) * c + jax.nn.sigmoid(zi) * jnp.tanh(zg)
    if "w_co" in params:
        zo = zo + params["w_co"] * c_new
    h_new = jax.nn.sigmoid(zo) * jnp.tanh(c_new)
    return LSTMState(c_new, h_new)


# The ConvLSTM's gate arithmetic, rematerialised: differentiated, a step keeps only its inputs
# (pre-activations z [..., 4F] and cell c [..., F]) and the backward pass recomputes the
# sigmoids and tanhs (elementwise, cheap beside the convolution) instead of keeping ~12
# arrays of [..., F] per step. benchmarks/bench_memory.py (20 -> 20, batch 8): XLA's peak
# -277 MiB on the spectral and on the direct path, step time unchanged within noise.
_conv_gate_update = jax.checkpoint(_lstm_update, prevent_cse=False)


def _check_carry(carry: Any, expected: tuple[int, ...], who: str) -> None:
    if not isinstance(carry, tuple) or len(carry) != 2:
        raise TypeError(f"{who}: carry must be LSTMState(c, h); got {type(carry).__name__}")
    for name, arr in zip(("c", "h"), carry):
        if tuple(arr.shape) != expected:
            raise ValueError(f"{who}: carry.{name} has shape {tuple(arr.shape)} but the input implies {expected}")


# --------------------------------------------------------------------------- ConvLSTM


def _embed_kernel(w: jax.Array, size: int) -> jax.Array:
    """Zero-embed a ``[k, k, Cin, Cout]`` kernel into ``[size, size, Cin, Cout]``, same alignment."""
    k = w.shape[0]
    lo = same_padding(size)[0] - same_padding(k)[0]
    hi = size - k - lo
    return jnp.pad(w, ((lo, hi), (lo, hi), (0, 0), (0, 0)))


def _fused_kernel(params: Params) -> jax.Array:
    """One kernel ``[k, k, Cin + F, 4F]`` over ``concat([x, h])`` from ``w_x`` and ``w_h``.

    A cell that reads no input (``in_channels=0``, e.g. the paper's forecaster) has no ``w_x``.
    """
    if "w_x" not in params:
        return params["w_h"]
    size = max(params["w_x"].shape[0], params["w_h"].shape[0])
    return jnp.concatenate([_embed_kernel(params["w_x"], size), _embed_kernel(params["w_h"], size)], axis=2)


def _input_width(params: Params, axis: int) -> int:
    """Input channels/features a cell was initialised for (0 when it has no ``w_x``)."""
    return params["w_x"].shape[axis] if "w_x" in params else 0


def conv_lstm(hidden_channels: int, kernel_x: int = 5, kernel_h: int = 5, *, peepholes: bool = True,
              peephole_shape: Sequence[int] | None = None, forget_bias: float = 1.0,
              compute_dtype: Any = None, param_dtype: Any = jnp.float32, conv_impl: str = "auto") -> Cell:
    """ConvLSTM cell (Shi et al., 2015) with optional peepholes.

    Args:
      hidden_channels: F, the number of hidden/cell channels.
      kernel_x: input-to-state kernel size (square).
      kernel_h: state-to-state kernel size (square).
      peepholes: include the ``Wc∘C`` terms.
      peephole_shape: ``None`` for per-channel peephole weights ``[F]`` (works on any grid);
        ``(H, W)`` for the paper's full Hadamard weights ``[H, W, F]`` (ties the cell to a grid).
      forget_bias: initial value of the forget-gate bias.
      compute_dtype: dtype of the fused convolution (e.g. ``jnp.bfloat16``); None = input dtype.
      param_dtype: dtype of parameters and of the carried state.
      conv_impl: see :func:`nowcast_jax.conv.conv2d_same`.
    """
    F = int(hidden_channels)
    if F <= 0 or kernel_x <= 0 or kernel_h <= 0:
        raise ValueError(f"conv_lstm: hidden_channels and kernel sizes must be positive; got {F}, {kernel_x}, {kernel_h}")
    if conv_impl not in IMPLS:
        raise ValueError(f"conv_lstm: unknown conv_impl {conv_impl!r}; choose one of {IMPLS}")
    pshape = (F,) if peephole_shape is None else (*tuple(peephole_shape), F)

    def init(key: jax.Array, in_channels: int) -> Params:
        """Parameters: ``w_x [kx,kx,Cin,4F]`` (absent when ``in_channels == 0``),
        ``w_h [kh,kh,F,4F]``, ``b [4F]`` (+ ``w_c* [.., F]``)."""
        kx, kh, kp = jax.random.split(key, 3)
        fan_in = kernel_x * kernel_x * in_channels + kernel_h * kernel_h * F
        scale = math.sqrt(6.0 / (fan_in + 4 * F))
        params = {
            "w_h": _uniform(kh, (kernel_h, kernel_h, F, 4 * F), scale, param_dtype),
            "b": _gate_bias(F, forget_bias, param_dtype),
        }
        if in_channels:
            params["w_x"] = _uniform(kx, (kernel_x, kernel_x, in_channels, 4 * F), scale, param_dtype)
        if peepholes:
            params.update(_peephole_params(kp, pshape, param_dtype))
        return params

    def initial_carry(batch_size: int, spatial_shape: Sequence[int]) -> LSTMState:
        """Zero state ``LSTMState(c, h)``, each ``[B, H, W, F]``."""
        shape = (batch_size, *tuple(spatial_shape), F)
        return LSTMState(jnp.zeros(shape, param_dtype), jnp.zeros(shape, param_dtype))

    def prepare(params: Params, spatial_shape: Sequence[int]) -> Params:
        """Add ``"spectrum"`` (the fused kernel's DFT on this grid) when the spectral
        convolution applies (see :func:`nowcast_jax._spectral.use_spectral`); else unchanged.
        With ``conv_impl="auto"`` the spectrum is used only where the computation is lowered
        for CPU (elsewhere ``apply`` runs the vendor convolution of the same kernel)."""
        if "spectrum" in params:
            return params
        kernel = _fused_kernel(params)
        dtype = compute_dtype or kernel.dtype
        if not spectral.use_spectral(conv_impl, kernel.shape[0], tuple(spatial_shape), dtype):
            return params
        spectrum = spectral.kernel_spectrum(kernel, *spatial_shape, cpu_only=conv_impl == "auto")
        return {**params, "spectrum": spectrum}

    def stacked_input(params: Params, carry: LSTMState, x: jax.Array) -> jax.Array:
        """Checks the shapes; returns ``concat([x, h]) [B, H, W, Cin + F]`` in the compute dtype."""
        cin = _input_width(params, 2)
        if x.ndim != 4:
            raise ValueError(f"conv_lstm.apply: x must be [B, H, W, C] (rank 4); got shape {tuple(x.shape)}")
        if x.shape[-1] != cin:
            raise ValueError(f"conv_lstm.apply: x has {x.shape[-1]} channels but the cell was initialised for {cin}")
        _check_carry(carry, (*x.shape[:3], F), "conv_lstm.apply")
        dtype = compute_dtype or x.dtype
        return jnp.concatenate([x.astype(dtype), carry.h.astype(dtype)], axis=-1)

    def apply(params: Params, carry: LSTMState, x: jax.Array) -> tuple[LSTMState, jax.Array]:
        """One step: ``x [B, H, W, Cin]`` -> ``(LSTMState, h [B, H, W, F])``."""
        xh = stacked_input(params, carry, x)
        spectrum = params.get("spectrum")
        if spectrum is None:
            z = conv2d_same(xh, _fused_kernel(params).astype(xh.dtype), impl=conv_impl)
        elif spectrum.cpu_only:
            z = jax.lax.platform_dependent(
                params, xh, cpu=lambda p, xh: spectral.spectral_conv2d(xh, p["spectrum"]).astype(xh.dtype),
                default=lambda p, xh: conv2d_same(xh, _fused_kernel(p).astype(xh.dtype), impl="xla"))
        else:
            z = spectral.spectral_conv2d(xh, spectrum)
        state = _conv_gate_update(z.astype(carry.c.dtype) + params["b"], carry.c, params)
        return state, state.h

    def apply_with_sink(params: Params, carry: LSTMState, x: jax.Array, sinked):
        """``apply`` through the spectrum (which ``params`` must hold) and ``sinked`` (None, or a
        :class:`nowcast_jax._spectral.SinkedProduct`); returns ``(LSTMState, h, xb [Fq, 2R, 2(Cin + F)])``."""
        z, xb = spectral.conv_parts(stacked_input(params, carry, x), params["spectrum"], sinked)
        state = _conv_gate_update(z.astype(carry.c.dtype) + params["b"], carry.c, params)
        return state, state.h, xb

    return Cell(init, apply, initial_carry, F, True, prepare, apply_with_sink)


# --------------------------------------------------------------------------- LSTM


def lstm(hidden_size: int, *, peepholes: bool = False, forget_bias: float = 1.0,
         compute_dtype: Any = None, param_dtype: Any = jnp.float32) -> Cell:
    """Fully connected LSTM cell, same API as :func:`conv_lstm`; one fused matmul for all gates.

    ``init(key, in_features)``; ``initial_carry(batch_size)``; ``apply(params, carry, x [B, Fin])``.
    """
    F = int(hidden_size)
    if F <= 0:
        raise ValueError(f"lstm: hidden_size must be positive; got {hidden_size}")

    def init(key: jax.Array, in_features: int) -> Params:
        """Parameters: ``w_x [Fin, 4F]`` (absent when ``in_features == 0``), ``w_h [F, 4F]``,
        ``b [4F]`` (+ ``w_c* [F]``)."""
        kx, kh, kp = jax.random.split(key, 3)
        scale = math.sqrt(6.0 / (in_features + F + 4 * F))
        params = {
            "w_h": _uniform(kh, (F, 4 * F), scale, param_dtype),
            "b": _gate_bias(F, forget_bias, param_dtype),
        }
        if in_features:
            params["w_x"] = _uniform(kx, (in_features, 4 * F), scale, param_dtype)
        if peepholes:
            params.update(_peephole_params(kp, (F,), param_dtype))
        return params

    def initial_carry(batch_size: int, spatial_shape: Sequence[int] = ()) -> LSTMState:
        """Zero state ``LSTMState(c, h)``, each ``[B, F]``."""
        if tuple(spatial_shape):
            raise ValueError("lstm.initial_carry: a dense LSTM has no spatial shape")
        shape = (batch_size, F)
        return LSTMState(jnp.zeros(shape, param_dtype), jnp.zeros(shape, param_dtype))

    def apply(params: Params, carry: LSTMState, x: jax.Array) -> tuple[LSTMState, jax.Array]:
        """One step: ``x [B, Fin]`` -> ``(LSTMState, h [B, F])``."""
        fin = _input_width(params, 0)
        if x.ndim != 2:
            raise ValueError(f"lstm.apply: x must be [B, F] (rank 2); got shape {tuple(x.shape)}")
        if x.shape[-1] != fin:
            raise ValueError(f"lstm.apply: x has {x.shape[-1]} features but the cell was initialised for {fin}")
        _check_carry(carry, (x.shape[0], F), "lstm.apply")
        dtype = compute_dtype or x.dtype
        w = (jnp.concatenate([params["w_x"], params["w_h"]], axis=0) if fin else params["w_h"]).astype(dtype)
        z = jnp.concatenate([x.astype(dtype), carry.h.astype(dtype)], axis=-1) @ w
        state = _lstm_update(z.astype(carry.c.dtype) + params["b"], carry.c, params)
        return state, state.h

    return Cell(init, apply, initial_carry, F, False)
