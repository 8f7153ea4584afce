"""Evaluation of the precipitation application (the CLI's hooks): model vs persistence vs
optical flow on radar, cross-entropy per sequence on Moving MNIST; report; CLI end to end."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import jax
import numpy as np

from nowcast_jax.precip import evaluate as precip_evaluate
from tests.engine_utils import cli_env, run_cli
from tests.precip.conftest import RADAR_CFG


def restored_run(task, params):
    """What the engine's ``workdir.restore`` hands the hooks: ``.config``, ``.task``, ``.step``, ``.params``."""
    return SimpleNamespace(config=task.config, task=task, step=0, params=params)


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
    run = restored_run(radar_task, radar_task.init_params(jax.random.key(1)))
    res = precip_evaluate.evaluate(run, "test", out_dir=tmp_path)
    assert {"model", "persistence", "optical_flow"} <= set(res) and res["windows"] == 3
    for name in ("model", "persistence", "optical_flow"):
        for key in ("csi_0.5", "pod_0.5", "far_0.5", "csi_2.0", "pod_2.0", "far_2.0", "corr", "mse", "mae"):
            assert len(res[name][key]) == 10, (name, key)
            assert np.isfinite(res[name][key]).all(), (name, key)
    batches = list(radar_task.eval_windows("test", 3))
    np.testing.assert_allclose(res["persistence"]["csi_0.5"], _independent_csi(batches, 0.5), rtol=1e-9)
    np.testing.assert_allclose(res["persistence"]["csi_2.0"], _independent_csi(batches, 2.0), rtol=1e-9)
    assert (tmp_path / "precip_radar_test.png").stat().st_size > 1000
    # mean rain area and rate per lead on the scored pixels, by hand, for the observations and persistence
    valid = np.concatenate([b["target_mask"] & b["input_mask"][:, -1:] for b in batches])
    for name, field in (("observed", np.concatenate([b["targets"] for b in batches])),
                        ("persistence", np.concatenate([np.repeat(b["inputs"][:, -1:], 10, 1) for b in batches]))):
        n = valid.sum(axis=(0, 2, 3, 4))
        np.testing.assert_allclose(res[name]["rain_area"], ((field >= 0.5) & valid).sum(axis=(0, 2, 3, 4)) / n)
        np.testing.assert_allclose(res[name]["mean_rain"], np.where(valid, field, 0).sum(axis=(0, 2, 3, 4)) / n,
                                   rtol=1e-5)
    report = precip_evaluate.format_report(res, run)
    assert report.startswith("radar: 3 windows") and "+5min" in report and "+50min" in report
    row = next(line for line in report.splitlines() if line.startswith("persistence") and " csi_0.5 " in line)
    assert row.split()[2] == f"{res['persistence']['csi_0.5'][0]:.4g}"


def test_evaluate_radar_model_scores_match_an_independent_forecast(radar_task):
    """The model's MSE per lead equals the raw forecast pushed through the contract by hand."""
    params = radar_task.init_params(jax.random.key(3))
    res = precip_evaluate.evaluate(restored_run(radar_task, params), "test")
    batch = next(radar_task.eval_windows("test", 3))
    pred = np.expm1(np.maximum(np.asarray(radar_task.raw_forecast(params, np.log1p(batch["inputs"]))), 0.0))
    valid = batch["target_mask"] & batch["input_mask"][:, -1:]
    se = np.where(valid, (pred - batch["targets"]) ** 2, 0.0).sum(axis=(0, 2, 3, 4)) / valid.sum(axis=(0, 2, 3, 4))
    np.testing.assert_allclose(res["model"]["mse"], se, rtol=1e-4)


def test_evaluate_moving_mnist(mnist_task, tmp_path):
    run = restored_run(mnist_task, mnist_task.init_params(jax.random.key(2)))
    res = precip_evaluate.evaluate(run, "test", out_dir=tmp_path)
    assert res["sequences"] == 4 and len(res["model"]["mse"]) == 10
    assert np.isfinite(res["model"]["bce_per_sequence"]) and np.isfinite(res["model"]["mse"]).all()
    batch = next(mnist_task.eval_batches("test", 4))
    p = np.clip(batch["inputs"][:, -1:], 1e-3, 1 - 1e-3)
    y = batch["targets"]
    ce = -(y * np.log(p) + (1 - y) * np.log1p(-p)).sum(axis=(1, 2, 3, 4)).mean()
    np.testing.assert_allclose(res["persistence"]["bce_per_sequence"], ce, rtol=1e-4)
    np.testing.assert_allclose(res["persistence"]["mse"], ((p - y) ** 2).mean(axis=(0, 2, 3, 4)), rtol=1e-4, atol=1e-6)
    assert (tmp_path / "precip_moving_mnist_test.png").is_file()
    report = precip_evaluate.format_report(res, run)
    assert report.startswith("moving_mnist: 4 sequences") and "bce_per_sequence" in report


def test_cli_radar_tiny_end_to_end(radar_dir, radar_cache, cropped_radar, tmp_path):
    work = tmp_path / "run"
    files = f"--config.data.files={radar_dir / 'mch' / '*' / '*.gif'}"
    cache = f"--config.data.cache_dir={radar_cache}"
    env = cli_env()
    full = "--config.data.eval_crop_size=0"  # the full frame, as the command line gives it ((0,)): issue 16
    r = run_cli("train", "--config", RADAR_CFG + ":tiny", "--workdir", work, files, cache, full, env=env, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_cli("evaluate", "--workdir", work, f"--config.eval.out_dir={work / 'eval'}", env=env, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((work / "eval" / "metrics.json").read_text())
    for name in ("model", "persistence", "optical_flow"):
        assert len(res[name]["csi_0.5"]) == 10
    assert (work / "eval" / "precip_radar_test.png").stat().st_size > 1000
    assert "csi_0.5" in r.stdout
    # another archive on another grid (40x45): the checkpoint's transform, the config's reading and crop
    r = run_cli("evaluate", "--workdir", work, f"--config.data.files={cropped_radar}",
                "--config.data.eval_crop_size=(40, 44)", env=env, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    written = re.search(r"wrote (\S+metrics\.json)", r.stdout).group(1)  # where the CLI put this evaluation
    other = json.loads(Path(written).read_text())
    assert other["windows"] == 3 and other["model"]["csi_0.5"] != res["model"]["csi_0.5"]  # another grid
    # another downsampling would change what the weights mean: refused, naming the key and both values
    r = run_cli("evaluate", "--workdir", work, "--config.data.downsample=4", env=env, timeout=180)
    assert r.returncode == 2 and "data.downsample is 4 but the checkpoint was trained with 8" in r.stderr, r.stderr
    # and the workdir trained with eval_crop_size=0 exports (in this process: the CLI's code path)
    from nowcast_jax import cli

    assert cli.main(["export", "--workdir", str(work), "--out", str(tmp_path / "full.jaxexport")]) == 0
    sidecar = json.loads((tmp_path / "full.jaxexport.json").read_text())
    assert sidecar["inputs"][0]["shape"][2:4] == sidecar["preprocess"]["eval_crop"]  # the full frame
    assert list(sidecar["preprocess"]["eval_crop"]) == list(sidecar["preprocess"]["grid"])
