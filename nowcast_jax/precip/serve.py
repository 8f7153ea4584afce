"""Serving radar: the export hook and a folder of radar files (or an ``.npz``) -> forecast files.

:func:`export_spec` (``nowcast-jax export``): radar: ``rain [b, J, h, w, 1]`` mm/h (0 outside
the domain) -> ``[b, K, h, w, 1]`` mm/h with the contract's rain transform baked in, the
sidecar holding the contract (``preprocess``); Moving MNIST: frames in [0, 1] -> pixel
probabilities.

The extrapolation model (``model.kind="extrapolation"``) exports, on the full downsampled grid
``(H0, W0)`` as in training, ``(rain [b, J, H0, W0, 1] mm/h with NaN outside the domain,
motion [b, H0, W0, 2] pixels per step, x then y)`` -> the centre crop ``[b, K, h, w, 1]`` mm/h;
the sidecar's ``motion`` names the method, and :func:`forecast_radar` estimates the motion
from the J full frames it reads (:func:`nowcast_jax.precip.motion.estimate_motion`) before
calling it.

:func:`forecast_radar` (``nowcast-jax predict``): the last ``J`` frames of a folder of radar
files (or an ``.npz`` holding ``rain_mm_h [T, H0, W0]`` on the downsampled grid and optionally
``times``) -> ``[K, h, w]`` forecast in mm/h, written as ``.npz`` (``forecast_mm_h``,
``valid_times``, ``input_times``) or ``.nc`` (needs netCDF4), plus a PNG of the inputs and
the forecast. Frames become forecaster inputs through the sidecar's
:class:`~nowcast_jax.precip.preprocess.RadarContract`, as at training: decode -> mm/h ->
downsample (:meth:`~RadarContract.read_frames`) -> the full grid checked -> centre crop
(:meth:`~RadarContract.centre_crop`) -> 0 mm/h where unobserved
(:func:`~nowcast_jax.precip.decode.observed_rain`). Sidecars written before the contract
(``radar.grid``, ``radar.centre_crop``, ``normalisation``) still serve
(:func:`sidecar_contract`). Inputs with the wrong grid, units or too little history raise
:class:`~nowcast_jax.artifact.ServeError` saying what was expected. Serving is numpy only
(plus matplotlib for the PNG); the forecaster is any callable.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from nowcast_jax.artifact import ServeError
from nowcast_jax.precip import archive, plots
from nowcast_jax.precip.decode import GridMismatchError, observed_rain
from nowcast_jax.precip.preprocess import RadarContract, RainTransform, make_transform


# ------------------------------------------------------------------------------ export
def export_spec(task, params):
    """``(fn, input_specs, sidecar)`` of a precipitation task for ``nowcast-jax export`` (by its class)."""
    from nowcast_jax.precip.task import ExtrapolationTask, MovingMNISTTask, RadarTask  # loaded: the caller made the task

    if isinstance(task, ExtrapolationTask):
        return _extrapolation_export_spec(task, params)
    if isinstance(task, RadarTask):
        return _radar_export_spec(task, params)
    if isinstance(task, MovingMNISTTask):
        return _frames_export_spec(task, params)
    raise TypeError(f"cannot export a {type(task).__name__} as a precipitation forecaster")


def _radar_export_spec(task, params):
    import jax.numpy as jnp

    from nowcast_jax.engine import export

    contract = task.contract

    def fn(rain):  # [b, J, h, w, 1] mm/h -> [b, K, h, w, 1] mm/h, always finite
        # as the CLI path does: NaN / inf (unobserved) is 0 mm/h, and so is negative rain
        rain = jnp.where(jnp.isfinite(rain), jnp.maximum(rain, 0.0), 0.0)
        return contract.from_model_units(task.raw_forecast(params, contract.to_model_units(rain, jnp)), jnp)

    sidecar = {"kind": "radar", "units": "mm/h", "nan_policy": "non-finite or negative input rain is 0 mm/h",
               "input_steps": contract.input_steps,
               "output_steps": contract.output_steps, "time_step_minutes": contract.timestep_minutes,
               "preprocess": contract.to_dict(),
               "inputs": [{"name": "rain", "units": "mm/h"}], "outputs": [{"name": "rain", "units": "mm/h"}]}
    frames = (contract.input_steps, *contract.eval_crop, 1)
    return fn, export.batch_specs((frames, "float32")), sidecar


def _motion_input(contract: RadarContract) -> dict:
    return {"name": "motion", "units": f"pixels of the downsampled grid (factor {contract.downsample_factor}) "
                                       f"per time step ({contract.timestep_minutes:g} min)",
            "layout": "[b, H0, W0, 2] on the full grid: component 0 = x (along W), 1 = y (along H); pysteps' "
                      "velocity[0], velocity[1] moved to the last axis"}


def _extrapolation_export_spec(task, params):
    """Radar with the extrapolation model, on the FULL downsampled grid as in training:
    ``(rain [b, J, H0, W0, 1] mm/h, NaN outside the domain, motion [b, H0, W0, 2])`` -> the centre
    crop ``[b, K, h, w, 1]`` mm/h; the last frame is extrapolated over the whole grid inside, then
    cropped, so rain advected into the crop from outside it is there."""
    from nowcast_jax.engine import export

    contract = task.contract

    def fn(rain, motion):
        return task.forecast_from_motion(params, rain, motion)

    grid = contract.grid
    sidecar = {"kind": "radar", "units": "mm/h",
               "nan_policy": "NaN or inf input rain is outside the radar domain (not extrapolated); negative is 0 mm/h",
               "input_steps": contract.input_steps, "output_steps": contract.output_steps,
               "time_step_minutes": contract.timestep_minutes, "preprocess": contract.to_dict(),
               "motion": {"method": task.motion_method,
                          "estimated_on": "the J input frames on the full downsampled grid (mm/h, NaN outside)"},
               "inputs": [{"name": "rain", "units": "mm/h", "layout": "[b, J, H0, W0, 1] on the full grid"},
                          _motion_input(contract)],
               "outputs": [{"name": "rain", "units": "mm/h", "layout": "[b, K, h, w, 1]: the centre crop"}]}
    specs = export.batch_specs(((contract.input_steps, *grid, 1), "float32"), ((*grid, 2), "float32"))
    return fn, specs, sidecar


def _frames_export_spec(task, params):
    import jax

    from nowcast_jax.engine import export

    size = int(task.config.data.frame_size)
    fn = lambda frames: jax.nn.sigmoid(task.raw_forecast(params, frames))  # noqa: E731
    sidecar = {"kind": "frames", "units": "pixel intensity in [0, 1]"}
    return fn, export.batch_specs(((task.input_frames, size, size, 1), "float32")), sidecar


# ------------------------------------------------------------------------------ the contract of a sidecar
def _input_frames(sidecar: dict) -> tuple[int, int, int, int]:
    """(J, h, w, C) of the first input spec ``[b, J, h, w, C]``."""
    shape = sidecar["inputs"][0]["shape"]
    if len(shape) != 5:
        raise ServeError(f"radar forecaster input must be [b, J, H, W, C]; sidecar says {shape}")
    return tuple(int(s) for s in shape[1:])


def sidecar_contract(sidecar: dict) -> RadarContract:
    """The radar contract a sidecar records (``preprocess``), or the one an older sidecar implies.

    Older sidecars: ``radar`` (reader settings, ``grid``, ``centre_crop``), ``normalisation``
    (``transform``), ``input_steps``, ``time_step_minutes``, the input spec. With neither a
    grid nor a crop only frames of the forecaster's own size are known to be at its scale.
    """
    if "preprocess" in sidecar:
        return RadarContract.from_dict(sidecar["preprocess"])
    steps, h, w, _ = _input_frames(sidecar)
    radar = sidecar.get("radar") or {}
    grid = radar.get("grid") or (None if radar.get("centre_crop") else (h, w))
    transform = (sidecar.get("normalisation") or {}).get("transform")
    outputs = (sidecar.get("outputs") or [{}])[0].get("shape") or [0, 0]
    return RadarContract(
        importer=radar.get("importer"), importer_kwargs=dict(radar.get("importer_kwargs") or {}),
        fn_pattern=radar.get("fn_pattern"), zr_a=radar.get("zr_a"), zr_b=radar.get("zr_b"),
        timestep_minutes=float(sidecar.get("time_step_minutes") or 0.0),
        downsample_factor=int(radar.get("downsample_factor", 1)),
        grid=tuple(int(v) for v in grid) if grid else None,
        eval_crop=tuple(int(v) for v in (radar.get("centre_crop") or (h, w))),
        input_steps=int(sidecar.get("input_steps", steps)), output_steps=int(sidecar.get("output_steps", outputs[1])),
        transform=make_transform(**transform) if transform else RainTransform())


# ------------------------------------------------------------------------------ reading
def read_radar_frames(contract: RadarContract, input_path, *, crop: bool = True
                      ) -> tuple[np.ndarray, list[datetime] | None]:
    """The last J frames cut to the forecaster's crop, ``[J, h, w]`` mm/h (NaN outside the
    domain), and their times (or None); ``crop=False``: on the full grid ``[J, H0, W0]`` (the
    extrapolation model, which extrapolates the whole frame and crops inside).

    The frames (a folder's after decoding and downsampling, an ``.npz``'s as given) must be
    on the full downsampled grid of the training data (``contract.grid``) before the centre
    crop: a larger grid (e.g. an ``.npz`` at the native resolution) would otherwise be cropped
    and forecast at the wrong scale.
    """
    steps, input_path = contract.input_steps, Path(input_path)
    if input_path.suffix == ".npz":
        rain, times = _read_npz(input_path)
    elif input_path.is_dir():
        rain, times = _read_folder(contract, input_path)
    elif not input_path.exists():
        raise ServeError(f"{input_path} does not exist: give a folder of radar files or an .npz with rain_mm_h")
    else:
        raise ServeError(f"{input_path}: expected a folder of radar files or an .npz with rain_mm_h")
    if rain.shape[0] < steps:
        raise ServeError(f"too little history: the forecaster needs {steps} frames, {input_path} has "
                         f"{rain.shape[0]}")
    rain, times = rain[-steps:], (times[-steps:] if times is not None else None)
    cropped = _crop_to_forecaster(rain, contract, from_folder=input_path.is_dir())  # checks the grid
    rain = cropped if crop else rain
    _check_rain_units(rain, input_path)
    _check_spacing(times, contract.timestep_minutes, input_path)
    return rain, times


def forecaster_inputs(contract: RadarContract, input_path) -> tuple[np.ndarray, np.ndarray, list[datetime] | None]:
    """``(x [1, J, h, w, 1] mm/h with 0 outside the domain, rain [J, h, w] with NaN, times)``:
    what the exported forecaster takes (its rain transform is inside it)."""
    rain, times = read_radar_frames(contract, input_path)
    x, _ = observed_rain(rain[None, ..., None])
    return x, rain, times


def _read_npz(path: Path) -> tuple[np.ndarray, list[datetime] | None]:
    with np.load(path, allow_pickle=False) as data:
        if "rain_mm_h" not in data:
            raise ServeError(f"{path}: expected an array 'rain_mm_h' [T, H, W] in mm/h; found {sorted(data.files)}")
        rain = np.asarray(data["rain_mm_h"], np.float32)
        times = [datetime.fromisoformat(str(t)) for t in data["times"]] if "times" in data else None
    if rain.ndim != 3:
        raise ServeError(f"{path}: rain_mm_h must be [T, H, W]; got shape {rain.shape}")
    return rain, times


def _read_folder(contract: RadarContract, folder: Path) -> tuple[np.ndarray, list[datetime]]:
    """The last J files of ``folder`` matching ``fn_pattern``, decoded as at training."""
    if not contract.importer or not contract.fn_pattern:
        raise ServeError("the forecaster's sidecar has no radar reader settings (radar.importer, "
                         "radar.fn_pattern); give an .npz with rain_mm_h instead")
    regex, _ = archive.fn_pattern_regex(contract.fn_pattern)
    named = [str(p) for p in sorted(folder.iterdir()) if p.is_file() and regex.match(p.name)]
    if not named:  # other files (a README, an earlier forecast) are not radar files: left alone
        raise ServeError(f"no radar file in {folder}: no file there matches the forecaster's pattern "
                         f"{contract.fn_pattern!r} ({contract.importer} files); give a folder holding the last "
                         f"{contract.input_steps} radar files, or an .npz with rain_mm_h")
    try:
        frames = archive.list_frames(named, contract.fn_pattern)[-contract.input_steps:]
    except ValueError as err:  # a name with the pattern's shape but no valid date, duplicate times
        raise ServeError(f"{folder}: {err}") from err
    try:
        rain = contract.read_frames([f.path for f in frames])
    except GridMismatchError as err:  # checked before each file's conversion, so it is not reported as one
        raise ServeError(f"wrong grid: the files in {folder} have different shapes {err.shapes}") from err
    except ValueError as err:  # unknown units, missing Z-R
        raise ServeError(f"{folder}: cannot convert to rain rate (mm/h): {err}") from err
    except Exception as err:  # noqa: BLE001 - a radar-named file the importer cannot read
        raise ServeError(f"cannot read the radar files in {folder} with importer {contract.importer!r} "
                         f"({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}); "
                         "are they complete radar files of that format?") from err
    return rain, [f.time for f in frames]


def _crop_to_forecaster(rain: np.ndarray, contract: RadarContract, *, from_folder: bool) -> np.ndarray:
    """Frames ``[T, H0, W0]`` on the full downsampled grid -> the centre crop the forecaster takes."""
    factor, crop, got = contract.downsample_factor, tuple(contract.eval_crop), rain.shape[1:]
    grid = contract.grid
    if grid is None and not from_folder:
        grid = crop  # no recorded full grid: only frames of the forecaster's size are known to be at its scale
    if grid is not None and got != tuple(grid):
        cropped = f", then centre-cropped to {crop[0]}x{crop[1]}" if crop != tuple(grid) else ""
        raise ServeError(f"wrong grid: frames are {got[0]}x{got[1]} but the forecaster was trained on "
                         f"{grid[0]}x{grid[1]} (the radar grid after downsampling by {factor}{cropped}); "
                         f"an .npz must hold rain_mm_h on that downsampled grid {grid[0]}x{grid[1]} "
                         f"(downsample factor {factor}), a folder must hold the radar files at their "
                         "original resolution")
    if got[0] < crop[0] or got[1] < crop[1]:
        raise ServeError(f"wrong grid: frames are {got[0]}x{got[1]} but the forecaster takes "
                         f"{crop[0]}x{crop[1]} (after downsampling by {factor})")
    return contract.centre_crop(rain)


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


def _check_spacing(times, step: float, where) -> None:
    if times is None or not step or len(times) < 2:
        return
    gaps = [(b - a).total_seconds() / 60 for a, b in zip(times[:-1], times[1:])]
    if any(abs(g - step) > 1e-6 for g in gaps):
        raise ServeError(f"{where}: the last {len(times)} frames are not {step} min apart (gaps {gaps} min); "
                           "the forecaster needs consecutive frames")


def forecast_radar(forecast, sidecar: dict, input_path, out_path, *, png: bool = True) -> list[Path]:
    """Folder / npz of radar frames -> ``out_path`` (.npz or .nc) [+ .png]; see the module docstring."""
    contract = sidecar_contract(sidecar)
    steps, h, w, _ = _input_frames(sidecar)
    takes = contract.grid if sidecar.get("motion") else contract.eval_crop  # the extrapolation model: full grid
    if (steps, h, w) != (contract.input_steps, *takes):
        raise ServeError(f"the sidecar's contract ({contract.input_steps} frames of {takes}) does not "
                         f"match the forecaster's input [{steps}, {h}, {w}]")
    if sidecar.get("motion"):  # the extrapolation model: full-grid rain (NaN outside the domain) and its motion
        full, times = read_radar_frames(contract, input_path, crop=False)  # [J, H0, W0]
        motion = _estimate_motion(full, sidecar["motion"].get("method", "LK"))  # [H0, W0, 2]
        y = np.asarray(forecast(full[None, ..., None], motion[None]))[0, ..., 0]  # [K, h, w] mm/h
        rain = contract.centre_crop(full)
    else:
        x, rain, times = forecaster_inputs(contract, input_path)  # x [1, J, h, w, 1] mm/h
        y = np.asarray(forecast(x))[0, ..., 0]  # [K, h, w] mm/h
    y = np.where(np.isnan(rain[-1])[None], np.nan, y).astype(np.float32)  # keep the domain mask
    step = contract.timestep_minutes or None
    valid = ([(times[-1] + timedelta(minutes=step * (k + 1))).isoformat() for k in range(len(y))]
             if times is not None and step else [])
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    written = [_write_nc(out_path, y, valid, contract) if out_path.suffix == ".nc" else out_path]
    if out_path.suffix != ".nc":
        np.savez_compressed(out_path, forecast_mm_h=y, valid_times=np.asarray(valid, dtype=str),
                            input_times=np.asarray([t.isoformat() for t in times or []], dtype=str),
                            time_step_minutes=np.asarray(step if step is not None else np.nan))
    if png:
        written.append(plots.plot_radar(rain, y, out_path.with_suffix(".png"), step))
    return written


def _estimate_motion(frames: np.ndarray, method: str) -> np.ndarray:
    from nowcast_jax.precip.motion import estimate_motion

    try:
        return estimate_motion(frames, method)
    except ValueError as err:  # an unknown method in the sidecar
        raise ServeError(f"cannot estimate the forecaster's motion input: {err}") from err


def _write_nc(path: Path, y: np.ndarray, valid: list[str], contract: RadarContract) -> Path:
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
        lead[:] = np.arange(1, y.shape[0] + 1) * (contract.timestep_minutes or np.nan)
        nc.valid_times = " ".join(valid)
    return path
