"""Mask-aware training losses in pure JAX (jit-able; no configs).

Conventions shared by every loss here:

* ``pred`` and ``target`` have the same shape, usually ``[B, T, H, W, C]`` (frame
  sequences) or ``[B, T, F]`` / ``[B, n_h]`` (stations). Shapes are checked at trace time.
* ``mask`` (optional) is boolean or float 0/1, broadcastable to the data; ``True``/1 marks
  a valid element. Masked elements contribute nothing to the loss *or its gradient*, even
  when the data hold NaN there, and they are not counted by the normaliser. A batch with
  no valid element gives a loss of exactly 0 (never NaN).
* ``weights`` (optional) is broadcastable to the data and multiplies each element's error.
  ``horizon_weights`` (optional) is a 1-D array of length ``T = pred.shape[1]`` that
  weights lead times (axis 1). Weights are *not* renormalised: the mean losses divide by
  the number of valid elements, not by the sum of weights (the HKO-7 convention), so the
  scale of the weights sets the scale of the loss. Pass weights with mean 1 to keep it.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp

HKO7_THRESHOLDS = (0.5, 2.0, 5.0, 10.0, 30.0)
"""Default rain-rate thresholds (mm/h) of the balanced losses."""
HKO7_WEIGHTS = (1.0, 1.0, 2.0, 5.0, 10.0, 30.0)
"""Default balanced weights: ``weights[k]`` applies for ``thresholds[k-1] <= r < thresholds[k]``."""

_REDUCTIONS = ("mean", "sum_per_frame", "sum_per_sequence")


def _broadcastable(name: str, arr, shape: tuple[int, ...]) -> None:
    try:
        out = jnp.broadcast_shapes(jnp.shape(arr), shape)
    except ValueError:
        out = None
    if out != tuple(shape):
        raise ValueError(f"{name} of shape {jnp.shape(arr)} does not broadcast to the data shape {shape}")


def _prepare(pred, target, mask, weights, horizon_weights, pred_name="pred"):
    """Check shapes; return (pred, target, valid [bool, data shape], weights or None)."""
    pred, target = jnp.asarray(pred), jnp.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"{pred_name} shape {pred.shape} != target shape {target.shape}")
    shape = pred.shape
    valid = jnp.ones(shape, bool)
    if mask is not None:
        _broadcastable("mask", mask, shape)
        valid = jnp.broadcast_to(jnp.asarray(mask) != 0, shape)
    w = None
    if weights is not None:
        _broadcastable("weights", weights, shape)
        w = jnp.broadcast_to(jnp.asarray(weights, pred.dtype), shape)
    if horizon_weights is not None:
        hw = jnp.asarray(horizon_weights, pred.dtype)
        if pred.ndim < 2 or hw.ndim != 1 or hw.shape[0] != shape[1]:
            raise ValueError(
                f"horizon_weights must be 1-D of length T = data.shape[1]; got shape {hw.shape} "
                f"for data of shape {shape}"
            )
        hw = hw.reshape((1, -1) + (1,) * (pred.ndim - 2))
        w = hw if w is None else w * hw
    # Zero masked entries *before* any arithmetic so NaN there cannot leak into gradients.
    pred = jnp.where(valid, pred, 0)
    target = jnp.where(valid, target, 0)
    if w is not None:
        w = jnp.where(valid, w, 0)
    return pred, target, valid, w


def _masked_mean(err, valid, w):
    """Sum of (weighted) errors over valid elements / number of valid elements (0 if none)."""
    if w is not None:
        err = err * w
    total = jnp.sum(jnp.where(valid, err, 0))
    count = jnp.sum(valid)
    return total / jnp.maximum(count, 1).astype(total.dtype)


def mse(pred, target, mask=None, weights=None, horizon_weights=None):
    """Masked mean squared error.

    Args:
      pred, target: same shape, e.g. ``[B, T, H, W, C]``.
      mask: optional, broadcastable to the data, True/1 = valid.
      weights: optional per-element weights, broadcastable to the data.
      horizon_weights: optional ``[T]`` weights along axis 1.
    Returns: scalar ``sum(w * (pred - target)**2 over valid) / n_valid``; 0 if nothing is valid.
    """
    pred, target, valid, w = _prepare(pred, target, mask, weights, horizon_weights)
    return _masked_mean(jnp.square(pred - target), valid, w)


def mae(pred, target, mask=None, weights=None, horizon_weights=None):
    """Masked mean absolute error; arguments and normaliser as in :func:`mse`."""
    pred, target, valid, w = _prepare(pred, target, mask, weights, horizon_weights)
    return _masked_mean(jnp.abs(pred - target), valid, w)


def _bce_elementwise(logits, target):
    # Stable form of -[z log s(x) + (1 - z) log(1 - s(x))] = max(x, 0) - x z + log(1 + e^-|x|).
    return jnp.maximum(logits, 0) - logits * target + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def sigmoid_bce(logits, target, mask=None, weights=None, reduction="mean"):
    """Binary cross-entropy from logits (the ConvLSTM paper's Moving-MNIST loss).

    Args:
      logits: raw model outputs, ``[B, T, H, W, C]`` (any shape with batch first and, for
        ``"sum_per_frame"``, time second).
      target: same shape, values in [0, 1] (pixel intensities / 255 on Moving MNIST).
      mask, weights: as in :func:`mse`.
      reduction:
        * ``"mean"``: mean over valid elements (nats per pixel).
        * ``"sum_per_frame"``: summed over each frame's valid pixels and channels (axes 2..),
          averaged over the frames ``[B, T]`` that hold at least one valid pixel.
        * ``"sum_per_sequence"``: summed over each sequence's valid frames, pixels and
          channels (axes 1..), averaged over the sequences that hold a valid element. This
          is the number the paper reports (Shi et al. 2015, Table 1: cross-entropy per
          10-frame 64x64 test sequence, e.g. ~3670 for its best ConvLSTM).
    Returns: scalar; 0 if no element is valid.
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; expected one of {_REDUCTIONS}")
    logits, target, valid, w = _prepare(logits, target, mask, weights, None, "logits")
    ce = _bce_elementwise(logits, target)
    if w is not None:
        ce = ce * w
    ce = jnp.where(valid, ce, 0)
    if reduction == "mean":
        return jnp.sum(ce) / jnp.maximum(jnp.sum(valid), 1).astype(ce.dtype)
    first = 1 if reduction == "sum_per_sequence" else 2
    if ce.ndim <= first:
        raise ValueError(f"reduction {reduction!r} needs at least {first + 1} dims; got shape {ce.shape}")
    axes = tuple(range(first, ce.ndim))
    per_group = jnp.sum(ce, axis=axes)
    groups = jnp.sum(jnp.any(valid, axis=axes))
    return jnp.sum(per_group) / jnp.maximum(groups, 1).astype(ce.dtype)


def rain_weights(rain_rate, thresholds: Sequence[float] = HKO7_THRESHOLDS,
                 weights: Sequence[float] = HKO7_WEIGHTS):
    """Piecewise-constant weights by rain rate (HKO-7 style), same shape as ``rain_rate``.

    ``weights[0]`` applies below ``thresholds[0]``, ``weights[k]`` for
    ``thresholds[k-1] <= r < thresholds[k]``, ``weights[-1]`` at or above the last threshold.
    NaN rates get ``weights[0]``. ``thresholds`` must be strictly increasing and
    ``len(weights) == len(thresholds) + 1``; both are static Python numbers (not traced).
    """
    thr = tuple(float(t) for t in thresholds)
    wts = tuple(float(x) for x in weights)
    if len(wts) != len(thr) + 1:
        raise ValueError(f"need len(weights) == len(thresholds) + 1; got {len(wts)} weights for {len(thr)} thresholds")
    if any(b <= a for a, b in zip(thr, thr[1:])):
        raise ValueError(f"thresholds must be strictly increasing; got {thr}")
    r = jnp.asarray(rain_rate)
    level = sum((r >= t).astype(jnp.int32) for t in thr) if thr else jnp.zeros(r.shape, jnp.int32)
    return jnp.asarray(wts, jnp.result_type(r.dtype, jnp.float32))[level]


def _balanced(err_fn, pred, target, rain_rate, thresholds, weights, mask, horizon_weights):
    pred, target = jnp.asarray(pred), jnp.asarray(target)
    rate = target if rain_rate is None else jnp.asarray(rain_rate)
    if rate.shape != target.shape:
        raise ValueError(f"rain_rate shape {rate.shape} != target shape {target.shape}")
    w = rain_weights(rate, thresholds, weights)
    pred, target, valid, w = _prepare(pred, target, mask, w, horizon_weights)
    return _masked_mean(err_fn(pred - target), valid, w)


def balanced_mse(pred, target, rain_rate=None, thresholds=HKO7_THRESHOLDS, weights=HKO7_WEIGHTS,
                 mask=None, horizon_weights=None):
    """Rain-rate-weighted MSE (Shi et al. 2017, HKO-7 benchmark style).

    Args:
      pred, target: same shape, possibly in a transformed space (e.g. log1p rain).
      rain_rate: the *observed* rain rate in mm/h used to pick each element's weight, same
        shape as ``target``; None means ``target`` already is in mm/h.
      thresholds, weights: see :func:`rain_weights`.
      mask, horizon_weights: as in :func:`mse`.
    Returns: scalar ``sum(w(r) * err**2 over valid) / n_valid``; 0 if nothing is valid.
    """
    return _balanced(jnp.square, pred, target, rain_rate, thresholds, weights, mask, horizon_weights)


def balanced_mae(pred, target, rain_rate=None, thresholds=HKO7_THRESHOLDS, weights=HKO7_WEIGHTS,
                 mask=None, horizon_weights=None):
    """Rain-rate-weighted MAE; arguments as in :func:`balanced_mse`."""
    return _balanced(jnp.abs, pred, target, rain_rate, thresholds, weights, mask, horizon_weights)
