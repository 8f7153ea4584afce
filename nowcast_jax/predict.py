"""Forecasts on new data from a raw-units forecaster (an artifact or a checkpoint's export_spec).

:func:`predict` dispatches on ``sidecar["kind"]``:

* ``"radar"``: the last ``J`` frames of a folder of radar files (or an ``.npz`` holding
  ``rain_mm_h [T, H, W]`` and optionally ``times``) -> ``[K, H, W]`` forecast in mm/h,
  written as ``.npz`` (``forecast_mm_h``, ``valid_times``, ``input_times``) or ``.nc``
  (needs netCDF4), plus a PNG of the inputs and the forecast.
* ``"station"``: a station CSV (the training data contract) -> a CSV with one row per
  station and horizon (``station, issue_time, horizon_hours, valid_time, visibility_m``).

The sidecar keys each kind needs are those ``export_spec`` writes (see the task
docstrings): radar ``input_steps``, ``time_step_minutes``, ``radar`` (``importer``,
``importer_kwargs``, ``fn_pattern``, ``downsample_factor``, ``zr_a``, ``zr_b``, ``grid``:
the full downsampled frame ``[H, W]`` the training data had, ``centre_crop``: the ``[h, w]``
the forecaster sees); station ``features``, ``history``, ``horizons_hours``, ``step``,
``csv`` (the CSV contract of :func:`nowcast_jax.data.station_io.read_station_csv`,
``valid_ranges`` included), ``visibility_cap_m``, ``calm_ms``, ``variable_wind``,
``interpolate`` (variable names) and ``max_interp_steps``: a station CSV goes through the
training data steps (read, clip at the cap, grid, interpolate, features). Inputs with the
wrong grid, units or too little history raise :class:`PredictError` with a message that
says what was expected.

numpy/pandas only (plus matplotlib for the PNG); the forecaster is any callable.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable

import numpy as np


class PredictError(ValueError):
    """The input data does not fit the forecaster; the message says why."""


def predict(forecast: Callable[..., Any], sidecar: dict, input_path: str | Path, out_path: str | Path, *,
            png: bool = True, stations=None) -> list[Path]:
    """Run ``forecast`` on the data at ``input_path``; write ``out_path`` (+ PNG). Returns written paths.
    ``stations`` (station CSVs only): forecast just these stations of the CSV (default: all)."""
    kind = sidecar.get("kind")
    if kind == "radar":
        if stations:
            raise PredictError("stations= applies to station forecasters; this one is a radar forecaster")
        return predict_radar(forecast, sidecar, input_path, out_path, png=png)
    if kind == "station":
        return predict_station(forecast, sidecar, input_path, out_path, stations=stations)
    raise PredictError(f"the forecaster's sidecar has kind={kind!r}; predict knows 'radar' and 'station' "
                       "(the task's export_spec must set sidecar['kind'])")


# ------------------------------------------------------------------------------ radar
def _frame_shape(sidecar: dict) -> tuple[int, int, int, int]:
    """(J, H, W, C) of the first input spec ``[b, J, H, W, C]``."""
    shape = sidecar["inputs"][0]["shape"]
    if len(shape) != 5:
        raise PredictError(f"radar forecaster input must be [b, J, H, W, C]; sidecar says {shape}")
    return tuple(int(s) for s in shape[1:])


def read_radar_inputs(sidecar: dict, input_path: str | Path) -> tuple[np.ndarray, list[datetime] | None]:
    """The last J frames ``[J, H, W]`` mm/h (NaN outside the domain) and their times (or None).

    The frames (a folder's after downsampling by ``radar.downsample_factor``, an ``.npz``'s as
    given) must be on the full downsampled grid of the training data (``radar.grid``) before
    the centre crop (``radar.centre_crop``) cuts them to the forecaster's input: a larger
    grid (e.g. an ``.npz`` at the native resolution) would otherwise be cropped and forecast
    at the wrong scale.
    """
    steps, height, width, _ = _frame_shape(sidecar)
    input_path = Path(input_path)
    if input_path.suffix == ".npz":
        with np.load(input_path, allow_pickle=False) as data:
            if "rain_mm_h" not in data:
                raise PredictError(f"{input_path}: expected an array 'rain_mm_h' [T, H, W] in mm/h; "
                                   f"found {sorted(data.files)}")
            rain = np.asarray(data["rain_mm_h"], np.float32)
            times = [datetime.fromisoformat(str(t)) for t in data["times"]] if "times" in data else None
        if rain.ndim != 3:
            raise PredictError(f"{input_path}: rain_mm_h must be [T, H, W]; got shape {rain.shape}")
    elif input_path.is_dir():
        rain, times = _read_radar_folder(sidecar, input_path, steps)
    else:
        raise PredictError(f"{input_path}: expected a folder of radar files or an .npz with rain_mm_h")
    if rain.shape[0] < steps:
        raise PredictError(f"too little history: the forecaster needs {steps} frames, {input_path} has "
                           f"{rain.shape[0]}")
    rain = rain[-steps:]
    times = times[-steps:] if times is not None else None
    rain = _check_grid(rain, sidecar, (height, width), from_folder=input_path.is_dir())
    _check_rain_units(rain, input_path)
    _check_spacing(times, sidecar, input_path)
    return rain, times


def _check_grid(rain: np.ndarray, sidecar: dict, model_hw: tuple[int, int], *, from_folder: bool) -> np.ndarray:
    """Frames ``[T, H, W]`` on the full downsampled grid -> the centre crop the forecaster takes."""
    cfg = sidecar.get("radar") or {}
    factor = int(cfg.get("downsample_factor", 1))
    crop = cfg.get("centre_crop")
    grid = tuple(int(v) for v in cfg["grid"]) if cfg.get("grid") else None
    if grid is None and not (crop and from_folder):
        # no recorded full grid: only frames of exactly the forecaster's size are known to be at
        # the trained scale (a folder is downsampled here, so its crop is safe)
        grid = model_hw
    got = rain.shape[1:]
    if grid is not None and got != grid:
        cropped = (f", then centre-cropped to {model_hw[0]}x{model_hw[1]}" if tuple(model_hw) != grid else "")
        raise PredictError(f"wrong grid: frames are {got[0]}x{got[1]} but the forecaster was trained on "
                           f"{grid[0]}x{grid[1]} (the radar grid after downsampling by {factor}{cropped}); "
                           f"an .npz must hold rain_mm_h on that downsampled grid {grid[0]}x{grid[1]} "
                           f"(downsample factor {factor}), a folder must hold the radar files at their "
                           "original resolution")
    rain = _centre_crop(rain, crop)
    if rain.shape[1:] != tuple(model_hw):
        raise PredictError(f"wrong grid: frames are {got[0]}x{got[1]} (cropped {rain.shape[1]}x{rain.shape[2]}) "
                           f"but the forecaster takes {model_hw[0]}x{model_hw[1]} (after downsampling by {factor})")
    return rain


def _centre_crop(rain: np.ndarray, crop) -> np.ndarray:
    """Centre ``crop = [h, w]`` of frames ``[T, H, W]`` when they are larger (as at training)."""
    if not crop:
        return rain
    h, w = int(crop[0]), int(crop[1])
    if rain.shape[1] < h or rain.shape[2] < w:
        return rain  # too small: the grid check says so
    y, x = (rain.shape[1] - h) // 2, (rain.shape[2] - w) // 2
    return rain[:, y:y + h, x:x + w]


def _read_radar_folder(sidecar: dict, folder: Path, steps: int):
    from nowcast_jax.data import radar

    cfg = sidecar.get("radar")
    if not cfg or "importer" not in cfg or "fn_pattern" not in cfg:
        raise PredictError("the forecaster's sidecar has no radar reader settings (radar.importer, "
                           "radar.fn_pattern); give an .npz with rain_mm_h instead")
    frames = radar.list_frames(str(folder / "*"), cfg["fn_pattern"])
    if not frames:
        raise PredictError(f"no file in {folder} matches the pattern {cfg['fn_pattern']!r}")
    frames = frames[-steps:]
    rain = []
    for frame in frames:
        try:
            field, _ = radar.read_rain_rate(frame.path, cfg["importer"], cfg.get("importer_kwargs") or {},
                                            zr_a=cfg.get("zr_a"), zr_b=cfg.get("zr_b"))
        except ValueError as err:  # unknown units, missing Z-R, unreadable file
            raise PredictError(f"{frame.path}: cannot convert to rain rate (mm/h): {err}") from err
        factor = int(cfg.get("downsample_factor", 1))
        rain.append(radar.downsample(field, factor) if factor > 1 else field)
    shapes = {r.shape for r in rain}
    if len(shapes) > 1:
        raise PredictError(f"wrong grid: the files in {folder} have different shapes {sorted(shapes)}")
    return np.stack(rain).astype(np.float32), [f.time for f in frames]


def _check_rain_units(rain: np.ndarray, where) -> None:
    finite = rain[np.isfinite(rain)]
    if finite.size == 0:
        raise PredictError(f"{where}: no finite rain value in the input frames")
    if finite.min() < 0:
        raise PredictError(f"wrong units: {where} has negative values (min {finite.min():.3g}); expected rain "
                           "rate in mm/h (dBZ or dBR must be converted first)")
    if finite.max() > 1000:
        raise PredictError(f"wrong units: {where} has values up to {finite.max():.3g}; expected mm/h "
                           "(is it reflectivity Z, or an accumulation in 0.01 mm?)")


def _check_spacing(times, sidecar: dict, where) -> None:
    step = sidecar.get("time_step_minutes")
    if times is None or step is None or len(times) < 2:
        return
    gaps = [(b - a).total_seconds() / 60 for a, b in zip(times[:-1], times[1:])]
    if any(abs(g - step) > 1e-6 for g in gaps):
        raise PredictError(f"{where}: the last {len(times)} frames are not {step} min apart (gaps {gaps} min); "
                           "the forecaster needs consecutive frames")


def predict_radar(forecast, sidecar: dict, input_path, out_path, *, png: bool = True) -> list[Path]:
    """Folder / npz of radar frames -> ``out_path`` (.npz or .nc) [+ .png]; see the module docstring."""
    rain, times = read_radar_inputs(sidecar, input_path)
    x = np.nan_to_num(rain, nan=0.0)[None, ..., None]  # [1, J, H, W, 1]; outside the domain -> 0 mm/h
    y = np.asarray(forecast(x))[0, ..., 0]  # [K, H, W] mm/h
    y = np.where(np.isnan(rain[-1])[None], np.nan, y).astype(np.float32)  # keep the domain mask
    step = sidecar.get("time_step_minutes")
    valid = ([(times[-1] + timedelta(minutes=step * (k + 1))).isoformat() for k in range(len(y))]
             if times is not None and step else [])
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    written = [_write_nc(out_path, y, valid, sidecar) if out_path.suffix == ".nc" else out_path]
    if out_path.suffix != ".nc":
        np.savez_compressed(out_path, forecast_mm_h=y, valid_times=np.asarray(valid, dtype=str),
                            input_times=np.asarray([t.isoformat() for t in times or []], dtype=str),
                            time_step_minutes=np.asarray(step if step is not None else np.nan))
    if png:
        written.append(plot_radar(rain, y, out_path.with_suffix(".png"), step))
    return written


def _write_nc(path: Path, y: np.ndarray, valid: list[str], sidecar: dict) -> Path:
    try:
        import netCDF4
    except ImportError as err:
        raise PredictError("writing .nc needs netCDF4 (pip install 'nowcast-jax[radar]'); use .npz") from err
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("lead", y.shape[0])
        nc.createDimension("y", y.shape[1])
        nc.createDimension("x", y.shape[2])
        var = nc.createVariable("precip_rate", "f4", ("lead", "y", "x"), zlib=True)
        var.units = "mm/h"
        var[:] = y
        lead = nc.createVariable("lead_minutes", "f4", ("lead",))
        lead[:] = np.arange(1, y.shape[0] + 1) * float(sidecar.get("time_step_minutes") or np.nan)
        nc.valid_times = " ".join(valid)
    return path


def plot_radar(inputs: np.ndarray, forecast: np.ndarray, path: Path, step=None) -> Path:
    """A PNG: the input frames (top row) and the forecast frames (bottom row), mm/h."""
    from matplotlib.figure import Figure  # not pyplot: leaves the caller's backend and figures alone

    cols = max(len(inputs), len(forecast))
    fig = Figure(figsize=(1.6 * cols, 3.4))
    axes = fig.subplots(2, cols, squeeze=False)
    vmax = max(float(np.nanmax(inputs)) if np.isfinite(inputs).any() else 1.0, 1.0)
    for row, frames, label in ((0, inputs, "input"), (1, forecast, "forecast")):
        for k in range(cols):
            ax = axes[row, k]
            ax.axis("off")
            if k < len(frames):
                im = ax.imshow(frames[k], vmin=0, vmax=vmax, cmap="Blues")
                minutes = (k - len(frames) + 1 if row == 0 else k + 1) * (step or 0)
                ax.set_title(f"{label} {minutes:+.0f} min" if step else f"{label} {k}", fontsize=7)
    fig.colorbar(im, ax=axes, shrink=0.8, label="mm/h")
    fig.savefig(path, dpi=80)
    return path


# ------------------------------------------------------------------------------ station
def station_contract(sidecar: dict) -> dict:
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
    (:class:`nowcast_jax.data.station_io.StationGrid`); with ``with_observed`` also the
    neighbour-feature inputs taken before interpolation (``station_neighbours.observed_inputs``)."""
    from nowcast_jax.data import station_io, station_neighbours

    try:
        table, _ = station_io.read_station_csv(csv_path, **station_contract(sidecar))
    except ValueError as err:  # missing columns, unknown units, unparseable times
        raise PredictError(f"{csv_path}: does not follow the forecaster's CSV contract: {err}") from err
    except FileNotFoundError as err:
        raise PredictError(f"{csv_path} not found") from err
    if table.empty:
        raise PredictError(f"{csv_path}: no rows with a valid time")
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

    from nowcast_jax.data import station_features

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
    from nowcast_jax.data import station_neighbours

    features = list(sidecar["features"])
    if not any(f in station_neighbours.NEIGHBOUR_FEATURES for f in features):
        return [{} for _ in grids]
    trained = sorted(sidecar.get("neighbour_stations") or ())
    found = sorted(g.name for g in grids)
    if not trained:
        raise PredictError("the forecaster takes neighbour-station features but its sidecar lacks "
                           "'neighbour_stations' (re-export it)")
    if found != trained:
        raise PredictError(f"{csv_path}: the forecaster's neighbour-station features compare stations "
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
    :func:`station_steps_needed` steps. Otherwise :class:`PredictError` names the stations
    and features.
    """
    from nowcast_jax.data import station_features

    for key in ("features", "history", "step", "csv"):
        if key not in sidecar:
            raise PredictError(f"the forecaster's sidecar lacks {key!r} (needed to read a station CSV)")
    history, step, features = int(sidecar["history"]), str(sidecar["step"]), list(sidecar["features"])
    need = station_steps_needed(sidecar)
    grids, observed = station_grids(sidecar, csv_path, with_observed=True)
    near = _neighbour_inputs(sidecar, grids, observed, csv_path)
    wanted = [str(s) for s in stations] if stations else [g.name for g in grids]
    unknown = sorted(set(wanted) - {g.name for g in grids})
    if unknown:
        raise PredictError(f"{csv_path}: no rows for station(s) {unknown}; "
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
        raise PredictError(f"too little history: the forecaster needs the last {history} steps of {step} "
                           f"complete for {features}" + (f" and {need} steps in all" if need > history else "")
                           + " (gaps are interpolated only between observations, so the latest steps must be "
                           f"observed); not so for station(s) {', '.join(short)} (stations= / --stations "
                           "forecasts the others)")
    return np.stack(xs).astype(np.float32), names, issued


def predict_station(forecast, sidecar: dict, csv_path, out_path, *, stations=None) -> list[Path]:
    """Station CSV -> CSV of forecasts: one row per station (of ``stations``, default all) and
    horizon (visibility in metres)."""
    import pandas as pd

    x, names, issued = read_station_inputs(sidecar, csv_path, stations)
    y = np.asarray(forecast(x))  # [S, n_h] in the output units of the sidecar
    horizons = list(sidecar.get("horizons_hours", range(1, y.shape[1] + 1)))
    if len(horizons) != y.shape[1]:
        raise PredictError(f"forecaster returns {y.shape[1]} horizons; sidecar lists {horizons}")
    column = f"visibility_{sidecar.get('outputs', [{}])[0].get('units', 'm')}"
    rows = [{"station": s, "issue_time": pd.Timestamp(t).isoformat() + "Z", "horizon_hours": h,
             "valid_time": (pd.Timestamp(t) + pd.Timedelta(hours=float(h))).isoformat() + "Z", column: float(v)}
            for s, t, ys in zip(names, issued, y) for h, v in zip(horizons, ys)]
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(out_path, index=False)
    return [out_path]
