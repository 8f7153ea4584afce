"""Serving stations: the exported forecaster, and station CSVs read by the fitted contract."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pandas as pd
import pytest

pytest.importorskip("flatbuffers", reason="jax.export serialization needs the 'flatbuffers' package")

from nowcast_jax import artifact  # noqa: E402
from nowcast_jax.artifact import ServeError  # noqa: E402
from nowcast_jax.engine import export  # noqa: E402
from nowcast_jax.visibility import serve as visibility_serve  # noqa: E402
from nowcast_jax.visibility import task as vis
from nowcast_jax.visibility.forecast import forecast_windows  # noqa: E402
from nowcast_jax.visibility.preprocess import StationContract  # noqa: E402
from nowcast_jax.visibility.readers import MILE_M, CsvContract, nycflights13_defaults  # noqa: E402
from tests.export_fns import tiny_station_fn  # noqa: E402
from tests.visibility.conftest import tiny_config  # noqa: E402

STATION_FEATURES = ["temperature", "dew_point", "pressure", "wind_speed", "visibility"]


def _cli(*args, capsys):
    from nowcast_jax import cli

    code = cli.main([str(a) for a in args])
    return code, capsys.readouterr().err


def _nyc_csv_contract(**changes) -> CsvContract:
    nyc = {k: v for k, v in nycflights13_defaults().items() if k not in ("path", "visibility_cap_m")}
    return CsvContract(**{**nyc, **changes})


def _contract(**changes) -> StationContract:
    """A contract like a trained one's (nycflights13 CSV contract, 5 features, 6 h history)."""
    base = dict(csv=_nyc_csv_contract(), features=STATION_FEATURES, history_steps=6, horizons_hours=(1, 2, 3),
                interpolate=("pressure",), max_interp_steps=3)
    return StationContract(**{**base, **changes})


def _station_fn():
    """Tiny station LSTM with a min-max scaler baked in: raw features -> visibility (miles)."""
    return tiny_station_fn()


@pytest.fixture(scope="module")
def station_artifact(tmp_path_factory):
    fn = _station_fn()
    side = {"kind": "station", "contract": _contract(interpolate=(), max_interp_steps=0).to_dict(),
            "outputs": [{"name": "visibility", "units": "m"}]}
    path = export.export_forecaster(fn, export.batch_spec((6, 5)), side,
                                    tmp_path_factory.mktemp("station") / "vis.jaxexport")
    return path, fn


def _station_csv(path, hours):
    rng = np.random.default_rng(0)
    rows = []
    for origin in ("EWR", "JFK"):
        for h in range(hours):
            rows.append({"origin": origin, "time_hour": f"2013-01-01T{h:02d}:00:00Z", "temp": 30 + h, "dewp": 20.0,
                         "wind_speed": 5 + rng.random(), "wind_dir": 180, "pressure": 1010 + h,
                         "precip": 0.0, "visib": 10.0 - 0.5 * h})
    pd.DataFrame(rows).to_csv(path, index=False)


def test_predict_station_csv_from_artifact(station_artifact, tmp_path, capsys):
    path, fn = station_artifact
    _station_csv(tmp_path / "obs.csv", 10)
    code, err = _cli("predict", "--artifact", path, "--input", tmp_path / "obs.csv", "--out", tmp_path / "f.csv",
                     capsys=capsys)
    assert code == 0, err
    table = pd.read_csv(tmp_path / "f.csv")
    assert list(table.columns) == ["station", "issue_time", "horizon_hours", "valid_time", "visibility_m"]
    assert len(table) == 6 and table["station"].tolist() == ["EWR"] * 3 + ["JFK"] * 3
    assert table["issue_time"][0] == "2013-01-01T09:00:00Z" and table["valid_time"][2] == "2013-01-01T12:00:00Z"
    _, side = artifact.load_artifact(path)
    inputs = visibility_serve.station_inputs(visibility_serve.sidecar_station_contract(side), tmp_path / "obs.csv")
    x = inputs.x
    assert x.shape == (2, 6, 5) and inputs.names == ["EWR", "JFK"]
    np.testing.assert_allclose(x[0, -1], [(39 - 32) * 5 / 9, (20 - 32) * 5 / 9, 1019, x[0, -1, 3],
                                          (10 - 4.5) * 1609.344], rtol=1e-5)  # canonical units
    np.testing.assert_allclose(table["visibility_m"].to_numpy().reshape(2, 3),
                               np.asarray(fn(x.astype(np.float32))), rtol=1e-5)
    code, err = _cli("predict", "--artifact", path, "--input", tmp_path / "obs.csv", "--out", tmp_path / "j.csv",
                     "--stations", "JFK", capsys=capsys)   # one station of the CSV
    assert code == 0, err
    jfk = pd.read_csv(tmp_path / "j.csv")
    assert jfk["station"].tolist() == ["JFK"] * 3
    np.testing.assert_allclose(jfk["visibility_m"], table["visibility_m"][3:], rtol=1e-6)
    code, err = _cli("predict", "--artifact", path, "--input", tmp_path / "obs.csv", "--out", tmp_path / "j.csv",
                     "--stations", "LGA", capsys=capsys)
    assert code == 2 and "no rows for station(s) ['LGA']" in err, err


def _legacy_sidecar() -> dict:
    """A station sidecar as the export wrote it before the contract existed (flat keys, the CSV
    contract with its ``path`` and cap, ``normalisation`` holding the scaler and transform)."""
    scaler = {"kind": "minmax", "features": STATION_FEATURES, "min": list(np.arange(5.0)),
              "max": list(np.arange(5.0) * 3 + 10)}
    return {"kind": "station", "features": STATION_FEATURES, "history": 6, "step": "1h",
            "horizons_hours": [1, 2, 3], "time_step_minutes": 60.0, "csv": nycflights13_defaults(),
            "visibility_cap_m": 10 * MILE_M, "interpolate": [], "max_interp_steps": 0, "calm_ms": 0.0,
            "variable_wind": "missing", "units": "m", "outputs": [{"name": "visibility", "units": "m"}],
            "normalisation": {"scaler": scaler, "target_transform": {"kind": "none", "offset": 100.0, "lo": 0.0,
                                                                       "hi": 16093.44}}}


def test_predict_station_serves_legacy_sidecars(tmp_path, capsys):
    """An artifact exported before the sidecar's ``contract`` key existed still serves: the CSV
    is read by its flat keys (nycflights13 units, the cap), and the forecasts are the
    forecaster's on the canonical inputs computed here from the CSV by hand."""
    fn = _station_fn()
    path = export.export_forecaster(fn, export.batch_spec((6, 5)), _legacy_sidecar(), tmp_path / "old.jaxexport")
    _station_csv(tmp_path / "obs.csv", 10)
    code, err = _cli("predict", "--artifact", path, "--input", tmp_path / "obs.csv", "--out", tmp_path / "f.csv",
                     capsys=capsys)
    assert code == 0, err
    table = pd.read_csv(tmp_path / "f.csv")
    assert list(table.columns) == ["station", "issue_time", "horizon_hours", "valid_time", "visibility_m"]
    assert table["station"].tolist() == ["EWR"] * 3 + ["JFK"] * 3 and table["horizon_hours"].tolist() == [1, 2, 3] * 2
    assert table["issue_time"][0] == "2013-01-01T09:00:00Z" and table["valid_time"][2] == "2013-01-01T12:00:00Z"
    obs = pd.read_csv(tmp_path / "obs.csv")
    x = np.stack([np.stack([(g["temp"] - 32) * 5 / 9, (g["dewp"] - 32) * 5 / 9, g["pressure"],
                            g["wind_speed"] * 0.44704, np.minimum(g["visib"], 10.0) * MILE_M], axis=-1)[-6:]
                  for _, g in obs.groupby("origin")])
    np.testing.assert_allclose(table["visibility_m"].to_numpy().reshape(2, 3), np.asarray(fn(x.astype(np.float32))),
                               rtol=1e-5)
    contract = visibility_serve.sidecar_station_contract(_legacy_sidecar())
    assert contract.visibility_cap_m == pytest.approx(10 * MILE_M) and contract.history_steps == 6
    assert list(contract.scaler.max) == list(np.arange(5.0) * 3 + 10) and contract.target.hi == 16093.44


def test_predict_station_refuses_short_history_and_bad_csv(station_artifact, tmp_path, capsys):
    _station_csv(tmp_path / "short.csv", 4)
    code, err = _cli("predict", "--artifact", station_artifact[0], "--input", tmp_path / "short.csv",
                     "--out", tmp_path / "f.csv", capsys=capsys)
    assert code == 2 and "too little history" in err and "EWR (4 steps" in err, err
    (tmp_path / "bad.csv").write_text("origin,time_hour,temp\nEWR,2013-01-01T00:00:00Z,3\n")
    code, err = _cli("predict", "--artifact", station_artifact[0], "--input", tmp_path / "bad.csv",
                     "--out", tmp_path / "f.csv", capsys=capsys)
    assert code == 2 and "column 'visib' not found" in err, err


def test_predict_station_clips_at_the_cap_and_applies_valid_ranges(tmp_path):
    """Review A: the training steps the contract carries: visibility above the training cap is
    the cap (not a value beyond the scaler's range), and custom valid ranges turn values into
    missing ones (here interpolated, as in training)."""
    _station_csv(tmp_path / "obs.csv", 10)
    table = pd.read_csv(tmp_path / "obs.csv")
    table.loc[9, "visib"] = 12.0  # EWR, last hour: above the 10-mile cap
    table.loc[16, "pressure"] = 1050.0  # JFK 06:00: plausible by default, outside the trained range
    table.to_csv(tmp_path / "obs.csv", index=False)
    contract = _contract(visibility_cap_m=10 * MILE_M, csv=_nyc_csv_contract(valid_ranges={"pressure": [1000.0, 1030.0]}))
    inputs = visibility_serve.station_inputs(contract, tmp_path / "obs.csv")
    x = inputs.x
    assert inputs.names == ["EWR", "JFK"]
    vis, pressure = STATION_FEATURES.index("visibility"), STATION_FEATURES.index("pressure")
    np.testing.assert_allclose(x[0, -1, vis], 10 * MILE_M, rtol=1e-6)  # clipped, not 12 miles
    np.testing.assert_allclose(x[1, :, pressure], [1014, 1015, 1016, 1017, 1018, 1019])  # 1050 -> NaN -> interp
    # without the valid ranges and cap, the CSV's values come through (the old bug)
    x = visibility_serve.station_inputs(_contract(), tmp_path / "obs.csv").x
    assert x[1, 2, pressure] == 1050.0 and x[0, -1, vis] > 10 * MILE_M
    # older sidecars (flat keys, no "contract"): their cap (even the CSV contract's) is used
    legacy = {"kind": "station", "features": STATION_FEATURES, "history": 6, "step": "1h",
              "horizons_hours": [1, 2, 3], "csv": nycflights13_defaults(), "interpolate": ["pressure"],
              "max_interp_steps": 3}
    contract = visibility_serve.sidecar_station_contract(legacy)
    assert contract.visibility_cap_m == pytest.approx(10 * MILE_M) and contract.interpolate == ("pressure",)
    x = visibility_serve.station_inputs(contract, tmp_path / "obs.csv").x
    np.testing.assert_allclose(x[0, -1, vis], 10 * MILE_M, rtol=1e-6)
    with pytest.raises(ServeError, match="lacks 'csv'"):
        visibility_serve.sidecar_station_contract({"kind": "station", "features": STATION_FEATURES, "history": 6, "step": "1h"})


def test_predict_station_refuses_gaps_at_the_end(tmp_path):
    """Missing values in the last steps cannot be interpolated (no later observation), and steps
    without any observation are never in a training window: refused, naming station and feature."""
    _station_csv(tmp_path / "obs.csv", 10)
    table = pd.read_csv(tmp_path / "obs.csv").astype({"pressure": object})
    table.loc[19, "pressure"] = "NA"  # JFK, last hour
    table = table.drop(index=7)  # EWR 07:00: no observation at all
    table.to_csv(tmp_path / "obs.csv", index=False)
    with pytest.raises(ServeError) as err:
        visibility_serve.station_inputs(_contract(), tmp_path / "obs.csv")
    msg = str(err.value)
    assert "too little history" in msg and "EWR (6 steps, no observation in 1 step(s)" in msg, msg
    assert "JFK (6 steps, missing ['pressure'])" in msg, msg


# ------------------------------------------------------------------------------ a trained task
def test_exported_forecaster_matches_task_forecast(task, trained, tmp_path):
    """The artifact takes raw canonical features and gives metres, like forecast_windows on
    scaled x; its sidecar carries the fitted contract."""
    params, _, _ = trained
    path = export.export_task(visibility_serve.export_spec, task, params, tmp_path / "vis.jaxexport",
                              task_name="visibility")
    forecast, sidecar = artifact.load_artifact(path)
    assert sidecar["kind"] == "station" and sidecar["contract"]["features"] == list(task.features)
    assert visibility_serve.sidecar_station_contract(sidecar).same_as(task.contract)
    windows = task.split("test")
    raw = task.contract.scaler.inverse_transform(windows.x[:7]).astype(np.float32)
    got = np.asarray(forecast(raw))
    want = forecast_windows(task.apply_jit, task.contract, params, windows.x[:7])["value"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=0.5)  # metres


def _csv_cuts(task, contract, weather_csv, tmp_path, hours, every=12):
    """Cut JFK's rows of the CSV at about ``every`` test window ends, keeping the last
    ``hours`` hours, and read each with the serving path: yields ``(i, x or ServeError,
    raised)`` where ``raised`` says the cut's last visibility was raised above the cap
    (training clipped it there, so skipping the clip would show)."""
    raw = pd.read_csv(weather_csv, dtype=str, keep_default_na=False)
    raw = raw[raw["origin"] == "JFK"].reset_index(drop=True)
    times = pd.to_datetime(raw["time_hour"]).dt.tz_convert("UTC").dt.tz_localize(None)
    w = task.split("test")
    last_vis = task.contract.scaler.inverse_transform(w.x)[:, -1, list(task.features).index("visibility")]
    for i in range(0, len(w), max(1, len(w) // every)):
        end = pd.Timestamp(w.times[i])
        part = raw[((times <= end) & (times > end - pd.Timedelta(hours=hours))).to_numpy()].copy()
        raised = bool(np.isclose(last_vis[i], task.contract.visibility_cap_m))
        if raised:
            part.iloc[-1, part.columns.get_loc("visib")] = "15"  # above the 10-mile cap
        part.to_csv(tmp_path / "cut.csv", index=False)
        try:
            inputs = visibility_serve.station_inputs(contract, tmp_path / "cut.csv")
        except ServeError as err:
            yield i, err, raised
            continue
        assert inputs.names == ["JFK"] and inputs.issue_times[0] == w.times[i]
        yield i, inputs.x[0], raised


def _assert_cuts_match(task, contract, weather_csv, tmp_path, hours):
    """Every readable cut gives its training window's raw inputs; returns (checked, raised)."""
    phys = task.contract.scaler.inverse_transform(task.split("test").x)
    checked = raised = 0
    for i, got, up in _csv_cuts(task, contract, weather_csv, tmp_path, hours):
        if isinstance(got, Exception):  # an input gap at the end: only the past can fill it
            assert "too little history" in str(got) and "JFK" in str(got), got
            continue
        np.testing.assert_allclose(got, phys[i], rtol=1e-5, atol=0.01)
        checked, raised = checked + 1, raised + up
    return checked, raised


def test_station_csv_inputs_match_training_windows(task, trained, weather_csv, tmp_path):
    """Review A: a CSV cut at a test window's end, read with the exported sidecar's contract,
    gives that window's inputs: the same reading, valid ranges, visibility cap, grid,
    interpolation and features as training."""
    params, _, _ = trained
    _, _, side = visibility_serve.export_spec(task, params)
    c = side["contract"]
    assert c["visibility_cap_m"] == task.contract.visibility_cap_m
    assert c["csv"]["valid_ranges"] == {k: list(v) for k, v in task.config.data.valid_ranges.items()}
    assert c["csv"]["stations"] == ["JFK"] and c["max_interp_steps"] == 6
    contract = visibility_serve.sidecar_station_contract(side)
    checked, raised = _assert_cuts_match(task, contract, weather_csv, tmp_path, hours=48)
    assert checked >= 6 and raised >= 1, (checked, raised)


def test_fog16_csv_inputs_need_the_look_back(fog_members, weather_csv, tmp_path):
    """fog16's 1 h / 3 h changes look before the window: serving reads them from a CSV that
    reaches back T + 3 h + max_interp_steps, exactly as training computed them; a CSV of the
    window alone is refused (it used to give 0, "no change", at the first steps)."""
    _, (_, b) = fog_members
    _, _, side = visibility_serve.export_spec(b.task, b.params)
    contract = visibility_serve.sidecar_station_contract(side)
    need = contract.steps_needed
    assert contract.features == b.task.features and need == 12 + 3 + 6
    assert dataclasses.replace(contract, features=contract.features[:8], scaler=None).steps_needed == 12
    checked, raised = _assert_cuts_match(b.task, contract, weather_csv, tmp_path, hours=need)
    assert checked >= 6 and raised >= 1, (checked, raised)
    tend = [b.task.features.index(f) for f in ("log_visibility_tend1h", "log_visibility_tend3h")]
    assert np.abs(b.task.contract.scaler.inverse_transform(b.task.split("test").x)[:, :3, tend]).max() > 0.1
    for _, got, _ in _csv_cuts(b.task, contract, weather_csv, tmp_path, hours=12, every=4):
        assert isinstance(got, ServeError) and f"{need} needed" in str(got), got


def test_fog18_csv_inputs_compare_the_trained_stations(weather_csv, tmp_path):
    """fog18's neighbour features: serving a CSV of both trained stations cut at a test window's
    end gives that window's inputs (the other station's observed values, as in training); a CSV
    without one of the trained stations is refused, naming it."""
    task = vis.make_task(tiny_config("data.stations=('JFK', 'LGA')", "data.features=fog18"))
    _, _, side = visibility_serve.export_spec(task, task.init_params(jax.random.key(0)))
    contract = visibility_serve.sidecar_station_contract(side)
    assert contract.neighbour_stations == ("JFK", "LGA") and contract.features[-2:] == (
        "neighbour_log_visibility_min", "neighbour_dewpoint_depression_min")
    need = contract.steps_needed
    raw = pd.read_csv(weather_csv, dtype=str, keep_default_na=False)
    raw = raw[raw["origin"].isin(["JFK", "LGA"])].reset_index(drop=True)
    times = pd.to_datetime(raw["time_hour"]).dt.tz_convert("UTC").dt.tz_localize(None)
    splits = [task.split(name) for name in ("train", "val", "test")]
    w_times, w_station = (np.concatenate([getattr(w, k) for w in splits]) for k in ("times", "station"))
    phys = task.contract.scaler.inverse_transform(np.concatenate([w.x for w in splits]))
    near, own = (list(task.features).index(f) for f in ("neighbour_log_visibility_min", "log_visibility"))
    # windows during which the other station missed an hour: training interpolated its dew
    # point there for its own use, but never showed it as a neighbour value
    rows = set(zip(raw["origin"], times.to_numpy().astype("datetime64[s]")))
    other = {"JFK": "LGA", "LGA": "JFK"}
    hours = np.arange(12) * np.timedelta64(3600, "s")
    gappy = [i for i in range(len(w_times)) if any((other[str(w_station[i])], w_times[i] - h) not in rows for h in hours)]
    assert len(gappy) >= 3
    checked = differs = gaps = 0
    for i in sorted(set(range(0, len(w_times), max(1, len(w_times) // 16))) | set(gappy[:: max(1, len(gappy) // 8)])):
        end = pd.Timestamp(w_times[i])
        part = raw[((times <= end) & (times > end - pd.Timedelta(hours=need))).to_numpy()]
        part.to_csv(tmp_path / "cut.csv", index=False)
        station = str(w_station[i])
        try:   # the window's station only: the other's latest steps may be incomplete
            inputs = visibility_serve.station_inputs(contract, tmp_path / "cut.csv", stations=[station])
        except ServeError as err:   # an input gap at the end of this station
            assert "too little history" in str(err), err
            continue
        assert inputs.names == [station] and inputs.issue_times[0] == w_times[i]
        np.testing.assert_allclose(inputs.x[0], phys[i], rtol=1e-5, atol=0.01)
        checked, gaps = checked + 1, gaps + (i in gappy)
        differs += int(np.abs(inputs.x[0][:, near] - inputs.x[0][:, own]).max() > 0.01)
    assert checked >= 6 and differs >= 1 and gaps >= 2, (checked, differs, gaps)
    part[part["origin"] == "JFK"].to_csv(tmp_path / "jfk.csv", index=False)
    with pytest.raises(ServeError, match="LGA"):   # the CSV contract lists both
        visibility_serve.station_inputs(contract, tmp_path / "jfk.csv")
    any_station = dataclasses.replace(contract, csv=dataclasses.replace(contract.csv, stations=()))
    with pytest.raises(ServeError, match=r"compare stations \['JFK', 'LGA'\].*holds \['JFK'\]"):
        visibility_serve.station_inputs(any_station, tmp_path / "jfk.csv")
    no_names = dataclasses.replace(contract, neighbour_stations=())
    with pytest.raises(ServeError, match="lacks 'neighbour_stations'"):
        visibility_serve.station_inputs(no_names, tmp_path / "cut.csv")


def test_exported_station_forecaster_gives_nan_for_an_incomplete_window(task, trained, tmp_path):
    """Through load_artifact: the documented policy, NaN at every horizon of a window with a
    non-finite feature, the other windows untouched."""
    params, _, _ = trained
    path = export.export_task(visibility_serve.export_spec, task, params, tmp_path / "vis.jaxexport")
    forecast, sidecar = artifact.load_artifact(path)
    assert "NaN at every horizon" in sidecar["nan_policy"]
    raw = task.contract.scaler.inverse_transform(task.split("test").x[:4]).astype(np.float32)
    clean = np.asarray(forecast(raw))
    raw[1, -1, 0], raw[2, 0, -1] = np.nan, np.inf
    got = np.asarray(forecast(raw))
    assert np.isnan(got[1]).all() and np.isnan(got[2]).all()
    np.testing.assert_array_equal(got[[0, 3]], clean[[0, 3]])
    assert np.isfinite(clean).all()
