"""Station (point) verification, per forecast horizon, in numpy (Li et al. 2019 style).

Inputs are host arrays ``pred``, ``obs`` of shape ``[N, n_h]`` (N forecasts, one column per
horizon) or ``[N]`` (one horizon). A pair is used only where ``mask`` (optional,
broadcastable, True = valid) holds and both values are finite; NaN is never propagated
into a score silently. Every score is NaN when it is undefined (no valid pair, zero
variance, empty denominator), never inf.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nowcast_jax.metrics import safe_ratio, scores_from_contingency

BELOW_OPS = ("<", "<=")


def _pairs(pred, obs, mask=None):
    """Return float64 ``pred``, ``obs`` (``[N, n_h]``) and the bool validity of each pair."""
    pred, obs = np.asarray(pred, np.float64), np.asarray(obs, np.float64)
    if pred.shape != obs.shape:
        raise ValueError(f"pred shape {pred.shape} != obs shape {obs.shape}")
    if pred.ndim == 1:
        pred, obs = pred[:, None], obs[:, None]
        mask = None if mask is None else np.asarray(mask).reshape(np.shape(mask) + (1,))
    if pred.ndim != 2:
        raise ValueError(f"station arrays must be [N] or [N, n_h]; got shape {pred.shape}")
    valid = np.isfinite(pred) & np.isfinite(obs)
    if mask is not None:
        try:
            valid &= np.broadcast_to(np.asarray(mask) != 0, pred.shape)
        except ValueError:
            raise ValueError(f"mask of shape {np.shape(mask)} does not broadcast to {pred.shape}") from None
    return pred, obs, valid


def mean_absolute_error(pred, obs, mask=None) -> np.ndarray:
    """Mean absolute error per horizon ``[n_h]``."""
    p, o, v = _pairs(pred, obs, mask)
    return safe_ratio(np.where(v, np.abs(p - o), 0).sum(0), v.sum(0))


def root_mean_squared_error(pred, obs, mask=None) -> np.ndarray:
    """Root mean squared error per horizon ``[n_h]``."""
    p, o, v = _pairs(pred, obs, mask)
    return np.sqrt(safe_ratio(np.where(v, (p - o) ** 2, 0).sum(0), v.sum(0)))


def _corr_columns(p, o, v) -> np.ndarray:
    """Pearson r of each column over its valid rows (two-pass; NaN if n < 2 or constant)."""
    n = v.sum(0)
    mp = safe_ratio(np.where(v, p, 0).sum(0), n)
    mo = safe_ratio(np.where(v, o, 0).sum(0), n)
    dp, do = np.where(v, p - mp, 0), np.where(v, o - mo, 0)
    cov, vp, vo = (dp * do).sum(0), (dp * dp).sum(0), (do * do).sum(0)
    ok = (n >= 2) & (vp > 0) & (vo > 0)
    r = np.where(ok, cov / np.sqrt(np.where(ok, vp * vo, 1.0)), np.nan)
    return np.clip(r, -1.0, 1.0)


def pearson_r(pred, obs, mask=None) -> np.ndarray:
    """Pearson correlation per horizon ``[n_h]`` over valid pairs."""
    return _corr_columns(*_pairs(pred, obs, mask))


def _row_steps(n: int, times, step) -> np.ndarray:
    """Integer time index of each row (rows may skip steps; order is checked by the caller)."""
    if times is None:
        return np.arange(n)
    t = np.asarray(times)
    if t.shape != (n,):
        raise ValueError(f"times must have shape ({n},) (one per row); got {t.shape}")
    if np.issubdtype(t.dtype, np.datetime64):
        if step is None:
            raise ValueError("times are datetime64: give step (e.g. np.timedelta64(1, 'h'))")
        q = (t - t.min()) / np.timedelta64(step)
        if not np.allclose(q, np.round(q)):
            raise ValueError("times are not on a regular grid of the given step")
        t = np.round(q).astype(np.int64)
    elif not np.issubdtype(t.dtype, np.integer):
        raise ValueError(f"times must be integers (step indices) or datetime64; got {t.dtype}")
    return t.astype(np.int64)


def _partner_rows(t: np.ndarray, groups, lag: int) -> tuple[np.ndarray, np.ndarray]:
    """For each row, the row of the same group at time ``t - lag`` (index, exists?)."""
    n = len(t)
    g = np.zeros(n, int) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1]
    j, has = np.zeros(n, int), np.zeros(n, bool)
    for grp in np.unique(g):
        rows = np.flatnonzero(g == grp)
        tg = t[rows]
        if np.any(np.diff(tg) <= 0):
            raise ValueError("times must be strictly increasing (within each group)")
        k = np.searchsorted(tg, tg - lag)
        ok = (k < len(tg)) & (tg[np.minimum(k, len(tg) - 1)] == tg - lag)
        j[rows[ok]], has[rows] = rows[k[ok]], ok
    return j, has


def lag_correlation(pred, obs, max_lag: int, mask=None, times=None, step=None, groups=None) -> np.ndarray:
    """Correlation between the forecast and the observation ``lag`` steps *earlier*.

    Definition: with ``f(t)`` the forecast valid at time ``t`` and ``o(t)`` the observation at
    ``t``, ``r(L) = corr_t(f(t), o(t - L))`` for ``L = 0..max_lag`` (``r(0)`` is the plain
    Pearson r). A forecast that merely copies the latest observation (persistence at
    horizon h) peaks at ``L = h``; a skilful forecast peaks at ``L = 0``. This is the "time
    delay" diagnostic of the visibility-LSTM literature.

    Args:
      pred, obs: ``[N, n_h]`` or ``[N]``; column ``h`` holds forecasts and observations at the
        *valid* time of row ``i`` (issue time of row i plus horizon h), rows in time order.
      max_lag: largest lag in steps (>= 0).
      mask: optional validity, broadcastable to the arrays (applied to each end of a pair).
      times: optional ``[N]`` step index (int) or datetime64 (then give ``step``) of each
        row's issue time, strictly increasing (within a group); rows may be missing (gaps).
        None = rows are consecutive steps.
      groups: optional ``[N]`` labels (e.g. station ids): rows pair only within a group,
        and one correlation is computed over the pooled pairs of all groups.
    Returns: ``[n_h, max_lag + 1]`` (``[max_lag + 1]`` for 1-D input); NaN where fewer
      than 2 pairs or a constant series. Pairs exist only where the row ``L`` steps earlier
      exists (same group) and both ends are valid.
    """
    if int(max_lag) != max_lag or max_lag < 0:
        raise ValueError(f"max_lag must be a non-negative integer; got {max_lag!r}")
    one_d = np.ndim(pred) == 1
    p, o, _ = _pairs(pred, obs, mask)  # validates shapes and the mask
    m = np.ones(p.shape, bool)
    if mask is not None:
        m = np.broadcast_to(np.reshape(np.asarray(mask) != 0, np.shape(mask) + (1,) * one_d), p.shape)
    vf, vo = m & np.isfinite(p), m & np.isfinite(o)  # forecast at t, observation at t - L
    if groups is not None and np.shape(groups) != (p.shape[0],):
        raise ValueError(f"groups must have shape ({p.shape[0]},) (one per row); got {np.shape(groups)}")
    t = _row_steps(p.shape[0], times, step)
    out = np.full((p.shape[1], int(max_lag) + 1), np.nan)
    for lag in range(int(max_lag) + 1):
        j, has = _partner_rows(t, groups, lag)
        out[:, lag] = _corr_columns(p, o[j], vf & vo[j] & has[:, None])
    return out[0] if one_d else out


def below_threshold_contingency(pred, obs, thresholds: Sequence[float] = (1000.0,), mask=None,
                                op: str = "<") -> dict[str, np.ndarray]:
    """Contingency of the event *value below threshold* (e.g. visibility < 1000 m).

    Args:
      pred, obs: ``[N, n_h]`` or ``[N]`` in the threshold's unit (metres by default).
      thresholds: one or more thresholds; op: ``"<"`` (default) or ``"<="``.
    Returns: int64 ``hits``, ``misses``, ``false_alarms``, ``correct_negatives`` and float64
      ``pod``, ``far``, ``csi`` (plus ``hss``, ``ets``, ``bias``), each ``[n_thr, n_h]``;
      and ``thresholds``. Scores are NaN where undefined (see
      :func:`nowcast_jax.metrics.scores_from_contingency`).
    """
    if op not in BELOW_OPS:
        raise ValueError(f"op must be one of {BELOW_OPS}; got {op!r}")
    thr = np.atleast_1d(np.asarray(thresholds, np.float64))
    if thr.ndim != 1 or thr.size == 0 or not np.all(np.isfinite(thr)):
        raise ValueError(f"thresholds must be a non-empty 1-D sequence of finite numbers; got {thresholds!r}")
    p, o, v = _pairs(pred, obs, mask)
    cmp = np.less if op == "<" else np.less_equal
    f = cmp(p[None], thr[:, None, None])
    e = cmp(o[None], thr[:, None, None])
    vv = v[None]
    counts = {"hits": (f & e & vv).sum(1), "misses": (~f & e & vv).sum(1),
              "false_alarms": (f & ~e & vv).sum(1), "correct_negatives": (~f & ~e & vv).sum(1)}
    counts = {k: c.astype(np.int64) for k, c in counts.items()}
    return {**counts, **scores_from_contingency(*counts.values()), "thresholds": thr}


def station_scores(pred, obs, mask=None, thresholds: Sequence[float] = (1000.0,), max_lag: int = 0,
                   times=None, step=None, op: str = "<", groups=None) -> dict[str, np.ndarray]:
    """All station scores per horizon: ``mae``, ``rmse``, ``pearson_r`` ``[n_h]``, ``n``
    (valid pairs) ``[n_h]``, ``lag_correlation`` ``[n_h, max_lag + 1]`` (``times``, ``step``,
    ``groups`` as in :func:`lag_correlation`) and the below-threshold contingency of
    :func:`below_threshold_contingency` ``[n_thr, n_h]``."""
    if np.ndim(pred) == 1:  # one horizon: keep every output 2-D / [1] alike
        pred, obs = np.asarray(pred)[:, None], np.asarray(obs)[:, None]
        mask = None if mask is None else np.asarray(mask).reshape(np.shape(mask) + (1,))
    _, _, v = _pairs(pred, obs, mask)
    out = {"n": v.sum(0).astype(np.int64), "mae": mean_absolute_error(pred, obs, mask),
           "rmse": root_mean_squared_error(pred, obs, mask),
           "pearson_r": pearson_r(pred, obs, mask),
           "lag_correlation": lag_correlation(pred, obs, max_lag, mask, times, step, groups)}
    out.update(below_threshold_contingency(pred, obs, thresholds, mask, op))
    return out


def percent_change(model, reference):
    """``100 * (model - reference) / reference`` elementwise (float64; NaN where reference is 0).

    For error scores (RMSE, MAE) negative means the model improves on the reference.
    """
    return 100.0 * safe_ratio(np.asarray(model, np.float64) - np.asarray(reference, np.float64), reference)
