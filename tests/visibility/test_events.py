"""Event decisions: classifier cuts calibrated to a frequency bias, per stratum, chosen on validation."""

from __future__ import annotations

import numpy as np
import pytest

from nowcast_jax.visibility import events


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
