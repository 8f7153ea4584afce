"""Radar data: file names, events, windows/gaps, rain-rate conversion, masks, transforms,
crops, cache. Synthetic archives (a fake importer over empty files) for the logic; a few
real MeteoSwiss/BoM files from the shared data for the conversions."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from nowcast_jax.precip import archive
from nowcast_jax.precip import decode
from nowcast_jax.precip import dataset as radar
from nowcast_jax.precip import preprocess

MCH_PATTERN = "AQC%y%j%H%M?_00005.801"
MCH_KWARGS = {"product": "AQC", "unit": "mm", "accutime": 5.0}
FAKE_PATTERN = "R%Y%m%d%H%M"


# ---------------------------------------------------------------------------------------
# A fake archive: empty files whose names carry timestamps; the importer synthesises fields
# ---------------------------------------------------------------------------------------


class FakeImporter:
    """pysteps-like importer: rain depth in mm per 5 min, NaN in the left columns."""

    def __init__(self, shape=(32, 40)):
        self.shape = shape
        self.calls = 0

    def __call__(self, path, scale=1.0):
        self.calls += 1
        minute = int(Path(path).name[9:13]) % 10000
        h, w = self.shape
        yy, xx = np.mgrid[:h, :w]
        field = scale * (1.0 + np.sin(0.3 * xx + 0.2 * yy + minute)).astype(np.float64)
        field[:, :3] = np.nan
        meta = {"unit": "mm", "accutime": 5.0, "transform": None, "threshold": 0.01, "zerovalue": 0.0}
        return field, None, meta


def make_archive(tmp_path: Path, times: list[datetime]) -> str:
    for t in times:
        (tmp_path / f"R{t:%Y%m%d%H%M}.dat").write_bytes(b"")
    return str(tmp_path / "R*.dat")


def every(start: datetime, n: int, minutes: float = 5) -> list[datetime]:
    return [start + timedelta(minutes=minutes * i) for i in range(n)]


T0 = datetime(2020, 5, 1, 12, 0)


def _contract(transform: str = "log1p", importer="fake", **fields) -> preprocess.RadarContract:
    """A contract with the fake archive's settings, ``transform`` and ``fields`` (e.g. ``importer_kwargs``)."""
    values = dict(importer_kwargs={}, fn_pattern=FAKE_PATTERN, zr_a=None, zr_b=None, timestep_minutes=5.0,
                  downsample_factor=1, grid=(32, 40), eval_crop=(32, 40), input_steps=3, output_steps=4)
    values.update(fields)
    return preprocess.RadarContract(importer=importer, transform=preprocess.make_transform(transform), **values)


def reader(importer, importer_kwargs=None, downsample=1):
    """What the task gives the dataset: a contract's ``read_frames`` (here maybe with a fake importer)."""
    return _contract(importer=importer, importer_kwargs=importer_kwargs or {}, downsample_factor=downsample).read_frames


# ---------------------------------------------------------------------------------------
# File names
# ---------------------------------------------------------------------------------------


def test_parse_timestamp_pysteps_patterns():
    assert archive.parse_timestamp("/x/AQC161932045V_00005.801.gif", MCH_PATTERN) == datetime(2016, 7, 11, 20, 45)
    assert archive.parse_timestamp("AQC151351545F_00005.801.gif", "AQC%y%j%H%M") == datetime(2015, 5, 15, 15, 45)
    assert archive.parse_timestamp("2_20180616_100600.prcp-cscn.nc", "2_%Y%m%d_%H%M00.prcp-cscn") == datetime(
        2018, 6, 16, 10, 6)
    assert archive.parse_timestamp("66_20201031_235000.prcp-c10.nc", "66_%Y%m%d_%H%M%S") == datetime(
        2020, 10, 31, 23, 50)


def test_parse_timestamp_errors_name_the_problem():
    with pytest.raises(ValueError, match="does not match fn_pattern"):
        archive.parse_timestamp("BQC161932045V.gif", MCH_PATTERN)
    with pytest.raises(ValueError, match="%b"):
        archive.parse_timestamp("x", "R%b%d")
    with pytest.raises(ValueError, match="no time directive"):
        archive.parse_timestamp("x", "R????")
    with pytest.raises(ValueError, match="not parseable"):
        archive.parse_timestamp("R202013011200", FAKE_PATTERN)  # month 13


def test_list_frames_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no files matched the glob"):
        archive.list_frames(str(tmp_path / "*.gif"), FAKE_PATTERN)
    (tmp_path / "R202005011200.a").write_bytes(b"")
    (tmp_path / "R202005011200.b").write_bytes(b"")
    with pytest.raises(ValueError, match="same timestamp"):
        archive.list_frames(str(tmp_path / "R*"), FAKE_PATTERN)


def test_unknown_importer():
    with pytest.raises(ValueError, match="unknown importer 'no_such_format'"):
        decode.get_importer("no_such_format")


# ---------------------------------------------------------------------------------------
# Events, windows, gaps, splits (timestamps only)
# ---------------------------------------------------------------------------------------


def test_find_frame_windows_counts_gap_crossings():
    times = [t for i, t in enumerate(every(T0, 10)) if i != 5]  # frame at +25 min missing
    win, dropped = archive.find_frame_windows(times, 5, 3)
    # candidates start at 0,5,10,15,20,30,35 (t0+10 <= 45); 15 and 20 need +25 -> dropped
    assert dropped == 2
    assert len(win) == 5
    assert win.tolist()[3] == [5, 6, 7]  # 30, 35, 40 min (indices shift after the gap)
    full, dropped_full = archive.find_frame_windows(every(T0, 10), 5, 3)
    assert (len(full), dropped_full) == (8, 0)
    sub, _ = archive.find_frame_windows(every(T0, 10), 10, 3)  # 10-min windows on 5-min data
    assert sub.tolist()[0] == [0, 2, 4] and len(sub) == 6


def test_group_events_by_gap_date_dir():
    frames = [archive.Frame(t, f"/a/{i}") for i, t in enumerate(every(T0, 6))]
    frames += [archive.Frame(t, f"/b/{i}") for i, t in enumerate(every(T0 + timedelta(hours=5), 4))]
    ev = archive.group_events(frames, by="gap", max_gap_minutes=60)
    assert [len(e.frames) for e in ev] == [6, 4] and ev[1].id == "20200501T1700"
    assert len(archive.group_events(frames, by="date")) == 1
    assert len(archive.group_events(frames, by="dir")) == 2
    with pytest.raises(ValueError, match="unknown event grouping"):
        archive.group_events(frames, by="week")


def test_dataset_window_counts_and_disjoint_split(tmp_path):
    times = every(T0, 20)[:12] + every(T0, 20)[13:]  # one missing frame inside event 1
    times += every(T0 + timedelta(days=1), 15) + every(T0 + timedelta(days=2), 9)
    glob = make_archive(tmp_path, times)
    ds = radar.RadarDataset.open(glob, FAKE_PATTERN, reader(FakeImporter()), 5, 2, 3, test_events=["20200503"],
                                 val_events=[1])
    # event 1: 19 frames, +60 min missing -> 15 candidate starts (0..75 min, not 60);
    # 40, 45, 50, 55 cross the hole -> 4 dropped, 11 kept
    assert ds.stats["windows_per_event"] == [11, 11, 5]
    assert ds.stats["dropped_gap"] == 4 and ds.stats["windows"] == 27
    assert ds.stats["split_windows"] == {"train": 11, "val": 11, "test": 5}
    paths = {}
    for name, ids in ds.splits.items():
        events = set(ds.windows[ids, 0].tolist())
        paths[name] = {ds.events[e].frames[f].path for e in events for f in range(len(ds.events[e].frames))}
    assert not (paths["train"] & paths["test"]) and not (paths["train"] & paths["val"])
    assert not (paths["val"] & paths["test"])
    with pytest.raises(ValueError, match="selected twice"):
        archive.split_events(ds.events, test=[0], val=["20200501"])


@pytest.mark.data
@pytest.mark.parametrize("out_frames,expected", [(10, {"mch": 78, "bom6": 47, "bom10": 130}),
                                                 (15, {"mch": 63, "bom6": 42, "bom10": 125})])
def test_shared_radar_window_counts(radar_dir, out_frames, expected):
    archives = {
        "mch": ("mch/*/*.gif", MCH_PATTERN, "mch_gif", 5),
        "bom6": ("bom/prcp-cscn/2/*/*/*/*.nc", "2_%Y%m%d_%H%M00.prcp-cscn", "bom_rf3", 6),
        "bom10": ("bom/prcp-c10/66/*/*/*/*.nc", "66_%Y%m%d_%H%M%S.prcp-c10", "bom_rf3", 10),
    }
    for name, (glob, pattern, importer, step) in archives.items():
        ds = radar.RadarDataset.open(str(radar_dir / glob), pattern, reader(importer), step, 5, out_frames)
        assert ds.stats["windows"] == expected[name], name
        assert ds.stats["dropped_gap"] == 0
    mch = radar.RadarDataset.open(str(radar_dir / archives["mch"][0]), MCH_PATTERN, reader("mch_gif"), 5, 5,
                                  out_frames)
    assert mch.stats["events"] == ["20150515T1545", "20160711T2045", "20170131T0945"]


# ---------------------------------------------------------------------------------------
# Rain rate from metadata
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("accutime,factor", [(5.0, 12.0), (6, 10.0), (10, 6.0), (60, 1.0)])
def test_to_rain_rate_accumulations(accutime, factor):
    depth = np.array([[0.0, 0.5, np.nan], [1.0, 2.0, 0.1]])
    meta = {"unit": "mm", "accutime": accutime, "transform": None, "threshold": 0.0, "zerovalue": 0.0}
    rate = decode.to_rain_rate(depth, meta)
    np.testing.assert_allclose(rate, depth * factor, rtol=1e-6)
    assert np.isnan(rate[0, 2]) and rate.dtype == np.float32


def test_to_rain_rate_reflectivity_uses_metadata_zr():
    dbz = np.array([20.0, 35.0, np.nan])
    meta = {"unit": "dBZ", "transform": "dB", "accutime": 5, "threshold": 0.0, "zerovalue": -10.0,
            "zr_a": 316.0, "zr_b": 1.5}
    expected = (10 ** (dbz / 10) / 316.0) ** (1 / 1.5)
    np.testing.assert_allclose(decode.to_rain_rate(dbz, meta), expected, rtol=1e-5)
    expected_mp = (10 ** (dbz / 10) / 200.0) ** (1 / 1.6)
    np.testing.assert_allclose(decode.to_rain_rate(dbz, meta, zr_a=200.0, zr_b=1.6), expected_mp, rtol=1e-5)
    del meta["zr_a"], meta["zr_b"]
    with pytest.raises(ValueError, match="Z-R coefficients"):
        decode.to_rain_rate(dbz, meta)
    with pytest.raises(ValueError, match="cannot convert unit 'K'"):
        decode.to_rain_rate(dbz, {"unit": "K"})


@pytest.mark.data
def test_real_rain_rate_factors(radar_dir):
    from pysteps import io

    mch = sorted((radar_dir / "mch" / "20160711").glob("*.gif"))[10]
    depth, _, meta = io.get_method("mch_gif", "importer")(str(mch), **MCH_KWARGS)
    rate, meta2 = decode.read_rain_rate(str(mch), "mch_gif", MCH_KWARGS)
    assert meta2["accutime"] == 5.0 and meta2["unit"] == "mm"
    np.testing.assert_allclose(rate, depth * 12.0, rtol=1e-6, equal_nan=True)
    assert np.isnan(rate).any() and np.nanmax(rate) > 1.0  # a radar domain edge and some rain
    for sub, minutes in [("prcp-cscn/2/2018/06/16", 6), ("prcp-c10/66/2020/10/31", 10)]:
        path = sorted((radar_dir / "bom" / sub).glob("*.nc"))[30]
        depth, _, meta = io.get_method("bom_rf3", "importer")(str(path))
        assert meta["accutime"] == minutes
        rate, _ = decode.read_rain_rate(str(path), "bom_rf3")
        np.testing.assert_allclose(rate, depth * 60.0 / minutes, rtol=1e-6, equal_nan=True)


# ---------------------------------------------------------------------------------------
# Downsampling, transforms
# ---------------------------------------------------------------------------------------


def test_downsample_nan_aware_block_mean():
    x = np.arange(36, dtype=np.float32).reshape(6, 6)
    x[0, 0] = np.nan
    x[4:6, 4:6] = np.nan
    x[5, 2] = np.nan
    d = decode.downsample(x, 2, min_valid_fraction=0.5)
    assert d.shape == (3, 3)
    assert d[0, 0] == pytest.approx((1 + 6 + 7) / 3)
    assert np.isnan(d[2, 2])
    assert d[2, 1] == pytest.approx((26 + 27 + 33) / 3)
    assert decode.downsample(np.ones((2, 7, 9)), 3).shape == (2, 2, 3)


@pytest.mark.parametrize("kind,scale,offset", [("log1p", 1.0, 0.0), ("log1p", 2.5, 0.3), ("dbr", 10.0, -10.0),
                                               ("none", 1.0, 0.0)])
def test_transforms_invert_exactly(kind, scale, offset):
    tr = preprocess.make_transform(kind, scale, offset, floor_mm_h=0.1)
    r = np.array([0.0, 0.05, 0.099, 0.11, 0.5, 1.0, 7.3, 120.0, np.nan], np.float32)
    back = tr.inverse(tr.forward(r))
    assert np.isnan(back[-1]) and np.isnan(tr.forward(r)[-1])
    if kind == "dbr":  # at or below the floor -> 0, above it exact
        np.testing.assert_array_equal(back[:3], 0.0)
        np.testing.assert_allclose(back[3:-1], r[3:-1], rtol=1e-5)
        np.testing.assert_allclose(tr.forward(np.float32([10.0])), (10.0 + 10.0) / 10.0, rtol=1e-6)
    else:
        np.testing.assert_allclose(back[:-1], r[:-1], rtol=1e-5, atol=1e-7)
    x = np.linspace(-3, 3, 13).astype(np.float32)
    assert np.all(tr.inverse(x) >= 0) or kind == "none"


def test_unknown_transform():
    with pytest.raises(ValueError, match="unknown rain transform 'sqrt'"):
        preprocess.make_transform("sqrt")


# ---------------------------------------------------------------------------------------
# Crops, batches, masks, cache (fake archive)
# ---------------------------------------------------------------------------------------


@pytest.fixture
def fake_ds(tmp_path):
    glob = make_archive(tmp_path, every(T0, 12) + every(T0 + timedelta(days=1), 10))
    importer = FakeImporter()
    ds = radar.RadarDataset.open(glob, FAKE_PATTERN, reader(importer), 5, 3, 4, crop_size=16, augment=True,
                                 cache_dir=str(tmp_path / "cache"), min_valid_fraction=0.0)
    return ds, importer, glob


def test_crops_are_pure_functions_of_seed_and_index(fake_ds):
    ds, _, _ = fake_ds
    a = [radar.sample_crop(7, i, 10, (32, 40), 16, augment_flips=True) for i in range(20)]
    b = [radar.sample_crop(7, i, 10, (32, 40), 16, augment_flips=True) for i in range(20)]
    c = [radar.sample_crop(8, i, 10, (32, 40), 16, augment_flips=True) for i in range(20)]
    assert a == b and a != c and len(set(a)) > 10
    assert all(0 <= s.y <= 16 and 0 <= s.x <= 24 for s in a)
    b1, b2 = ds.train_batch(3, 4, seed=1), ds.train_batch(3, 4, seed=1)
    for k in b1:
        np.testing.assert_array_equal(b1[k], b2[k])
    # sample i of step s is the same whatever the batch size
    big = ds.train_batch(0, 8, seed=1)
    np.testing.assert_array_equal(big["inputs"][4:], ds.train_batch(1, 4, seed=1)["inputs"])


def test_batch_shapes_masks_and_units(fake_ds):
    ds, _, glob = fake_ds
    raw = ds.train_batch(0, 5, seed=0)  # mm/h
    assert raw["inputs"].shape == (5, 3, 16, 16, 1) and raw["targets"].shape == (5, 4, 16, 16, 1)
    assert raw["inputs"].dtype == np.float32 and raw["input_mask"].dtype == bool
    assert raw["target_mask"].shape == raw["targets"].shape
    contract = _contract("log1p")
    b = contract.model_batch(raw)
    for k in ("inputs", "targets"):
        m = b[k.rstrip("s") + "_mask"]
        assert (raw[k][~m] == 0).all() and np.isfinite(raw[k]).all()
        assert np.isfinite(b[k]).all() and (b[k][~m] == contract.to_model_units(np.zeros(1))[0]).all()
        np.testing.assert_array_equal(m, raw[k.rstrip("s") + "_mask"])
        np.testing.assert_allclose(contract.from_model_units(b[k])[m], raw[k][m], rtol=1e-5)
    # the fake domain edge (3 NaN columns) reaches the masks: the full-frame eval batch shows it
    ev = radar.RadarDataset.open(glob, FAKE_PATTERN, reader(FakeImporter()), 5, 3, 4, cache_dir=ds.cache_dir)
    full = next(ev.eval_batches("train", 2, None))  # None: the full frame
    # unobserved pixels hold 0 mm/h in the model units: for dBR that is the floor code, not 0 (= 1 mm/h)
    dbr = _contract("dbr")
    fd = dbr.model_batch(full)
    assert (fd["inputs"][~fd["input_mask"]] == dbr.to_model_units(np.zeros(1))[0]).all()
    assert dbr.to_model_units(np.zeros(1))[0] < 0
    assert not full["input_mask"][:, :, :, :3].any() and full["input_mask"][:, :, :, 3:].all()
    np.testing.assert_allclose(full["inputs"][0, 0, 5, 5, 0], 12.0 * (1 + np.sin(0.3 * 5 + 0.2 * 5 + 1200)), rtol=1e-5)


def test_grid_is_measured_on_a_training_event(tmp_path):
    """Event 0 is the test event and on another grid: the grid is the training event's, and the
    test event is refused when read, not cropped as if it were on the training grid."""

    class TwoGrids(FakeImporter):
        def __call__(self, path, scale=1.0):
            self.shape = (24, 40) if Path(path).name.startswith("R20200501") else (32, 40)
            return super().__call__(path, scale)

    glob = make_archive(tmp_path, every(T0, 8) + every(T0 + timedelta(days=1), 8))
    importer = TwoGrids()
    ds = radar.RadarDataset.open(glob, FAKE_PATTERN, reader(importer), 5, 2, 2, test_events=[0])
    assert ds.frame_shape() == (32, 40) and importer.calls == 8  # only the training event was decoded
    with pytest.raises(ValueError, match="decodes to 24x40 frames; the training events' grid is 32x40"):
        next(ds.eval_batches("test", 1, None))


def test_augmentation_keeps_inputs_and_targets_aligned():
    x = np.arange(2 * 4 * 4).reshape(2, 4, 4)
    for rot in range(4):
        for flip in (False, True):
            y = radar.augment(x, rot, flip)
            expected = np.rot90(x[..., ::-1] if flip else x, rot, axes=(1, 2))
            np.testing.assert_array_equal(y, expected)


def test_rainy_crops_are_preferred(tmp_path):
    class BlobImporter(FakeImporter):
        def __call__(self, path):
            self.calls += 1
            f = np.zeros(self.shape)
            f[2:8, 30:38] = 1.0  # 12 mm/h in one small corner
            return f, None, {"unit": "mm", "accutime": 5.0, "transform": None}

    glob = make_archive(tmp_path, every(T0, 10))
    opts = dict(crop_size=8, max_tries=200, min_valid_fraction=0.5)
    rainy = radar.RadarDataset.open(glob, FAKE_PATTERN, reader(BlobImporter()), 5, 2, 2, min_rain_fraction=0.5,
                                    test_events=[], **opts)
    plain = radar.RadarDataset.open(glob, FAKE_PATTERN, reader(BlobImporter()), 5, 2, 2, test_events=[], **opts)
    frac = lambda b: float((b["targets"] > 1.0).mean())  # noqa: E731
    assert frac(rainy.train_batch(0, 16, seed=0)) >= 0.5
    assert frac(plain.train_batch(0, 16, seed=0)) < 0.3


def test_cache_hit_does_not_call_importer(fake_ds, tmp_path):
    ds, importer, glob = fake_ds
    first = ds.event_rain(0)
    calls = importer.calls
    assert calls == 12
    again = radar.RadarDataset.open(glob, FAKE_PATTERN, reader(importer), 5, 3, 4, cache_dir=ds.cache_dir)
    np.testing.assert_array_equal(again.event_rain(0), first)
    assert importer.calls == calls  # loaded from <cache_dir>/radar-<key>.npy
    assert len(list(Path(ds.cache_dir).glob("radar-*.npy"))) == 1
    # another importer option or downsampling is another key -> decoded again
    decode.decode_event(ds.events[0].paths, importer, {"scale": 2.0}, cache_dir=ds.cache_dir)
    assert importer.calls == calls + 12
    half = decode.decode_event(ds.events[0].paths, importer, None, downsample_factor=2, cache_dir=ds.cache_dir)
    assert half.shape == (12, 16, 20) and importer.calls == calls + 24


def test_data_module_never_imports_jax():
    code = ("import sys, nowcast_jax.precip.dataset, nowcast_jax.precip.preprocess as p; p.RainTransform(); "
            "assert 'jax' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------
# Real MeteoSwiss frames end to end (16 files of one event)
# ---------------------------------------------------------------------------------------


@pytest.mark.data
def test_real_mch_event_masks_and_batches(radar_dir, tmp_path):
    paths = sorted((radar_dir / "mch" / "20160711").glob("*.gif"))[:16]
    ds = radar.RadarDataset.open([str(p) for p in paths], MCH_PATTERN, reader("mch_gif", MCH_KWARGS, 2), 5, 5, 10,
                                 cache_dir=str(tmp_path), crop_size=64, min_rain_fraction=0.05, augment=True,
                                 test_events=[])
    assert ds.stats["windows"] == 2 and ds.stats["events"] == ["20160711T2045"]
    rain = ds.event_rain(0)
    assert rain.shape == (16, 320, 355) and rain.dtype == np.float32
    nan_frac = np.isnan(rain).mean()
    assert 0.1 < nan_frac < 0.6  # outside the Swiss radar domain
    b = next(ds.eval_batches("train", 2, 128))
    crop = rain[:, 96:224, 113:241]
    np.testing.assert_array_equal(b["input_mask"][0, ..., 0], np.isfinite(crop[:5]))
    np.testing.assert_array_equal(b["target_mask"][1, ..., 0], np.isfinite(crop[6:16]))
    t = ds.train_batch(0, 4, seed=0)
    assert t["inputs"].shape == (4, 5, 64, 64, 1) and np.isfinite(t["inputs"]).all()
    assert (t["targets"] >= 0.5).mean() >= 0.05
