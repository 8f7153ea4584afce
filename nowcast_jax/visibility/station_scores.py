"""Scores per station and pooled, with day-block bootstrap intervals (numpy only).

A pooled run (several stations, :mod:`nowcast_jax.visibility.sources`) is judged per
station and over all of them. :func:`per_station` gives each station of the split the
scores of :func:`~nowcast_jax.visibility.scores.score_all` (``results["per_station"][s]``);
:func:`day_block_bootstrap` the uncertainty of the model's gain over a reference
forecaster (persistence): whole days (a window's UTC end date, per station) are resampled
with replacement, so the serial correlation of fog hours within a day moves together.

Bootstrap layout (lists over horizons): ``days`` (blocks), ``resamples``, ``rmse_change``
(``100 (rmse_model - rmse_ref) / rmse_ref``, negative is better) with ``rmse_change_q05`` /
``rmse_change_q95``, and per threshold ``T`` ``csi_diff_T`` (model - reference, positive is
better) with ``_q05`` / ``_q95`` and ``p_not_better_T`` (share of resamples where the model's
CSI is not above the reference's).
"""

from __future__ import annotations

import warnings

import numpy as np

from nowcast_jax.visibility import scores

BOOTSTRAP_RESAMPLES = 1000


def _csi(counts: np.ndarray) -> np.ndarray:
    """``[..., 3, H]`` hits, misses, false alarms -> CSI ``[..., H]`` (NaN where undefined)."""
    total = counts.sum(-2)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, counts[..., 0, :] / np.maximum(total, 1e-12), np.nan)


def _per_day(values: np.ndarray, inv: np.ndarray, n_days: int) -> np.ndarray:
    out = np.zeros((n_days, *values.shape[1:]))
    np.add.at(out, inv, values.astype(np.float64))
    return out


def day_block_bootstrap(model: dict, ref: dict, obs, days, *, thresholds=(1000.0,), event_threshold=1000.0,
                        mask=None, n: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict:
    """The model's RMSE gain and CSI difference over ``ref`` with 5-95 % intervals.

    Args:
      model, ref: ``{"value": [N, H] m, "event": [N, H] bool or None}`` (the event at
        ``event_threshold``, e.g. the classifier's; None = value below the threshold).
      obs: ``[N, H]`` observed visibility (m); ``days``: ``[N]`` block label of each window
        (e.g. station and UTC end date); ``mask``: ``[N]`` windows scored (default all).
    """
    obs = np.asarray(obs, np.float64)
    keep = np.ones(len(obs), bool) if mask is None else np.asarray(mask, bool)
    labels, inv = np.unique(np.asarray(days)[keep], return_inverse=True)
    obs, d = obs[keep], len(labels)
    sq = {k: _per_day((np.asarray(f["value"], np.float64)[keep] - obs) ** 2, inv, d) for k, f in
          (("model", model), ("ref", ref))}
    count = _per_day(np.ones_like(obs), inv, d)
    idx = np.random.default_rng(seed).integers(0, max(d, 1), (n, d))

    def rmse_change(rows):
        with np.errstate(invalid="ignore", divide="ignore"):
            m, r = (np.sqrt(sq[k][rows].sum(-2) / count[rows].sum(-2)) for k in ("model", "ref"))
            return 100.0 * (m - r) / r

    out = {"days": int(d), "resamples": int(n), "rmse_change": rmse_change(np.arange(d)).tolist()}
    out.update(_interval("rmse_change", rmse_change(idx)))
    for t in thresholds:
        name, seen = scores.thr_name(t), obs < float(t)
        csi = {}
        for key, f in (("model", model), ("ref", ref)):
            decided = f.get("event") is not None and float(t) == float(event_threshold)
            event = f["event"] if decided else np.asarray(f["value"]) < float(t)
            event = np.asarray(event, bool)[keep]
            cells = np.stack([event & seen, ~event & seen, event & ~seen], axis=1)     # [N, 3, H]
            csi[key] = _per_day(cells, inv, d)
        diff = _csi(csi["model"][idx].sum(1)) - _csi(csi["ref"][idx].sum(1))
        out[f"csi_diff_{name}"] = (_csi(csi["model"].sum(0)) - _csi(csi["ref"].sum(0))).tolist()
        out.update(_interval(f"csi_diff_{name}", diff))
        out[f"p_not_better_{name}"] = np.mean(~(diff > 0), axis=0).tolist()
    return out


def _interval(name: str, draws: np.ndarray) -> dict:
    """5 % and 95 % quantiles over resamples (NaN where no resample defines the score)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = np.nanquantile(draws, [0.05, 0.95], axis=0)
    return {f"{name}_q05": lo.tolist(), f"{name}_q95": hi.tolist()}


def day_blocks(windows) -> np.ndarray:
    """``[N]`` block label of each window: its station and UTC end date."""
    day = windows.times.astype("datetime64[D]").astype(str)
    return np.char.add(np.char.add(windows.station.astype(str), "|"), day)


def per_station(forecasts: dict, windows, *, hazy, **score_kw) -> dict:
    """Station -> :func:`~nowcast_jax.visibility.scores.score_all` of its windows, plus
    ``bootstrap`` (:func:`day_block_bootstrap` vs persistence) when both forecasters exist."""
    out = {}
    for name in sorted(set(windows.station.tolist())):
        sel = windows.station == name
        fc = {k: {"value": f["value"][sel], "event": None if f.get("event") is None else f["event"][sel]}
              for k, f in forecasts.items()}
        sub = windows.take(sel)
        out[name] = scores.score_all(fc, sub, hazy=np.asarray(hazy)[sel], **score_kw)
        out[name]["bootstrap"] = bootstrap_vs_persistence(fc, sub, score_kw.get("thresholds", (1000.0,)),
                                                          score_kw.get("event_threshold", 1000.0))
    return out


def bootstrap_vs_persistence(forecasts: dict, windows, thresholds=(1000.0,), event_threshold=1000.0) -> dict | None:
    """:func:`day_block_bootstrap` of the model vs persistence on the windows every
    forecaster forecasts (None without both)."""
    if "model" not in forecasts or "persistence" not in forecasts:
        return None
    shared = scores.shared_windows(forecasts, windows.y)
    return day_block_bootstrap(forecasts["model"], forecasts["persistence"], windows.y, day_blocks(windows),
                               thresholds=tuple(thresholds), event_threshold=event_threshold, mask=shared)


def _num(v) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.3f}"


def _cell(boot: dict | None, key: str, j: int, fmt: str) -> str:
    if not boot or not np.isfinite(boot[key][j]):
        return "n/a"
    return f"{fmt.format(boot[key][j])} [{fmt.format(boot[key + '_q05'][j])}, {fmt.format(boot[key + '_q95'][j])}]"


def station_table(results: dict, horizons_hours, threshold: float = 1000.0) -> str:
    """Markdown: per station and pooled, per horizon the fog cases (observed < ``threshold``),
    CSI of the model and persistence, the model's RMSE gain vs persistence and vs the MLP
    (%), and the bootstrap's RMSE gain and CSI difference with their 5-95 % intervals."""
    name = scores.thr_name(threshold)
    rows = [("pooled", results)] + sorted((results.get("per_station") or {}).items())
    lines = ["### Per station (day-block bootstrap vs persistence, 5-95 %)", "",
             "| station | horizon | windows | fog | CSI model | CSI persistence | RMSE gain vs persistence (%) "
             "| RMSE gain vs MLP (%) | CSI difference |", "|---|---|---|---|---|---|---|---|---|"]
    for station, res in rows:
        p, m, boot = res["persistence"], res["model"], res.get("bootstrap")
        mlp = res.get("gain_vs_mlp", {}).get("rmse")
        for j, h in enumerate(horizons_hours):
            fog = p[f"hits_{name}"][j] + p[f"misses_{name}"][j]
            cells = [station, f"+{h:g} h", str(m["n"][j]), str(fog), _num(m[f"csi_{name}"][j]),
                     _num(p[f"csi_{name}"][j]), _cell(boot, "rmse_change", j, "{:+.1f}"),
                     "n/a" if mlp is None or not np.isfinite(mlp[j]) else f"{mlp[j]:+.1f}",
                     _cell(boot, f"csi_diff_{name}", j, "{:+.3f}")]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
