"""Serving stations: the exported forecaster, and a station CSV -> a CSV of forecasts.

* :func:`export_spec` (the ``nowcast-jax export`` hook): raw canonical features
  ``x [b, T, F]`` -> visibility ``[b, H]`` m, the contract's scaler and target transform baked
  in; the sidecar carries the fitted contract (``sidecar["contract"]``), so the artifact
  alone can serve.
* :func:`forecast_station` (the ``nowcast-jax predict`` hook): a station CSV -> one row per
  station and horizon (``station, issue_time, horizon_hours, valid_time, visibility_m``).
  The CSV goes through the contract's own stages (:mod:`nowcast_jax.visibility.preprocess`:
  read, cap, grid, short gaps, features), exactly as training read its CSV; the last
  ``history`` steps of each station must be as complete as a training window.

Inputs that do not fit raise :class:`~nowcast_jax.artifact.ServeError` saying what was
expected. numpy/pandas only (jax only inside :func:`export_spec`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from nowcast_jax.artifact import ServeError
from nowcast_jax.visibility.preprocess import StationContract, StationObservations
from nowcast_jax.visibility.readers import CsvContract
from nowcast_jax.visibility.scaling import MinMaxScaler, TargetTransform
from nowcast_jax.visibility.windows import InputCheck, check_window_inputs


def export_spec(task, params):
    """``(fn, input_specs, sidecar)`` of a visibility task: ``fn`` maps raw canonical features
    ``x [b, T, F]`` (degC, hPa, m/s, mm, m; wind as sin/cos) to visibility ``[b, H]`` m."""
    import jax.numpy as jnp

    from nowcast_jax.engine import export

    contract, apply = task.contract, task.model.apply

    def fn(x):  # [b, T, F] raw -> [b, H] metres: the contract's own input and output stages
        metres = contract.to_metres(apply(params, contract.model_inputs(x, jnp))["value"], jnp)
        complete = jnp.all(jnp.isfinite(x), axis=(1, 2))[:, None]  # [b, 1]: training never saw a gap
        return jnp.where(complete, metres, jnp.nan)

    sidecar = {"kind": "station", "contract": contract.to_dict(), "units": "m",
               "nan_policy": "a window with any non-finite feature gets NaN at every horizon",
               "time_step_minutes": contract.step_minutes, "horizons_hours": list(contract.horizons_hours),
               "inputs": [{"name": "features", "units": "canonical: degC, hPa, m/s, mm, m; wind_dir_sin/cos; "
                           "derived features as nowcast_jax.visibility.features computes them"}],
               "outputs": [{"name": "visibility", "units": "m"}]}
    specs = export.batch_specs(((contract.history_steps, len(contract.features)), "float32"))
    return fn, specs, sidecar


def sidecar_station_contract(sidecar: dict) -> StationContract:
    """The contract of an exported station forecaster: ``sidecar["contract"]``; sidecars
    written before it existed are read from their flat keys (``features``, ``history``,
    ``step``, ``csv``, ``visibility_cap_m``, ``interpolate``, ...)."""
    if "contract" in sidecar:
        return StationContract.from_dict(sidecar["contract"])
    for key in ("features", "history", "step", "csv"):
        if key not in sidecar:
            raise ServeError(f"the forecaster's sidecar lacks {key!r} (needed to read a station CSV)")
    csv = dict(sidecar["csv"])
    cap = sidecar.get("visibility_cap_m", csv.get("visibility_cap_m"))
    norm = sidecar.get("normalisation") or {}
    return StationContract(
        csv=CsvContract.from_dict({**csv, "valid_ranges": csv.get("valid_ranges") or sidecar.get("valid_ranges")}),
        visibility_cap_m=float(cap) if cap else None, step=str(sidecar["step"]),
        interpolate=tuple(sidecar.get("interpolate", ())), max_interp_steps=int(sidecar.get("max_interp_steps", 0)),
        calm_wind_ms=float(sidecar.get("calm_ms", 0.0)), variable_wind=str(sidecar.get("variable_wind", "missing")),
        features=tuple(sidecar["features"]), history_steps=int(sidecar["history"]),
        horizons_hours=tuple(sidecar.get("horizons_hours") or (1.0,)),
        neighbour_stations=tuple(sidecar.get("neighbour_stations") or ()),
        scaler=MinMaxScaler.from_dict(norm["scaler"]) if "scaler" in norm else None,
        target=TargetTransform.from_dict(norm["target_transform"]) if "target_transform" in norm else None)


@dataclasses.dataclass(frozen=True)
class StationInputs:
    """The inputs of one forecast: ``x [S, T, F]`` raw features (float64) of the last ``T``
    grid steps of each station forecast, their ``names`` and ``issue_times`` (last step)."""

    x: np.ndarray
    names: list
    issue_times: list


def _observations(contract: StationContract, csv_path) -> StationObservations:
    """The contract's read stage, its errors as :class:`ServeError`."""
    if contract.needs_neighbours and not contract.neighbour_stations:
        raise ServeError("the forecaster takes neighbour-station features but its sidecar lacks "
                         "'neighbour_stations' (re-export it)")
    try:
        return contract.read_stations(csv_path)
    except FileNotFoundError as err:
        raise ServeError(f"{csv_path} not found") from err
    except ValueError as err:  # missing columns, unknown units, unparseable times, no rows
        raise ServeError(f"{csv_path}: does not follow the forecaster's CSV contract: {err}") from err


def _window_problems(check: InputCheck, features) -> list[str]:
    """Why one window is no training window ([] when it is one); ``check``: that window's
    :func:`~nowcast_jax.visibility.windows.check_window_inputs`."""
    problems = []
    gaps = int(check.unobserved[0])
    if gaps:
        problems.append(f"no observation in {gaps} step(s)")
    bad = [f for f, missing in zip(features, check.missing[0]) if missing]
    if check.last_vis_missing[0] and "visibility" not in bad:
        bad.append("visibility (last step)")
    if bad:
        problems.append(f"missing {bad}")
    if check.last_filled[0]:
        problems.append("last step interpolated")
    return problems


def _station_window(contract: StationContract, station, matrix: np.ndarray) -> tuple[np.ndarray | None, str]:
    """``(the last T rows of matrix, "")``, or ``(None, why not)``; ``station``: a
    :class:`~nowcast_jax.visibility.grid.FilledGrid`."""
    grid, history, need = station.grid, contract.history_steps, contract.steps_needed
    if need > history and len(grid.times) < need:  # change features: their look-back too
        return None, f"{grid.name} ({len(grid.times)} steps, {need} needed with the look-back of the changes)"
    if len(grid.times) < history:
        return None, f"{grid.name} ({len(grid.times)} steps)"
    check = check_window_inputs(matrix, grid.values["visibility"], grid.observed, history, [len(grid.times) - 1],
                                station.filled)
    problems = _window_problems(check, list(contract.features))
    if problems:
        return None, f"{grid.name} ({history} steps" + "".join(f", {p}" for p in problems) + ")"
    return matrix[-history:], ""


def station_inputs(contract: StationContract, csv_path, stations=None) -> StationInputs:
    """The raw inputs of the last ``T`` grid steps of each station of the CSV, or of
    ``stations`` only (the others still give their neighbour-station features).

    The last T steps of every station must be as complete as a training window: each step
    observed, every feature finite after interpolation (missing values at the end of the
    CSV cannot be interpolated: no later observation) and the last visibility finite; with
    change features the CSV must also reach back ``contract.steps_needed`` steps. Otherwise
    :class:`ServeError` names the stations and features.
    """
    observations = _observations(contract, csv_path)
    try:
        matrices, _ = contract.feature_matrices(observations)
    except ValueError as err:  # neighbour features: not the trained stations
        raise ServeError(f"{csv_path}: {err}; to forecast only some, keep every station's rows and pass "
                         f"stations= / --stations") from err
    found = observations.names
    wanted = [str(s) for s in stations] if stations else found
    unknown = sorted(set(wanted) - set(found))
    if unknown:
        raise ServeError(f"{csv_path}: no rows for station(s) {unknown}; it holds {sorted(found)}")
    xs, names, issued, short = [], [], [], []
    for s, matrix in zip(observations.stations, matrices):
        if s.grid.name not in wanted:
            continue
        window, why = _station_window(contract, s, matrix)
        if window is None:
            short.append(why)
            continue
        xs.append(window)
        names.append(s.grid.name)
        issued.append(s.grid.times[-1])
    if short:
        history, need = contract.history_steps, contract.steps_needed
        raise ServeError(f"too little history: the forecaster needs the last {history} steps of {contract.step} "
                         f"complete for {list(contract.features)}" + (f" and {need} steps in all" if need > history
                                                                      else "")
                         + " (gaps are interpolated only between observations, so the latest steps must be "
                         f"observed); not so for station(s) {', '.join(short)} (stations= / --stations "
                         "forecasts the others)")
    return StationInputs(np.stack(xs), names, issued)


def forecast_station(forecast, sidecar: dict, csv_path, out_path, *, stations=None) -> list[Path]:
    """Station CSV -> CSV of forecasts: one row per station (of ``stations``, default all) and
    horizon (visibility in metres)."""
    import pandas as pd

    contract = sidecar_station_contract(sidecar)
    inputs = station_inputs(contract, csv_path, stations)
    y = np.asarray(forecast(inputs.x.astype(np.float32)))  # [S, H] in the output units of the sidecar
    horizons = list(contract.horizons_hours) if "contract" in sidecar else list(
        sidecar.get("horizons_hours") or range(1, y.shape[1] + 1))
    if len(horizons) != y.shape[1]:
        raise ServeError(f"forecaster returns {y.shape[1]} horizons; sidecar lists {horizons}")
    column = f"visibility_{sidecar.get('outputs', [{}])[0].get('units', 'm')}"
    rows = [{"station": s, "issue_time": pd.Timestamp(t).isoformat() + "Z", "horizon_hours": h,
             "valid_time": (pd.Timestamp(t) + pd.Timedelta(hours=float(h))).isoformat() + "Z", column: float(v)}
            for s, t, ys in zip(inputs.names, inputs.issue_times, y) for h, v in zip(horizons, ys)]
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(out_path, index=False)
    return [out_path]
