"""Streaming verification of gridded forecasts in JAX (jit-able, mask-aware).

Fields are ``[B, T, H, W]`` or ``[B, T, H, W, 1]`` (``T`` = lead times). A pixel is
*valid* when ``mask`` is True/1 there (``mask`` broadcastable to the field; None = all)
**and** both ``pred`` and ``obs`` are finite; invalid pixels count nowhere (NaN is
therefore handled even if it reaches this module, although the data layer should already
turn it into ``mask=False``).

Every score is built from sums that add over batches, so large evaluations stream:

* contingency counts per threshold and lead ``[n_thr, T]`` (:func:`contingency`);
* moments per lead ``[T]``: n, sums of x, y, x², y², xy, squared and absolute errors
  (:func:`moments`), giving Pearson r, MSE, RMSE, MAE;
* FSS sums per threshold, scale and lead ``[n_thr, n_scales, T]`` (:func:`fss_sums`).

:func:`make_verifier` bundles them as an accumulator (a plain dict of arrays) with
``init`` / ``update`` / ``merge`` / ``compute``.

Event direction: ``op=">="`` means event = value >= threshold, ``op=">"`` value >
threshold. pysteps uses ``>`` in ``det_cat_fct`` but ``>=`` in ``fss``.

Counts use JAX's default integer (int32 unless ``jax_enable_x64``): one accumulator holds
at most 2**31 - 1 pixels per lead (~4,700 full 640x710 frames); use several accumulators
and add the computed counts on the host beyond that.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

OPS = (">=", ">")
CONTINGENCY_KEYS = ("hits", "misses", "false_alarms", "correct_negatives")
MOMENT_KEYS = ("n", "sum_x", "sum_y", "sum_xx", "sum_yy", "sum_xy", "sum_se", "sum_ae")
FSS_KEYS = ("fss_ff", "fss_fo", "fss_oo")


# ----------------------------------------------------------------------------- inputs
def _fields(pred, obs, mask):
    """Return (pred, obs, valid) as ``[B, T, H, W]`` float, float, bool; invalid -> 0."""
    pred, obs = jnp.asarray(pred), jnp.asarray(obs)
    if pred.shape != obs.shape:
        raise ValueError(f"pred shape {pred.shape} != obs shape {obs.shape}")
    shape = pred.shape
    if len(shape) == 5 and shape[-1] == 1:
        pred, obs = pred[..., 0], obs[..., 0]
    elif len(shape) != 4:
        raise ValueError(f"fields must be [B, T, H, W] or [B, T, H, W, 1]; got shape {shape}")
    dtype = jnp.promote_types(pred.dtype, jnp.float32)
    pred, obs = pred.astype(dtype), obs.astype(dtype)
    valid = jnp.isfinite(pred) & jnp.isfinite(obs)
    if mask is not None:
        mask = jnp.asarray(mask)
        try:  # broadcast against the fields as given, then drop the channel axis
            m = jnp.broadcast_to(mask != 0, shape)
        except ValueError:
            raise ValueError(f"mask of shape {mask.shape} does not broadcast to fields of shape {shape}") from None
        valid = valid & (m[..., 0] if len(shape) == 5 else m)
    return jnp.where(valid, pred, 0), jnp.where(valid, obs, 0), valid


def _check_op(op: str) -> None:
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}; got {op!r}")


def _thresholds(thresholds) -> tuple[float, ...]:
    thr = tuple(float(t) for t in np.atleast_1d(np.asarray(thresholds, float)))
    if not thr or not all(np.isfinite(thr)):
        raise ValueError(f"thresholds must be a non-empty sequence of finite numbers; got {thresholds!r}")
    return thr


def _events(x, thresholds, op):
    """Binary events ``[n_thr, *x.shape]`` (bool)."""
    thr = jnp.asarray(thresholds, x.dtype).reshape((-1,) + (1,) * x.ndim)
    return x[None] >= thr if op == ">=" else x[None] > thr


# ------------------------------------------------------------------------ contingency
def contingency(pred, obs, thresholds: Sequence[float], mask=None, op: str = ">="):
    """Contingency counts per threshold and lead time.

    Args:
      pred, obs: ``[B, T, H, W]`` or ``[B, T, H, W, 1]``.
      thresholds: event thresholds (same unit as the fields, e.g. mm/h).
      mask: optional, broadcastable to the fields, True = valid.
      op: ``">="`` or ``">"``: the event is ``value op threshold``.
    Returns: dict ``hits``, ``misses``, ``false_alarms``, ``correct_negatives``, each an
      integer array ``[n_thr, T]`` summed over batch and pixels (valid pixels only).
    """
    _check_op(op)
    return _contingency(pred, obs, mask, _thresholds(thresholds), op)


@partial(jax.jit, static_argnums=(3, 4))  # jitted so that eager calls compile once
def _contingency(pred, obs, mask, thr, op):
    pred, obs, valid = _fields(pred, obs, mask)
    f, o = _events(pred, thr, op), _events(obs, thr, op)
    v = valid[None]

    def count(a):
        return jnp.sum(a & v, axis=(1, 3, 4))

    return {"hits": count(f & o), "misses": count(~f & o),
            "false_alarms": count(f & ~o), "correct_negatives": count(~f & ~o)}


def safe_ratio(num, den):
    """``num / den`` in float64, NaN where ``den == 0`` (never inf, no warnings)."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den != 0, num / np.where(den != 0, den, 1.0), np.nan)


def scores_from_contingency(hits, misses, false_alarms, correct_negatives) -> dict[str, np.ndarray]:
    """Categorical scores from counts (any matching shapes), as float64 numpy arrays.

    With H hits, M misses, F false alarms, R correct negatives, N = H+M+F+R:
    ``pod = H/(H+M)``; ``far = F/(H+F)``; ``csi = H/(H+M+F)``; ``bias = (H+F)/(H+M)``;
    ``hss = 2(HR - FM) / ((H+M)(M+R) + (H+F)(F+R))``;
    ``ets = (H - Hr)/(H + M + F - Hr)`` with ``Hr = (H+M)(H+F)/N``.
    A score is NaN wherever its denominator is 0 (e.g. POD and bias with no observed
    event, FAR with no forecast event, CSI with neither), never inf.
    """
    h, m, f, r = (np.asarray(a, np.float64) for a in (hits, misses, false_alarms, correct_negatives))
    n = h + m + f + r
    h_random = safe_ratio((h + m) * (h + f), n)
    return {
        "pod": safe_ratio(h, h + m),
        "far": safe_ratio(f, h + f),
        "csi": safe_ratio(h, h + m + f),
        "bias": safe_ratio(h + f, h + m),
        "hss": safe_ratio(2.0 * (h * r - f * m), (h + m) * (m + r) + (h + f) * (f + r)),
        "ets": safe_ratio(h - h_random, h + m + f - h_random),
    }


# ---------------------------------------------------------------------------- moments
def moments(pred, obs, mask=None):
    """Per-lead sums for continuous scores over valid pixels (x = pred, y = obs).

    Returns: dict of ``[T]`` arrays: ``n`` (int), ``sum_x``, ``sum_y``, ``sum_xx``,
      ``sum_yy``, ``sum_xy``, ``sum_se`` (sum of (x-y)²), ``sum_ae`` (sum of |x-y|).
    """
    return _moments(pred, obs, mask)


@jax.jit
def _moments(pred, obs, mask):
    x, y, valid = _fields(pred, obs, mask)
    axes = (0, 2, 3)
    d = x - y
    return {"n": jnp.sum(valid, axis=axes), "sum_x": jnp.sum(x, axes), "sum_y": jnp.sum(y, axes),
            "sum_xx": jnp.sum(x * x, axes), "sum_yy": jnp.sum(y * y, axes),
            "sum_xy": jnp.sum(x * y, axes), "sum_se": jnp.sum(d * d, axes),
            "sum_ae": jnp.sum(jnp.abs(d), axes)}


def scores_from_moments(mom: dict) -> dict[str, np.ndarray]:
    """``corr`` (Pearson r), ``mse``, ``rmse``, ``mae`` (float64, ``[T]``) from :func:`moments`.

    Sums are converted to float64 before the variance algebra. NaN where undefined: no
    valid pixel (all scores), fewer than 2 pixels or a constant field (``corr``).
    """
    m = {k: np.asarray(mom[k], np.float64) for k in MOMENT_KEYS}
    n = m["n"]
    cov = m["sum_xy"] - safe_ratio(m["sum_x"] * m["sum_y"], n)
    vx = m["sum_xx"] - safe_ratio(m["sum_x"] ** 2, n)
    vy = m["sum_yy"] - safe_ratio(m["sum_y"] ** 2, n)
    ok = (n >= 2) & (vx > 0) & (vy > 0)
    corr = np.where(ok, cov / np.sqrt(np.where(ok, vx * vy, 1.0)), np.nan)
    mse = safe_ratio(m["sum_se"], n)
    return {"corr": np.clip(corr, -1.0, 1.0), "mse": mse, "rmse": np.sqrt(mse), "mae": safe_ratio(m["sum_ae"], n)}


# -------------------------------------------------------------------------------- FSS
def box_sum(x, size: int):
    """Sum over a ``size x size`` window on the last two axes, zero padding outside.

    The window of output pixel ``i`` spans ``[i - size//2, i - size//2 + size - 1]`` on each
    axis, as in ``scipy.ndimage.uniform_filter(..., mode="constant")`` (which pysteps' FSS
    uses), so even sizes match too. Integer inputs give exact counts (cumulative sums).
    """
    size = int(size)
    if size < 1:
        raise ValueError(f"window size must be >= 1; got {size}")
    lo, hi = size // 2, size - 1 - size // 2
    for axis in (-2, -1):
        n = x.shape[axis]
        pad = [(0, 0)] * x.ndim
        pad[axis] = (lo + 1, hi)
        c = jnp.cumsum(jnp.pad(x, pad), axis=axis)
        x = jax.lax.slice_in_dim(c, size, size + n, axis=axis % x.ndim) - jax.lax.slice_in_dim(
            c, 0, n, axis=axis % x.ndim)
    return x


def _scales(scales) -> tuple[int, ...]:
    out = tuple(int(s) for s in scales)
    if any(s < 1 or s != float(t) for s, t in zip(out, scales)):
        raise ValueError(f"FSS scales must be positive integers (window widths in pixels); got {scales!r}")
    return out


def fss_sums(pred, obs, thresholds, scales, mask=None, op: str = ">=", centres: str = "valid"):
    """Streamable FSS sums per threshold, scale and lead.

    Events (``value op threshold``) at invalid pixels are set to "no event"; fractions are
    box means over ``scale x scale`` windows with zero padding (divided by ``scale**2``
    everywhere, as pysteps does). ``centres="valid"`` sums the products over valid pixels
    only; ``centres="all"`` over every pixel, which reproduces pysteps' ``fss`` on fields
    with NaN exactly (pysteps turns NaN into "no event" and sums over the whole grid).

    Returns: dict ``fss_ff`` (sum of Pf²), ``fss_fo`` (sum of Pf·Po), ``fss_oo`` (sum of Po²),
      each float ``[n_thr, n_scales, T]``.
    """
    _check_op(op)
    if centres not in ("valid", "all"):
        raise ValueError(f"centres must be 'valid' or 'all'; got {centres!r}")
    return _fss_sums(pred, obs, mask, _thresholds(thresholds), _scales(scales), op, centres)


@partial(jax.jit, static_argnums=(3, 4, 5, 6))
def _fss_sums(pred, obs, mask, thr, scl, op, centres):
    pred, obs, valid = _fields(pred, obs, mask)
    f = (_events(pred, thr, op) & valid[None]).astype(jnp.int32)
    o = (_events(obs, thr, op) & valid[None]).astype(jnp.int32)
    w = valid[None].astype(pred.dtype) if centres == "valid" else 1.0
    out = {k: [] for k in FSS_KEYS}
    for s in scl:
        pf = box_sum(f, s).astype(pred.dtype) / (s * s)
        po = box_sum(o, s).astype(pred.dtype) / (s * s)
        for key, prod in zip(FSS_KEYS, (pf * pf, pf * po, po * po)):
            out[key].append(jnp.sum(prod * w, axis=(1, 3, 4)))
    return {k: jnp.stack(v, axis=1) if v else jnp.zeros((len(thr), 0, pred.shape[1]), pred.dtype)
            for k, v in out.items()}


def fss_from_sums(fss_ff, fss_fo, fss_oo) -> np.ndarray:
    """``FSS = 1 - sum (Pf - Po)² / (sum Pf² + sum Po²)``; NaN where neither field has an event."""
    ff, fo, oo = (np.asarray(a, np.float64) for a in (fss_ff, fss_fo, fss_oo))
    return 1.0 - safe_ratio(ff - 2.0 * fo + oo, ff + oo)


# --------------------------------------------------------------------------- verifier
class Verifier(NamedTuple):
    """Streaming verifier built by :func:`make_verifier` (pure functions + static settings).

    ``acc = v.init(n_leads)``; ``acc = v.update(acc, pred, obs, mask)`` (jitted) per batch;
    ``v.merge(a, b)`` adds two accumulators (e.g. from different hosts); ``v.compute(acc)``
    returns numpy scores. The accumulator is a plain dict of arrays (a pytree).
    """

    thresholds: tuple[float, ...]
    fss_scales: tuple[int, ...]
    op: str
    fss_centres: str
    init: Callable[[int], dict]
    update: Callable[..., dict]
    merge: Callable[[dict, dict], dict]
    compute: Callable[[dict], dict]


def make_verifier(thresholds: Sequence[float], fss_scales: Sequence[int] = (), op: str = ">=",
                  fss_centres: str = "valid") -> Verifier:
    """Build a streaming verifier for fields ``[B, T, H, W(, 1)]``.

    ``compute(acc)`` returns float64/int64 numpy arrays: the contingency counts and
    ``csi``, ``pod``, ``far``, ``hss``, ``ets``, ``bias`` ``[n_thr, T]``
    (:func:`scores_from_contingency`); ``corr``, ``mse``, ``rmse``, ``mae``, ``n`` ``[T]``
    (:func:`scores_from_moments`); ``fss`` ``[n_thr, n_scales, T]`` (when scales are
    given; see :func:`fss_sums` for ``fss_centres``); and ``thresholds``, ``fss_scales``.
    """
    _check_op(op)
    thr, scl = _thresholds(thresholds), _scales(fss_scales)
    if fss_centres not in ("valid", "all"):
        raise ValueError(f"fss_centres must be 'valid' or 'all'; got {fss_centres!r}")

    def init(n_leads: int) -> dict:
        cnt = {k: jnp.zeros((len(thr), n_leads), int) for k in CONTINGENCY_KEYS}
        mom = {k: jnp.zeros((n_leads,), int if k == "n" else float) for k in MOMENT_KEYS}
        fss = {k: jnp.zeros((len(thr), len(scl), n_leads), float) for k in FSS_KEYS} if scl else {}
        return {**cnt, **mom, **fss}

    def update(acc: dict, pred, obs, mask=None) -> dict:
        new = {**contingency(pred, obs, thr, mask, op), **moments(pred, obs, mask)}
        if scl:
            new.update(fss_sums(pred, obs, thr, scl, mask, op, fss_centres))
        if set(new) != set(acc) or any(acc[k].shape != new[k].shape for k in acc):
            raise ValueError("accumulator does not match this verifier or these fields "
                             f"(lead times: fields have {pred.shape[1]}); build it with init(n_leads)")
        return {k: acc[k] + new[k].astype(acc[k].dtype) for k in acc}

    def merge(a: dict, b: dict) -> dict:
        return jax.tree_util.tree_map(jnp.add, a, b)

    def compute(acc: dict) -> dict[str, Any]:
        out = {k: np.asarray(acc[k]) for k in CONTINGENCY_KEYS}
        out.update(scores_from_contingency(*(out[k] for k in CONTINGENCY_KEYS)))
        out.update(scores_from_moments(acc))
        out["n"] = np.asarray(acc["n"])
        if scl:
            out["fss"] = fss_from_sums(*(acc[k] for k in FSS_KEYS))
        out["thresholds"], out["fss_scales"] = np.asarray(thr), np.asarray(scl, int)
        return out

    return Verifier(thr, scl, op, fss_centres, init, jax.jit(update), merge, compute)


def named_scores(results: dict, names: Sequence[str] = ("csi", "pod", "far")) -> dict[str, list]:
    """Flatten :meth:`Verifier.compute` output for JSON: ``{"csi_0.5": [per lead], ...}``.

    Per-threshold scores get a ``_<threshold>`` suffix (the float as Python prints it:
    ``csi_0.5``, ``csi_2.0``), FSS gets ``fss_<threshold>_<scale>``; per-lead scores
    (``corr``, ``mse``, ...) keep their
    name. NaN stays NaN (write JSON with ``allow_nan`` or replace it first).
    """
    thr, scl = results["thresholds"], results.get("fss_scales", ())
    out: dict[str, list] = {}
    for name in names:
        val = np.asarray(results[name])
        if name == "fss":
            for i, t in enumerate(thr):
                for j, s in enumerate(scl):
                    out[f"fss_{float(t)}_{int(s)}"] = val[i, j].tolist()
        elif val.ndim == 2:
            for i, t in enumerate(thr):
                out[f"{name}_{float(t)}"] = val[i].tolist()
        else:
            out[name] = val.tolist()
    return out


def json_safe(obj):
    """Results -> JSON-able (NaN/inf -> None, numpy -> python)."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
