"""The paper-style figures of the visibility evaluation (Li et al. 2019, Figs. 3 and 4).

matplotlib's ``Figure`` only (never pyplot), so the caller's backend and figures are left alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nowcast_jax.visibility.scores import FORECASTER_ORDER, valid_times


def _figure(**kwargs):
    """A bare ``matplotlib.figure.Figure`` (not pyplot: the caller's backend and figures are
    left alone; ``savefig`` renders with Agg for PNG)."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def lowest_event(windows, horizons_hours, pad_hours: float = 36.0):
    """(station, centre valid time, row mask) around the lowest observed visibility at the
    first horizon: rows of that station whose first valid time lies within ``pad_hours``."""
    valid = valid_times(windows.times, horizons_hours)
    i0 = int(np.argmin(windows.y[:, 0]))
    station, centre = windows.station[i0], valid[i0, 0]
    pad = np.timedelta64(int(pad_hours * 3600), "s")
    rows = (windows.station == station) & (np.abs(valid[:, 0] - centre) <= pad)
    return station, centre, rows


def plot_event(forecasts: dict, windows, horizons_hours, step, path, pad_hours: float = 36.0) -> Path:
    """Paper Fig. 3: observed vs forecast visibility through the lowest-visibility event of
    the split, at the first and last horizon (one panel each). Writes ``path`` (PNG)."""
    station, centre, rows = lowest_event(windows, horizons_hours, pad_hours)
    valid = valid_times(windows.times, horizons_hours)[rows]
    js = sorted({0, len(horizons_hours) - 1})
    fig = _figure(figsize=(9, 3.2 * len(js)))
    axes = fig.subplots(len(js), 1, squeeze=False)
    for ax, j in zip(axes[:, 0], js):
        t = valid[:, j].astype("datetime64[m]").astype(object)
        ax.plot(t, windows.y[rows, j], "k.-", lw=2, label="observed")
        for name in FORECASTER_ORDER:
            if name in forecasts:
                ax.plot(t, forecasts[name]["value"][rows, j], ".-", lw=1, label=name)
        ax.axhline(1000.0, color="grey", ls=":", lw=1)
        ax.set_ylabel("visibility (m)")
        ax.set_title(f"{station}: +{horizons_hours[j]:g} h forecasts around {str(centre)[:16]} UTC")
        ax.legend(fontsize=8, ncol=3)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)


def plot_lag_correlation(results: dict, horizons_hours, path) -> Path:
    """Paper Fig. 4: r(forecast at t, observation at t - L) against L, one panel per
    horizon, one curve per forecaster. Writes ``path`` (PNG)."""
    lags = sorted(int(k[6:]) for k in results["model"] if k.startswith("lag_r_"))
    n_h = len(results["model"]["rmse"])
    fig = _figure(figsize=(4 * n_h, 3.2))
    axes = fig.subplots(1, n_h, squeeze=False)
    for j, ax in enumerate(axes[0]):
        for name in FORECASTER_ORDER:
            if name in results:
                ax.plot(lags, [results[name][f"lag_r_{L}"][j] for L in lags], "o-", label=name)
        h = horizons_hours[j] if horizons_hours is not None else j + 1
        ax.set_title(f"+{h:g} h")
        ax.set_xlabel("lag L (steps)")
        ax.set_ylabel("r")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)
