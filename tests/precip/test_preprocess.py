"""The radar preprocessing contract: fitted, frozen, serialisable, and the ONE path from a
radar file to model inputs (training's evaluation windows and serving get identical inputs)."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime

import jax
import ml_collections
import jax.numpy as jnp
import numpy as np
import pytest

from nowcast_jax.engine import config as config_lib
from nowcast_jax.engine.config import ConfigError
from nowcast_jax.precip import archive, decode
from nowcast_jax.precip import serve as precip_serve
from nowcast_jax.precip import task as precip
from nowcast_jax.precip.preprocess import RadarContract, check_crop, fit_grid, make_transform, reading_contract
from tests.precip.conftest import RADAR_CFG

MCH_KWARGS = {"product": "AQC", "unit": "mm", "accutime": 5.0}  # what MeteoSwiss' AQC GIFs are read with


@pytest.fixture(scope="module")
def cropped_task(radar_config):
    """The tiny radar task with an evaluation crop smaller than the 80x88 grid (so it is cut)."""
    return precip.make_task(radar_config(**{"data.eval_crop_size": (48, 64)}))


def test_contract_is_fitted_frozen_and_round_trips(cropped_task):
    contract = cropped_task.contract
    data = cropped_task.config.data
    assert contract.grid == (80, 88) == cropped_task.dataset.frame_shape()  # 640x710 MeteoSwiss / 8
    assert contract.eval_crop == (48, 64) and contract.downsample_factor == 8 == data.downsample
    assert (contract.importer, contract.fn_pattern) == (data.importer, data.fn_pattern)
    assert dict(data.importer_kwargs) == {}  # the config leaves the importer's defaults: recorded resolved
    assert contract.importer_options == MCH_KWARGS and contract.zr_a is None is contract.zr_b
    assert contract.importer_kwargs == tuple(sorted(MCH_KWARGS.items()))  # hashable pairs
    assert (contract.input_steps, contract.output_steps, contract.timestep_minutes) == (5, 10, 5.0)
    assert contract.transform == make_transform("log1p", 1.0)
    d = contract.to_dict()
    assert json.loads(json.dumps(d)) == d and RadarContract.from_dict(d) == contract
    assert d["importer_kwargs"] == MCH_KWARGS
    assert hash(RadarContract.from_dict(d)) == hash(contract) and {contract: 1}[RadarContract.from_dict(d)] == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        contract.grid = (1, 1)
    with pytest.raises(ValueError, match=r"lacks \['grid'\]"):
        RadarContract.from_dict({k: v for k, v in d.items() if k != "grid"})
    with pytest.raises(ValueError, match="newer"):
        RadarContract.from_dict({**d, "version": 99})
    reader = reading_contract(data)  # what the dataset reads with, before the grid is measured
    assert reader.grid is None is reader.eval_crop and fit_grid(reader, (80, 88), (48, 64)) == contract
    assert fit_grid(reader, contract.grid, 0).eval_crop == contract.grid  # 0 = the full frame
    with pytest.raises(ValueError, match="does not fit"):
        fit_grid(reader, contract.grid, (96, 96))


def test_importer_kwargs_must_be_json_scalars_or_lists(cropped_task):
    data = cropped_task.config.data
    listed = reading_contract(_with(data, importer_kwargs={"levels": [1, 2]}))
    assert listed.importer_options == {**MCH_KWARGS, "levels": [1, 2]} and hash(listed)  # over mch's defaults
    assert RadarContract.from_dict(listed.to_dict()) == listed
    for bad in ({"when": datetime(2020, 1, 1)}, {"nested": {"a": 1}}):
        with pytest.raises(ConfigError, match="data.importer_kwargs must hold"):
            reading_contract(_with(data, importer_kwargs=bad))


def test_zr_of_the_config_reaches_the_decoder_the_cache_key_and_the_contract(radar_config, tmp_path, monkeypatch):
    """``data.zr_a`` / ``data.zr_b``: 0 = None (the importer's metadata); 200 / 1.6 are what every file is
    converted with, what the cache key holds and what the contract records. The grid is measured on the
    first training event (event 0 is the test event here), through the contract."""
    seen, real = [], decode.to_rain_rate

    def spy(field_, metadata, *, zr_a=None, zr_b=None):
        seen.append((zr_a, zr_b))
        return real(field_, metadata, zr_a=zr_a, zr_b=zr_b)

    monkeypatch.setattr(decode, "to_rain_rate", spy)
    for zr, want in [((0.0, 0.0), (None, None)), ((200.0, 1.6), (200.0, 1.6))]:
        seen.clear()
        cache = tmp_path / f"zr{zr[0]:g}"
        task = precip.make_task(radar_config(**{"data.zr_a": zr[0], "data.zr_b": zr[1], "data.cache_dir": cache,
                                                "data.test_events": ("20150515",)}))
        assert (task.contract.zr_a, task.contract.zr_b) == want
        event = task.dataset.events[1]  # the first training event: event 0 is the test event
        assert len(seen) == len(event.paths) and set(seen) == {want}
        key = decode.cache_key(event.paths, "mch_gif", MCH_KWARGS, downsample_factor=8,
                               zr_a=want[0], zr_b=want[1])
        assert [p.name for p in cache.iterdir()] == [f"radar-{key}.npy"]


def test_training_batches_are_the_contract_on_the_dataset_crops(radar_task):
    """``RadarTask.train_batch`` is ``contract.model_batch`` of the dataset's mm/h crops, and its values
    are log1p(mm/h) of the files decoded by hand, cropped and augmented as the crop spec says."""
    task, step, size, seed = radar_task, 2, 2, 5
    batch = task.train_batch(step, size, seed)
    want = task.contract.model_batch(task.dataset.train_batch(step, size, seed))
    assert set(batch) == set(want)
    for k in batch:
        np.testing.assert_array_equal(batch[k], want[k])
    j, kwargs = task.input_frames, MCH_KWARGS
    for i in range(size):
        spec = task.dataset.train_crop(seed, step * size + i)
        event, _ = task.dataset.windows[spec.window]
        paths = [task.dataset.events[event].paths[f] for f in task.dataset.window_frames[spec.window]]
        rain = np.stack([decode.downsample(decode.read_rain_rate(p, "mch_gif", kwargs)[0], 8) for p in paths])
        crop = rain[:, spec.y:spec.y + 32, spec.x:spec.x + 32]
        crop = np.rot90(crop[..., ::-1] if spec.flip else crop, spec.rot90, axes=(1, 2))
        mask = np.isfinite(crop)
        expected = np.log1p(np.where(mask, crop, 0.0).astype(np.float64))
        np.testing.assert_allclose(batch["inputs"][i, ..., 0], expected[:j], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(batch["targets"][i, ..., 0], expected[j:], rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(batch["target_mask"][i, ..., 0], mask[j:])
        assert (crop[np.isfinite(crop)] > 0.5).any()  # a rainy crop: the reference is not all zeros


def _with(data, **values):
    out = data.to_dict()
    out.update(values)
    return ml_collections.ConfigDict(out)


def test_training_and_serving_give_identical_model_inputs(cropped_task, tmp_path):
    """The same raw radar files through evaluation's windows and through serve's folder reading
    (with the contract read back from an export sidecar) give identical model inputs."""
    task, j = cropped_task, cropped_task.input_frames
    window = int(task.dataset.splits["test"][0])
    event, _ = task.dataset.windows[window]
    paths = [task.dataset.events[event].paths[i] for i in task.dataset.window_frames[window][:j]]
    folder = tmp_path / "latest"
    folder.mkdir()
    for p in paths:  # a live folder: the J latest files, named as the archive names them
        (folder / p.rsplit("/", 1)[-1]).symlink_to(p)
    _, _, sidecar = precip_serve.export_spec(task, task.init_params(jax.random.key(0)))
    contract = precip_serve.sidecar_contract(json.loads(json.dumps(sidecar)))
    assert contract == task.contract

    served, rain, times = precip_serve.forecaster_inputs(contract, folder)  # [1, J, h, w, 1] mm/h
    trained = next(task.eval_windows("test", 1))  # cached whole-event decode, crops by the dataset
    assert served.shape == trained["inputs"].shape == (1, j, 48, 64, 1)
    np.testing.assert_array_equal(served, trained["inputs"])
    np.testing.assert_array_equal(np.isfinite(rain)[None, ..., None], trained["input_mask"])
    model_units = next(task.eval_batches("test", 1))["inputs"]
    np.testing.assert_array_equal(contract.to_model_units(served), model_units)
    assert times == [archive.parse_timestamp(p, contract.fn_pattern) for p in paths]
    # an independent reference: decode each file by hand, block-mean by 8, cut the centre
    by_hand = np.stack([decode.downsample(decode.read_rain_rate(p, "mch_gif", dict(contract.importer_kwargs))[0], 8)
                        for p in paths])[:, 16:64, 12:76]
    np.testing.assert_array_equal(rain, by_hand)
    assert 0 < np.isnan(by_hand).sum() and (served[0, ..., 0][np.isnan(by_hand)] == 0).all()


@pytest.mark.parametrize("kind", ["log1p", "dbr", "none"])
def test_rain_transform_jax_equals_numpy(kind):
    """The transform baked into exported forecasters (jax) is the data pipeline's (numpy)."""
    t = make_transform(kind, scale=2.0, offset=0.5)
    rain = np.array([0.0, 0.05, 0.1, 0.3, 2.0, 45.0, np.nan], np.float32)
    np.testing.assert_allclose(np.asarray(t.forward(rain, jnp)), t.forward(rain), rtol=1e-5, equal_nan=True)
    z = t.forward(rain)
    np.testing.assert_allclose(np.asarray(t.inverse(z, jnp)), t.inverse(z), rtol=1e-4, atol=1e-6, equal_nan=True)


def test_crop_sizes_as_the_command_line_gives_them():
    """``--config.data.eval_crop_size=0`` against a tuple default arrives as ``(0,)``: the full
    frame (it used to train, then break evaluate and export)."""
    from nowcast_jax.engine.config import ConfigError
    from nowcast_jax.precip.preprocess import parse_crop_size

    assert [parse_crop_size(v) for v in (None, 0, (), (0,), (0, 0))] == [None] * 5
    assert [parse_crop_size(v) for v in (64, (64,), (40, 44), [40, 44])] == [64, 64, (40, 44), (40, 44)]
    for bad in ("x", (1, 2, 3), (-1, 4)):
        with pytest.raises(ConfigError, match="data.eval_crop_size"):
            parse_crop_size(bad, "data.eval_crop_size")


def test_crops_that_do_not_fit_name_the_key_the_sizes_and_the_fix():
    """A crop larger than the downsampled grid (or not a multiple of the patch) is one ConfigError line
    naming the key, the crop, the grid, the downsampling and what fits; fitting crops come back as (h, w)."""
    assert check_crop(32, (80, 88), "data.crop_size", 8) == (32, 32)
    assert check_crop((0,), (80, 88), "data.eval_crop_size", 8, multiple=4) == (80, 88)  # 0 = the full frame
    assert check_crop((40, 44), (40, 45), "data.eval_crop_size", multiple=4) == (40, 44)
    with pytest.raises(ConfigError) as err:
        check_crop((400, 400), (80, 88), "data.eval_crop_size", 8)
    assert str(err.value) == ("data.eval_crop_size=(400,400) does not fit the frame: the files decode to 80x88 "
                              "pixels after data.downsample=8; set data.eval_crop_size=0 (the full frame) or a "
                              "size up to (80, 88)")
    with pytest.raises(ConfigError, match=r"^data.crop_size=100 does not fit the frame: .* 64x64 pixels after "
                                          r"data.downsample=8; set data.crop_size=0 \(the full frame\) or a size "
                                          r"up to \(64, 64\)"):
        check_crop(100, (64, 64), "data.crop_size", 8)
    # with the patch known: 0 on a frame of 40x45 is its centred 40x44 (the largest multiple of 4), and is offered so
    assert check_crop(0, (40, 45), "data.eval_crop_size", 8, multiple=4) == (40, 44)
    with pytest.raises(ConfigError, match=r"set data.eval_crop_size=0 \(the full frame trimmed to \(40, 44\)\) or a "
                                          r"size up to \(40, 44\)"):
        check_crop((48, 48), (40, 45), "data.eval_crop_size", 8, multiple=4)
    with pytest.raises(ConfigError, match=r"data.crop_size=\(30,30\): 30x30 is not a multiple of model.patch_size=4"):
        check_crop((30, 30), (80, 88), "data.crop_size", multiple=4)


def test_an_evaluation_crop_that_does_not_fit_is_a_config_error_of_the_task(radar_config):
    """``train --config configs/precip_radar.py:tiny --config.data.eval_crop_size='(400,400)'`` (MeteoSwiss
    640x710 read at 1/8: 80x88) was a ValueError traceback from ``crop_shape``."""
    with pytest.raises(ConfigError, match=r"^data.eval_crop_size=\(400,400\) does not fit the frame: the files "
                                          r"decode to 80x88 pixels after data.downsample=8; set "
                                          r"data.eval_crop_size=0 \(the full frame\)"):
        precip.make_task(radar_config(**{"data.eval_crop_size": "(400,400)"}))


def test_the_training_crop_that_does_not_fit_is_a_config_error_of_the_task(radar_config):
    """``data.crop_size`` larger than the grid: the same one line (needs ``RadarTask.__init__`` to check the
    training crop with ``check_crop(config.data.crop_size, grid, "data.crop_size", ...)``)."""
    with pytest.raises(ConfigError, match=r"^data.crop_size=96 does not fit the frame: the files decode to "
                                          r"80x88 pixels after data.downsample=8"):
        precip.make_task(radar_config(**{"data.crop_size": 96, "data.eval_crop_size": 0}))


def test_the_tiny_evaluation_crop_on_the_bom_archive_names_the_fix(radar_dir, tmp_path, capsys, monkeypatch):
    """The BoM 512x512 archive with the tiny variant (80x88 evaluation crop, downsample 8 -> 64x64): one
    ``error:`` line and exit 2 from the CLI, not a traceback; with ``data.eval_crop_size=0`` the task builds."""
    from nowcast_jax import cli

    bom = radar_dir / "bom" / "prcp-cscn" / "2" / "2018" / "06" / "16"
    if not any(bom.glob("*.nc")):
        pytest.skip(f"no BoM radar 2 files under {bom}")
    pytest.importorskip("netCDF4", reason="the BoM importer needs netCDF4 (the radar extra)")
    monkeypatch.setenv("NOWCAST_JAX_CACHE", str(tmp_path / "cache"))
    args = ["--config.data.importer=bom_rf3", f"--config.data.files={bom}/*.nc",
            "--config.data.fn_pattern=2_%Y%m%d_%H%M00.prcp-cscn", "--config.data.timestep_minutes=6",
            "--config.data.test_events=()"]
    code = cli.main(["train", "--config", RADAR_CFG + ":tiny", "--workdir", str(tmp_path / "run"), *args])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("error: data.eval_crop_size=(80,88) does not fit the frame: the files decode to 64x64 "
                          "pixels after data.downsample=8; set data.eval_crop_size=0 (the full frame) or a size "
                          "up to (64, 64)"), err
    config = config_lib.apply_overrides(config_lib.load_config(RADAR_CFG + ":tiny"),
                                        [*args, "--config.data.eval_crop_size=0",
                                         f"--config.data.cache_dir={tmp_path / 'cache'}"])
    task = precip.make_task(config)
    assert task.contract.grid == (64, 64) == task.contract.eval_crop and task.contract.importer_options == {}
