"""Scores and tables of the visibility evaluation (numpy only; the figures are in plots.py).

Layout of the results (:func:`score_all`), every score a list over horizons:

* ``results[F]`` for each forecaster ``F`` in ``model``, ``persistence``, ``climatology``
  and ``mlp`` (when given), over the windows of the split that every forecaster forecasts:
  ``n`` (pairs), ``rmse``, ``mae``, ``me`` (mean error, forecast - observed; metres),
  ``r`` (Pearson), and per threshold ``T`` (``eval.thresholds_m``, named like ``1000``):
  ``hits_T``, ``misses_T``, ``false_alarms_T``, ``correct_negatives_T``, ``pod_T``,
  ``far_T``, ``csi_T``, ``hss_T``; and ``lag_r_L`` for ``L = 0..eval.max_lag`` (the
  correlation of the forecast valid at t with the observation at t - L steps, pooled over
  stations; see :func:`nowcast_jax.station_metrics.lag_correlation`).
* ``results[F + "/hazy"]``: the same scores (without ``lag_r_*``) over the windows that
  start below the visibility cap ("hazy starts").
* ``results["windows"]``: ``n`` windows scored, of them ``hazy``, and ``excluded`` (windows
  of the split some forecaster lacks, e.g. an MLP with other inputs: every forecaster is
  scored on the same windows, so the gains compare like with like).
* ``results["gain_vs_persistence"]`` and ``["gain_vs_mlp"]`` (+ ``"/hazy"``): signed
  percent change of the model's ``rmse``, ``mae``, ``r`` and ``csi_T`` relative to that
  reference, ``100 * (model - ref) / ref``: negative is better for rmse/mae, positive for
  r and CSI.

Undefined scores (e.g. FAR with no forecast event, r of a constant forecast) are NaN.
"""

from __future__ import annotations


import numpy as np

from nowcast_jax import station_metrics as sm

GAIN_SCORES = ("rmse", "mae", "r")
FORECASTER_ORDER = ("model", "mlp", "persistence", "climatology")


def thr_name(t: float) -> str:
    """1000.0 -> ``"1000"``; 500.5 -> ``"500.5"``."""
    return f"{float(t):g}"


# ------------------------------------------------------------------------------ climatology
def valid_times(times: np.ndarray, horizons_hours) -> np.ndarray:
    """``[N]`` issue times -> ``[N, H]`` datetime64[s] valid times."""
    dh = np.array([np.timedelta64(int(round(h * 3600)), "s") for h in horizons_hours])
    return times.astype("datetime64[s]")[:, None] + dh[None, :]


def _hour_of_day(t: np.ndarray) -> np.ndarray:
    return ((t - t.astype("datetime64[D]")) // np.timedelta64(1, "h")).astype(np.int64)


def diurnal_climatology(train) -> dict:
    """Mean training visibility per station and UTC hour of day.

    ``train``: StationWindows; uses the visibility at each window's end (``start_vis [N]``
    at ``times [N]``), i.e. every training hour once. Returns ``{"stations": [S],
    "table": [S, 24] metres, "overall": float}``; an hour without data gets the station mean.
    A forecast looks the table up at the valid time (:func:`diurnal_climatology_forecast`).
    """
    hours = _hour_of_day(train.times.astype("datetime64[s]"))
    vis = train.start_vis.astype(np.float64)
    overall = float(np.mean(vis)) if len(vis) else float("nan")
    stations = sorted(set(train.station.tolist()))
    table = np.full((len(stations), 24), np.nan)
    for i, s in enumerate(stations):
        sel = train.station == s
        station_mean = float(np.mean(vis[sel]))
        for h in range(24):
            m = sel & (hours == h)
            table[i, h] = float(np.mean(vis[m])) if m.any() else station_mean
    return {"stations": stations, "table": table, "overall": overall}


def diurnal_climatology_forecast(clim: dict, windows, horizons_hours) -> np.ndarray:
    """``[N, H]`` climatological visibility at each window's valid times (metres)."""
    hours = _hour_of_day(valid_times(windows.times, horizons_hours))
    index = {s: i for i, s in enumerate(clim["stations"])}
    out = np.full(hours.shape, clim["overall"], np.float64)
    for s, i in index.items():
        sel = windows.station == s
        out[sel] = clim["table"][i][hours[sel]]
    return out


# ------------------------------------------------------------------------------ scores
def _pooled_steps(windows, step: str) -> np.ndarray:
    """Integer step index of each window's end time, offset per station so that stations
    never overlap (lag pairs then form within a station only)."""
    import pandas as pd

    step_s = int(pd.Timedelta(step).total_seconds())
    t = windows.times.astype("datetime64[s]").astype(np.int64) // step_s
    t = t - (t.min() if len(t) else 0)
    span = int(t.max()) + 1000 if len(t) else 0
    codes = np.unique(windows.station, return_inverse=True)[1]
    return t + codes.astype(np.int64) * span


def forecaster_scores(value, obs, mask=None, *, thresholds=(1000.0,), event=None,
                      event_threshold=1000.0, max_lag=None, steps=None) -> dict:
    """Scores of one forecaster: ``value``/``obs`` ``[N, H]`` metres; ``mask`` ``[N, 1]`` or
    ``[N, H]`` (True = scored); ``event [N, H]`` bool overrides the value's contingency at
    ``event_threshold``; ``max_lag`` with ``steps [N]`` (sorted per station) adds
    ``lag_r_L``. Returns score name -> list over horizons."""
    value, obs = np.asarray(value, np.float64), np.asarray(obs, np.float64)
    valid = np.isfinite(value) & np.isfinite(obs)
    if mask is not None:
        valid &= np.broadcast_to(np.asarray(mask, bool), value.shape)
    out = {"n": valid.sum(0), "rmse": sm.root_mean_squared_error(value, obs, mask), "mae": sm.mean_absolute_error(value, obs, mask),
           "me": _mean_error(value, obs, valid), "r": sm.pearson_r(value, obs, mask)}
    for t in thresholds:
        pred = value
        if event is not None and float(t) == float(event_threshold):
            # the classifier decides the event; rows without a value forecast stay out (NaN)
            pred = np.where(np.isfinite(value), np.where(event, float(t) - 1.0, float(t) + 1.0), np.nan)
        c = sm.below_threshold_contingency(pred, obs, (float(t),), mask)
        for k in ("hits", "misses", "false_alarms", "correct_negatives", "pod", "far", "csi", "hss"):
            out[f"{k}_{thr_name(t)}"] = c[k][0]
    if max_lag is not None:
        order = np.argsort(steps, kind="stable")
        lag = sm.lag_correlation(value[order], obs[order], int(max_lag), None if mask is None else
                                 np.broadcast_to(mask, value.shape)[order], times=steps[order])
        for L in range(int(max_lag) + 1):
            out[f"lag_r_{L}"] = lag[:, L]
    return {k: _to_list(v) for k, v in out.items()}


def _mean_error(value, obs, valid) -> np.ndarray:
    n = valid.sum(0)
    s = np.where(valid, value - obs, 0.0).sum(0)
    return np.where(n > 0, s / np.maximum(n, 1), np.nan)


def _to_list(v) -> list:
    v = np.asarray(v)
    if np.issubdtype(v.dtype, np.integer):
        return [int(a) for a in v]
    return [float(a) for a in v]


def align_forecast(fc: dict, station, times, to_station, to_times) -> dict:
    """Re-index a forecast ``{"value": [N, H], "event": [N, H] or None}`` of windows keyed
    by ``(station [N], times [N])`` onto the windows ``(to_station [M], to_times [M])``;
    windows it lacks get NaN (value) / False (event) and drop out of the value scores."""
    index = {(s, t): i for i, (s, t) in enumerate(zip(station.tolist(), times.tolist()))}
    rows = np.array([index.get(k, -1) for k in zip(to_station.tolist(), to_times.tolist())], np.int64)
    have = rows >= 0
    value = np.where(have[:, None], fc["value"][np.maximum(rows, 0)], np.nan)
    event = None if fc.get("event") is None else fc["event"][np.maximum(rows, 0)] & have[:, None]
    return {"value": value, "event": event}


def shared_windows(forecasts: dict, obs) -> np.ndarray:
    """``[N]`` bool: windows where the observations and every forecaster's value are finite
    at every horizon (the common set all forecasters are scored on)."""
    ok = np.isfinite(np.asarray(obs, np.float64)).all(axis=1)
    for f in forecasts.values():
        ok &= np.isfinite(np.asarray(f["value"], np.float64)).all(axis=1)
    return ok


def gains(model: dict, ref: dict) -> dict:
    """Percent change ``100 (model - ref) / ref`` of rmse, mae, r and every csi_T."""
    names = list(GAIN_SCORES) + [k for k in model if k.startswith("csi_")]
    return {k: _to_list(sm.percent_change(model[k], ref[k])) for k in names if k in ref}


def score_all(forecasts: dict, windows, *, hazy: np.ndarray, thresholds=(1000.0,),
              event_threshold=1000.0, max_lag=6, step="1h") -> dict:
    """Every forecaster's scores over all and hazy-start windows, plus gains (see the
    module docstring). ``forecasts``: name -> ``{"value": [N, H] m, "event": [N, H] bool
    or None}``; ``windows``: the split's StationWindows; ``hazy [N]`` bool.

    Every forecaster is scored on the same windows: those where all of them (and the
    observations) are finite at every horizon, e.g. the windows an MLP with other inputs
    also has (:func:`align_forecast` leaves the others NaN). ``results["windows"]`` counts
    them: ``n`` (scored), ``hazy`` (scored hazy starts), ``excluded`` (windows of the split
    left out because a forecaster lacks them)."""
    steps = _pooled_steps(windows, step)
    shared = shared_windows(forecasts, windows.y)
    mask = shared[:, None]
    hazy_mask = mask & np.asarray(hazy, bool)[:, None]
    results = {"windows": {"n": int(shared.sum()), "hazy": int(hazy_mask.sum()),
                           "excluded": int((~shared).sum())}}
    for name in [f for f in FORECASTER_ORDER if f in forecasts] + [f for f in forecasts if f not in FORECASTER_ORDER]:
        f = forecasts[name]
        kw = dict(thresholds=thresholds, event=f.get("event"), event_threshold=event_threshold)
        results[name] = forecaster_scores(f["value"], windows.y, mask, max_lag=max_lag, steps=steps, **kw)
        results[f"{name}/hazy"] = forecaster_scores(f["value"], windows.y, hazy_mask, **kw)
    for ref in ("persistence", "mlp"):
        if ref in forecasts and "model" in forecasts:
            results[f"gain_vs_{ref}"] = gains(results["model"], results[ref])
            results[f"gain_vs_{ref}/hazy"] = gains(results["model/hazy"], results[f"{ref}/hazy"])
    return results


# ------------------------------------------------------------------------------ tables
def _fmt(v, score: str) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "n/a"
    if score in ("rmse", "mae", "me") or score.startswith(("hits", "misses", "false", "correct", "n")):
        return f"{v:.0f}"
    return f"{v:.3f}"


def _horizon_labels(results: dict, horizons_hours) -> list:
    n = len(results["model"]["rmse"])
    if horizons_hours is None or len(horizons_hours) != n:
        return [f"h{i + 1}" for i in range(n)]
    return [f"+{h:g} h" for h in horizons_hours]


def _section(results: dict, suffix: str, labels: list, title: str) -> list:
    model = results["model" + suffix]
    thr = [k[4:] for k in model if k.startswith("csi_")]
    scores = ["rmse", "mae", "r"] + [s for t in thr for s in (f"csi_{t}", f"pod_{t}", f"far_{t}")]
    n = results["model" + suffix]["n"]
    lines = [f"### {title} (pairs per horizon: {', '.join(str(v) for v in n)})", "",
             "| score | forecaster | " + " | ".join(labels) + " |",
             "|---|---|" + "---|" * len(labels)]
    for s in scores:
        for f in FORECASTER_ORDER:
            if f + suffix in results and s in results[f + suffix]:
                vals = results[f + suffix][s]
                lines.append(f"| {s} | {f} | " + " | ".join(_fmt(v, s) for v in vals) + " |")
        for ref in ("persistence", "mlp"):
            g = results.get(f"gain_vs_{ref}{suffix}", {})
            if s in g:
                lines.append(f"| {s} | model vs {ref} (%) | " + " | ".join(
                    "n/a" if not np.isfinite(v) else f"{v:+.1f}" for v in g[s]) + " |")
    return lines + [""]


def _lag_section(results: dict, labels: list) -> list:
    lags = sorted(int(k[6:]) for k in results["model"] if k.startswith("lag_r_"))
    if not lags:
        return []
    lines = ["### Lag correlation r(forecast at t, observation at t - L)", "",
             "| forecaster | horizon | " + " | ".join(f"L={L}" for L in lags) + " |",
             "|---|---|" + "---|" * len(lags)]
    for f in FORECASTER_ORDER:
        if f not in results:
            continue
        for j, lab in enumerate(labels):
            lines.append(f"| {f} | {lab} | " + " | ".join(_fmt(results[f][f'lag_r_{L}'][j], 'r') for L in lags) + " |")
    return lines + [""]


def score_tables(results: dict, horizons_hours=None) -> str:
    """Markdown tables like the paper's Tables 1-2: each score for the model, MLP,
    persistence and climatology, and the model's percent change vs persistence and MLP,
    over all windows and over hazy starts; then the lag correlations."""
    labels = _horizon_labels(results, horizons_hours)
    win = results.get("windows") or {}
    lines = []
    if win.get("excluded"):
        lines += [f"Scored on the {win['n']} windows every forecaster forecasts ({win['excluded']} windows "
                  "of the split excluded: a forecaster, e.g. the MLP, has no forecast there).", ""]
    lines += _section(results, "", labels, "All windows")
    if "model/hazy" in results:
        lines += _section(results, "/hazy", labels, "Hazy starts (visibility below the cap at issue time)")
    lines += _lag_section(results, labels)
    return "\n".join(lines).rstrip() + "\n"
