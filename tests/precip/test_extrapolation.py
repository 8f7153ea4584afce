"""The extrapolation-conditioned radar task (``model.kind="extrapolation"``) on the real MeteoSwiss
files: batches carry crops of full-frame motion and extrapolation, the untrained model is the
extrapolation nowcast, serving (JAX advection) matches training (pysteps), export and predict
take the motion as a second input."""

from __future__ import annotations

import jax
import numpy as np
import pytest

pytest.importorskip("pysteps")

from nowcast_jax import artifact  # noqa: E402
from nowcast_jax.engine import config as config_lib  # noqa: E402
from nowcast_jax.engine import export  # noqa: E402
from nowcast_jax.precip import motion as motion_lib  # noqa: E402
from nowcast_jax.precip import serve as precip_serve  # noqa: E402
from nowcast_jax.precip import task as precip  # noqa: E402
from nowcast_jax.precip.dataset import augment  # noqa: E402
from nowcast_jax.precip.decode import observed_rain  # noqa: E402
from tests.engine_utils import REPO  # noqa: E402

EXTRAP_CFG = str(REPO / "configs" / "precip_radar_extrapolation.py")


@pytest.fixture(scope="module")
def extrap_task(radar_dir, radar_cache):
    c = config_lib.load_config(EXTRAP_CFG + ":tiny")
    c.data.files = str(radar_dir / "mch" / "*" / "*.gif")
    c.data.cache_dir = str(radar_cache)
    task = precip.make_task(c)
    assert isinstance(task, precip.ExtrapolationTask) and task.motion_method == "LK"
    return task


def _trained_like(task, seed=0):
    """Parameters whose correction is not zero (the head drawn at random), as after training."""
    params = task.init_params(jax.random.PRNGKey(seed))
    w = params["head"]["w"]
    params["head"] = {"w": 0.05 * jax.random.normal(jax.random.PRNGKey(seed + 1), w.shape), "b": params["head"]["b"]}
    return params


def test_training_crops_are_crops_of_the_full_frame_motion_and_extrapolation(extrap_task):
    task, seed = extrap_task, 3
    batch = task.train_batch(0, 2, seed)
    b, k, h, w = 2, task.output_frames, task.frame_shape[0], task.frame_shape[1]
    assert batch["motion"].shape == (b, h, w, 2) and batch["extrapolation"].shape == (b, k, h, w, 1)
    assert batch["extrapolation_mask"].dtype == bool
    entered = 0
    for i in range(b):
        c = task.dataset.train_crop(seed, i)
        full_motion, full_extrap = task.dataset.window_motion(c.window)
        crop = (slice(c.y, c.y + h), slice(c.x, c.x + w))
        want_motion = motion_lib.augment_motion(full_motion[crop], c.rot90, c.flip)
        want_extrap, want_valid = observed_rain(augment(np.asarray(full_extrap[(slice(None), *crop)]), c.rot90, c.flip))
        np.testing.assert_array_equal(batch["motion"][i], want_motion)
        np.testing.assert_array_equal(batch["extrapolation"][i, ..., 0], task.contract.to_model_units(want_extrap))
        np.testing.assert_array_equal(batch["extrapolation_mask"][i, ..., 0], want_valid)
        # extrapolating the crop alone would lose what the motion carries in from outside it
        last = task.dataset.window_rain(c.window, c.y, c.x, (h, w))[task.input_frames - 1]
        alone = motion_lib.extrapolate_frames(last, full_motion[crop], k)
        entered += int((~np.isfinite(alone) & np.isfinite(np.asarray(full_extrap[(slice(None), *crop)]))).sum())
    assert entered > 0


def test_untrained_model_is_the_extrapolation_nowcast(extrap_task):
    params = extrap_task.init_params(jax.random.PRNGKey(0))
    batch = next(extrap_task.eval_batches("test", 2))
    got = np.asarray(jax.jit(extrap_task.forecast_batch)(params, batch))
    np.testing.assert_array_equal(got, batch["extrapolation"])
    loss, aux = extrap_task.loss_fn(params, extrap_task.train_batch(0, 2, 0), None)
    assert np.isfinite(float(loss)) and np.isfinite(float(aux["mse_transformed"]))


@pytest.fixture(scope="module")
def cropped_task(radar_dir, radar_cache):
    """The tiny extrapolation task scored on a 64 x 64 centre crop of its 80 x 88 frames."""
    c = config_lib.load_config(EXTRAP_CFG + ":tiny")
    c.data.files = str(radar_dir / "mch" / "*" / "*.gif")
    c.data.cache_dir = str(radar_cache)
    c.data.eval_crop_size = (64, 64)
    return precip.make_task(c)


def test_serving_path_in_jax_matches_the_training_path(cropped_task):
    """``forecast_from_motion`` (JAX advection of the full frame, then the crop) = the model on the
    crop of pysteps' full-frame extrapolation, as evaluation scores it: rain entering the crop included."""
    task = cropped_task
    params = _trained_like(task)
    batch_mm = next(task.eval_windows("test", 2))
    windows = [int(w) for w in task.dataset.splits["test"][:2]]
    j = task.input_frames
    full = np.stack([task.dataset.window_rain(w)[:j] for w in windows])[..., None]  # [2, J, H0, W0, 1], NaN
    motion = np.stack([task.dataset.window_motion(w)[0] for w in windows])  # [2, H0, W0, 2]
    served = np.asarray(jax.jit(task.forecast_from_motion)(params, full, motion))
    trained = task.contract.from_model_units(np.asarray(task.forecast_batch(params, task.model_batch(batch_mm))))
    assert served.shape == trained.shape == (2, task.output_frames, 64, 64, 1)
    np.testing.assert_allclose(served, trained, rtol=1e-3, atol=1e-3)


def test_export_takes_full_grid_rain_and_motion_and_predict_estimates_the_motion(cropped_task, radar_dir, tmp_path):
    task = cropped_task
    params = _trained_like(task)
    path = export.export_task(precip_serve.export_spec, task, params, tmp_path / "extrap.jaxexport")
    forecast, sidecar = artifact.load_artifact(path)
    (h0, w0), (h, w) = task.contract.grid, task.contract.eval_crop
    assert [s["name"] for s in sidecar["inputs"]] == ["rain", "motion"]
    assert sidecar["inputs"][0]["shape"] == ["b", task.input_frames, h0, w0, 1]
    assert sidecar["inputs"][1]["shape"] == ["b", h0, w0, 2] and sidecar["motion"]["method"] == "LK"
    assert sidecar["outputs"][0]["shape"] == ["b", task.output_frames, h, w, 1]
    with pytest.raises(artifact.ArtifactError, match="takes 2 input"):
        forecast(np.zeros((1, task.input_frames, h0, w0, 1), np.float32))
    folder = sorted(p for p in (radar_dir / "mch").iterdir() if p.is_dir())[0]
    written = precip_serve.forecast_radar(forecast, sidecar, folder, tmp_path / "f.npz", png=False)
    out = np.load(written[0])["forecast_mm_h"]
    full, _ = precip_serve.read_radar_frames(task.contract, folder, crop=False)  # [J, H0, W0]
    motion = motion_lib.estimate_motion(full)
    want = np.asarray(jax.jit(task.forecast_from_motion)(params, full[None, ..., None], motion[None]))[0, ..., 0]
    want = np.where(np.isnan(task.contract.centre_crop(full[-1])), np.nan, want)
    assert out.shape == (task.output_frames, h, w)
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4, equal_nan=True)
    # the untrained forecaster is the crop of pysteps' extrapolation of the full last frame along that motion
    zero = export.export_task(precip_serve.export_spec, task, task.init_params(jax.random.PRNGKey(0)),
                              tmp_path / "zero.jaxexport")
    plain, _ = artifact.load_artifact(zero)
    got = np.asarray(plain(full[None, ..., None], motion[None]))[0, ..., 0]
    ref = task.contract.centre_crop(motion_lib.extrapolate_frames(full[-1], motion, task.output_frames))
    np.testing.assert_allclose(np.where(np.isfinite(ref), got, np.nan), ref, rtol=1e-3, atol=1e-3, equal_nan=True)
    # dirty inputs as the sidecar's nan_policy says: inf is outside the domain like NaN, negative is 0 mm/h,
    # non-finite motion gives finite forecasts
    rain = np.nan_to_num(full[None, ..., None], nan=0.0).copy()
    rng = np.random.default_rng(0)
    spots = rng.random(rain.shape) < 0.01
    dirty, clean = rain.copy(), rain.copy()
    dirty[spots] = np.where(rng.random(spots.sum()) < 0.5, np.inf, -3.0)
    clean[spots] = np.where(np.isinf(dirty[spots]), np.nan, 0.0)
    bad_motion = motion[None].copy()
    bad_motion[0, :3, :3] = np.nan
    got_dirty = np.asarray(forecast(dirty, bad_motion))
    assert np.isfinite(got_dirty).all()
    np.testing.assert_allclose(np.asarray(forecast(dirty, motion[None])), np.asarray(forecast(clean, motion[None])),
                               rtol=1e-5, atol=1e-5)


def test_conditioning_is_recorded_and_a_change_refused(extrap_task, radar_config):
    extras = extrap_task.state_extras()
    assert extras["model_kind"] == "extrapolation" and extras["motion_method"] == "LK"
    with pytest.raises(config_lib.ConfigError, match="data.motion_method is 'LK' but .* 'vet'"):
        extrap_task.load_extras({**extras, "motion_method": "vet"})
    paper = precip.make_task(radar_config())
    assert paper.state_extras()["model_kind"] == "encoder_forecaster"
    with pytest.raises(config_lib.ConfigError, match="model.kind is 'encoder_forecaster' but the checkpoint"):
        paper.load_extras(extras)


@pytest.mark.parametrize("override, match", [
    ({"model.residual": True}, "model.residual=True does not apply"),
    ({"model.forecaster_input": "autoregressive"}, "model.forecaster_input='autoregressive' does not apply"),
    ({"data.input_frames": 1}, "motion needs at least 2 input frames"),
    ({"data.motion_method": "nope"}, "data.motion_method must be one of"),
    ({"model.kind": "extrapolatoin"}, "config.model.kind must be one of"),
    ({"data.motion_method": "darts", "data.input_frames": 2}, "'darts' needs >= 3 input frames"),
])
def test_extrapolation_config_mistakes_are_named(radar_dir, radar_cache, override, match):
    c = config_lib.load_config(EXTRAP_CFG + ":tiny")
    c.data.files = str(radar_dir / "mch" / "*" / "*.gif")
    c.data.cache_dir = str(radar_cache)
    for key, value in override.items():
        section, name = key.split(".")
        c[section][name] = value
    with pytest.raises(config_lib.ConfigError, match=match):
        precip.make_task(c)


def test_cli_train_evaluate_export_predict_with_the_extrapolation_model(radar_dir, radar_cache, tmp_path, capsys):
    """The four subcommands in this process (``cli.main``, as ``nowcast-jax`` runs them; the
    subprocess path of the CLI is tested with the paper model in test_evaluate.py)."""
    from nowcast_jax import cli

    work, data = str(tmp_path / "run"), [f"--config.data.files={radar_dir / 'mch' / '*' / '*.gif'}",
                                         f"--config.data.cache_dir={radar_cache}"]
    assert cli.main(["train", "--config", EXTRAP_CFG + ":tiny", "--workdir", work, *data]) == 0
    capsys.readouterr()
    assert cli.main(["evaluate", "--workdir", work]) == 0
    out = capsys.readouterr().out
    assert "extrapolation" in out and "optical_flow" in out and "fss_2.0_4" in out
    assert cli.main(["export", "--workdir", work, "--out", str(tmp_path / "f.jaxexport")]) == 0
    folder = sorted(p for p in (radar_dir / "mch").iterdir() if p.is_dir())[0]
    assert cli.main(["predict", "--artifact", str(tmp_path / "f.jaxexport"), "--input", str(folder),
                     "--out", str(tmp_path / "p.npz"), "--no-png"]) == 0
    assert np.isfinite(np.load(tmp_path / "p.npz")["forecast_mm_h"]).any()
