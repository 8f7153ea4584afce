"""jax.export artifacts: round trip in a fresh process without model code, sidecar, CLI export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("flatbuffers", reason="jax.export serialization needs the 'flatbuffers' package")

from nowcast_jax.artifact import ServeError
from nowcast_jax.precip import archive
from nowcast_jax.engine import workdir as workdir_lib
from nowcast_jax import artifact, models  # noqa: E402
from nowcast_jax.engine import export
from tests.engine_utils import REPO, TOY, cli_env  # noqa: E402
from tests.toy_task import ToyTask  # noqa: E402


def _env() -> dict:
    """The CLI test environment, keeping any PYTHONPATH entries of this process."""
    env = cli_env()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return env


FRAMES = (3, 8, 8, 1)  # J, H, W, C
STEPS = 2
MODEL_MODULES = ("nowcast_jax.models", "nowcast_jax.cells", "nowcast_jax.rollout", "nowcast_jax.conv",
                 "nowcast_jax.linen", "nowcast_jax.engine", "nowcast_jax.precip.task", "nowcast_jax.visibility.task",
                 "flax")


def _precip_fn():
    """Tiny encoder-forecaster with a log1p rain transform baked in: mm/h -> mm/h."""
    model = models.encoder_forecaster(1, patch_size=2, hidden=(4, 4), kernel_x=3, kernel_h=3)
    params = model.init(jax.random.key(0), FRAMES[1:])

    def fn(rain):  # [b, J, H, W, 1] mm/h -> [b, K, H, W, 1] mm/h
        z = jnp.log1p(jnp.maximum(rain, 0.0)) / 2.0
        return jnp.maximum(jnp.expm1(model.apply(params, z, output_steps=STEPS) * 2.0), 0.0)

    return fn


def _station_fn():
    """Tiny station LSTM with a min-max scaler baked in: raw features -> visibility (miles)."""
    model = models.station_lstm(hidden=(4, 4), horizons=3)
    params = model.init(jax.random.key(1), 5, 6)
    lo, hi = jnp.arange(5.0), jnp.arange(5.0) * 3 + 10

    def fn(x):  # [b, T=6, F=5] physical -> [b, 3] miles
        return model.apply(params, (x - lo) / (hi - lo))["value"] * 10.0

    return fn


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """Export both models; return {name: (artifact path, inputs by batch size, expected outputs)}."""
    root = tmp_path_factory.mktemp("artifacts")
    rng = np.random.default_rng(0)
    out = {}
    for name, fn, shape in (("precip", _precip_fn(), FRAMES), ("station", _station_fn(), (6, 5))):
        path = export.export_forecaster(fn, export.batch_specs((shape, "float32")),
                                        {"units": "test", "time_step_minutes": 5,
                                         "inputs": [{"name": "x", "units": "raw"}]},
                                        root / f"{name}.jaxexport")
        xs = {b: (rng.random((b, *shape)) * 10).astype(np.float32) for b in (1, 3)}
        np.savez(root / f"{name}_inputs.npz", **{f"b{b}": x for b, x in xs.items()})
        out[name] = (path, xs, {b: np.asarray(jax.jit(fn)(x)) for b, x in xs.items()})
    return out


LOADER = textwrap.dedent("""
    import json, sys
    import numpy as np
    from nowcast_jax.artifact import load_artifact
    path, inputs, result = sys.argv[1:4]
    forecast, sidecar = load_artifact(path)
    xs = np.load(inputs)
    np.savez(result, **{k: np.asarray(forecast(xs[k])) for k in xs.files})
    print(json.dumps(sorted(m for m in sys.modules if m.startswith(("nowcast_jax", "flax")))))
""")


@pytest.mark.parametrize("name", ["precip", "station"])
def test_fresh_process_without_model_code_matches(artifacts, name, tmp_path):
    path, xs, expected = artifacts[name]
    result = tmp_path / "out.npz"
    proc = subprocess.run([sys.executable, "-c", LOADER, str(path), str(path.parent / f"{name}_inputs.npz"),
                           str(result)], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not [m for m in loaded if m.startswith(MODEL_MODULES)], loaded
    got = np.load(result)
    for b in (1, 3):  # two batch sizes through one symbolic-batch artifact
        assert got[f"b{b}"].shape == expected[b].shape
        np.testing.assert_allclose(got[f"b{b}"], expected[b], rtol=1e-5, atol=1e-5)


def test_sidecar_records_spec(artifacts):
    path, _, _ = artifacts["precip"]
    side = json.loads(artifact.sidecar_path(path).read_text())
    assert side["format"] == artifact.FORMAT
    assert side["inputs"] == [{"name": "x", "units": "raw", "shape": ["b", *FRAMES], "dtype": "float32"}]
    assert side["outputs"][0]["shape"] == ["b", STEPS, *FRAMES[1:]]
    assert side["platforms"] == ["cpu"] and side["jax_version"] == jax.__version__
    assert side["time_step_minutes"] == 5 and side["units"] == "test"


def test_loader_refuses_wrong_inputs(artifacts):
    path, xs, _ = artifacts["station"]
    forecast, _ = artifact.load_artifact(path)
    with pytest.raises(artifact.ArtifactError, match=r"expected shape \[b, 6, 5\].*axis 1 is 4"):
        forecast(np.zeros((2, 4, 5), np.float32))
    with pytest.raises(artifact.ArtifactError, match="expected rank 3"):
        forecast(np.zeros((6, 5), np.float32))
    with pytest.raises(artifact.ArtifactError, match="takes 1 input"):
        forecast(xs[1], xs[1])
    np.testing.assert_allclose(np.asarray(forecast(xs[1].astype(np.float64))), artifacts["station"][2][1], atol=1e-5)


def test_missing_files_and_bad_platforms(tmp_path, artifacts):
    with pytest.raises(artifact.ArtifactError, match="not found"):
        artifact.load_artifact(tmp_path / "nope.jaxexport")
    with pytest.raises(export.ExportError, match="platforms"):
        export.export_forecaster(lambda x: x, export.batch_spec((2,)), {}, tmp_path / "a", platforms=("gpu0",))
    with pytest.raises(export.ExportError, match="ShapeDtypeStruct"):
        export.export_forecaster(lambda x: x, [((2,), "float32")], {}, tmp_path / "a")
    with pytest.raises(export.ExportError, match="no export_spec"):
        export.export_task(object(), {}, tmp_path / "a")


def test_multi_platform_export(tmp_path):
    """cpu + cuda lowering works without a GPU; the artifact still runs here on CPU."""
    path = export.export_forecaster(_station_fn(), export.batch_spec((6, 5)), {}, tmp_path / "m.jaxexport",
                                    platforms=("cpu", "cuda"))
    forecast, side = artifact.load_artifact(path)
    assert side["platforms"] == ["cpu", "cuda"]
    assert forecast(np.ones((2, 6, 5), np.float32)).shape == (2, 3)


def test_artifact_module_imports_no_model_code():
    code = ("import sys, nowcast_jax.artifact; "
            "print([m for m in sys.modules if m.startswith(('nowcast_jax.', 'jax'))])")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    # not even jax until load_artifact runs (and `import nowcast_jax` itself imports nothing)
    assert sorted(eval(proc.stdout)) == ["nowcast_jax.artifact"]


# ------------------------------------------------------------------------------ CLI export
class ExportableToy(ToyTask):
    """The toy task plus an ``export_spec``: raw features in, raw targets out."""

    def export_spec(self, params):
        norm = {k: list(v) for k, v in self.norm.items()}

        def fn(x):  # [b, F] raw -> [b, n_h]
            return self.apply(params, x)

        return fn, export.batch_specs(((self.features,), "float32")), {
            "normalisation": norm, "inputs": [{"name": "features", "units": "1"}], "time_step_minutes": 60}


def make_exportable_toy(config):
    return ExportableToy(config)


@pytest.fixture(scope="module")
def toy_workdir(tmp_path_factory):
    from nowcast_jax.engine import config as config_lib
    from nowcast_jax.engine import loop

    workdir = tmp_path_factory.mktemp("toy")
    config = config_lib.apply_overrides(config_lib.load_config(TOY), [
        "task=tests.engine.test_export:make_exportable_toy", "train.steps=5", "checkpoint.every_steps=5",
        "eval.every_steps=5", "train.log_every_steps=5"])
    task = ExportableToy(config)
    result = loop.train(config, workdir, task)
    assert result.step == 5
    return workdir, config


def test_cli_export_matches_checkpoint(toy_workdir, tmp_path, capsys):
    from nowcast_jax import cli

    workdir, config = toy_workdir
    out = tmp_path / "toy.jaxexport"
    assert cli.main(["export", "--workdir", str(workdir), "--out", str(out)]) == 0
    task = ExportableToy(config)
    _, params = workdir_lib.restore_params(config, workdir, task)
    forecast, side = artifact.load_artifact(out)
    assert side["task"] == "toy" and side["checkpoint_step"] == 5 and side["time_step_minutes"] == 60
    x = np.random.default_rng(3).normal(size=(4, 4)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(forecast(x)), np.asarray(task.apply(params, x)), rtol=1e-5, atol=1e-5)


def test_cli_export_refuses_task_without_export_spec(toy_workdir, tmp_path, capsys):
    from nowcast_jax import cli

    workdir, _ = toy_workdir
    code = cli.main(["export", "--workdir", str(workdir), "--out", str(tmp_path / "x"),
                     "--config.task=tests.toy_task:make_task"])
    assert code == 2
    assert "no export_spec" in capsys.readouterr().err


# ------------------------------------------------------------------------------ predict
def _cli(*args, capsys):
    from nowcast_jax import cli

    code = cli.main([str(a) for a in args])
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def radar_artifact(tmp_path_factory):
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


STATION_FEATURES = ["temperature", "dew_point", "pressure", "wind_speed", "visibility"]


@pytest.fixture(scope="module")
def station_artifact(tmp_path_factory):
    from nowcast_jax.visibility.readers import nycflights13_defaults

    fn = _station_fn()
    path = export.export_forecaster(fn, export.batch_spec((6, 5)), {
        "kind": "station", "features": STATION_FEATURES, "history": 6, "step": "1h", "horizons_hours": [1, 2, 3],
        "csv": nycflights13_defaults(), "outputs": [{"name": "visibility", "units": "m"}]},
        tmp_path_factory.mktemp("station") / "vis.jaxexport")
    return path, fn


def _station_csv(path, hours):
    import pandas as pd

    rng = np.random.default_rng(0)
    rows = []
    for origin in ("EWR", "JFK"):
        for h in range(hours):
            rows.append({"origin": origin, "time_hour": f"2013-01-01T{h:02d}:00:00Z", "temp": 30 + h, "dewp": 20.0,
                         "wind_speed": 5 + rng.random(), "wind_dir": 180, "pressure": 1010 + h,
                         "precip": 0.0, "visib": 10.0 - 0.5 * h})
    pd.DataFrame(rows).to_csv(path, index=False)


def test_predict_station_csv_from_artifact(station_artifact, tmp_path, capsys):
    import pandas as pd

    from nowcast_jax.visibility import serve as visibility_serve

    path, fn = station_artifact
    _station_csv(tmp_path / "obs.csv", 10)
    code, err = _cli("predict", "--artifact", path, "--input", tmp_path / "obs.csv", "--out", tmp_path / "f.csv",
                     capsys=capsys)
    assert code == 0, err
    table = pd.read_csv(tmp_path / "f.csv")
    assert list(table.columns) == ["station", "issue_time", "horizon_hours", "valid_time", "visibility_m"]
    assert len(table) == 6 and table["station"].tolist() == ["EWR"] * 3 + ["JFK"] * 3
    assert table["issue_time"][0] == "2013-01-01T09:00:00Z" and table["valid_time"][2] == "2013-01-01T12:00:00Z"
    _, side = artifact.load_artifact(path)
    x, names, _ = visibility_serve.read_station_inputs(side, tmp_path / "obs.csv")
    assert x.shape == (2, 6, 5) and names == ["EWR", "JFK"]
    np.testing.assert_allclose(x[0, -1], [(39 - 32) * 5 / 9, (20 - 32) * 5 / 9, 1019, x[0, -1, 3],
                                          (10 - 4.5) * 1609.344], rtol=1e-5)  # canonical units
    np.testing.assert_allclose(table["visibility_m"].to_numpy().reshape(2, 3), np.asarray(fn(x)), rtol=1e-5)
    code, err = _cli("predict", "--artifact", path, "--input", tmp_path / "obs.csv", "--out", tmp_path / "j.csv",
                     "--stations", "JFK", capsys=capsys)   # one station of the CSV
    assert code == 0, err
    jfk = pd.read_csv(tmp_path / "j.csv")
    assert jfk["station"].tolist() == ["JFK"] * 3
    np.testing.assert_allclose(jfk["visibility_m"], table["visibility_m"][3:], rtol=1e-6)
    code, err = _cli("predict", "--artifact", path, "--input", tmp_path / "obs.csv", "--out", tmp_path / "j.csv",
                     "--stations", "LGA", capsys=capsys)
    assert code == 2 and "no rows for station(s) ['LGA']" in err, err


def test_predict_station_refuses_short_history_and_bad_csv(station_artifact, tmp_path, capsys):
    _station_csv(tmp_path / "short.csv", 4)
    code, err = _cli("predict", "--artifact", station_artifact[0], "--input", tmp_path / "short.csv",
                     "--out", tmp_path / "f.csv", capsys=capsys)
    assert code == 2 and "too little history" in err and "EWR (4 steps" in err, err
    (tmp_path / "bad.csv").write_text("origin,time_hour,temp\nEWR,2013-01-01T00:00:00Z,3\n")
    code, err = _cli("predict", "--artifact", station_artifact[0], "--input", tmp_path / "bad.csv",
                     "--out", tmp_path / "f.csv", capsys=capsys)
    assert code == 2 and "column 'visib' not found" in err, err


def _station_sidecar(**extra):
    """A station sidecar as VisibilityTask.export_spec writes it (nycflights13 contract)."""
    from nowcast_jax.visibility.readers import nycflights13_defaults

    csv = {k: v for k, v in nycflights13_defaults().items() if k not in ("path", "visibility_cap_m")}
    return {"kind": "station", "features": STATION_FEATURES, "history": 6, "step": "1h",
            "horizons_hours": [1, 2, 3], "csv": csv, "interpolate": ["pressure"], "max_interp_steps": 3,
            **extra}


def test_predict_station_clips_at_the_cap_and_applies_valid_ranges(tmp_path):
    """Review A: the training steps the sidecar must carry: visibility above the training cap is
    the cap (not a value beyond the scaler's range), and custom valid ranges turn values into
    missing ones (here interpolated, as in training)."""
    import pandas as pd

    from nowcast_jax.visibility import serve as visibility_serve
    from nowcast_jax.visibility.readers import MILE_M

    _station_csv(tmp_path / "obs.csv", 10)
    table = pd.read_csv(tmp_path / "obs.csv")
    table.loc[9, "visib"] = 12.0  # EWR, last hour: above the 10-mile cap
    table.loc[16, "pressure"] = 1050.0  # JFK 06:00: plausible by default, outside the trained range
    table.to_csv(tmp_path / "obs.csv", index=False)
    side = _station_sidecar(visibility_cap_m=10 * MILE_M)
    side["csv"]["valid_ranges"] = {"pressure": [1000.0, 1030.0]}
    x, names, _ = visibility_serve.read_station_inputs(side, tmp_path / "obs.csv")
    assert names == ["EWR", "JFK"]
    vis, pressure = STATION_FEATURES.index("visibility"), STATION_FEATURES.index("pressure")
    np.testing.assert_allclose(x[0, -1, vis], 10 * MILE_M, rtol=1e-6)  # clipped, not 12 miles
    np.testing.assert_allclose(x[1, :, pressure], [1014, 1015, 1016, 1017, 1018, 1019])  # 1050 -> NaN -> interp
    # without the sidecar's valid ranges and cap, the CSV's values come through (the old bug)
    side = _station_sidecar()
    x, _, _ = visibility_serve.read_station_inputs(side, tmp_path / "obs.csv")
    assert x[1, 2, pressure] == 1050.0 and x[0, -1, vis] > 10 * MILE_M
    # older sidecars: the cap of the CSV contract is used
    side = _station_sidecar()
    side["csv"]["visibility_cap_m"] = 10 * MILE_M
    x, _, _ = visibility_serve.read_station_inputs(side, tmp_path / "obs.csv")
    np.testing.assert_allclose(x[0, -1, vis], 10 * MILE_M, rtol=1e-6)


def test_predict_station_refuses_gaps_at_the_end(tmp_path):
    """Missing values in the last steps cannot be interpolated (no later observation), and steps
    without any observation are never in a training window: refused, naming station and feature."""
    import pandas as pd

    from nowcast_jax.visibility import serve as visibility_serve

    _station_csv(tmp_path / "obs.csv", 10)
    table = pd.read_csv(tmp_path / "obs.csv").astype({"pressure": object})
    table.loc[19, "pressure"] = "NA"  # JFK, last hour
    table = table.drop(index=7)  # EWR 07:00: no observation at all
    table.to_csv(tmp_path / "obs.csv", index=False)
    with pytest.raises(ServeError) as err:
        visibility_serve.read_station_inputs(_station_sidecar(), tmp_path / "obs.csv")
    msg = str(err.value)
    assert "too little history" in msg and "EWR (6 steps, no observation in 1 step(s)" in msg, msg
    assert "JFK (6 steps, missing ['pressure'])" in msg, msg


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
    wrong scale; frames must equal the full downsampled grid before the centre crop."""
    from nowcast_jax.precip import serve as precip_serve

    side = {**RADAR_SIDE, "inputs": [{"shape": ["b", *FRAMES]}]}
    rain = _rain_npz(tmp_path / "in.npz", (4, *hw))
    if message is None:
        got, _ = precip_serve.read_radar_inputs(side, tmp_path / "in.npz")
        np.testing.assert_array_equal(got, rain[-3:, 4:12, 4:12])  # the centre 8x8
        return
    with pytest.raises(ServeError, match="wrong grid") as err:
        precip_serve.read_radar_inputs(side, tmp_path / "in.npz")
    assert message in str(err.value), err.value
    # a sidecar without the full grid cannot tell the scale of a larger .npz: only the exact size
    old = {**side, "radar": {"downsample_factor": 2, "centre_crop": [8, 8]}}
    if hw != (8, 8):
        with pytest.raises(ServeError, match="wrong grid"):
            precip_serve.read_radar_inputs(old, tmp_path / "in.npz")


def test_exported_radar_task_records_grid_and_refuses_native_npz(radar_dir, tmp_path):
    """The real tiny radar task: the sidecar's grid is the downsampled frame; a folder and an
    .npz on that grid give the same forecast; the native-resolution .npz is refused."""
    from nowcast_jax.precip import serve as precip_serve
    from nowcast_jax.precip import decode
    from nowcast_jax.precip import task as precip
    from tests.precip.test_task import radar_config

    task = precip.make_task(radar_config(radar_dir, tmp_path / "cache"))
    forecast, _, side = task.export_spec(task.init_params(jax.random.PRNGKey(0)))
    side = {**side, "inputs": [{"shape": ["b", task.input_frames, *side["radar"]["centre_crop"], 1]}]}
    factor = side["radar"]["downsample_factor"]
    assert side["radar"]["grid"] == list(task.source.ds.frame_shape()) and factor > 1
    folder = sorted(p for p in (radar_dir / "mch").iterdir() if p.is_dir())[0]
    rain, times = precip_serve.read_radar_inputs(side, folder)
    frames = archive.list_frames(str(folder / "*"), side["radar"]["fn_pattern"])[-task.input_frames:]
    native = np.stack([decode.read_rain_rate(f.path, side["radar"]["importer"], side["radar"]["importer_kwargs"])[0]
                       for f in frames]).astype(np.float32)
    np.savez(tmp_path / "native.npz", rain_mm_h=native)
    with pytest.raises(ServeError, match=f"downsampled grid .*downsample factor {factor}"):
        precip_serve.read_radar_inputs(side, tmp_path / "native.npz")
    np.savez(tmp_path / "down.npz", rain_mm_h=np.stack([decode.downsample(f, factor) for f in native]))
    got, _ = precip_serve.read_radar_inputs(side, tmp_path / "down.npz")
    np.testing.assert_array_equal(got, rain)
