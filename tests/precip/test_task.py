"""The precipitation task on real data (tiny variants): protocol, data, masks, training, scores, CLI."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nowcast_jax.precip import decode
from nowcast_jax.engine import config as config_lib
from nowcast_jax.engine import state as engine
from nowcast_jax.precip import task as precip
from tests.engine_utils import REPO, cli_env, run_cli

MNIST_CFG = str(REPO / "configs" / "precip_moving_mnist.py")
RADAR_CFG = str(REPO / "configs" / "precip_radar.py")
PROTOCOL = ("init_params", "loss_fn", "train_batch", "eval_batches", "evaluate", "state_extras", "load_extras")


@pytest.fixture(scope="module")
def radar_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("radar_cache")


def radar_config(radar_dir, cache, **overrides):
    c = config_lib.load_config(RADAR_CFG + ":tiny")
    c.data.files = str(radar_dir / "mch" / "*" / "*.gif")
    c.data.cache_dir = str(cache)
    return config_lib.apply_overrides(c, [f"{k}={v}" for k, v in overrides.items()])


@pytest.fixture(scope="module")
def radar_task(radar_dir, radar_cache):
    return precip.make_task(radar_config(radar_dir, radar_cache))


@pytest.fixture(scope="module")
def mnist_task(mnist_dir):
    c = config_lib.load_config(MNIST_CFG + ":tiny")
    c.data.mnist_path = str(mnist_dir)
    return precip.make_task(c)


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
    for task in (radar_task, mnist_task):
        assert task.name == "precip"
        assert all(callable(getattr(task, m)) for m in PROTOCOL)
        assert json.loads(json.dumps(task.state_extras()))["source"] == task.source_name


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


def _independent_csi(batches, threshold):
    """CSI of persistence per lead from raw mm/h batches (numpy only)."""
    hits = misses = fa = 0
    for b in batches:
        last = b["inputs"][:, -1:]
        valid = b["target_mask"] & b["input_mask"][:, -1:]
        f, o = (last >= threshold) & valid, (b["targets"] >= threshold) & valid
        hits = hits + (f & o).sum(axis=(0, 2, 3, 4))
        misses = misses + (~f & o & valid).sum(axis=(0, 2, 3, 4))
        fa = fa + (f & ~o).sum(axis=(0, 2, 3, 4))
    return hits / (hits + misses + fa)


def test_evaluate_radar(radar_task, tmp_path):
    params = radar_task.init_params(jax.random.key(1))
    res = radar_task.evaluate(params, "test", out_dir=tmp_path)
    assert {"model", "persistence", "optical_flow"} <= set(res) and res["windows"] == 3
    for name in ("model", "persistence", "optical_flow"):
        for key in ("csi_0.5", "pod_0.5", "far_0.5", "csi_2.0", "pod_2.0", "far_2.0", "corr", "mse", "mae"):
            assert len(res[name][key]) == 10, (name, key)
            assert np.isfinite(res[name][key]).all(), (name, key)
    batches = list(radar_task.source.eval_batches("test", 3, 3, units="mm_h"))
    np.testing.assert_allclose(res["persistence"]["csi_0.5"], _independent_csi(batches, 0.5), rtol=1e-9)
    np.testing.assert_allclose(res["persistence"]["csi_2.0"], _independent_csi(batches, 2.0), rtol=1e-9)
    assert (tmp_path / "precip_radar_test.png").stat().st_size > 1000


def test_evaluate_moving_mnist(mnist_task, tmp_path):
    params = mnist_task.init_params(jax.random.key(2))
    res = mnist_task.evaluate(params, "test", out_dir=tmp_path)
    assert res["sequences"] == 4 and len(res["model"]["mse"]) == 10
    assert np.isfinite(res["model"]["bce_per_sequence"]) and np.isfinite(res["model"]["mse"]).all()
    batch = next(mnist_task.source.eval_batches("test", 4))
    p = np.clip(batch["inputs"][:, -1:], 1e-3, 1 - 1e-3)
    y = batch["targets"]
    ce = -(y * np.log(p) + (1 - y) * np.log1p(-p)).sum(axis=(1, 2, 3, 4)).mean()
    np.testing.assert_allclose(res["persistence"]["bce_per_sequence"], ce, rtol=1e-4)
    np.testing.assert_allclose(res["persistence"]["mse"], ((p - y) ** 2).mean(axis=(0, 2, 3, 4)), rtol=1e-4, atol=1e-6)
    assert (tmp_path / "precip_moving_mnist_test.png").is_file()


def test_load_extras_restores_transform(radar_task):
    extras = radar_task.state_extras()
    radar_task.load_extras({"transform": {**extras["transform"], "scale": 2.0}})
    assert radar_task.source.transform.scale == 2.0
    radar_task.load_extras(extras)
    assert radar_task.source.transform.scale == 1.0


def test_bad_config_errors(radar_dir, radar_cache):
    with pytest.raises(ValueError, match="horizon_weights"):
        precip.make_task(radar_config(radar_dir, radar_cache, **{"loss.horizon_weights": (1.0, 2.0)}))
    with pytest.raises(ValueError, match="loss.name"):
        precip.make_task(radar_config(radar_dir, radar_cache, **{"loss.name": "huber"}))


def test_cli_radar_tiny_end_to_end(radar_dir, radar_cache, tmp_path):
    work = tmp_path / "run"
    files = f"--config.data.files={radar_dir / 'mch' / '*' / '*.gif'}"
    cache = f"--config.data.cache_dir={radar_cache}"
    env = cli_env()
    r = run_cli("train", "--config", RADAR_CFG + ":tiny", "--workdir", work, files, cache, env=env, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_cli("evaluate", "--workdir", work, f"--config.eval.out_dir={work / 'eval'}", env=env, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((work / "eval" / "metrics.json").read_text())
    for name in ("model", "persistence", "optical_flow"):
        assert len(res[name]["csi_0.5"]) == 10
    assert (work / "eval" / "precip_radar_test.png").stat().st_size > 1000
    assert "csi_0.5" in r.stdout


@pytest.mark.parametrize("kind", ["log1p", "dbr", "none"])
def test_rain_transform_jax_equals_numpy(kind):
    """The transform baked into exported forecasters (jax) is the data pipeline's (numpy)."""
    import jax.numpy as jnp


    t = decode.make_transform(kind, scale=2.0, offset=0.5)
    rain = np.array([0.0, 0.05, 0.1, 0.3, 2.0, 45.0, np.nan], np.float32)
    np.testing.assert_allclose(np.asarray(t.forward(rain, jnp)), t.forward(rain), rtol=1e-5, equal_nan=True)
    z = t.forward(rain)
    np.testing.assert_allclose(np.asarray(t.inverse(z, jnp)), t.inverse(z), rtol=1e-4, atol=1e-6, equal_nan=True)


def test_exported_radar_forecaster_matches_task(radar_task, tmp_path):
    """Artifact: mm/h in, mm/h out, equal to the task's own forecast pushed through the transform."""
    pytest.importorskip("flatbuffers")
    import jax

    from nowcast_jax import artifact
    from nowcast_jax.engine import export

    params = radar_task.init_params(jax.random.PRNGKey(0))
    path = export.export_task(radar_task, params, tmp_path / "radar.jaxexport")
    forecast, sidecar = artifact.load_artifact(path)
    assert sidecar["kind"] == "radar" and sidecar["units"] == "mm/h"
    batch = next(radar_task.eval_batches("test", 2))
    rain = radar_task.source.transform.inverse(batch["inputs"])
    got = np.asarray(forecast(rain))
    want = radar_task.source.transform.inverse(np.asarray(radar_task.predict(params, batch["inputs"])))
    assert got.shape == want.shape == (len(rain), radar_task.output_frames, *rain.shape[2:])
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
