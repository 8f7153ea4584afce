"""The generic station-CSV contract: scale factors, units, encodings, time zones, blank = 0,
variables a station does not report, rows without values; on the two real KMA files (skipped
when absent) read through docs/visibility.md's override lines, and on mini CSVs written here."""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pandas as pd
import pytest

from tests.conftest import station_file
from nowcast_jax.visibility import features as feature_lib
from nowcast_jax.visibility.dataset import data_spec
from nowcast_jax.visibility.preprocess import StationContract
from nowcast_jax.visibility.readers import CANONICAL, CsvContract, convert_units, read_station_csv
from nowcast_jax.visibility.task import data_kwargs
from nowcast_jax.visibility.windows import SPLITS
from tests.visibility.conftest import CHEONGJU, PNW, RKSI, SBGR, SEA15, doc_config
from tests.visibility.test_dataset import COLUMNS, UNITS, _frame, _load, _write

KST = pd.Timedelta(hours=9)


def _kma(name: str):
    path = station_file(name)
    spec = data_spec(**data_kwargs(doc_config(name, path).data))
    return path, spec, spec.contract.csv.read(path)


@pytest.fixture(scope="module")
def rksi():
    return _kma(RKSI)


@pytest.fixture(scope="module")
def cheongju():
    return _kma(CHEONGJU)


def _at_kst(table, when: str):
    rows = table[table["time"] == pd.Timestamp(when, tz="UTC") - KST]
    assert len(rows) == 1, f"{len(rows)} rows at {when} KST"
    return rows.iloc[0]


# --------------------------------------------------------------------------- the real KMA files

def test_rksi_rows_fog_and_hand_decoded_values(rksi):
    _, _, (table, report) = rksi
    assert report["rows"] == len(table) == 28_418          # every data row of the file (README: 28,418)
    assert report["rows_bad_time"] == report["rows_without_values"] == 0
    assert sum(report["out_of_range"].values()) == 0 and report["absent"] == []
    # Fog hours = rows with visibility < 1000 m as read (m, no scaling): the README's 374.
    assert int((table["visibility"] < 1000).sum()) == 374
    assert report["blank_as_zero"] == {"precipitation": 25_233}
    # "113,인천공항,2023-01-01 00:00,240,9,,6000,...,2.1,-2.9,1030.1,1029.2," (precip blank)
    first = table.iloc[0]
    assert first["time"] == pd.Timestamp("2022-12-31 15:00", tz="UTC")     # 00:00 KST = 15:00 UTC the day before
    assert first["station"] == "113"
    assert (first["visibility"], first["wind_direction"], first["pressure"]) == (6000.0, 240.0, 1030.1)
    assert first["wind_speed"] == pytest.approx(4.63)                      # 9 kt * 1852 m / 3600 s
    assert (first["temperature"], first["dew_point"], first["precipitation"]) == (2.1, -2.9, 0.0)
    # "...,2026-03-30 21:00,310,7,,8000,...,10.9,7.9,1010.2,1009.4,.1"
    row = _at_kst(table, "2026-03-30 21:00")
    assert row["wind_speed"] == pytest.approx(7 * 1852 / 3600) and row["precipitation"] == pytest.approx(0.1)
    assert table["time"].iloc[-1] == pd.Timestamp("2026-03-30 15:00", tz="UTC")   # 2026-03-31 00:00 KST


def test_cheongju_rows_fog_and_hand_decoded_values(cheongju):
    _, _, (table, report) = cheongju
    assert report["rows"] == len(table) == 19_440          # README: 19,440
    # The README warns of trailing rows with a time and no values; this copy has none (every
    # row ends with values: 2023-03-23 00:00 KST is 18.1 C, 742 x 10 m); mini CSVs below test the rule.
    assert report["rows_bad_time"] == report["rows_without_values"] == 0
    # One visibility beyond the 100 km plausibility range: 15991 x 10 m = 159.9 km at
    # 2022-10-27 07:00 KST, read as missing. It is not fog, so the count below is unaffected.
    assert report["out_of_range"] == {**dict.fromkeys(CANONICAL, 0), "visibility": 1}
    assert np.isnan(_at_kst(table, "2022-10-27 07:00")["visibility"])
    # Fog hours = rows with visibility < 1000 m after x10 (시정(10m) < 100): the README's 69.
    assert int((table["visibility"] < 1000).sum()) == 69
    assert report["blank_as_zero"] == {"precipitation": 17_477}
    # "131,청주,2021-01-01 01:00,-7.2,,,9,.4,,0,,85,,3,-9.2,1020.6,,1028.3,...,806,..."
    first = table.iloc[0]
    assert first["time"] == pd.Timestamp("2020-12-31 16:00", tz="UTC")     # 01:00 KST (+09:00)
    assert first["visibility"] == 8060.0                                    # 806 x 10 m
    assert (first["wind_speed"], first["wind_direction"], first["precipitation"]) == (0.4, 0.0, 0.0)
    assert (first["temperature"], first["dew_point"], first["pressure"]) == (-7.2, -9.2, 1028.3)
    assert _at_kst(table, "2021-01-01 02:00")["visibility"] == 9620.0       # 962


# Per shared station file, what docs/visibility.md's train line gives (section "Each shared
# station file"): grid hours below 1000 m per station (the data README's fog hours: SBGR's
# 1,275 count clock hours in which ANY report was below 1000 m, the reader's hourly rows are
# one whole report per hour: 972, tests/visibility/test_ncei.py::test_sbgr_fog_hours), windows
# per station and split, and the features dropped for variables the station does not report.
SHARED_FILES = {
    SBGR: dict(fog={"SBGR": 972}, windows={"SBGR": (64_076, 13_907, 13_899)},
               dropped={"precipitation": ["precipitation"]}, calm=None),
    RKSI: dict(fog={"113": 374}, windows={"113": (19_801, 4_248, 4_226)}, dropped={}, calm=32),
    CHEONGJU: dict(fog={"131": 69}, windows={"131": (13_554, 2_886, 2_915)}, dropped={}, calm=3_174),
    PNW: dict(fog={"PDX": 139, "SEA": 242}, windows={"PDX": (5211, 734, 1429), "SEA": (4916, 693, 1380)},
              dropped={}, calm=None),
    SEA15: dict(fog={"SEA": 198}, windows={"SEA": (5077, 999, 983)}, dropped={}, calm=None),
}


@pytest.mark.parametrize("name", list(SHARED_FILES))
def test_each_shared_station_file(shared_datasets, name):
    """docs/visibility.md's train line of each shared file, through the config, data_spec and
    the whole preprocessing (grid, features, windows, split, scaler): windows in every split
    of every station, and the fog hours of the data README."""
    want = SHARED_FILES[name]
    _, ds, warned = shared_datasets(name)
    report = ds.report
    per = report["per_station"]
    assert {s: row["low_vis_steps"] for s, row in per.items()} == want["fog"]
    assert report["low_vis_steps"] == sum(want["fog"].values())
    assert {s: tuple(row["windows"][n] for n in SPLITS) for s, row in per.items()} == want["windows"]
    for split in SPLITS:
        assert len(ds.split(split)) == sum(w[SPLITS.index(split)] for w in want["windows"].values()) > 0
        assert np.isfinite(ds.split(split).x).all()
    assert report["features_dropped"] == want["dropped"]
    assert [f for f in feature_lib.PAPER_FEATURES_8 if f not in ds.contract.features] == list(want["dropped"])
    assert [w for w in warned if "dropped" in w] == ([f"data.features='paper8': dropped ['precipitation'], which "
                                                      f"need ['precipitation'] ({station_file(name)} does not report "
                                                      "them)"] if want["dropped"] else [])
    if want["calm"] is not None:     # Cheongju: calm_wind_ms=0.4 = exactly the direction-0 hours
        assert report["wind"]["calm"] == want["calm"]


def test_the_other_spellings_read_the_same(rksi, cheongju):
    """A zone name or a fixed offset; scale 10 with unit m or the unit dam."""
    path, spec, (table, _) = rksi
    assert spec.contract.csv.timezone == "Asia/Seoul"
    offset = CsvContract.from_dict({**spec.contract.csv.to_dict(), "timezone": "+09:00"})
    pd.testing.assert_frame_equal(offset.read(path)[0], table)
    path, spec, (table, _) = cheongju
    csv = spec.contract.csv.to_dict()
    assert csv["scale"]["visibility"] == 10.0 and csv["timezone"] == "+09:00"
    dam = CsvContract.from_dict({**csv, "scale": {}, "units": {**csv["units"], "visibility": "dam"}})
    pd.testing.assert_frame_equal(dam.read(path)[0], table)


# --------------------------------------------------------------------------- mini CSVs

def _read(path, **kw):
    args = dict(time_column="when", time_format="%d/%m/%Y %H:%M", station_column="stn", columns=COLUMNS,
                units=UNITS)
    return read_station_csv(path, **{**args, **kw})


def test_units_added_for_kma_and_others():
    assert convert_units(806.0, "visibility", "dam") == 8060.0
    assert convert_units(36.0, "wind_speed", "km/h") == pytest.approx(10.0)
    assert convert_units(9.0, "wind_speed", "kt") == convert_units(9.0, "wind_speed", "kn") == pytest.approx(4.63)
    assert convert_units(101.3, "pressure", "kPa") == pytest.approx(1013.0)


def test_scale_applies_before_the_unit_conversion(tmp_path):
    df = _frame(3).assign(vis_km=[80.6, 5.0, 100.0], t_f=[720.0, 320.0, 500.0])   # in 0.1 km and 0.1 F
    table, _ = _read(_write(tmp_path, df), scale={"visibility": 0.1, "temperature": 0.1})
    assert table["visibility"].tolist() == pytest.approx([8060.0, 500.0, 10_000.0])
    assert table["temperature"].tolist() == pytest.approx([(72.0 - 32) * 5 / 9, 0.0, 10.0])  # 0.1 F, then to C


@pytest.mark.parametrize("scale, match", [
    ({"visibility": 0}, r"data.scale.visibility=0 is not a number > 0"),
    ({"visibility": -10}, r"data.scale.visibility=-10 is not a number > 0"),
    ({"pressure": "ten"}, r"data.scale.pressure='ten' is not a number > 0"),
    ({"visibilty": 10}, r"data.scale has unknown variable\(s\) \['visibilty'\]"),
])
def test_bad_scale_is_one_line_naming_the_key(tmp_path, scale, match):
    with pytest.raises(ValueError, match=match):
        _read(_write(tmp_path, _frame(3)), scale=scale)


def test_the_contract_round_trips_the_new_keys_and_reads_old_sidecars():
    c = CsvContract(time_column="when", time_format="%d/%m/%Y %H:%M", columns={**COLUMNS, "pressure": ""},
                    units=UNITS, timezone="+09:00", encoding="cp949", scale={"visibility": 10},
                    blank_is_zero=("precipitation",))
    d = json.loads(json.dumps(c.to_dict()))
    assert CsvContract.from_dict(d) == c and c.absent == ("pressure",)
    assert d["scale"] == {**dict.fromkeys(CANONICAL, 1.0), "visibility": 10.0}
    old = {k: v for k, v in d.items() if k not in ("scale", "encoding", "blank_is_zero")}
    again = CsvContract.from_dict(old)     # a sidecar from before these keys: read as it was then
    assert dict(again.scale) == dict.fromkeys(CANONICAL, 1.0)
    assert again.encoding == "utf-8" and again.blank_is_zero == ()


def test_encoding_is_used_and_a_wrong_one_names_the_file_and_the_fix(tmp_path):
    path = tmp_path / "kma.csv"
    text = "일시,시정(m),강수량(mm)\n2023-01-01 00:00,6000,\n2023-01-01 01:00,800,.5\n"
    path.write_bytes(text.encode("cp949"))
    kw = dict(time_column="일시", time_format="%Y-%m-%d %H:%M", units={},
              columns={**dict.fromkeys(CANONICAL, ""), "visibility": "시정(m)", "precipitation": "강수량(mm)"})
    table, _ = read_station_csv(path, encoding="cp949", **kw)
    assert table["visibility"].tolist() == [6000.0, 800.0]
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))} is not 'utf-8' text .*set data.encoding.*'cp949'"):
        read_station_csv(path, **kw)
    with pytest.raises(ValueError, match=r"data.encoding='klingon' is not a Python text encoding"):
        read_station_csv(path, encoding="klingon", **kw)


def test_fixed_offsets_and_zone_names(tmp_path):
    path = _write(tmp_path, _frame(2, start="2023-01-01 00:00"))
    utc = {tz: str(_read(path, timezone=tz)[0]["time"][0]) for tz in ("+09:00", "Asia/Seoul", "-03:30", "+00:00")}
    assert utc == {"+09:00": "2022-12-31 15:00:00+00:00", "Asia/Seoul": "2022-12-31 15:00:00+00:00",
                   "-03:30": "2023-01-01 03:30:00+00:00", "+00:00": "2023-01-01 00:00:00+00:00"}


@pytest.mark.parametrize("tz, fix", [("UTC+9", "write the offset as '+09:00'"), ("+9", "write the offset as '+09:00'"),
                                     ("GMT-3:30", "write the offset as '-03:30'"), ("+15:00", "e.g. 'UTC'"),
                                     ("Asia/Soul", "e.g. 'UTC', 'Asia/Seoul'")])
def test_other_time_zone_spellings_are_refused_with_the_fix(tz, fix):
    with pytest.raises(ValueError, match=rf"timezone='{re.escape(tz)}' is not an IANA time zone name nor a fixed "
                                         rf"offset '\+HH:MM': {re.escape(fix)}"):
        CsvContract(time_column="when", time_format="%H", columns=COLUMNS, units=UNITS, timezone=tz)


def test_blank_is_zero_only_when_asked_and_only_for_blanks(tmp_path):
    df = _frame(4).astype({"rr_in": object})
    df.loc[[0, 1], "rr_in"], df.loc[2, "rr_in"] = "", "M"
    path = _write(tmp_path, df)
    off, report = _read(path, missing_values=("", "M"))
    assert np.isnan(off["precipitation"][:3]).all() and report["blank_as_zero"] == {}
    on, report = _read(path, missing_values=("", "M"), blank_is_zero=("precipitation",))
    assert on["precipitation"][:2].tolist() == [0.0, 0.0] and np.isnan(on["precipitation"][2])   # "M" stays missing
    assert report["blank_as_zero"] == {"precipitation": 2}


def test_bad_blank_is_zero_names_the_key(tmp_path):
    path = _write(tmp_path, _frame(3))
    with pytest.raises(ValueError, match=r"data.blank_is_zero has unknown variable\(s\) \['rain'\]"):
        _read(path, blank_is_zero=("rain",))
    with pytest.raises(ValueError, match=r"data.blank_is_zero names \['precipitation'\], which data.columns maps to ''"):
        _read(path, blank_is_zero=("precipitation",), columns={**COLUMNS, "precipitation": ""})


def test_rows_with_a_time_and_no_values_are_missing_not_data(tmp_path):
    """Trailing rows with a timestamp only (KMA downloads end so): dropped and counted, also
    with blank_is_zero (their blank precipitation is no 0 observation); a row holding only a
    precipitation of 0 is data."""
    df = _frame(6).astype({c: object for c in COLUMNS.values()})
    df.loc[[4, 5], list(COLUMNS.values())] = ""
    df.loc[3, [c for c in COLUMNS.values() if c != "rr_in"]] = ""
    table, report = _read(_write(tmp_path, df), blank_is_zero=("precipitation",))
    assert report["rows"] == len(table) == 4 and report["rows_without_values"] == 2
    assert table["precipitation"].iloc[-1] == 0.0 and np.isnan(table["visibility"].iloc[-1])


def test_a_variable_not_reported_is_an_all_nan_column(tmp_path):
    table, report = _read(_write(tmp_path, _frame(5).drop(columns="slp_inhg")), columns={**COLUMNS, "pressure": ""})
    assert np.isnan(table["pressure"]).all() and report["absent"] == ["pressure"]
    with pytest.raises(ValueError, match=r"data.columns.visibility is '': visibility is the forecast target"):
        _read(_write(tmp_path, _frame(5)), columns={**COLUMNS, "visibility": ""})


def test_feature_sets_drop_what_needs_an_absent_variable_and_say_so(tmp_path):
    path = _write(tmp_path, _frame(400).drop(columns=["slp_inhg", "td_f"]))
    columns = {**COLUMNS, "pressure": "", "dew_point": ""}
    with pytest.warns(UserWarning, match=r"data.features='fog16': dropped \['dew_point', 'dewpoint_depression', "
                                         r"'dewpoint_depression_tend3h', 'pressure', 'relative_humidity'\], which "
                                         r"need \['dew_point', 'pressure'\]"):
        ds = _load(path, columns=columns, features="fog16")
    assert "pressure" not in ds.contract.features and "hour_sin" in ds.contract.features
    assert ds.report["features_dropped"]["relative_humidity"] == ["dew_point"]
    assert len(ds.train) > 0 and np.isfinite(ds.train.x).all()     # the all-NaN columns cost no window
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        ds = _load(path, columns=columns, features=("visibility", "wind_speed"))   # nothing to drop: no word
    assert not [w for w in seen if "dropped" in str(w.message)] and ds.report["features_dropped"] == {}


def test_a_listed_feature_that_needs_an_absent_variable_is_an_error(tmp_path):
    path = _write(tmp_path, _frame(50))
    with pytest.raises(ValueError, match=r"feature 'pressure' of data.features needs 'pressure', which data.columns "
                                         r"maps to '' \(not reported\): remove \['pressure'\] from data.features"):
        data_spec(path, time_column="when", time_format="%d/%m/%Y %H:%M", station_column="stn",
                  columns={**COLUMNS, "pressure": ""}, units=UNITS, features=("visibility", "pressure"))
    spec = data_spec(path, time_column="when", time_format="%d/%m/%Y %H:%M", station_column="stn",
                     columns=COLUMNS, units=UNITS)
    stored = spec.contract.to_dict()
    stored["csv"]["columns"]["pressure"] = ""      # a contract whose features need what its file lacks
    with pytest.raises(ValueError, match=r"feature 'pressure' of data.features needs 'pressure'"):
        StationContract.from_dict(stored)


def test_every_feature_declares_its_inputs():
    assert set(feature_lib.FEATURE_INPUTS) == set(feature_lib.FEATURE_NAMES)
    assert all(set(v) <= set(CANONICAL) for v in feature_lib.FEATURE_INPUTS.values())
    kept, dropped = feature_lib.select_features("paper8", ("wind_direction",))
    assert dropped == {"wind_dir_sin": ["wind_direction"], "wind_dir_cos": ["wind_direction"]}
    assert kept == feature_lib.PAPER_FEATURES_6
