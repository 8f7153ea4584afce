"""jax.export artifacts: round trip in a fresh process without model code, sidecar, CLI export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

pytest.importorskip("flatbuffers", reason="jax.export serialization needs the 'flatbuffers' package")

from nowcast_jax.engine import workdir as workdir_lib
from nowcast_jax import artifact  # noqa: E402
from nowcast_jax.engine import export
from tests.export_fns import tiny_precip_fn, tiny_station_fn  # noqa: E402
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
    return tiny_precip_fn(FRAMES, STEPS)


def _station_fn():
    """Tiny station LSTM with a min-max scaler baked in: raw features -> visibility (miles)."""
    return tiny_station_fn()


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
def export_spec(task, params):
    """The export hook the CLI finds beside ``make_exportable_toy``: raw features in, raw targets out."""
    norm = {k: list(v) for k, v in task.norm.items()}

    def fn(x):  # [b, F] raw -> [b, n_h]
        return task.apply(params, x)

    return fn, export.batch_specs(((task.features,), "float32")), {
        "normalisation": norm, "inputs": [{"name": "features", "units": "1"}], "time_step_minutes": 60}


def make_exportable_toy(config):
    return ToyTask(config)


@pytest.fixture(scope="module")
def toy_workdir(tmp_path_factory):
    from nowcast_jax.engine import config as config_lib
    from nowcast_jax.engine import loop

    workdir = tmp_path_factory.mktemp("toy")
    config = config_lib.apply_overrides(config_lib.load_config(TOY), [
        "task=tests.engine.test_export:make_exportable_toy", "train.steps=5", "checkpoint.every_steps=5",
        "eval.every_steps=5", "train.log_every_steps=5"])
    task = ToyTask(config)
    result = loop.train(config, workdir, task)
    assert result.step == 5
    return workdir, config


def test_cli_export_matches_checkpoint(toy_workdir, tmp_path, capsys):
    from nowcast_jax import cli

    workdir, config = toy_workdir
    out = tmp_path / "toy.jaxexport"
    assert cli.main(["export", "--workdir", str(workdir), "--out", str(out)]) == 0
    task = ToyTask(config)
    _, params = workdir_lib.restore_params(config, workdir, task)
    forecast, side = artifact.load_artifact(out)
    assert side["task"] == "tests.engine.test_export:make_exportable_toy" and side["checkpoint_step"] == 5 and side["time_step_minutes"] == 60
    x = np.random.default_rng(3).normal(size=(4, 4)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(forecast(x)), np.asarray(task.apply(params, x)), rtol=1e-5, atol=1e-5)


def test_cli_export_refuses_task_without_export_spec(toy_workdir, tmp_path, capsys):
    from nowcast_jax import cli

    workdir, _ = toy_workdir
    code = cli.main(["export", "--workdir", str(workdir), "--out", str(tmp_path / "x"),
                     "--config.task=tests.toy_task:make_task"])
    assert code == 2
    assert "no export_spec" in capsys.readouterr().err
