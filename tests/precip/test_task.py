"""The precipitation tasks on real data (tiny variants): one task per source, the engine's
narrow protocol, data, masks, training steps, extras (the fitted contract)."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nowcast_jax.engine import config as config_lib
from nowcast_jax.engine import state as engine
from nowcast_jax.precip import evaluate as precip_evaluate
from nowcast_jax.precip import task as precip
from nowcast_jax.precip.preprocess import RadarContract
from tests.precip.conftest import MNIST_CFG, RADAR_CFG

PROTOCOL = ("init_params", "loss_fn", "train_batch", "eval_batches", "state_extras", "load_extras")


@pytest.mark.parametrize("spec", [MNIST_CFG, RADAR_CFG])
@pytest.mark.parametrize("variant", [None, "cpu", "tiny"])
def test_configs_load(spec, variant):
    c = config_lib.load_config(spec + (f":{variant}" if variant else ""))
    assert c.task == "precip" and c.data.source in ("moving_mnist", "radar")
    assert config_lib.from_json(config_lib.to_json(c)) == c


def test_fclstm_variant_and_unknown_variant():
    assert config_lib.load_config(MNIST_CFG + ":fclstm").model.cell == "lstm"
    with pytest.raises(config_lib.ConfigError, match="unknown variant"):
        config_lib.load_config(RADAR_CFG + ":nope")


def test_protocol(radar_task, mnist_task):
    """Each source has its own narrow task; evaluation and export are the application's functions."""
    assert isinstance(radar_task, precip.RadarTask) and isinstance(mnist_task, precip.MovingMNISTTask)
    for task in (radar_task, mnist_task):
        assert all(callable(getattr(task, m)) for m in PROTOCOL)
        assert callable(task.raw_forecast)
        assert not any(hasattr(task, m) for m in ("evaluate", "export_spec", "predict", "source_name"))
        assert json.loads(json.dumps(task.state_extras())) == task.state_extras()
    assert mnist_task.state_extras() == {"source": "moving_mnist"}
    extras = radar_task.state_extras()
    assert extras["source"] == "radar" and RadarContract.from_dict(extras["preprocess"]) == radar_task.contract


def test_unknown_source_is_a_config_error(radar_config):
    with pytest.raises(config_lib.ConfigError, match="config.data.source must be one of"):
        precip.make_task(config_lib.apply_overrides(radar_config(), ["data.source=satellite"]))


def test_train_batch_deterministic(radar_task, mnist_task):
    for task in (radar_task, mnist_task):
        a, b, c = task.train_batch(3, 2, 7), task.train_batch(3, 2, 7), task.train_batch(4, 2, 7)
        assert set(a) == set(b)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
        assert not np.array_equal(a["targets"], c["targets"])
    r = radar_task.train_batch(0, 2, 0)
    assert r["inputs"].shape == (2, 5, 32, 32, 1) and r["targets"].shape == (2, 10, 32, 32, 1)
    assert r["target_mask"].dtype == bool and np.isfinite(r["targets"]).all()


def test_masked_region_does_not_change_loss(radar_task):
    params = radar_task.init_params(jax.random.key(0))
    batch = radar_task.train_batch(0, 2, 0)
    batch["target_mask"] = batch["target_mask"].copy()
    batch["target_mask"][:, :, :10] = False
    loss = jax.jit(radar_task.loss_fn)
    grad = jax.jit(jax.grad(lambda p, b: radar_task.loss_fn(p, b, None)[0]))
    base, _ = loss(params, batch, None)
    for fill in (np.nan, 1e4):
        other = dict(batch, targets=batch["targets"].copy())
        other["targets"][:, :, :10] = fill
        val, _ = loss(params, other, None)
        np.testing.assert_allclose(val, base, rtol=1e-6)
        grads = grad(params, other)
        assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
    # and the unmasked part does count
    changed = dict(batch, targets=batch["targets"] + 1.0)
    assert abs(float(loss(params, changed, None)[0]) - float(base)) > 1e-3


def test_engine_steps_reduce_loss_moving_mnist(mnist_task):
    mesh = engine.make_mesh(jax.devices()[:1])
    tx, schedule = engine.optimizer_from_config(config_lib.apply_overrides(
        mnist_task.config, ["train.learning_rate=0.01"]).train)
    state = engine.create_state(mnist_task, tx, 0, mesh)
    step = engine.make_train_step(mnist_task, tx, schedule, 0, mesh)
    batch = engine.shard_batch(mnist_task.train_batch(0, 2, 0), mesh)
    losses = []
    for _ in range(8):
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
    assert losses[-1] < 0.8 * losses[0], losses
    assert np.isfinite(float(m["bce_per_sequence"]))


def test_load_extras_adopts_the_transform_and_keeps_the_config_reading(radar_config):
    """The checkpoint's rain transform is adopted; reading, grid and crop follow the config and the data."""
    task = precip.make_task(radar_config(**{"data.eval_crop_size": (48, 64)}))
    fitted = task.contract
    assert fitted.grid == task.dataset.frame_shape() == (80, 88) and fitted.eval_crop == (48, 64)
    extras = json.loads(json.dumps(task.state_extras()))
    stored = {**extras["preprocess"], "transform": {**extras["preprocess"]["transform"], "scale": 2.0},
              "eval_crop": [16, 16], "grid": [40, 44], "fn_pattern": "other%Y%m%d%H%M", "importer": "bom_rf3",
              "importer_kwargs": {"product": "x"}, "zr_a": 200.0, "zr_b": 1.6}
    task.load_extras({**extras, "preprocess": stored})
    assert task.contract.transform.scale == 2.0  # the checkpoint's transform is the one the weights know
    assert task.contract == dataclasses.replace(fitted, transform=task.contract.transform)  # the rest: the config's
    batch = next(task.eval_batches("test", 1))
    raw = next(task.eval_windows("test", 1))
    np.testing.assert_allclose(batch["inputs"], np.log1p(raw["inputs"]) / 2.0, rtol=1e-6)
    # checkpoints written before the contract existed hold only the transform
    task.load_extras({"source": "radar", "transform": {**extras["preprocess"]["transform"], "scale": 3.0}})
    assert task.contract.transform.scale == 3.0 and task.contract.grid == fitted.grid
    task.load_extras(extras)
    assert task.contract == fitted


@pytest.mark.parametrize("field,value,key", [("downsample_factor", 4, "data.downsample"),
                                             ("timestep_minutes", 10.0, "data.timestep_minutes"),
                                             ("input_steps", 4, "data.input_frames"),
                                             ("output_steps", 12, "data.output_frames")])
def test_load_extras_refuses_what_changes_the_weights_meaning(radar_task, field, value, key):
    extras = json.loads(json.dumps(radar_task.state_extras()))
    now = getattr(radar_task.contract, field)
    with pytest.raises(config_lib.ConfigError, match=f"{key} is {now!r} but the checkpoint was trained with {value!r}"):
        radar_task.load_extras({**extras, "preprocess": {**extras["preprocess"], field: value}})


def test_restore_on_another_archive_and_grid_is_evaluated(radar_config, cropped_radar, tmp_path):
    """``nowcast-jax evaluate --config.data.files=<another archive>`` on another grid: the task of the
    overridden config adopts the checkpoint's transform and is scored on the new grid."""
    trained = precip.make_task(radar_config(**{"data.transform_scale": 2.0}))
    extras = json.loads(json.dumps(trained.state_extras()))
    params = trained.init_params(jax.random.key(0))
    other = radar_config(**{"data.files": cropped_radar, "data.eval_crop_size": (40, 44),
                            "data.cache_dir": str(tmp_path)})
    task = precip.make_task(other)  # what workdir.restore does: make_task(stored config + overrides) ...
    task.load_extras(extras)  # ... then the checkpoint's extras
    assert task.contract.grid == (40, 45) != trained.contract.grid and task.contract.eval_crop == (40, 44)
    assert task.contract.transform == trained.contract.transform and task.contract.transform.scale == 2.0
    res = precip_evaluate.evaluate(SimpleNamespace(config=other, task=task, step=0, params=params), "test")
    assert res["windows"] == 3 and np.isfinite(res["model"]["mse"]).all()
    assert next(task.eval_windows("test", 1))["inputs"].shape == (1, 5, 40, 44, 1)
    # a checkpoint trained at another downsampling cannot be read on this one
    with pytest.raises(config_lib.ConfigError, match="data.downsample is 8 but the checkpoint was trained with 4"):
        task.load_extras({**extras, "preprocess": {**extras["preprocess"], "downsample_factor": 4}})


def test_bad_config_errors(radar_config):
    with pytest.raises(ValueError, match="horizon_weights"):
        precip.make_task(radar_config(**{"loss.horizon_weights": (1.0, 2.0)}))
    with pytest.raises(ValueError, match="loss.name"):
        precip.make_task(radar_config(**{"loss.name": "huber"}))


