"""Serving stations: a station CSV -> a CSV of forecasts, with a raw-units forecaster.

:func:`forecast_station`: a station CSV (the training data contract) -> a CSV with one row
per station and horizon (``station, issue_time, horizon_hours, valid_time, visibility_m``).
The sidecar keys it reads are those the visibility export writes: ``features``,
``history``, ``horizons_hours``, ``step``, ``csv`` (the CSV contract of
:func:`nowcast_jax.visibility.readers.read_station_csv`, ``valid_ranges`` included),
``visibility_cap_m``, ``calm_ms``, ``variable_wind``, ``interpolate`` (variable names) and
``max_interp_steps``: a station CSV goes through the training data steps (read, clip at
the cap, grid, interpolate, features). Inputs that do not fit raise
:class:`~nowcast_jax.artifact.ServeError` saying what was expected. numpy/pandas only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nowcast_jax.artifact import ServeError


def csv_contract(sidecar: dict) -> dict:
    """Keyword arguments of ``read_station_csv`` from the sidecar (its ``csv`` contract, with
    ``valid_ranges``), as the training data path passed them."""
    contract = {k: v for k, v in dict(sidecar["csv"]).items() if k not in ("path", "visibility_cap_m")}
    if contract.get("valid_ranges") is None:
        contract.pop("valid_ranges", None)
        if sidecar.get("valid_ranges") is not None:
            contract["valid_ranges"] = sidecar["valid_ranges"]
    if contract.get("valid_ranges") is not None:
        contract["valid_ranges"] = {k: tuple(float(b) for b in v) for k, v in contract["valid_ranges"].items()}
    return contract


def station_visibility_cap(sidecar: dict) -> float | None:
    """The visibility cap (m) the training data was clipped to: ``sidecar["visibility_cap_m"]``
    (older sidecars: the CSV contract's ``visibility_cap_m``), or None."""
    cap = sidecar.get("visibility_cap_m", dict(sidecar.get("csv") or {}).get("visibility_cap_m"))
    return float(cap) if cap else None


def station_grids(sidecar: dict, csv_path, *, with_observed: bool = False):
    """The training data steps up to the features, on a new CSV: read (units, missing markers,
    ``valid_ranges``), clip visibility at the trained cap, grid on ``step``, interpolate
    short inner gaps of the ``interpolate`` variables. Returns the station grids
    (:class:`nowcast_jax.visibility.readers.StationGrid`); with ``with_observed`` also the
    neighbour-feature inputs taken before interpolation (``station_neighbours.observed_inputs``)."""
    from nowcast_jax.visibility import readers as station_io
    from nowcast_jax.visibility import neighbours as station_neighbours

    try:
        table, _ = station_io.read_station_csv(csv_path, **csv_contract(sidecar))
    except ValueError as err:  # missing columns, unknown units, unparseable times
        raise ServeError(f"{csv_path}: does not follow the forecaster's CSV contract: {err}") from err
    except FileNotFoundError as err:
        raise ServeError(f"{csv_path} not found") from err
    if table.empty:
        raise ServeError(f"{csv_path}: no rows with a valid time")
    cap = station_visibility_cap(sidecar)
    if cap is not None:  # as load_station_dataset: visibility above the cap is the cap
        table["visibility"] = table["visibility"].clip(upper=cap)
    grids, _ = station_io.to_grid(table, str(sidecar["step"]))
    observed = station_neighbours.observed_inputs(grids)
    max_steps = int(sidecar.get("max_interp_steps", 0))
    for grid in grids:
        for name in sidecar.get("interpolate", ()):
            # two-sided, so a gap at the end of the CSV (no later observation) stays missing
            grid.values[name], _ = station_io.interpolate_short_gaps(grid.values[name], max_steps)
    return (grids, observed) if with_observed else grids


def station_steps_needed(sidecar: dict) -> int:
    """Grid steps a station CSV must cover: the ``history``; with change features (e.g. the
    3 h changes of ``fog16``) also their look-back and ``max_interp_steps`` more, so that
    every look-back value, and the interpolation that may have filled it, is the one
    training computed (a look-back the CSV lacks would silently read as "no change")."""
    import pandas as pd

    from nowcast_jax.visibility import features as station_features

    hours = station_features.lookback_hours(sidecar["features"])
    if hours <= 0:
        return int(sidecar["history"])
    step_h = pd.Timedelta(str(sidecar["step"])).total_seconds() / 3600.0
    return int(sidecar["history"]) + int(round(hours / step_h)) + int(sidecar.get("max_interp_steps", 0))


def _window_problems(grid, window: np.ndarray, features: list, history: int) -> list[str]:
    """Why the last ``history`` steps of ``grid`` are no training window ([] when they are)."""
    problems = []
    gaps = int((~grid.observed[-history:]).sum())
    if gaps:
        problems.append(f"no observation in {gaps} step(s)")
    bad = [f for f, ok in zip(features, np.isfinite(window).all(axis=0)) if not ok]
    if not np.isfinite(grid.values["visibility"][-1]) and "visibility" not in bad:
        bad.append("visibility (last step)")
    if bad:
        problems.append(f"missing {bad}")
    return problems


def _neighbour_inputs(sidecar: dict, grids: list, observed: list, csv_path) -> list[dict]:
    """Per grid, the neighbour-station features the forecaster takes (``[{}, ...]`` if none).

    They compare each station with the others of the file, so the CSV must hold the stations
    the forecaster was trained with (``sidecar["neighbour_stations"]``), no fewer and no more:
    a missing station would read as "no neighbour observed", a regime training hardly saw
    (to forecast only some stations, pass ``stations=`` and keep the others' rows)."""
    from nowcast_jax.visibility import neighbours as station_neighbours

    features = list(sidecar["features"])
    if not any(f in station_neighbours.NEIGHBOUR_FEATURES for f in features):
        return [{} for _ in grids]
    trained = sorted(sidecar.get("neighbour_stations") or ())
    found = sorted(g.name for g in grids)
    if not trained:
        raise ServeError("the forecaster takes neighbour-station features but its sidecar lacks "
                           "'neighbour_stations' (re-export it)")
    if found != trained:
        raise ServeError(f"{csv_path}: the forecaster's neighbour-station features compare stations "
                           f"{trained}; the CSV holds {found} (it needs the same stations; to forecast "
                           f"only some, keep every station's rows and pass stations= / --stations)")
    near, _ = station_neighbours.neighbour_features(grids, features, observed=observed)
    return near


def read_station_inputs(sidecar: dict, csv_path, stations=None) -> tuple[np.ndarray, list[str], list[np.datetime64]]:
    """``(x [S, T, F] raw features, station names, issue times)`` from the last T grid steps
    of each station of the CSV, or of ``stations`` only (the others still give their
    neighbour-station features).

    The last T steps of every station must be as complete as a training window: each step
    observed (no step without any observation), every feature finite after interpolation
    (missing values at the end of the CSV cannot be interpolated: no later observation) and
    the last visibility finite; with change features the CSV must also reach back
    :func:`station_steps_needed` steps. Otherwise :class:`ServeError` names the stations
    and features.
    """
    from nowcast_jax.visibility import features as station_features

    for key in ("features", "history", "step", "csv"):
        if key not in sidecar:
            raise ServeError(f"the forecaster's sidecar lacks {key!r} (needed to read a station CSV)")
    history, step, features = int(sidecar["history"]), str(sidecar["step"]), list(sidecar["features"])
    need = station_steps_needed(sidecar)
    grids, observed = station_grids(sidecar, csv_path, with_observed=True)
    near = _neighbour_inputs(sidecar, grids, observed, csv_path)
    wanted = [str(s) for s in stations] if stations else [g.name for g in grids]
    unknown = sorted(set(wanted) - {g.name for g in grids})
    if unknown:
        raise ServeError(f"{csv_path}: no rows for station(s) {unknown}; "
                           f"it holds {sorted(g.name for g in grids)}")
    xs, names, issued, short = [], [], [], []
    for grid, g_near in zip(grids, near):
        if grid.name not in wanted:
            continue
        if need > history and len(grid.times) < need:  # change features: their look-back too
            short.append(f"{grid.name} ({len(grid.times)} steps, {need} needed with the look-back of the changes)")
            continue
        matrix, _ = station_features.feature_matrix(grid.values, features, calm_ms=float(sidecar.get("calm_ms", 0.0)),
                                                    variable_wind=str(sidecar.get("variable_wind", "missing")),
                                                    times=grid.times, neighbours=g_near)
        window = matrix[-history:]
        problems = _window_problems(grid, window, features, history)
        if len(window) < history or problems:
            short.append(f"{grid.name} ({len(window)} steps" + "".join(f", {p}" for p in problems) + ")")
            continue
        xs.append(window)
        names.append(grid.name)
        issued.append(grid.times[-1])
    if short:
        raise ServeError(f"too little history: the forecaster needs the last {history} steps of {step} "
                           f"complete for {features}" + (f" and {need} steps in all" if need > history else "")
                           + " (gaps are interpolated only between observations, so the latest steps must be "
                           f"observed); not so for station(s) {', '.join(short)} (stations= / --stations "
                           "forecasts the others)")
    return np.stack(xs).astype(np.float32), names, issued


def forecast_station(forecast, sidecar: dict, csv_path, out_path, *, stations=None) -> list[Path]:
    """Station CSV -> CSV of forecasts: one row per station (of ``stations``, default all) and
    horizon (visibility in metres)."""
    import pandas as pd

    x, names, issued = read_station_inputs(sidecar, csv_path, stations)
    y = np.asarray(forecast(x))  # [S, n_h] in the output units of the sidecar
    horizons = list(sidecar.get("horizons_hours", range(1, y.shape[1] + 1)))
    if len(horizons) != y.shape[1]:
        raise ServeError(f"forecaster returns {y.shape[1]} horizons; sidecar lists {horizons}")
    column = f"visibility_{sidecar.get('outputs', [{}])[0].get('units', 'm')}"
    rows = [{"station": s, "issue_time": pd.Timestamp(t).isoformat() + "Z", "horizon_hours": h,
             "valid_time": (pd.Timestamp(t) + pd.Timedelta(hours=float(h))).isoformat() + "Z", column: float(v)}
            for s, t, ys in zip(names, issued, y) for h, v in zip(horizons, ys)]
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(out_path, index=False)
    return [out_path]
