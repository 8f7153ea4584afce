"""Serving radar: a folder of radar files (or an ``.npz``) -> forecast files, with a
raw-units forecaster (an artifact, or a workdir's export).

:func:`forecast_radar`: the last ``J`` frames of a folder of radar files (or an ``.npz``
holding ``rain_mm_h [T, H, W]`` and optionally ``times``) -> ``[K, H, W]`` forecast in mm/h,
written as ``.npz`` (``forecast_mm_h``, ``valid_times``, ``input_times``) or ``.nc`` (needs
netCDF4), plus a PNG of the inputs and the forecast.

The sidecar keys it reads are those the radar export writes: ``input_steps``,
``time_step_minutes``, ``radar`` (``importer``, ``importer_kwargs``, ``fn_pattern``,
``downsample_factor``, ``zr_a``, ``zr_b``, ``grid``: the full downsampled frame ``[H, W]``
the training data had, ``centre_crop``: the ``[h, w]`` the forecaster sees). Inputs with
the wrong grid, units or too little history raise :class:`~nowcast_jax.artifact.ServeError`
saying what was expected. numpy only (plus matplotlib for the PNG); the forecaster is any callable.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from nowcast_jax.artifact import ServeError
from nowcast_jax.precip import plots
from nowcast_jax.precip import archive, decode


def _frame_shape(sidecar: dict) -> tuple[int, int, int, int]:
    """(J, H, W, C) of the first input spec ``[b, J, H, W, C]``."""
    shape = sidecar["inputs"][0]["shape"]
    if len(shape) != 5:
        raise ServeError(f"radar forecaster input must be [b, J, H, W, C]; sidecar says {shape}")
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
                raise ServeError(f"{input_path}: expected an array 'rain_mm_h' [T, H, W] in mm/h; "
                                   f"found {sorted(data.files)}")
            rain = np.asarray(data["rain_mm_h"], np.float32)
            times = [datetime.fromisoformat(str(t)) for t in data["times"]] if "times" in data else None
        if rain.ndim != 3:
            raise ServeError(f"{input_path}: rain_mm_h must be [T, H, W]; got shape {rain.shape}")
    elif input_path.is_dir():
        rain, times = _read_radar_folder(sidecar, input_path, steps)
    else:
        raise ServeError(f"{input_path}: expected a folder of radar files or an .npz with rain_mm_h")
    if rain.shape[0] < steps:
        raise ServeError(f"too little history: the forecaster needs {steps} frames, {input_path} has "
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
        raise ServeError(f"wrong grid: frames are {got[0]}x{got[1]} but the forecaster was trained on "
                           f"{grid[0]}x{grid[1]} (the radar grid after downsampling by {factor}{cropped}); "
                           f"an .npz must hold rain_mm_h on that downsampled grid {grid[0]}x{grid[1]} "
                           f"(downsample factor {factor}), a folder must hold the radar files at their "
                           "original resolution")
    rain = _centre_crop(rain, crop)
    if rain.shape[1:] != tuple(model_hw):
        raise ServeError(f"wrong grid: frames are {got[0]}x{got[1]} (cropped {rain.shape[1]}x{rain.shape[2]}) "
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
    cfg = sidecar.get("radar")
    if not cfg or "importer" not in cfg or "fn_pattern" not in cfg:
        raise ServeError("the forecaster's sidecar has no radar reader settings (radar.importer, "
                           "radar.fn_pattern); give an .npz with rain_mm_h instead")
    frames = archive.list_frames(str(folder / "*"), cfg["fn_pattern"])
    if not frames:
        raise ServeError(f"no file in {folder} matches the pattern {cfg['fn_pattern']!r}")
    frames = frames[-steps:]
    rain = []
    for frame in frames:
        try:
            field, _ = decode.read_rain_rate(frame.path, cfg["importer"], cfg.get("importer_kwargs") or {},
                                            zr_a=cfg.get("zr_a"), zr_b=cfg.get("zr_b"))
        except ValueError as err:  # unknown units, missing Z-R, unreadable file
            raise ServeError(f"{frame.path}: cannot convert to rain rate (mm/h): {err}") from err
        factor = int(cfg.get("downsample_factor", 1))
        rain.append(decode.downsample(field, factor) if factor > 1 else field)
    shapes = {r.shape for r in rain}
    if len(shapes) > 1:
        raise ServeError(f"wrong grid: the files in {folder} have different shapes {sorted(shapes)}")
    return np.stack(rain).astype(np.float32), [f.time for f in frames]


def _check_rain_units(rain: np.ndarray, where) -> None:
    finite = rain[np.isfinite(rain)]
    if finite.size == 0:
        raise ServeError(f"{where}: no finite rain value in the input frames")
    if finite.min() < 0:
        raise ServeError(f"wrong units: {where} has negative values (min {finite.min():.3g}); expected rain "
                           "rate in mm/h (dBZ or dBR must be converted first)")
    if finite.max() > 1000:
        raise ServeError(f"wrong units: {where} has values up to {finite.max():.3g}; expected mm/h "
                           "(is it reflectivity Z, or an accumulation in 0.01 mm?)")


def _check_spacing(times, sidecar: dict, where) -> None:
    step = sidecar.get("time_step_minutes")
    if times is None or step is None or len(times) < 2:
        return
    gaps = [(b - a).total_seconds() / 60 for a, b in zip(times[:-1], times[1:])]
    if any(abs(g - step) > 1e-6 for g in gaps):
        raise ServeError(f"{where}: the last {len(times)} frames are not {step} min apart (gaps {gaps} min); "
                           "the forecaster needs consecutive frames")


def forecast_radar(forecast, sidecar: dict, input_path, out_path, *, png: bool = True) -> list[Path]:
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
        written.append(plots.plot_radar(rain, y, out_path.with_suffix(".png"), step))
    return written


def _write_nc(path: Path, y: np.ndarray, valid: list[str], sidecar: dict) -> Path:
    try:
        import netCDF4
    except ImportError as err:
        raise ServeError("writing .nc needs netCDF4 (pip install 'nowcast-jax[radar]'); use .npz") from err
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
