"""Many stations: ``data.path`` as a list or glob, station names (column or file), the
per-station chronological split, the per-station report and what the contract records;
mini CSVs written here, and the real pnwflights14 file (skipped when absent) read through
docs/visibility.md's "Many stations" lines."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pandas as pd
import pytest

from nowcast_jax.engine.config import ConfigError
from nowcast_jax.visibility import scores, station_scores
from nowcast_jax.visibility.dataset import StationWindows, build_station_dataset, data_spec
from nowcast_jax.visibility.preprocess import StationContract
from nowcast_jax.visibility.task import _config_data
from nowcast_jax.visibility.windows import SPLITS
from tests.visibility.conftest import PNW, doc_train_command
from tests.visibility.test_dataset import _frame, _load, _write

HISTORY, HORIZONS = 12, (1, 3, 6)
HOUR = np.timedelta64(1, "h")


def _files(tmp_path, *specs, station_col=True):
    """One CSV per ``(file name, station, start, hours)``; returns their paths."""
    paths = []
    for name, station, start, n in specs:
        df = _frame(n, start=start, station=station)
        paths.append(_write(tmp_path, df if station_col else df.drop(columns="stn"), name))
    return paths


def _stations(ds) -> list:
    return sorted({s for name in SPLITS for s in ds.split(name).station.tolist()})


# --------------------------------------------------------------------------- list, glob, names

def test_a_list_a_glob_and_the_override_string_pool_the_same_stations(tmp_path):
    a, b = _files(tmp_path, ("obs_a.csv", "AAA", "2020-01-01", 200), ("obs_b.csv", "BBB", "2020-01-01", 150))
    listed = _load([str(a), str(b)])
    globbed = _load(str(tmp_path / "obs_*.csv"))
    as_text = _load(f"('{a}', '{b}')")                    # what --config.data.path="(...)" gives
    for ds in (listed, globbed, as_text):
        assert _stations(ds) == ["AAA", "BBB"] and ds.contract.stations == ("AAA", "BBB")
        assert ds.report["rows"] == 350 and ds.report["stations"]["BBB"]["rows"] == 150
        assert ds.report["files"] == {str(a): {"rows": 200, "stations": ["AAA"]},
                                      str(b): {"rows": 150, "stations": ["BBB"]}}
        np.testing.assert_array_equal(ds.test.times, listed.test.times)
    # the same stations in one file give the same windows
    one = _write(tmp_path, pd.concat([_frame(200), _frame(150, station="BBB")]), "both.csv")
    single = _load(one)
    for name in SPLITS:
        np.testing.assert_array_equal(single.split(name).x, listed.split(name).x)
    assert "files" not in single.report


def test_one_file_per_station_is_named_after_the_file(tmp_path):
    _files(tmp_path, ("SEA_2015.csv", "x", "2020-01-01", 120), ("PDX_2015.csv", "x", "2020-01-01", 120),
           station_col=False)
    ds = _load(str(tmp_path / "*_2015.csv"), station_column="")
    assert _stations(ds) == ["PDX_2015", "SEA_2015"] and sorted(ds.report["per_station"]) == ["PDX_2015", "SEA_2015"]
    only = _load(str(tmp_path / "*_2015.csv"), station_column="", stations=("SEA_2015",))
    assert _stations(only) == ["SEA_2015"]
    # one plain path reads as it always did: its station is "station"
    assert _stations(_load(tmp_path / "SEA_2015.csv", station_column="")) == ["station"]


def test_a_station_in_two_files_names_both(tmp_path):
    a, b = _files(tmp_path, ("one.csv", "AAA", "2020-01-01", 60), ("two.csv", "AAA", "2021-01-01", 60))
    with pytest.raises(ValueError, match=rf"station 'AAA' is in {re.escape(str(a))} and in {re.escape(str(b))}"):
        _load([str(a), str(b)])


def test_missing_files_and_empty_globs_are_one_line_naming_them(tmp_path):
    (a,) = _files(tmp_path, ("a.csv", "AAA", "2020-01-01", 60))
    with pytest.raises(FileNotFoundError, match=r"data.path: 'nowhere/\*.csv' matches no file"):
        _load("nowhere/*.csv")
    with pytest.raises(FileNotFoundError, match=r"data.path: no file 'gone.csv' \(item of data.path="):
        _load([str(a), "gone.csv"])
    with pytest.raises(FileNotFoundError, match=r"data.path: no file 'gone.csv' \(relative to"):
        _load("gone.csv")
    with pytest.raises(ValueError, match=r"data.stations \['ZZZ'\] are in no file of data.path"):
        _load([str(a)], stations=("ZZZ",))
    # through the task: a ConfigError saying it comes from config.data
    spec = data_spec(str(tmp_path / "no_*.csv"))
    with pytest.raises(ConfigError, match=r"^config.data: data.path: '.*no_\*.csv' matches no file"):
        _config_data(build_station_dataset, spec)


# --------------------------------------------------------------------------- the per-station split

def _span(ds, name):
    """Per station (first input hour, last target hour) of the windows of split ``name``."""
    w = ds.split(name)
    out = {}
    for s in np.unique(w.station):
        t = w.times[w.station == s]
        out[str(s)] = (t.min() - (HISTORY - 1) * HOUR, t.max() + max(HORIZONS) * HOUR)
    return out


def test_per_station_blocks_keep_each_stations_test_after_its_training(tmp_path):
    """Two stations of different years: one split over the overall range leaves the later
    station without training windows; per station, every station's blocks follow each other
    in time with no hour shared, checked window by window in a Python loop."""
    paths = _files(tmp_path, ("early.csv", "AAA", "2009-03-01", 24 * 40), ("late.csv", "BBB", "2023-06-01", 24 * 30))
    paths = [str(p) for p in paths]
    pooled = _load(paths)
    assert pooled.report["per_station"]["BBB"]["windows"]["train"] == 0
    assert pooled.report["per_station"]["AAA"]["windows"]["test"] == 0
    for order in (SPLITS, ("test", "val", "train")):
        ds = _load(paths, split_per_station=True, split_order=order)
        spans = {name: _span(ds, name) for name in SPLITS}
        for station in ("AAA", "BBB"):
            for before, after in zip(order, order[1:]):
                last_hour = spans[before][station][1]
                first_hour = spans[after][station][0]
                assert last_hour < first_hour, (station, before, after)
            loop_last = max(t + 6 * HOUR for t, s in zip(ds.split(order[0]).times, ds.split(order[0]).station)
                            if s == station)
            loop_first = min(t - 11 * HOUR for t, s in zip(ds.split(order[2]).times, ds.split(order[2]).station)
                             if s == station)
            assert loop_last < loop_first
        rep = ds.report["split"]
        assert rep["per_station"] and sorted(rep["stations"]) == ["AAA", "BBB"]
        assert rep["stations"]["BBB"]["test_start" if order == SPLITS else "val_start"] > "2023"
        for station, row in ds.report["per_station"].items():
            assert row["windows"] == {n: int((ds.split(n).station == station).sum()) for n in SPLITS}
            assert min(row["windows"].values()) > 0


def test_per_station_fractions_are_each_stations_own(tmp_path):
    """One station: the per-station split is the plain split; two stations of one range too."""
    (a,) = _files(tmp_path, ("a.csv", "AAA", "2020-01-01", 300))
    for name in SPLITS:
        np.testing.assert_array_equal(_load(a, split_per_station=True).split(name).times,
                                      _load(a).split(name).times)


def test_per_station_needs_the_chronological_split_without_dates(tmp_path):
    (a,) = _files(tmp_path, ("a.csv", "AAA", "2020-01-01", 60))
    with pytest.raises(ValueError, match="split_per_station=True .* needs split='chronological' and no data.split_dates"):
        _load(a, split_per_station=True, split="random", fractions=(0.8, 0.0, 0.2))
    with pytest.raises(ValueError, match="split_per_station=True"):
        _load(a, split_per_station=True, split_dates=("2020-01-02", "2020-01-03"))


# --------------------------------------------------------------------------- report and contract

def test_the_report_counts_windows_and_fog_hours_per_station_and_split(tmp_path):
    paths = [str(p) for p in _files(tmp_path, ("a.csv", "AAA", "2020-01-01", 300),
                                    ("b.csv", "BBB", "2021-01-01", 200))]
    ds = _load(paths, split_per_station=True)
    for station, row in ds.report["per_station"].items():
        for name in SPLITS:
            w = ds.split(name)
            sel = w.station == station
            hours = {}
            for t, y in zip(w.times[sel], w.y[sel]):      # the distinct target hours, by hand
                for h, v in zip(HORIZONS, y):
                    hours[t + h * HOUR] = v
            assert row["fog_hours"][name] == sum(v < 1000.0 for v in hours.values()) > 0
            assert row["windows"][name] == int(sel.sum())
        assert row["rows"] == {"AAA": 300, "BBB": 200}[station]
        assert row["first"] == ("2020-01-01T00:00:00" if station == "AAA" else "2021-01-01T00:00:00")
        assert row["val_start"] == ds.report["split"]["stations"][station]["val_start"]


def test_the_contract_records_its_stations_and_round_trips(tmp_path):
    paths = [str(p) for p in _files(tmp_path, ("a.csv", "AAA", "2020-01-01", 300),
                                    ("b.csv", "BBB", "2021-01-01", 200))]
    ds = _load(paths, split_per_station=True)
    c = ds.contract
    assert c.stations == ("AAA", "BBB") and c.station_stats == ds.report["per_station"]
    d = json.loads(json.dumps(c.to_dict()))
    back = StationContract.from_dict(d)
    assert back.same_as(c) and back.station_stats == c.station_stats
    # a contract saved before these fields existed reads with none
    old = StationContract.from_dict({k: v for k, v in d.items() if k not in ("stations", "station_stats")})
    assert old.stations == () and old.station_stats == {}
    # restoring: the stored stations and statistics are kept; from an old contract, this one's
    fresh = _load(paths[:1])
    assert fresh.contract.with_fitted_parts_of(back).station_stats == c.station_stats
    assert fresh.contract.with_fitted_parts_of(old).stations == ("AAA",)
    # a restored contract (scaler present) is not refitted by a load of other files
    spec = data_spec(paths[:1], time_column="when", time_format="%d/%m/%Y %H:%M", station_column="stn",
                     columns=c.csv.columns, units=c.csv.units)
    again = build_station_dataset(dataclasses.replace(spec, contract=spec.contract.with_fitted_parts_of(back)))
    assert again.contract.stations == ("AAA", "BBB") and sorted(again.report["per_station"]) == ["AAA"]


# --------------------------------------------------------------------------- the docs' lines, the real file

def test_the_pooled_variant_and_its_documented_lines(shared_datasets):
    config_file, _ = doc_train_command(PNW)
    assert config_file == "configs/visibility.py:pooled"
    config, ds, _ = shared_datasets(PNW)
    assert config.data.split_per_station is True and tuple(config.data.fractions) == (0.7, 0.1, 0.2)
    r = ds.report
    assert r["rows"] == 17_426 and r["low_vis_steps"] == 381 and r["missing_steps"] == 46
    assert {s: row["windows"] for s, row in r["per_station"].items()} == {
        "PDX": {"train": 5211, "val": 734, "test": 1429}, "SEA": {"train": 4916, "val": 693, "test": 1380}}
    assert {s: row["fog_hours"] for s, row in r["per_station"].items()} == {
        "PDX": {"train": 66, "val": 0, "test": 10}, "SEA": {"train": 136, "val": 36, "test": 17}}
    for s in ("PDX", "SEA"):
        assert r["split"]["stations"][s]["val_start"] == "2014-09-13T02:00:00"
        assert r["split"]["stations"][s]["test_start"] == "2014-10-19T11:00:00"
    assert ds.contract.stations == ("PDX", "SEA")


# --------------------------------------------------------------------------- scores per station

def _scored_windows(seed=0):
    """Two stations x 40 days of hourly windows, foggy nights, a noisy model."""
    rng = np.random.default_rng(seed)
    n = 24 * 40
    times = np.concatenate([np.arange(n) * HOUR + np.datetime64("2020-01-01T00:00", "s")] * 2)
    station = np.repeat(["AAA", "BBB"], n)
    y = np.where(rng.random((2 * n, 3)) < 0.08, 400.0, 9000.0)
    start = np.where(rng.random(2 * n) < 0.08, 400.0, 9000.0)
    w = StationWindows(np.zeros((2 * n, 1, 1), np.float32), y.astype(np.float32), start.astype(np.float32),
                       times, station)
    fc = {"model": {"value": np.clip(y + rng.normal(0, 1500, y.shape), 0, 10000), "event": None},
          "persistence": {"value": np.repeat(start[:, None].astype(np.float64), 3, axis=1), "event": None}}
    return w, fc


def test_the_day_block_bootstrap_matches_a_python_loop():
    w, fc = _scored_windows()
    days = station_scores.day_blocks(w)
    boot = station_scores.day_block_bootstrap(fc["model"], fc["persistence"], w.y, days, n=30, seed=3)
    assert boot["days"] == 80 and boot["resamples"] == 30
    rmse = {k: np.sqrt(((f["value"] - w.y) ** 2).mean(0)) for k, f in fc.items()}
    np.testing.assert_allclose(boot["rmse_change"], 100 * (rmse["model"] - rmse["persistence"]) / rmse["persistence"])
    labels = sorted(set(days.tolist()))
    idx = np.random.default_rng(3).integers(0, len(labels), (30, len(labels)))
    gains, diffs = [], []
    for rows in idx:                                   # each resample, window by window
        sel = np.concatenate([np.flatnonzero(days == labels[r]) for r in rows])
        obs = w.y[sel].astype(np.float64)
        r = {k: np.sqrt(((f["value"][sel] - obs) ** 2).mean(0)) for k, f in fc.items()}
        gains.append(100 * (r["model"] - r["persistence"]) / r["persistence"])
        csi = {}
        for k, f in fc.items():
            e, o = f["value"][sel] < 1000, obs < 1000
            csi[k] = (e & o).sum(0) / ((e & o).sum(0) + (~e & o).sum(0) + (e & ~o).sum(0))
        diffs.append(csi["model"] - csi["persistence"])
    np.testing.assert_allclose(boot["rmse_change_q05"], np.quantile(gains, 0.05, axis=0))
    np.testing.assert_allclose(boot["csi_diff_1000_q95"], np.quantile(diffs, 0.95, axis=0))
    np.testing.assert_allclose(boot["p_not_better_1000"], np.mean(np.asarray(diffs) <= 0, axis=0))


def test_scores_per_station_are_the_scores_of_its_windows():
    w, fc = _scored_windows(1)
    hazy = w.start_vis < 9000
    per = station_scores.per_station(fc, w, hazy=hazy, thresholds=(1000.0,), max_lag=2)
    assert sorted(per) == ["AAA", "BBB"]
    for name, res in per.items():
        sel = w.station == name
        rmse = np.sqrt(((fc["model"]["value"][sel] - w.y[sel]) ** 2).mean(0))
        np.testing.assert_allclose(res["model"]["rmse"], rmse)
        assert res["windows"]["n"] == int(sel.sum()) and res["bootstrap"]["days"] == 40
    pooled = scores.score_all(fc, w, hazy=hazy, thresholds=(1000.0,), max_lag=2)
    pooled["bootstrap"] = station_scores.bootstrap_vs_persistence(fc, w)
    pooled["per_station"] = per
    text = station_scores.station_table(pooled, (1, 3, 6))
    assert "| pooled | +1 h | 1920 |" in text and "| BBB | +6 h | 960 |" in text
