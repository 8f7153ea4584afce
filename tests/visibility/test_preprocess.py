"""The fitted contract: one path from a raw CSV row to model inputs, for training and serving."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from nowcast_jax import models
from nowcast_jax.artifact import ServeError
from nowcast_jax.visibility import serve as visibility_serve
from nowcast_jax.visibility.dataset import build_station_dataset, data_spec
from nowcast_jax.visibility.forecast import forecast_windows
from nowcast_jax.visibility.preprocess import StationContract
from nowcast_jax.visibility.scaling import TargetTransform
from nowcast_jax.visibility.windows import SPLITS
from tests.visibility.test_dataset import COLUMNS, UNITS, _frame, _load, _write


def _two_stations(tmp_path):
    """Two stations over the same 300 hours, with missing values inside (filled, or not);
    pressure varies over about 30 hPa, as it does (float32 serving keeps its inputs to ~1e-6)."""
    a, b = _frame(300, station="AAA"), _frame(300, station="BBB")
    a["slp_inhg"], b["slp_inhg"] = (29.9 + 0.45 * np.sin(np.arange(300) / 9.0 + phase) for phase in (0.0, 1.0))
    b["vis_km"] = np.where(np.arange(300) % 13 < 3, 0.3, 8.0)
    b["td_f"] = 38.0 + np.sin(np.arange(300) / 5.0)
    a, b = a.astype({"slp_inhg": object, "t_f": object}), b.astype({"td_f": object, "vis_km": object})
    a.loc[[40, 41], "slp_inhg"] = "M"          # filled for AAA
    a.loc[[150, 151, 152, 153, 154, 155, 156, 157], "t_f"] = "M"   # too long: windows dropped
    b.loc[[60, 61], "td_f"] = "M"              # filled for BBB, never shown to AAA
    b.loc[[200], "vis_km"] = "M"
    return _write(tmp_path, pd.concat([a, b]))


def _windows_ending(ds, end):
    """station -> x [T, F] of the windows (any split) ending at ``end``."""
    out = {}
    for name in SPLITS:
        w = ds.split(name)
        for i in np.flatnonzero(w.times == end):
            out[str(w.station[i])] = w.x[i]
    return out


def _exported(contract, seed=0):
    """The serving side of a tiny station LSTM on ``contract``: ``(jitted forecaster, JSON
    sidecar)`` from :func:`~nowcast_jax.visibility.serve.export_spec`, and the model's
    ``(apply, params)`` for the training side."""
    model = models.station_lstm((4,), len(contract.horizons_hours))
    params = model.init(jax.random.key(seed), len(contract.features), contract.history_steps)
    fn, _, sidecar = visibility_serve.export_spec(SimpleNamespace(contract=contract, model=model), params)
    return jax.jit(fn), json.loads(json.dumps(sidecar)), (jax.jit(model.apply), params)


def test_training_and_serving_give_identical_model_inputs(tmp_path):
    """The same raw CSV, cut at a window's end time, through serving's path (the contract as
    the sidecar stores it, JSON and all) gives the inputs training built for the last window
    of each station: bit for bit with numpy, to float32 rounding with jax.numpy (what the
    exported forecaster computes, by the same function); and forecast_station's output is the
    model's on the training window."""
    path = _two_stations(tmp_path)
    ds = _load(path, features="fog18", max_interp_steps=3)
    fitted = dataclasses.replace(ds.contract, target=TargetTransform.fit("log", ds.train.y))
    forecast, sidecar, (apply, params) = _exported(fitted)
    contract = visibility_serve.sidecar_station_contract(sidecar)
    assert contract.same_as(fitted) and contract.neighbour_stations == ("AAA", "BBB")
    exported_inputs = jax.jit(lambda x: contract.model_inputs(x, jnp))
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    when = pd.to_datetime(raw["when"], format="%d/%m/%Y %H:%M")
    ends = np.intersect1d(*(np.concatenate([ds.split(n).times[ds.split(n).station == s] for n in SPLITS])
                            for s in ("AAA", "BBB")))
    ends = ends[ends >= np.datetime64("2020-01-01T00:00", "s") + contract.steps_needed * np.timedelta64(3600, "s")]
    checked = 0
    for end in ends[:: max(1, len(ends) // 12)]:
        raw[(when <= pd.Timestamp(end)).to_numpy()].to_csv(tmp_path / "cut.csv", index=False)
        inputs = visibility_serve.station_inputs(contract, tmp_path / "cut.csv")
        assert inputs.names == ["AAA", "BBB"] and all(t == end for t in inputs.issue_times)
        trained = _windows_ending(ds, end)
        x_train = np.stack([trained[station] for station in inputs.names])
        np.testing.assert_array_equal(contract.model_inputs(inputs.x), x_train, err_msg=str(end))
        # float32 (the artifact's input type) rounds the raw values and the scaler's min: up to
        # eps * (|x| + |min|) / scale per feature (1e-6 here; 4e-4 for a pressure range of
        # 0.1 hPa), plus float32 rounding of the scaled value
        tol = 1e-6 + np.finfo(np.float32).eps * (np.abs(inputs.x).max(axis=(0, 1)) + np.abs(contract.scaler.min)) \
            / contract.scaler.scale
        x_served = np.asarray(exported_inputs(inputs.x.astype(np.float32)))
        np.testing.assert_array_less(np.abs(x_served - x_train), np.broadcast_to(tol, x_train.shape), err_msg=str(end))
        visibility_serve.forecast_station(forecast, sidecar, tmp_path / "cut.csv", tmp_path / "f.csv")
        served = pd.read_csv(tmp_path / "f.csv")["visibility_m"].to_numpy().reshape(2, -1)
        want = forecast_windows(apply, fitted, params, x_train)["value"]
        np.testing.assert_allclose(served, want, rtol=1e-5, atol=1e-3, err_msg=str(end))
        checked += 2
    assert checked >= 20
    # the windows training dropped for the long temperature gap: serving refuses them too
    gap_end = np.datetime64("2020-01-07T12:00", "s")   # row 156 of AAA
    assert gap_end not in ends
    raw[(when <= pd.Timestamp(gap_end)).to_numpy()].to_csv(tmp_path / "cut.csv", index=False)
    with pytest.raises(ServeError, match=r"AAA \(12 steps, missing \['temperature'"):
        visibility_serve.station_inputs(contract, tmp_path / "cut.csv")


def test_a_restored_contract_reads_as_the_config_says_with_the_stored_fitted_parts(tmp_path):
    """The restore rule: a config with other fractions (and no cap of its own) over a stored
    contract gives the config's windows (its split), scaled by the stored scaler and clipped at
    the stored cap; a fresh fit of that config has another scaler and cap."""
    path = _two_stations(tmp_path)
    ds = _load(path, features="fog16", visibility_cap_m=8_000.0)          # "training": (0.6, 0.2, 0.2)
    stored = StationContract.from_dict(json.loads(json.dumps(ds.contract.to_dict())))
    spec = data_spec(path, time_column="when", time_format="%d/%m/%Y %H:%M", station_column="stn",
                     columns=dict(COLUMNS), units=dict(UNITS), fractions=(0.3, 0.3, 0.4), features="fog16")
    fresh = build_station_dataset(spec)      # the config fitted on its own (the task's first step)
    assert fresh.contract.visibility_cap_m == 10_000.0   # the largest visibility observed
    assert not np.array_equal(fresh.contract.scaler.max, stored.scaler.max)
    restored = build_station_dataset(dataclasses.replace(spec, contract=fresh.contract.with_fitted_parts_of(stored)))
    c = restored.contract
    assert c.visibility_cap_m == 8_000.0 and c.scaler.to_dict() == stored.scaler.to_dict()
    assert c.csv.to_dict() == fresh.contract.csv.to_dict()      # the reading: the config's
    assert not np.array_equal(restored.test.times, ds.test.times)
    for name in SPLITS:   # the config's split; the y clipped at the stored cap
        got, own = restored.split(name), fresh.split(name)
        np.testing.assert_array_equal(got.times, own.times)
        np.testing.assert_array_equal(got.station, own.station)
        np.testing.assert_array_equal(got.y, np.minimum(own.y, 8_000.0))
    assert fresh.test.y.max() == 10_000.0
    # the inputs: the config's raw windows (visibility clipped at 8 km) through the stored scaler
    phys = fresh.contract.scaler.inverse_transform(fresh.test.x)
    vis = list(c.features).index("visibility")
    phys[..., vis] = np.minimum(phys[..., vis], 8_000.0)
    assert (restored.test.x[..., vis] <= 1.0 + 1e-6).all()
    np.testing.assert_allclose(restored.test.x[..., :vis], stored.model_inputs(phys)[..., :vis], atol=1e-5)


def test_contract_round_trips_and_refuses_what_does_not_fit(tmp_path):
    ds = _load(_write(tmp_path, _frame(200)))
    d = json.loads(json.dumps(ds.contract.to_dict()))
    assert d["version"] == 1 and d["features"] == list(ds.contract.features) and d["scaler"]["kind"] == "minmax"
    back = StationContract.from_dict(d)
    assert back.same_as(ds.contract) and back.horizon_steps == (1, 3, 6) and back.steps_needed == 12
    with pytest.raises(ValueError, match="version"):
        StationContract.from_dict({**d, "version": 99})
    with pytest.raises(ValueError, match="whole number"):
        StationContract.from_dict({**d, "horizons_hours": [1.5]})
    with pytest.raises(ValueError, match="scaler was fitted"):
        StationContract.from_dict({**d, "features": "paper6"})
    with pytest.raises(AttributeError):
        back.step = "5min"            # frozen
    with pytest.raises(TypeError):
        back.csv.columns["visibility"] = "x"   # read-only mapping
    with pytest.raises(ValueError):
        back.scaler.min[0] = 1.0      # read-only array
