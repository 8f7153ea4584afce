"""Evaluation of a restored visibility run: scores vs numpy, the same windows for every forecaster."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from nowcast_jax import station_metrics as sm
from nowcast_jax.visibility import evaluate as ev
from nowcast_jax.visibility import scores
from nowcast_jax.visibility.members import MemberRuns
from nowcast_jax.visibility.forecast import forecast_windows
from nowcast_jax.visibility.features import DERIVED_FEATURES
from tests.engine_utils import REPO
from tests.visibility.conftest import run_of


def test_evaluate_structure_and_plots(task, trained, tmp_path):
    params, _, _ = trained
    run = run_of(task, params)
    res = ev.evaluate(run, "test", out_dir=tmp_path)
    for f in ("model", "persistence", "climatology"):
        for key in (f, f + "/hazy"):
            s = res[key]
            for name in ("n", "rmse", "mae", "me", "r", "hits_1000", "misses_1000", "false_alarms_1000",
                         "correct_negatives_1000", "pod_1000", "far_1000", "csi_1000", "hss_1000"):
                assert len(s[name]) == 3, (key, name)
            assert all(np.isfinite(s[k]).all() for k in ("rmse", "mae", "me", "n")), key
        assert [f"lag_r_{L}" for L in range(4)] == [k for k in res[f] if k.startswith("lag_r_")]
    assert np.isfinite(res["model"]["r"]).all() and np.isfinite(res["persistence"]["csi_1000"]).all()
    for key in ("gain_vs_persistence", "gain_vs_persistence/hazy"):
        assert set(res[key]) == {"rmse", "mae", "r", "csi_1000"}
    n = len(task.data.test)
    assert res["model"]["n"] == [n] * 3
    assert res["model/hazy"]["n"] == [int(task.data.hazy("test").sum())] * 3
    for png in ("event_test.png", "lag_correlation_test.png"):
        assert (tmp_path / png).stat().st_size > 1000
    text = ev.format_report(res, run)
    assert "model vs persistence (%)" in text and "Hazy starts" in text and "+6 h" in text
    assert res["bootstrap"]["days"] > 0 and len(res["bootstrap"]["rmse_change_q05"]) == 3
    assert "per_station" not in res                       # one station (JFK): pooled = it
    assert f"| pooled | +1 h | {n} |" in text
    assert (tmp_path / "report_test.md").read_text().strip() == text.strip()


def test_persistence_scores_match_numpy(task, trained):
    params, _, _ = trained
    res = ev.evaluate(run_of(task, params), "test")
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
    model = forecast_windows(task.apply_jit, task.contract, params, w.x)["value"]
    gain = 100 * (np.sqrt(((model - obs) ** 2).mean(0)) - res["persistence"]["rmse"]) / res["persistence"]["rmse"]
    np.testing.assert_allclose(res["gain_vs_persistence"]["rmse"], gain, rtol=1e-5)
    lag1 = sm.lag_correlation(pred[:, 0], obs[:, 0], 1, times=w.times, step=np.timedelta64(1, "h"))[1]
    np.testing.assert_allclose(res["persistence"]["lag_r_1"][0], lag1, rtol=1e-9)


def _mlp_like(value, every=3):
    """A forecast lacking every ``every``-th window (NaN value, event True there)."""
    value = np.array(value, np.float64)
    value[::every] = np.nan
    return {"value": value, "event": np.ones(value.shape, bool)}


def test_all_forecasters_scored_on_the_same_windows(task, trained, monkeypatch):
    """Review C: with an MLP that lacks windows (other inputs), every forecaster is scored on the
    windows they all forecast, so gain_vs_mlp compares equal sets; the count is reported."""
    params, _, _ = trained
    run = run_of(task, params)
    w = task.split("test")
    model = forecast_windows(task.apply_jit, task.contract, params, w.x)["value"]
    mlp = _mlp_like(model * 0.9 + 100.0)
    monkeypatch.setattr(ev, "mlp_forecast", lambda run, split, members: {"value": mlp["value"], "event": None})
    res = ev.evaluate(run, "test")
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
    assert f"Scored on the {n} windows every forecaster forecasts" in ev.format_report(res, run)


def test_mlp_of_the_same_inputs_is_rescaled_and_scored(task, trained):
    """eval.mlp_workdir with the same features and history: the MLP forecasts this run's raw
    windows scaled by its own contract (here: the model itself, so the rows must agree)."""
    params, _, _ = trained
    run = run_of(task, params, "eval.mlp_workdir=/the_mlp")
    res = ev.evaluate(run, "test", members=MemberRuns({"/the_mlp": run_of(task, params)}))
    np.testing.assert_allclose(res["mlp"]["rmse"], res["model"]["rmse"], rtol=1e-5)
    np.testing.assert_allclose(res["gain_vs_mlp"]["rmse"], 0.0, atol=1e-3)


def test_event_override_keeps_nan_rows_out_of_the_contingency():
    """Review C: a classifier's event must not turn rows without a forecast into 'no event'."""
    obs = np.array([[500.0], [2000.0], [500.0], [2000.0]])
    fc = {"value": np.array([[np.nan], [np.nan], [400.0], [3000.0]]), "event": np.array([[False], [False],
                                                                                         [True], [False]])}
    s = scores.forecaster_scores(fc["value"], obs, event=fc["event"], thresholds=(1000.0,))
    assert s["n"] == [2]
    assert (s["hits_1000"], s["misses_1000"], s["false_alarms_1000"], s["correct_negatives_1000"]) == \
        ([1], [0], [0], [1])


def test_mlp_with_other_horizons_or_step_is_refused(task):
    """Review C: the MLP must forecast the same horizons on the same step, else a clear error."""
    run = run_of(task, None, "eval.mlp_workdir=/some/mlp_run")
    for horizons, step in (((1.0, 2.0, 6.0), "1h"), (task.horizons_hours, "30min")):
        other = SimpleNamespace(horizons_hours=horizons, contract=SimpleNamespace(step=step),
                                features=task.features, history=task.history)
        members = MemberRuns({"/some/mlp_run": SimpleNamespace(task=other, params=None)})
        with pytest.raises(ValueError, match="same horizons and step"):
            ev.mlp_forecast(run, "test", members)


def test_fog16_features_reach_the_model(fog_members):
    (a, _), (_, b) = fog_members
    assert a.data.train.x.shape[-1] == 8 and b.task.data.train.x.shape[-1] == 16
    assert b.task.features[8:] == DERIVED_FEATURES
    np.testing.assert_array_equal(a.data.test.times, b.task.data.test.times)   # same windows


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
