"""Serving radar: the export hook (mm/h in, mm/h out, the contract in the sidecar) and
``forecast_radar`` / ``nowcast-jax predict`` on folders and .npz files (moved from
tests/engine/test_export.py), including sidecars written before the contract existed."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest

pytest.importorskip("flatbuffers", reason="jax.export serialization needs the 'flatbuffers' package")

from nowcast_jax import artifact  # noqa: E402
from nowcast_jax.artifact import ServeError  # noqa: E402
from nowcast_jax.engine import export  # noqa: E402
from nowcast_jax.precip import archive, decode  # noqa: E402
from nowcast_jax.precip import serve as precip_serve  # noqa: E402
from nowcast_jax.precip import task as precip  # noqa: E402
from tests.export_fns import tiny_precip_fn  # noqa: E402
from tests.precip.conftest import tiny_radar_config  # noqa: E402

FRAMES = (3, 8, 8, 1)  # J, H, W, C
STEPS = 2


def _precip_fn():
    """Tiny encoder-forecaster with a log1p rain transform baked in: mm/h -> mm/h."""
    return tiny_precip_fn(FRAMES, STEPS)


def _cli(*args, capsys):
    from nowcast_jax import cli

    code = cli.main([str(a) for a in args])
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def radar_artifact(tmp_path_factory):
    """An artifact whose sidecar predates the contract: no ``radar`` or ``preprocess`` keys."""
    fn = _precip_fn()
    path = export.export_forecaster(fn, export.batch_specs((FRAMES, "float32")),
                                    {"kind": "radar", "time_step_minutes": 5, "units": "mm/h",
                                     "inputs": [{"name": "rain", "units": "mm/h"}]},
                                    tmp_path_factory.mktemp("radar") / "precip.jaxexport")
    return path, fn


def _rain_npz(path, shape, start=0.0, scale=5.0):
    rain = (np.random.default_rng(5).random(shape) * scale + start).astype(np.float32)
    times = [f"2024-05-01T12:{5 * i:02d}:00" for i in range(shape[0])]
    np.savez(path, rain_mm_h=rain, times=np.asarray(times))
    return rain


def test_predict_radar_npz_from_artifact(radar_artifact, tmp_path, capsys):
    path, fn = radar_artifact
    rain = _rain_npz(tmp_path / "in.npz", (4, 8, 8))
    code, err = _cli("predict", "--artifact", path, "--input", tmp_path / "in.npz", "--out", tmp_path / "f.npz",
                     capsys=capsys)
    assert code == 0, err
    out = np.load(tmp_path / "f.npz")
    expected = np.asarray(fn(rain[-3:][None, ..., None]))[0, ..., 0]  # the last J=3 frames
    np.testing.assert_allclose(out["forecast_mm_h"], expected, rtol=1e-5, atol=1e-5)
    assert list(out["valid_times"]) == ["2024-05-01T12:20:00", "2024-05-01T12:25:00"]
    assert (tmp_path / "f.png").stat().st_size > 1000


@pytest.mark.parametrize("shape,start,message", [
    ((4, 16, 16), 0.0, "wrong grid: frames are 16x16 but the forecaster was trained on 8x8"),
    ((2, 8, 8), 0.0, "too little history: the forecaster needs 3 frames"),
    ((4, 8, 8), -30.0, "wrong units"),
    ((4, 8, 8), 5000.0, "wrong units"),
])
def test_predict_radar_refuses_bad_inputs(radar_artifact, tmp_path, capsys, shape, start, message):
    _rain_npz(tmp_path / "in.npz", shape, start=start)
    code, err = _cli("predict", "--artifact", radar_artifact[0], "--input", tmp_path / "in.npz",
                     "--out", tmp_path / "f.npz", capsys=capsys)
    assert code == 2 and message in err, err


RADAR_SIDE = {"kind": "radar", "time_step_minutes": 5,
              "radar": {"downsample_factor": 2, "grid": [16, 16], "centre_crop": [8, 8]}}


@pytest.mark.parametrize("hw,message", [
    ((32, 32), "wrong grid: frames are 32x32 but the forecaster was trained on 16x16 (the radar grid after "
               "downsampling by 2, then centre-cropped to 8x8); an .npz must hold rain_mm_h on that "
               "downsampled grid 16x16 (downsample factor 2)"),
    ((8, 8), "wrong grid: frames are 8x8 but the forecaster was trained on 16x16"),
    ((16, 16), None),
])
def test_predict_radar_npz_must_be_on_the_downsampled_grid(tmp_path, hw, message):
    """Review B: a native-resolution .npz (larger than the crop) was cropped and forecast at the
    wrong scale; frames must equal the full downsampled grid before the centre crop. The
    sidecars here predate the contract (``radar.grid`` / ``radar.centre_crop``)."""
    side = {**RADAR_SIDE, "inputs": [{"shape": ["b", *FRAMES]}]}
    rain = _rain_npz(tmp_path / "in.npz", (4, *hw))
    contract = precip_serve.sidecar_contract(side)
    assert contract.grid == (16, 16) and contract.eval_crop == (8, 8) and contract.input_steps == 3
    if message is None:
        got, _ = precip_serve.read_radar_frames(contract, tmp_path / "in.npz")
        np.testing.assert_array_equal(got, rain[-3:, 4:12, 4:12])  # the centre 8x8
        return
    with pytest.raises(ServeError, match="wrong grid") as err:
        precip_serve.read_radar_frames(contract, tmp_path / "in.npz")
    assert message in str(err.value), err.value
    # a sidecar without the full grid cannot tell the scale of a larger .npz: only the exact size
    old = precip_serve.sidecar_contract({**side, "radar": {"downsample_factor": 2, "centre_crop": [8, 8]}})
    if hw != (8, 8):
        with pytest.raises(ServeError, match="wrong grid"):
            precip_serve.read_radar_frames(old, tmp_path / "in.npz")


def test_predict_radar_writes_netcdf_with_the_contract_step(radar_artifact, tmp_path):
    path, fn = radar_artifact
    forecast, sidecar = artifact.load_artifact(path)
    rain = _rain_npz(tmp_path / "in.npz", (4, 8, 8))
    written = precip_serve.forecast_radar(forecast, sidecar, tmp_path / "in.npz", tmp_path / "f.nc", png=False)
    assert written == [tmp_path / "f.nc"]
    import netCDF4

    with netCDF4.Dataset(tmp_path / "f.nc") as nc:
        np.testing.assert_allclose(nc["lead_minutes"][:], [5.0, 10.0])
        np.testing.assert_allclose(nc["precip_rate"][:], np.asarray(fn(rain[-3:][None, ..., None]))[0, ..., 0],
                                   rtol=1e-5, atol=1e-5)
        assert nc.valid_times == "2024-05-01T12:20:00 2024-05-01T12:25:00"


def test_folder_files_of_different_shapes_are_a_wrong_grid(radar_task, radar_dir, cropped_radar, tmp_path):
    """One file of the folder on another grid: "wrong grid", not a failed conversion to mm/h."""
    folder = sorted(p for p in (radar_dir / "mch").iterdir() if p.is_dir())[0]
    latest = sorted(folder.glob("*.gif"))[-radar_task.input_frames:]
    live = tmp_path / "live"
    live.mkdir()
    for p in latest[:-1]:
        (live / p.name).symlink_to(p)
    cut = next(Path(cropped_radar).parent.parent.glob(f"*/{latest[-1].name}"))
    (live / cut.name).symlink_to(cut)  # the newest file cut to 320x360
    with pytest.raises(ServeError, match=r"wrong grid: the files in .* have different shapes \[\(320, 360\), \(640, 710\)\]"):
        precip_serve.read_radar_frames(radar_task.contract, live)


def test_legacy_sidecar_keys_give_the_contract(radar_task):
    """A sidecar as the radar export wrote it before the contract (``radar``, ``normalisation``)
    serves with the same contract as the new one (``preprocess``)."""
    c = radar_task.contract
    legacy = {"kind": "radar", "units": "mm/h", "input_steps": c.input_steps, "output_steps": c.output_steps,
              "time_step_minutes": c.timestep_minutes,
              "normalisation": {"source": "radar", "transform": c.transform.to_dict()},
              "radar": {"importer": c.importer, "importer_kwargs": c.importer_options, "fn_pattern": c.fn_pattern,
                        "downsample_factor": c.downsample_factor, "grid": list(c.grid),
                        "centre_crop": list(c.eval_crop)},
              "inputs": [{"shape": ["b", c.input_steps, *c.eval_crop, 1]}]}
    assert precip_serve.sidecar_contract(legacy) == c


def test_exported_radar_task_records_grid_and_refuses_native_npz(radar_dir, tmp_path):
    """The real tiny radar task, decoded afresh (its own cache dir): the sidecar's contract holds the
    downsampled grid; a folder and an .npz on that grid give the same frames; the native-resolution
    .npz is refused."""
    radar_task = precip.make_task(tiny_radar_config(radar_dir, tmp_path / "cache"))
    assert list((tmp_path / "cache").glob("radar-*.npy"))  # the grid was measured on a fresh decode
    forecast, _, side = precip_serve.export_spec(radar_task, radar_task.init_params(jax.random.PRNGKey(0)))
    contract = precip_serve.sidecar_contract(json.loads(json.dumps(side)))
    factor = contract.downsample_factor
    assert side["preprocess"]["grid"] == list(radar_task.dataset.frame_shape()) and factor > 1
    assert "radar" not in side and "normalisation" not in side  # one record of the preprocessing
    folder = sorted(p for p in (radar_dir / "mch").iterdir() if p.is_dir())[0]
    rain, times = precip_serve.read_radar_frames(contract, folder)
    frames = archive.list_frames(str(folder / "*"), contract.fn_pattern)[-radar_task.input_frames:]
    assert times == [f.time for f in frames]
    native = np.stack([decode.read_rain_rate(f.path, contract.importer, contract.importer_options)[0]
                       for f in frames]).astype(np.float32)
    np.savez(tmp_path / "native.npz", rain_mm_h=native)
    with pytest.raises(ServeError, match=f"downsampled grid .*downsample factor {factor}"):
        precip_serve.read_radar_frames(contract, tmp_path / "native.npz")
    np.savez(tmp_path / "down.npz", rain_mm_h=np.stack([decode.downsample(f, factor) for f in native]))
    got, _ = precip_serve.read_radar_frames(contract, tmp_path / "down.npz")
    np.testing.assert_array_equal(got, rain)


def test_exported_radar_forecaster_matches_task(radar_task, tmp_path):
    """Artifact: mm/h in, mm/h out, equal to the task's own forecast pushed through the contract."""
    params = radar_task.init_params(jax.random.PRNGKey(0))
    path = export.export_task(precip_serve.export_spec, radar_task, params, tmp_path / "radar.jaxexport")
    forecast, sidecar = artifact.load_artifact(path)
    assert sidecar["kind"] == "radar" and sidecar["units"] == "mm/h"
    assert sidecar["preprocess"] == radar_task.contract.to_dict()
    batch = next(radar_task.eval_windows("test", 2))  # mm/h
    got = np.asarray(forecast(batch["inputs"]))
    contract = radar_task.contract
    want = contract.from_model_units(np.asarray(radar_task.raw_forecast(params, contract.to_model_units(batch["inputs"]))))
    assert got.shape == want.shape == (2, radar_task.output_frames, *batch["inputs"].shape[2:])
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


def test_forecast_radar_from_a_folder_with_the_exported_forecaster(radar_task, radar_dir, tmp_path):
    """``forecast_radar`` on a folder of raw files: the forecast of its last J frames, the domain
    mask kept, valid times one step apart after the last input."""
    params = radar_task.init_params(jax.random.PRNGKey(1))
    fn, specs, sidecar = precip_serve.export_spec(radar_task, params)
    exported, sidecar = export.build(fn, specs, sidecar)
    folder = sorted(p for p in (radar_dir / "mch").iterdir() if p.is_dir())[0]
    written = precip_serve.forecast_radar(exported.call, sidecar, folder, tmp_path / "f.npz", png=False)
    assert written == [tmp_path / "f.npz"]
    out = np.load(tmp_path / "f.npz")
    x, rain, times = precip_serve.forecaster_inputs(radar_task.contract, folder)
    want = np.asarray(jax.jit(fn)(x))[0, ..., 0]
    want = np.where(np.isnan(rain[-1]), np.nan, want)
    np.testing.assert_allclose(out["forecast_mm_h"], want, rtol=1e-5, atol=1e-6, equal_nan=True)
    assert out["forecast_mm_h"].shape == (radar_task.output_frames, *radar_task.contract.eval_crop)
    step = radar_task.contract.timestep_minutes
    assert str(out["valid_times"][0]) == (times[-1] + np.timedelta64(int(step), "m").astype(object)).isoformat()


def test_exported_radar_forecaster_treats_bad_pixels_as_the_cli_does(radar_task, tmp_path):
    """Through load_artifact: a NaN, an inf or a negative pixel is 0 mm/h (not a NaN forecast)."""
    params = radar_task.init_params(jax.random.PRNGKey(0))
    path = export.export_task(precip_serve.export_spec, radar_task, params, tmp_path / "radar.jaxexport")
    forecast, sidecar = artifact.load_artifact(path)
    assert "0 mm/h" in sidecar["nan_policy"]
    clean = next(radar_task.eval_windows("test", 1))["inputs"].astype(np.float32)
    dirty = clean.copy()
    dirty[0, -1, 3, 4, 0], dirty[0, 0, 5, 6, 0], dirty[0, 1, 7, 8, 0] = np.nan, np.inf, -2.0
    zeroed = clean.copy()
    zeroed[0, -1, 3, 4, 0] = zeroed[0, 0, 5, 6, 0] = zeroed[0, 1, 7, 8, 0] = 0.0
    got = np.asarray(forecast(dirty))
    assert np.isfinite(got).all()
    np.testing.assert_array_equal(got, np.asarray(forecast(zeroed)))


def test_a_folder_with_stray_files_and_a_broken_radar_file(radar_task, radar_dir, tmp_path):
    """A README and the previous forecast beside the radar files are left alone; a truncated
    radar-named file is one clear ServeError (it was a raw traceback)."""
    params = radar_task.init_params(jax.random.PRNGKey(1))
    fn, specs, sidecar = precip_serve.export_spec(radar_task, params)
    exported, sidecar = export.build(fn, specs, sidecar)
    source = sorted(p for p in (radar_dir / "mch").iterdir() if p.is_dir())[0]
    last = sorted(source.iterdir())[-radar_task.contract.input_steps:]
    clean, messy = tmp_path / "clean", tmp_path / "messy"
    for folder in (clean, messy):
        folder.mkdir()
        for f in last:
            (folder / f.name).symlink_to(f)
    (messy / "README.txt").write_text("radar files of the last hour\n")
    precip_serve.forecast_radar(exported.call, sidecar, clean, clean / "f.npz", png=True)  # f.npz + f.png
    for name in ("f.npz", "f.png"):
        (messy / name).write_bytes((clean / name).read_bytes())
    precip_serve.forecast_radar(exported.call, sidecar, messy, tmp_path / "g.npz", png=False)
    np.testing.assert_array_equal(np.load(tmp_path / "g.npz")["forecast_mm_h"],
                                  np.load(clean / "f.npz")["forecast_mm_h"])
    broken = messy / last[-1].name
    broken.unlink()
    broken.write_bytes(last[-1].read_bytes()[:100])
    with pytest.raises(ServeError, match=r"cannot read the radar files .* importer 'mch_gif'"):
        precip_serve.forecast_radar(exported.call, sidecar, messy, tmp_path / "h.npz", png=False)
