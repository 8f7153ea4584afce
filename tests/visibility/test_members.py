"""Runs combined with the model: seed ensembles, a separate value model, members refused
when their windows or event differ."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from nowcast_jax.visibility import evaluate as ev
from nowcast_jax.visibility import task as vis
from nowcast_jax.visibility.members import MemberRuns, member_workdirs
from nowcast_jax.visibility.forecast import forecast_windows
from tests.visibility.conftest import fog_config, run_of, tiny_config


def test_seed_ensemble_and_separate_value_model(fog_members):
    (a, params_a), (dir_b, b) = fog_members
    members = MemberRuns()       # b is restored through the engine, from its workdir
    pa = forecast_windows(a.apply_jit, a.contract, params_a, a.data.test.x)
    pb = forecast_windows(b.task.apply_jit, b.task.contract, b.params, b.task.data.test.x)
    assert not np.allclose(pa["prob"], pb["prob"])
    run = run_of(a, params_a, f"eval.ensemble_workdirs=('{dir_b}',)")
    p_test = (pa["prob"] + pb["prob"]) / 2
    np.testing.assert_allclose(ev.event_prob(run, "test", members), p_test, rtol=1e-6)
    fc = ev.model_forecast(run, "test", members)
    assert str(dir_b) in members.runs
    np.testing.assert_allclose(fc["value"], (pa["value"] + pb["value"]) / 2, rtol=1e-6)
    # the cut is calibrated on the ensemble's *training* probabilities: bias 1 there
    tr = a.data.train
    p_train = (forecast_windows(a.apply_jit, a.contract, params_a, tr.x)["prob"]
               + forecast_windows(b.task.apply_jit, b.task.contract, b.params, b.task.data.train.x)["prob"]) / 2
    np.testing.assert_allclose((p_train > fc["cut"]).mean(0), (tr.y < 1000).mean(0), atol=0.01)
    np.testing.assert_array_equal(fc["event"], p_test > fc["cut"])
    # stratified rule: per persistence class, the (1 - event rate) quantile of that class's
    # training probabilities; the value from another run (no aux head; given to the member
    # cache instead of trained, to keep the test fast)
    plain = vis.make_task(tiny_config())
    plain_params = plain.init_params(jax.random.key(5))
    members.runs["/plain"] = run_of(plain, plain_params)
    run = run_of(a, params_a, f"eval.ensemble_workdirs=('{dir_b}',)", "eval.event_rule=stratified",
                 "eval.value_workdirs=('/plain',)")
    fc = ev.model_forecast(run, "test", members)
    low_tr = tr.start_vis < 1000
    want = np.array([[np.quantile(p_train[sel, j], 1 - (tr.y[sel, j] < 1000).mean()) for j in range(3)]
                     for sel in (~low_tr, low_tr)])
    np.testing.assert_allclose(fc["cut"], want, rtol=1e-12)
    low = (a.data.test.start_vis < 1000)[:, None]
    np.testing.assert_array_equal(fc["event"], np.where(low, p_test > want[1], p_test > want[0]))
    want = forecast_windows(plain.apply_jit, plain.contract, plain_params, a.data.test.x)["value"]
    np.testing.assert_allclose(fc["value"], want, rtol=1e-6)
    res = ev.evaluate(run, "test", members=members)
    assert np.shape(res["model"]["classifier_prob"]) == (2, 3)
    assert res["model"]["hits_1000"] == [int(v) for v in (fc["event"] & (a.data.test.y < 1000)).sum(0)]
    # members must forecast the same windows
    lga = vis.make_task(fog_config("data.stations=('LGA',)"))
    members.runs["/lga"] = run_of(lga, lga.init_params(jax.random.key(6)))
    with pytest.raises(ValueError, match="other windows"):
        ev.model_forecast(run_of(a, params_a, "eval.ensemble_workdirs=('/lga',)"), "test", members)


def test_members_must_forecast_the_same_windows_and_event(fog_members):
    """A member with other targets (visibility cap), horizons, event threshold or without a
    classifier head is refused with a message naming the difference."""
    (a, params_a), _ = fog_members
    cases = {"/cap": (fog_config("data.visibility_cap_m=5000.0"), "ensemble_workdirs", "visibility cap"),
             "/h": (fog_config("data.horizons_hours=(1, 3)"), "value_workdirs", "horizons"),
             "/thr": (fog_config("loss.threshold_m=500.0"), "ensemble_workdirs", "classifies visibility < 500"),
             "/plain": (tiny_config(), "ensemble_workdirs", "no classifier head")}
    members = MemberRuns()
    for name, (config, key, message) in cases.items():
        member = vis.make_task(config)
        members.runs[name] = run_of(member, member.init_params(jax.random.key(1)))
        other = "value_workdirs" if key == "ensemble_workdirs" else "ensemble_workdirs"
        run = run_of(a, params_a, f"eval.{key}=('{name}',)", f"eval.{other}=()")
        with pytest.raises(ValueError, match=message):
            ev.model_forecast(run, "test", members)
    # the same plain run is a fine value model, and a fine ensemble member of a value-event model
    run = run_of(a, params_a, "eval.ensemble_workdirs=()", "eval.value_workdirs=('/plain',)")
    assert ev.model_forecast(run, "test", members)["event"] is not None
    run = run_of(a, params_a, "eval.event_source=value", "eval.value_workdirs=()", "eval.ensemble_workdirs=('/plain',)")
    assert ev.model_forecast(run, "test", members)["event"] is None


def test_member_workdirs_from_config_values():
    assert member_workdirs({"ensemble_workdirs": ("a", "b")}, "ensemble_workdirs") == ("a", "b")
    assert member_workdirs({"ensemble_workdirs": "('a', 'b')"}, "ensemble_workdirs") == ("a", "b")
    assert member_workdirs({"ensemble_workdirs": "a"}, "ensemble_workdirs") == ("a",)
    assert member_workdirs({"ensemble_workdirs": ""}, "ensemble_workdirs") == ()
    assert member_workdirs({}, "value_workdirs") == ()


def test_a_member_of_another_application_is_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"task": "precip"}')
    with pytest.raises(ValueError, match="not a visibility run"):
        MemberRuns().get(str(tmp_path))
