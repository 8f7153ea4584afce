"""Neighbour-station features: an independent pandas reference, no look-ahead, windows kept."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nowcast_jax.visibility import features as sf
from nowcast_jax.visibility.grid import StationGrid
from nowcast_jax.visibility.neighbours import NEIGHBOUR_FEATURES, neighbour_features
from nowcast_jax.visibility.windows import SPLITS

from tests.visibility.test_dataset import _frame, _load, _write

HOUR = np.timedelta64(3600, "s")


def _grid(name, start, n, seed, step=HOUR):
    """A station grid of ``n`` steps from ``start`` with random values, 20 % of them missing."""
    rng = np.random.default_rng(seed)
    values = {"visibility": np.exp(rng.uniform(3, 9.7, n)), "temperature": rng.normal(10, 5, n),
              "dew_point": rng.normal(5, 5, n)}
    for v in values.values():
        v[rng.random(n) < 0.2] = np.nan
    times = np.datetime64(start, "s") + np.arange(n) * step
    return StationGrid(name, times, values, np.ones(n, bool))


def _levels(name, times, v):
    return pd.DataFrame({"station": name, "time": times,
                         "neighbour_log_visibility_min": np.log(v["visibility"] + 100.0),
                         "neighbour_dewpoint_depression_min": v["temperature"] - v["dew_point"]})


def _reference(grids, observed) -> dict:
    """Per station both features, from wide pandas tables keyed by time: the others' minimum
    of their ``observed`` values, else the station's own (grid) value."""
    seen = pd.concat([_levels(g.name, g.times, v) for g, v in zip(grids, observed)])
    mine = pd.concat([_levels(g.name, g.times, g.values) for g in grids])
    out = {}
    for g in grids:
        cols = {}
        for name in NEIGHBOUR_FEATURES:
            wide = seen.pivot(index="time", columns="station", values=name)
            own = mine.pivot(index="time", columns="station", values=name)[g.name].reindex(g.times)
            others = wide.drop(columns=g.name).min(axis=1, skipna=True).reindex(g.times)
            cols[name] = others.fillna(own).to_numpy()
        out[g.name] = cols
    return out


def test_neighbour_features_match_a_pandas_reference():
    # three stations with overlapping but different time ranges
    grids = [_grid("A", "2020-01-01T00", 50, 0), _grid("B", "2020-01-01T10", 60, 1),
             _grid("C", "2019-12-31T20", 30, 2)]
    # "observed": the grids' values with more missing (as if the rest were interpolated)
    observed = [{k: np.array(v, np.float64) for k, v in g.values.items()} for g in grids]
    for k, v in enumerate(observed):
        for arr in v.values():
            arr[np.random.default_rng(10 + k).random(len(arr)) < 0.3] = np.nan
    got, rep = neighbour_features(grids, NEIGHBOUR_FEATURES, observed=observed)
    want = _reference(grids, observed)
    for g, feats in zip(grids, got):
        assert set(feats) == set(NEIGHBOUR_FEATURES)
        for name in NEIGHBOUR_FEATURES:
            np.testing.assert_allclose(feats[name], want[g.name][name], err_msg=f"{g.name} {name}")
    # fallback (own value) counted where no other station observed one
    a_vis = got[0]["neighbour_log_visibility_min"]
    own = np.log(grids[0].values["visibility"] + 100.0)
    fallback = rep["fallback_steps"]["A"]["neighbour_log_visibility_min"]
    assert np.allclose(neighbour_features(grids, NEIGHBOUR_FEATURES)[0][0]["neighbour_log_visibility_min"],
                       _reference(grids, [g.values for g in grids])["A"]["neighbour_log_visibility_min"],
                       equal_nan=True)   # observed=None: the grids' own values
    others_seen = np.zeros(len(grids[0].times), bool)
    for g, v in zip(grids[1:], observed[1:]):
        vis = pd.Series(v["visibility"], index=g.times).reindex(grids[0].times)
        others_seen |= vis.notna().to_numpy()
    assert fallback == int((~others_seen & np.isfinite(own)).sum()) > 0   # own value stood in
    np.testing.assert_array_equal(a_vis[~others_seen], own[~others_seen])
    # only the requested features; none requested -> nothing computed
    only, _ = neighbour_features(grids, ["neighbour_log_visibility_min", "visibility"])
    assert set(only[1]) == {"neighbour_log_visibility_min"}
    assert neighbour_features(grids[:1], sf.PAPER_FEATURES_8)[0] == [{}]


def test_neighbour_features_never_look_ahead():
    """Changing any station at step k or later leaves every station's features before k alone."""
    grids = [_grid("A", "2020-01-01T00", 40, 3), _grid("B", "2020-01-01T00", 40, 4)]
    before, _ = neighbour_features(grids, NEIGHBOUR_FEATURES)
    for k in range(0, 40, 7):
        later = [StationGrid(g.name, g.times, {n: v.copy() for n, v in g.values.items()}, g.observed)
                 for g in grids]
        for g in later:
            for v in g.values.values():
                v[k:] = np.where(np.isnan(v[k:]), 1.0, np.nan)
        after, _ = neighbour_features(later, NEIGHBOUR_FEATURES)
        for b, a in zip(before, after):
            for name in NEIGHBOUR_FEATURES:
                np.testing.assert_array_equal(b[name][:k], a[name][:k])


def test_neighbour_features_need_two_stations_on_one_step():
    with pytest.raises(ValueError, match="1 station"):
        neighbour_features([_grid("A", "2020-01-01", 10, 0)], NEIGHBOUR_FEATURES)
    with pytest.raises(ValueError, match="one grid step"):
        neighbour_features([_grid("A", "2020-01-01", 10, 0),
                            _grid("B", "2020-01-01", 10, 1, step=np.timedelta64(1800, "s"))], NEIGHBOUR_FEATURES)
    grid = _grid("A", "2020-01-01", 10, 0).values
    grid.update(wind_speed=np.ones(10), wind_direction=np.zeros(10), pressure=np.ones(10),
                precipitation=np.zeros(10))
    with pytest.raises(ValueError, match="need the other stations"):
        sf.feature_matrix(grid, sf.FOG_FEATURES_18, times=np.datetime64("2020-01-01", "s") + np.arange(10) * HOUR)


def test_fog18_keeps_the_windows_of_fog16(tmp_path):
    """Two stations over different periods, a missing neighbour value inside a window: the
    windows and the first 16 features are those of fog16; the last two are the other
    station's values where it has one, the own value where not."""
    a, b = _frame(200, station="AAA"), _frame(150, station="BBB", start="2020-01-03 00:00")
    b["vis_km"] = np.where(np.arange(150) % 11 < 2, 0.2, 10.0)
    b["td_f"] = 30.0   # BBB's dew-point depression (10-ish degC + 10 F) differs from AAA's
    b = b.astype({"vis_km": object, "td_f": object})
    b.loc[[20, 21], "vis_km"] = "M"
    b.loc[[30, 31], "td_f"] = "M"   # interpolated for BBB's own features, never shown to AAA
    path = _write(tmp_path, pd.concat([a, b]))
    f16, f18 = _load(path, features="fog16"), _load(path, features="fog18")
    assert f18.contract.features == sf.FOG_FEATURES_18 and f18.report["neighbours"]["stations"] == ["AAA", "BBB"]
    for name in SPLITS:
        w16, w18 = f16.split(name), f18.split(name)
        np.testing.assert_array_equal(w16.times, w18.times)
        np.testing.assert_array_equal(w16.station, w18.station)
        np.testing.assert_allclose(w16.x, w18.x[..., :16])
    raw = f18.contract.scaler.inverse_transform(np.concatenate([f18.split(n).x for n in SPLITS]))
    station = np.concatenate([f18.split(n).station for n in SPLITS])
    times = np.concatenate([f18.split(n).times for n in SPLITS])
    near = raw[..., sf.FOG_FEATURES_18.index("neighbour_log_visibility_min")]   # [N, T]
    own = raw[..., sf.FOG_FEATURES_18.index("log_visibility")]
    # AAA's windows before BBB starts: no neighbour value, the own one
    early = (station == "AAA") & (times < np.datetime64("2020-01-03T00:00"))
    assert early.any()
    np.testing.assert_allclose(near[early][:, -1], own[early][:, -1], rtol=1e-5)
    # AAA's later windows see BBB's fog (0.2 km) in their last step when BBB has it
    late = (station == "AAA") & (times >= np.datetime64("2020-01-04T00:00"))
    assert np.isclose(near[late], np.log(200.0 + 100.0), rtol=1e-4).any()
    # AAA at BBB's interpolated dew points (rows 30, 31 = 2020-01-04 06:00, 07:00): own value
    dd_near = raw[..., sf.FOG_FEATURES_18.index("neighbour_dewpoint_depression_min")][:, -1]
    dd_own = raw[..., sf.FOG_FEATURES_18.index("dewpoint_depression")][:, -1]
    at_gap = (station == "AAA") & np.isin(times, np.array(["2020-01-04T06:00", "2020-01-04T07:00"], "datetime64[s]"))
    around = (station == "AAA") & np.isin(times, np.array(["2020-01-04T05:00", "2020-01-04T08:00"], "datetime64[s]"))
    assert at_gap.sum() == 2 and around.sum() == 2
    np.testing.assert_allclose(dd_near[at_gap], dd_own[at_gap], rtol=1e-4)
    assert (np.abs(dd_near[around] - dd_own[around]) > 1.0).all()   # BBB's observed value
    counts = f18.report["neighbours"]["fallback_steps"]
    assert counts["AAA"]["neighbour_log_visibility_min"] >= 48 + 2   # before BBB, and its 2 missing
    assert counts["AAA"]["neighbour_dewpoint_depression_min"] >= 48 + 2   # before BBB, 2 interpolated
