"""The NCEI Global Hourly (ISD) reader: the real SBGR file (skipped when absent) and mini
CSVs composed here in ISD layout (every expected number decoded by hand from the groups)."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import re
import warnings

import numpy as np
import pandas as pd
import pytest

from tests.conftest import station_file
from tests.visibility.conftest import SBGR
from nowcast_jax.visibility import grid as grid_lib
from nowcast_jax.visibility.dataset import build_station_dataset, data_spec, load_station_dataset
from nowcast_jax.visibility.preprocess import StationContract
from nowcast_jax.visibility.serve import station_inputs
from nowcast_jax.visibility.ncei import TEN_KM_M, read_ncei_global_hourly
from nowcast_jax.visibility.readers import CANONICAL

COLUMNS = ("STATION", "DATE", "SOURCE", "REPORT_TYPE", "CALL_SIGN", "WND", "CIG", "VIS", "TMP", "DEW", "SLP",
           "MA1", "REM")
# a plain METAR: 130 deg 2.1 m/s, 8000 m, 20.0/19.0 C, no SLP, QNH 1014.9 hPa
BASE = {"STATION": "99999999999", "SOURCE": "4", "REPORT_TYPE": "FM-15", "CALL_SIGN": "XXXX ",
        "WND": "130,1,N,0021,1", "CIG": "22000,1,9,N", "VIS": "008000,1,N,1", "TMP": "+0200,1", "DEW": "+0190,1",
        "SLP": "99999,9", "MA1": "10149,1,99999,9", "REM": "MET000METAR XXXX 010000Z 13004KT 8000 20/19 Q1015;"}


def write_isd(path, rows, columns=COLUMNS):
    """A mini ISD CSV: each row is BASE updated with the given fields (DATE required)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for r in rows:
            full = {**BASE, **r}
            w.writerow([full.get(c, "") for c in columns])
    return path


def read(tmp_path, rows, columns=COLUMNS, **kw):
    return read_ncei_global_hourly(write_isd(tmp_path / "isd.csv", rows, columns), **kw)


def at(table, when):
    """The row of ``table`` at UTC time ``when`` (exactly one)."""
    rows = table[table["time"] == pd.Timestamp(when, tz="UTC")]
    assert len(rows) == 1, f"{len(rows)} rows at {when}"
    return rows.iloc[0]


def check(row, **expected):
    for name, value in expected.items():
        got = float(row[name])
        if value is None:
            assert math.isnan(got), f"{name}: expected NaN, got {got}"
        else:
            assert got == pytest.approx(value), f"{name}: expected {value}, got {got}"


# --------------------------------------------------------------------------- the real SBGR file

@pytest.fixture(scope="module")
def sbgr_path():
    return station_file(SBGR)


@pytest.fixture(scope="module")
def sbgr(sbgr_path):
    return read_ncei_global_hourly(sbgr_path)


def test_sbgr_counts(sbgr, sbgr_path):
    table, report = sbgr
    # independent reference for the hours: the clock periods (HH-1:00, HH:00] holding a METAR or SPECI
    raw = pd.read_csv(sbgr_path, usecols=["DATE", "REPORT_TYPE"], dtype=str)
    kept = raw[raw["REPORT_TYPE"].str.strip().isin(["FM-15", "FM-16"])]
    assert pd.to_datetime(kept["DATE"]).dt.ceil("1h").nunique() == 95_469
    ncei = report["ncei"]
    assert ncei["raw_reports"] == 103_912                       # the README's row count
    assert ncei["report_types"] == {"FM-15": 95_602, "FM-16": 8_308, "SY-MT": 1, "FM-12": 1}
    assert ncei["dropped_report_types"] == {"SY-MT": 1, "FM-12": 1}
    assert ncei["reports"] == 103_910
    assert report["rows"] == len(table) == ncei["collapse"]["hours"] == 95_469
    c = ncei["collapse"]
    assert c["reports_collapsed"] == 103_910 - 95_469
    assert c["hours_routine"] + c["hours_special_no_routine"] == 95_469
    assert c["hours_special_no_routine"] == 18
    assert not table.duplicated(["station", "time"]).any()
    assert (table["time"].dt.minute == 0).all() and str(table["time"].dt.tz) == "UTC"
    assert list(table.columns) == ["station", "time", *CANONICAL]
    assert set(table["station"]) == {"SBGR"}                    # CALL_SIGN, not the id 83075099999
    assert report["rows_bad_time"] == 0 and report["conflicting_duplicates"] == 0
    assert ncei["pressure"]["from_slp"] == 0                    # SLP missing in every row (README)
    assert ncei["pressure"]["source"] == "MA1 altimeter (QNH)"
    assert ncei["precipitation"]["source"].startswith("not reported by this station")
    assert table["precipitation"].isna().all()
    # CAVOK rows carry VIS 009900 or 999999 here (and one garbled 002608), never 10 km
    assert ncei["visibility"]["cavok"] == 26_430
    assert ncei["visibility"]["cavok_vis_codes"] == {"009900": 14_454, "999999": 11_975, "002608": 1}
    # METAR 9999 is VIS 009999, or 011265 (7 mi) in the 2009-2013 rows
    assert ncei["visibility"]["ten_km_vis_codes"] == {"009999": 25_453, "011265": 16_268}
    assert ncei["wind"]["calm"] == 9_063


def test_sbgr_fog_hours(sbgr, sbgr_path):
    """The README's 1,275 fog hours count clock hours [HH:00, HH+1:00) in which ANY report
    (METAR or SPECI) had visibility < 1000 m (not raw rows: 1,493 reports; not our hourly
    rows: 972, the hours whose chosen report, mostly the HH:00 METAR, is < 1000 m)."""
    table, _ = sbgr
    assert int((table["visibility"] < 1000).sum()) == 972
    with pytest.warns(UserWarning, match="rows repeat a station and time"):   # same-time reports, kept
        reports, _ = read_ncei_global_hourly(sbgr_path, collapse=None, report_types=None)
    fog = reports[reports["visibility"] < 1000]
    assert len(fog) == 1_493
    assert fog["time"].dt.floor("1h").nunique() == 1_275


def test_sbgr_rows_decoded_by_hand(sbgr):
    table, _ = sbgr
    # 2009-01-01 00:00 FM-15, CAVOK: VIS "009900,1,N,1" with CIG "99999,9,C,Y" -> 10 km;
    # TMP "+0200,1" -> 20.0; DEW "+0190,1" -> 19.0; WND "130,1,N,0021,1" -> 130 deg 2.1 m/s;
    # SLP "99999,9" missing, MA1 "10149,1,99999,9" -> QNH 1014.9 hPa
    check(at(table, "2009-01-01 00:00"), visibility=10000, temperature=20.0, dew_point=19.0, wind_speed=2.1,
          wind_direction=130, pressure=1014.9, precipitation=None)
    # 2009-01-01 03:00: the METAR (VIS "005000,1,N,1", WND "060,1,N,0051,1", MA1 "10159,...") wins
    # over the 02:25 SPECI of its hour (VIS "003500,1,N,1", WND "090,1,N,0015,1")
    check(at(table, "2009-01-01 03:00"), visibility=5000, temperature=20.0, dew_point=19.0, wind_speed=5.1,
          wind_direction=60, pressure=1015.9)
    # 2009-01-01 04:00: VIS "011265,1,N,1" (METAR 9999) -> 10 km; WND "080,1,N,0021,1"
    check(at(table, "2009-01-01 04:00"), visibility=10000, wind_speed=2.1, wind_direction=80, pressure=1014.9)
    # 2009-01-01 07:00 calm: WND "999,9,C,0000,1" -> 0 m/s, no direction; TMP/DEW "+0190,1";
    # MA1 "10139,1,99999,9"
    check(at(table, "2009-01-01 07:00"), wind_speed=0.0, wind_direction=None, temperature=19.0, dew_point=19.0,
          pressure=1013.9, visibility=10000)
    # hour ending 2016-02-15 19:00: only SPECIs (18:06 VIS 3000, 18:15 VIS 2000, 18:40 VIS 5000);
    # the row is the whole 18:40 report: VIS "005000,1,9,9", TMP/DEW "+9999,9" missing,
    # WND "140,1,N,0015,1", MA1 "10160,1,99999,9" (never the 18:15 temperature, never a mean)
    check(at(table, "2016-02-15 19:00"), visibility=5000, temperature=None, dew_point=None, wind_speed=1.5,
          wind_direction=140, pressure=1016.0)
    # 2013-06-14 19:00: WND "320,1,V,0041,1" (32008KT 290V360) keeps its mean direction;
    # VIS "999999,9,9,9" with CAVOK -> 10 km; TMP "+0230,1", DEW "+0080,1", MA1 "10180,1,..."
    check(at(table, "2013-06-14 19:00"), wind_direction=320, wind_speed=4.1, visibility=10000, temperature=23.0,
          dew_point=8.0, pressure=1018.0)
    # 2009-03-11 19:00: WND "999,9,V,0005,1" (VRB01KT) -> 0.5 m/s, no direction
    check(at(table, "2009-03-11 19:00"), wind_direction=None, wind_speed=0.5)


def test_sbgr_units_and_ranges(sbgr):
    table, _ = sbgr
    t, p, vis = table["temperature"].dropna(), table["pressure"].dropna(), table["visibility"].dropna()
    assert -5 <= t.min() and t.max() <= 40                         # Sao Paulo, 750 m
    assert (table["dew_point"].dropna() <= t.max()).all()
    assert 1000 <= p.min() and p.max() <= 1035                     # QNH hPa, not x10, not inHg
    assert 0 <= table["wind_speed"].min() and table["wind_speed"].max() < 30
    assert table["wind_direction"].dropna().between(1, 360).all()
    # the METAR cap: nothing above 10 km; "10 km or more" (CAVOK, 9999) is exactly 10000 m
    assert vis.max() == TEN_KM_M
    assert set(vis[vis > 9000]) == {TEN_KM_M}
    assert vis.min() >= 0


def test_sbgr_goes_on_the_hourly_grid(sbgr):
    table, _ = sbgr
    grids, report = grid_lib.to_grid(table, "1h")
    assert report["SBGR"]["merged_rows"] == 0          # one report per hour: the grid has nothing to merge
    assert report["SBGR"]["rows"] == 95_469


# --------------------------------------------------------------------------- mini CSVs

def test_metar_speci_collapse(tmp_path):
    rows = [
        {"DATE": "2020-01-01T02:25:00", "REPORT_TYPE": "FM-16", "VIS": "000500,1,N,1"},
        {"DATE": "2020-01-01T02:40:00", "REPORT_TYPE": "FM-16", "VIS": "000300,1,N,1"},
        {"DATE": "2020-01-01T03:00:00", "VIS": "004000,1,N,1"},                     # hour 03: the METAR
        {"DATE": "2020-01-01T04:10:00", "REPORT_TYPE": "FM-16", "VIS": "000200,1,N,1"},
        {"DATE": "2020-01-01T04:45:00", "REPORT_TYPE": "FM-16", "VIS": "000900,1,N,1", "TMP": "+9999,9"},
        {"DATE": "2020-01-01T05:59:00", "VIS": "006000,1,N,1"},                     # HH:59 -> hour 06
        {"DATE": "2020-01-01T07:00:00", "VIS": "999999,9,9,9"},                     # METAR without visibility
        {"DATE": "2020-01-01T06:30:00", "REPORT_TYPE": "FM-16", "VIS": "001500,1,N,1"},
        {"DATE": "2020-01-01T08:00:00", "VIS": "007000,1,N,1", "TMP": "+0100,1"},   # same time, same type:
        {"DATE": "2020-01-01T08:00:00", "VIS": "007000,1,N,1", "TMP": "+0110,1"},   # the later (a correction)
        {"DATE": "2020-01-01T08:00:00", "REPORT_TYPE": "FM-16", "VIS": "000100,1,N,1"},
    ]
    table, report = read(tmp_path, rows)
    assert [str(t.hour) for t in table["time"]] == ["3", "5", "6", "7", "8"]
    check(at(table, "2020-01-01 03:00"), visibility=4000)
    # only SPECIs: the latest whole report (900 m, its missing temperature), not a mean (550 m)
    check(at(table, "2020-01-01 05:00"), visibility=900, temperature=None)
    check(at(table, "2020-01-01 06:00"), visibility=6000)
    # the METAR has no visibility: the SPECI of its hour with one
    check(at(table, "2020-01-01 07:00"), visibility=1500)
    check(at(table, "2020-01-01 08:00"), visibility=7000, temperature=11.0)
    c = report["ncei"]["collapse"]
    assert c == {**c, "hours": 5, "reports_collapsed": 6, "hours_with_several_reports": 4, "hours_routine": 3,
                 "hours_special_no_routine": 1, "hours_special_over_routine_without_visibility": 1,
                 "same_time_reports": 3}
    assert report["rows"] == 5
    with pytest.warns(UserWarning, match="2 rows repeat a station and time"):
        every, every_report = read(tmp_path, rows, collapse=None)
    assert len(every) == len(rows) and "collapse" not in every_report["ncei"]
    assert str(every["time"].iloc[0]) == "2020-01-01 02:25:00+00:00"


def test_missing_markers(tmp_path):
    table, report = read(tmp_path, [
        {"DATE": "2020-01-01T00:00:00", "VIS": "999999,9,9,9", "TMP": "+9999,9", "DEW": "+9999,9",
         "WND": "999,9,N,9999,9", "MA1": "99999,9,99999,9", "REM": "MET000METAR XXXX 010000Z /////KT;"},
        {"DATE": "2020-01-01T01:00:00", "VIS": "", "TMP": "", "DEW": "", "WND": "", "MA1": "", "REM": ""},
        {"DATE": "2020-01-01T02:00:00", "TMP": "-0035,1", "DEW": "-0120,1", "WND": "360,1,N,0155,1"},
    ])
    for when in ("2020-01-01 00:00", "2020-01-01 01:00"):
        check(at(table, when), **{name: None for name in CANONICAL})
    # "-0035,1" -> -3.5 C; "-0120,1" -> -12.0 C; "360,1,N,0155,1" -> 360 deg 15.5 m/s
    check(at(table, "2020-01-01 02:00"), temperature=-3.5, dew_point=-12.0, wind_direction=360, wind_speed=15.5,
          visibility=8000, pressure=1014.9)
    ncei = report["ncei"]
    assert ncei["visibility"]["missing"] == 2 and ncei["temperature"]["missing"] == 2
    assert ncei["wind"]["speed"]["missing"] == 2 and ncei["pressure"]["missing"] == 2


def test_quality_codes(tmp_path):
    codes = ["0", "1", "2", "3", "4", "5", "6", "7", "9", "A", "M"]
    rows = [{"DATE": f"2020-01-01T{h:02d}:00:00", "TMP": f"+0250,{q}", "VIS": f"000800,{q},N,1",
             "WND": f"090,1,N,0050,{q}", "MA1": f"10200,{q},99999,9"} for h, q in enumerate(codes)]
    table, report = read(tmp_path, rows)
    kept = {q: not math.isnan(v) for q, v in zip(codes, table["temperature"])}
    assert kept == {"0": True, "1": True, "2": False, "3": False, "4": True, "5": True, "6": False, "7": False,
                    "9": True, "A": True, "M": True}
    for name, value in (("visibility", 800.0), ("wind_speed", 5.0), ("pressure", 1020.0)):
        assert [not math.isnan(v) for v in table[name]] == list(kept.values()), name
        assert set(table[name].dropna()) == {value}
    assert report["ncei"]["rejected_quality"] == {"visibility": 4, "temperature": 4, "dew_point": 0, "wind": 4,
                                                  "pressure": 4, "precipitation": 0}
    loose, loose_report = read(tmp_path, rows, reject_quality=())
    assert loose["temperature"].notna().all() and loose_report["ncei"]["rejected_quality"]["temperature"] == 0


def test_wind_types(tmp_path):
    table, report = read(tmp_path, [
        {"DATE": "2020-01-01T00:00:00", "WND": "999,9,C,0000,1"},     # calm
        {"DATE": "2020-01-01T01:00:00", "WND": "999,9,9,0000,1"},     # type missing, speed 0: calm (ISD note)
        {"DATE": "2020-01-01T02:00:00", "WND": "999,9,V,0031,1"},     # VRB06KT
        {"DATE": "2020-01-01T03:00:00", "WND": "250,1,V,0062,1"},     # 25012KT 200V300
        {"DATE": "2020-01-01T04:00:00", "WND": "999,9,N,0041,1"},     # direction missing
        {"DATE": "2020-01-01T05:00:00", "WND": "270,1,N,0103,1"},
    ])
    check(at(table, "2020-01-01 00:00"), wind_speed=0.0, wind_direction=None)
    check(at(table, "2020-01-01 01:00"), wind_speed=0.0, wind_direction=None)
    check(at(table, "2020-01-01 02:00"), wind_speed=3.1, wind_direction=None)
    check(at(table, "2020-01-01 03:00"), wind_speed=6.2, wind_direction=250)
    check(at(table, "2020-01-01 04:00"), wind_speed=4.1, wind_direction=None)
    check(at(table, "2020-01-01 05:00"), wind_speed=10.3, wind_direction=270)
    w = report["ncei"]["wind"]
    assert (w["calm"], w["variable_no_direction"], w["variable_with_direction"], w["direction_missing_not_calm"]) \
        == (2, 1, 1, 2)


def test_slp_then_ma1_altimeter(tmp_path):
    table, report = read(tmp_path, [
        {"DATE": "2020-01-01T00:00:00", "SLP": "10132,1", "MA1": "10150,1,09250,1"},   # SLP 1013.2
        {"DATE": "2020-01-01T01:00:00", "SLP": "99999,9", "MA1": "10150,1,09250,1"},   # QNH 1015.0, not 925.0
        {"DATE": "2020-01-01T02:00:00", "SLP": "", "MA1": "10087,5,99999,9"},          # QNH 1008.7
        {"DATE": "2020-01-01T03:00:00", "SLP": "10140,3", "MA1": "10160,1,99999,9"},   # SLP erroneous: QNH
        {"DATE": "2020-01-01T04:00:00", "SLP": "99999,9", "MA1": "99999,9,09250,1"},   # none
    ])
    assert list(table["pressure"])[:4] == pytest.approx([1013.2, 1015.0, 1008.7, 1016.0])
    assert math.isnan(table["pressure"].iloc[4])
    p = report["ncei"]["pressure"]
    assert (p["from_slp"], p["from_ma1_altimeter"], p["missing"]) == (1, 3, 1)
    assert p["source"] == "SLP, MA1 altimeter (QNH) where SLP is missing"
    no_ma1, r = read(tmp_path, [{"DATE": "2020-01-01T00:00:00", "SLP": "10132,1"}],
                     columns=tuple(c for c in COLUMNS if c != "MA1"))
    assert no_ma1["pressure"].iloc[0] == pytest.approx(1013.2) and r["ncei"]["pressure"]["source"] == "SLP"


def test_ten_km_and_cavok(tmp_path):
    table, report = read(tmp_path, [
        {"DATE": "2020-01-01T00:00:00", "VIS": "999999,9,9,9", "CIG": "99999,9,9,Y",
         "REM": "MET000METAR XXXX 010000Z 13004KT CAVOK 20/19 Q1015;"},                          # CAVOK: 10 km
        {"DATE": "2020-01-01T01:00:00", "VIS": "009900,1,N,1", "CIG": "99999,9,9,N",
         "REM": "MET000METAR XXXX 010100Z 13004KT CAVOK 20/19 Q1015;"},                          # text only
        {"DATE": "2020-01-01T02:00:00", "VIS": "009999,1,N,1"},                                   # METAR 9999
        {"DATE": "2020-01-01T03:00:00", "VIS": "011265,1,N,1",
         "REM": "MET000METAR XXXX 010300Z 13004KT 9999 FEW020 20/19 Q1015;"},                    # 9999 as 7 mi
        {"DATE": "2020-01-01T04:00:00", "VIS": "016093,1,N,1",
         "REM": "MET000METAR KXXX 010400Z 13004KT 10SM CLR 20/19 A3000;"},                       # US: 10 mi
        {"DATE": "2020-01-01T05:00:00", "VIS": "011265,1,N,1", "REM": ""},                        # no METAR text
        {"DATE": "2020-01-01T06:00:00", "VIS": "009000,1,N,1"},
    ])
    assert list(table["visibility"]) == [10000, 10000, 10000, 10000, 16093, 11265, 9000]
    v = report["ncei"]["visibility"]
    assert v["cavok"] == 2 and v["cavok_by"] == {"cig_cavok_code": 1, "rem_text": 2}
    assert v["ten_km"] == 2 and v["ten_km_vis_codes"] == {"009999": 1, "011265": 1}


def test_precipitation_aa_groups(tmp_path):
    columns = (*COLUMNS, "AA1", "AA2")
    table, report = read(tmp_path, [
        {"DATE": "2020-01-01T00:00:00", "AA1": "01,0005,9,1"},                    # 0.5 mm in 1 h
        {"DATE": "2020-01-01T01:00:00", "AA1": "06,0120,9,1", "AA2": "01,0000,2,1"},  # the 1-h group: 0 (trace)
        {"DATE": "2020-01-01T02:00:00", "AA1": "06,0120,9,1"},                    # 6-h amount only: NaN
        {"DATE": "2020-01-01T03:00:00", "AA1": "01,9999,9,9"},                    # missing
        {"DATE": "2020-01-01T04:00:00", "AA1": "01,0030,9,3"},                    # erroneous
    ], columns=columns)
    got = list(table["precipitation"])
    assert got[:2] == [0.5, 0.0] and all(math.isnan(x) for x in got[2:])
    p = report["ncei"]["precipitation"]
    assert p["hourly_amounts"] == 2 and p["other_periods_only"] == 1 and p["source"] == "AA1/AA2 1-hour amounts"


def test_report_types_station_names_and_filter(tmp_path):
    rows = [{"DATE": "2020-01-01T00:00:00"},
            {"DATE": "2020-01-01T01:00:00", "REPORT_TYPE": "FM-12", "VIS": "002000,1,N,1"},   # SYNOP: dropped
            {"DATE": "2020-01-01T00:00:00", "STATION": "88888888888", "CALL_SIGN": "99999"}]  # no call sign
    table, report = read(tmp_path, rows)
    assert sorted(zip(table["station"], table["time"].dt.hour)) == [("88888888888", 0), ("XXXX", 0)]
    assert report["ncei"]["dropped_report_types"] == {"FM-12": 1}
    assert set(read(tmp_path, rows, report_types=None)[0]["time"].dt.hour) == {0, 1}
    only, _ = read(tmp_path, rows, stations=("XXXX",))
    assert list(only["station"]) == ["XXXX"]
    with pytest.raises(ValueError, match=r"stations \['YYYY'\] not in .*isd.csv; available"):
        read(tmp_path, rows, stations=("YYYY",))
    with pytest.raises(ValueError, match="names every row, but the file holds stations"):
        read(tmp_path, rows, station="GRU")
    named, _ = read(tmp_path, rows[:2], station="GRU")
    assert set(named["station"]) == {"GRU"}


def test_same_contract_as_read_station_csv(tmp_path):
    table, report = read(tmp_path, [{"DATE": "2020-01-01T00:00:00"}, {"DATE": "2020-01-01T01:00:00"}])
    assert list(table.columns) == ["station", "time", *CANONICAL]
    assert str(table["time"].dt.tz) == "UTC" and table["station"].map(type).eq(str).all()
    assert all(table[c].dtype == np.float64 for c in CANONICAL)
    assert {"rows", "rows_bad_time", "conflicting_duplicates", "out_of_range"} <= set(report)
    assert set(report["out_of_range"]) == set(CANONICAL)
    hot, hot_report = read(tmp_path, [{"DATE": "2020-01-01T00:00:00", "TMP": "+0650,1"}])   # 65 C
    assert math.isnan(hot["temperature"].iloc[0]) and hot_report["out_of_range"]["temperature"] == 1
    empty, empty_report = read(tmp_path, [])                       # a header only: no rows, no error
    assert empty.empty and list(empty.columns) == list(table.columns) and empty_report["rows"] == 0


def test_errors_name_file_and_column(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"empty\.csv is empty"):
        read_ncei_global_hourly(empty)
    for col in ("VIS", "DATE"):
        with pytest.raises(ValueError, match=rf"column '{col}' not found in .*isd\.csv: not an NCEI Global Hourly"):
            read(tmp_path, [{"DATE": "2020-01-01T00:00:00"}], columns=tuple(c for c in COLUMNS if c != col))
    # a CSV with the right names but no ISD groups (plain numbers), e.g. another archive's layout
    with pytest.raises(ValueError, match=r"column 'VIS' of .*isd\.csv: 2 of 2 values are not ISD groups"):
        read(tmp_path, [{"DATE": "2020-01-01T00:00:00", "VIS": "10"}, {"DATE": "2020-01-01T01:00:00", "VIS": "9.5"}])
    with pytest.raises(ValueError, match=r"column 'TMP' of .*isd\.csv: 1 of 1 values are not ISD groups"):
        read(tmp_path, [{"DATE": "2020-01-01T00:00:00", "TMP": "20.5"}])
    with pytest.raises(ValueError, match=r"column 'DATE' of .*isd\.csv: no time could be parsed"):
        read(tmp_path, [{"DATE": "01/01/2020 00:00"}])
    for name in ("isd.gz", "binary.csv"):
        binary = tmp_path / name
        binary.write_bytes(bytes(range(256)) * 4)
        with pytest.raises(ValueError, match=rf"{re.escape(name)}.* not an NCEI Global Hourly"):
            read_ncei_global_hourly(binary)
    with pytest.raises(FileNotFoundError):
        read_ncei_global_hourly(tmp_path / "absent.csv")


def test_sbgr_through_the_station_pipeline_as_a_config_names_it(shared_datasets):
    """``data.format="ncei_global_hourly"`` (docs/visibility.md's SBGR line): the file as NOAA
    publishes it -> chronological windows, the 8 factors less precipitation (none reported)."""
    _, ds, _ = shared_datasets(SBGR)
    assert ds.contract.csv.format == "ncei_global_hourly"
    assert ds.contract.csv.to_dict()["format"] == "ncei_global_hourly"
    assert ds.contract.features == ("wind_speed", "wind_dir_sin", "wind_dir_cos", "pressure", "dew_point",
                                    "temperature", "visibility")
    assert ds.report["absent"] == ["precipitation"]
    n = {name: len(getattr(ds, name).y) for name in ("train", "val", "test")}
    assert n["train"] > 50_000 and n["val"] > 10_000 and n["test"] > 10_000, n
    assert ds.train.times.max() < ds.val.times.min() < ds.test.times.min()  # chronological
    assert float(np.max(ds.train.y)) <= 10_000.0


# --------------------------------------------------------------------------- variables not reported

def _hours(n, start="2020-01-01", **fields):
    """``n`` hourly METARs (temperature and visibility varying) updated with ``fields``."""
    times = pd.date_range(start, periods=n, freq="1h")
    return [{"DATE": t.strftime("%Y-%m-%dT%H:%M:%S"), "TMP": f"+0{150 + i % 50:03d},1",
             "VIS": f"{(500 + 97 * i) % 10000:06d},1,N,1", **fields} for i, t in enumerate(times)]


def test_a_variable_without_values_is_absent(tmp_path):
    """No AA column, or AA groups without a 1-hour amount: precipitation is absent; one
    hourly amount makes it reported; per station (a station without any is enough)."""
    _, report = read(tmp_path, _hours(3))
    assert report["absent"] == ["precipitation"]
    aa = (*COLUMNS, "AA1")
    _, report = read(tmp_path, _hours(3, AA1="06,0120,9,1"), columns=aa)      # 6-h amounts only
    assert report["absent"] == ["precipitation"]
    rows = _hours(3, AA1="06,0120,9,1")
    rows[1]["AA1"] = "01,0005,9,1"
    _, report = read(tmp_path, rows, columns=aa)
    assert report["absent"] == []
    other = [{**r, "STATION": "88888888888", "CALL_SIGN": "YYYY", "AA1": "", "TMP": "+9999,9"} for r in rows]
    _, report = read(tmp_path, rows + other, columns=aa)
    assert report["absent"] == ["temperature", "precipitation"]


def test_feature_sets_drop_what_the_ncei_file_does_not_report(tmp_path):
    """As ``data.columns.precipitation=''`` does for a CSV: a set name drops the features
    (warned once, in the report), a list holding one is an error naming the file; a restored
    (fitted) contract keeps its features and says nothing."""
    path = write_isd(tmp_path / "isd.csv", _hours(400))
    kw = dict(format="ncei_global_hourly", station_column="", visibility_cap_m=10000.0)
    with pytest.warns(UserWarning, match=r"data.features='fog16': dropped \['precipitation'\], which need "
                                         r"\['precipitation'\] \(.*isd.csv does not report them\)"):
        spec = data_spec(str(path), features="fog16", **kw)
        ds = build_station_dataset(spec)
    assert "precipitation" not in ds.contract.features and len(ds.contract.features) == 15
    assert ds.report["features_dropped"] == {"precipitation": ["precipitation"]}
    assert len(ds.train) > 0 and np.isfinite(ds.train.x).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = build_station_dataset(dataclasses.replace(spec, contract=ds.contract))
    assert again.contract.features == ds.contract.features
    np.testing.assert_array_equal(again.test.x, ds.test.x)
    # predict reads the file with the artifact's contract (the sidecar's JSON): NCEI, 15 features
    served = StationContract.from_dict(json.loads(json.dumps(ds.contract.to_dict())))
    inputs = station_inputs(served, path)
    assert inputs.x.shape == (1, 12, 15) and inputs.names == ["XXXX"]
    last = ds.contract.feature_matrices(ds.contract.read_stations(str(path)))[0][0][-12:]
    np.testing.assert_array_equal(inputs.x[0], last)
    with pytest.raises(ValueError, match=r"feature 'precipitation' of data.features needs 'precipitation', which "
                                         r".*isd.csv does not report \(no value at station\(s\) \['XXXX'\]\): "
                                         r"remove \['precipitation'\] from data.features$"):
        load_station_dataset(str(path), features=("visibility", "precipitation"), **kw)
    # pooled files: absent in one of them is absent in the pool
    aa = write_isd(tmp_path / "aa.csv", [{**r, "STATION": "88888888888", "CALL_SIGN": "YYYY", "AA1": "01,0000,9,1"}
                                          for r in _hours(400)], columns=(*COLUMNS, "AA1"))
    with pytest.warns(UserWarning, match=r"dropped \['precipitation'\]"):
        pooled = load_station_dataset([str(path), str(aa)], **kw)
    assert pooled.report["absent"] == ["precipitation"] and sorted(pooled.contract.stations) == ["XXXX", "YYYY"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        alone = load_station_dataset(str(aa), **kw)     # it reports precipitation: kept
    assert "precipitation" in alone.contract.features and alone.report["absent"] == []
