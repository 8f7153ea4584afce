"""Station scores: references, lag-correlation alignment and gaps, below-threshold events."""

from __future__ import annotations

import numpy as np
import pytest

from nowcast_jax import station_metrics as sm


def _series(seed=0, n=400, n_h=3):
    """AR(1) 'visibility' in metres and noisy forecasts ``[n, n_h]``, with NaN gaps."""
    rng = np.random.default_rng(seed)
    x = np.empty(n)
    x[0] = 0.0
    for i in range(1, n):
        x[i] = 0.9 * x[i - 1] + rng.normal()
    obs = np.clip(5000 + 2000 * np.stack([np.roll(x, -h) for h in range(n_h)], 1), 50, None)
    pred = obs + rng.normal(0, 800, obs.shape)
    pred[::37, 1] = np.nan
    obs[5::41, 2] = np.nan
    return pred, obs


def test_mae_rmse_pearson_against_numpy():
    pred, obs = _series()
    mask = np.random.default_rng(1).random(pred.shape) > 0.1
    for h in range(3):
        ok = mask[:, h] & np.isfinite(pred[:, h]) & np.isfinite(obs[:, h])
        p, o = pred[ok, h], obs[ok, h]
        np.testing.assert_allclose(sm.mean_absolute_error(pred, obs, mask)[h], np.mean(np.abs(p - o)))
        np.testing.assert_allclose(sm.root_mean_squared_error(pred, obs, mask)[h], np.sqrt(np.mean((p - o) ** 2)))
        np.testing.assert_allclose(sm.pearson_r(pred, obs, mask)[h], np.corrcoef(p, o)[0, 1])
    assert sm.root_mean_squared_error(pred[:, 0], obs[:, 0]).shape == (1,)


def test_lag_correlation_definition():
    pred, obs = _series(2)
    lag = sm.lag_correlation(pred, obs, max_lag=4)
    assert lag.shape == (3, 5)
    np.testing.assert_allclose(lag[:, 0], sm.pearson_r(pred, obs))
    for h in range(3):
        for L in range(1, 5):  # r(L) = corr(f(t), o(t - L))
            f, o = pred[L:, h], obs[:-L, h]
            ok = np.isfinite(f) & np.isfinite(o)
            np.testing.assert_allclose(lag[h, L], np.corrcoef(f[ok], o[ok])[0, 1], err_msg=f"h={h} L={L}")


def test_persistence_peaks_at_its_horizon():
    """Persistence copies the observation at issue time: its lag correlation peaks at L = h."""
    rng = np.random.default_rng(3)
    vis = np.cumsum(rng.normal(size=600))
    h_steps = (1, 3, 6)
    issue = np.arange(6, 594)
    obs = np.stack([vis[issue + h] for h in h_steps], 1)
    pers = np.stack([vis[issue] for _ in h_steps], 1)
    lag = sm.lag_correlation(pers, obs, max_lag=8)
    assert list(np.argmax(lag, axis=1)) == list(h_steps)
    np.testing.assert_allclose(lag[np.arange(3), h_steps], 1.0)


def test_lag_correlation_with_gaps_uses_times():
    pred, obs = _series(4, n=300)
    pred, obs = pred[:, 0], obs[:, 0]
    keep = np.ones(300, bool)
    keep[[10, 11, 50, 120, 121, 122]] = False  # windows dropped for gaps
    steps = np.arange(300)[keep]
    got = sm.lag_correlation(pred[keep], obs[keep], max_lag=3, times=steps)
    # Reference: full series with the dropped rows set to NaN, consecutive rows.
    p_nan, o_nan = np.where(keep, pred, np.nan), np.where(keep, obs, np.nan)
    ref = sm.lag_correlation(p_nan, o_nan, max_lag=3)
    np.testing.assert_allclose(got, ref)
    naive = sm.lag_correlation(pred[keep], obs[keep], max_lag=3)  # ignoring the gaps is wrong
    assert not np.allclose(naive[1:], ref[1:])
    hours = np.datetime64("2013-01-01T00") + steps.astype("timedelta64[h]")
    np.testing.assert_allclose(sm.lag_correlation(pred[keep], obs[keep], 3, times=hours,
                                                  step=np.timedelta64(1, "h")), ref)


def test_lag_correlation_pairs_within_groups():
    """Several stations on the same hours: pairs never cross stations; pairs are pooled."""
    a, b = _series(7, n=200), _series(8, n=200)
    pred = np.stack([a[0][:, 0], b[0][:, 0]], 1).reshape(-1)  # rows interleaved: a0 b0 a1 b1 ...
    obs = np.stack([a[1][:, 0], b[1][:, 0]], 1).reshape(-1)
    station = np.tile(["EWR", "JFK"], 200)
    hours = np.repeat(np.arange(200), 2)
    got = sm.lag_correlation(pred, obs, 2, times=hours, groups=station)
    for L in (1, 2):
        f = np.concatenate([a[0][L:, 0], b[0][L:, 0]])
        o = np.concatenate([a[1][:-L, 0], b[1][:-L, 0]])
        ok = np.isfinite(f) & np.isfinite(o)
        np.testing.assert_allclose(got[L], np.corrcoef(f[ok], o[ok])[0, 1])
    with pytest.raises(ValueError, match="strictly increasing"):
        sm.lag_correlation(pred, obs, 2, times=hours)  # duplicate hours without groups


def test_below_threshold_contingency():
    obs = np.array([[200.0], [800.0], [1000.0], [1500.0], [5000.0], [900.0], [np.nan]])
    pred = np.array([[300.0], [1200.0], [700.0], [1000.0], [9000.0], [np.nan], [100.0]])
    out = sm.below_threshold_contingency(pred, obs)  # visibility < 1000 m
    # pairs: (300,200) hit, (1200,800) miss, (700,1000) false alarm, (1000,1500) and
    # (9000,5000) correct negatives; rows with NaN are dropped.
    assert (out["hits"][0, 0], out["misses"][0, 0], out["false_alarms"][0, 0],
            out["correct_negatives"][0, 0]) == (1, 1, 1, 2)
    np.testing.assert_allclose([out["pod"][0, 0], out["far"][0, 0], out["csi"][0, 0]], [0.5, 0.5, 1 / 3])
    le = sm.below_threshold_contingency(pred, obs, op="<=")  # ties at 1000 m are now events
    assert (le["hits"][0, 0], le["misses"][0, 0], le["false_alarms"][0, 0],
            le["correct_negatives"][0, 0]) == (2, 1, 1, 1)
    multi = sm.below_threshold_contingency(pred, obs, thresholds=(500.0, 1000.0, 3000.0))
    assert multi["hits"].shape == (3, 1)
    np.testing.assert_array_equal(multi["hits"][:, 0], [1, 1, 4])
    masked = sm.below_threshold_contingency(pred, obs, mask=np.array([0, 1, 1, 1, 1, 1, 1], bool)[:, None])
    assert (masked["hits"][0, 0], masked["far"][0, 0], masked["csi"][0, 0]) == (0, 1.0, 0.0)


def test_scores_nan_when_undefined():
    obs = np.full((5, 2), 8000.0)
    pred = obs + np.arange(5)[:, None]
    out = sm.station_scores(pred, obs, max_lag=2)
    assert np.all(np.isnan(out["pearson_r"])) and np.all(np.isnan(out["lag_correlation"]))
    assert np.all(np.isnan(out["csi"])) and np.all(out["correct_negatives"] == 5)
    none_valid = sm.station_scores(pred, obs, mask=np.zeros(5, bool)[:, None])
    assert np.all(none_valid["n"] == 0) and np.all(np.isnan(none_valid["rmse"]))


def test_station_scores_bundle_and_percent_change():
    pred, obs = _series(5)
    out = sm.station_scores(pred, obs, thresholds=(3000.0, 5000.0), max_lag=6)
    assert out["rmse"].shape == (3,) and out["lag_correlation"].shape == (3, 7)
    assert out["csi"].shape == (2, 3) and out["n"][1] == np.isfinite(pred[:, 1]).sum()
    one = sm.station_scores(pred[:, 0], obs[:, 0], max_lag=2)
    assert one["lag_correlation"].shape == (1, 3) and one["hits"].shape == (1, 1)
    np.testing.assert_allclose(sm.percent_change([90.0, 120.0, 1.0], [100.0, 100.0, 0.0]), [-10.0, 20.0, np.nan])


def test_errors_name_the_problem():
    pred, obs = _series(6)
    with pytest.raises(ValueError, match="pred shape"):
        sm.mean_absolute_error(pred, obs[:, :2])
    with pytest.raises(ValueError, match="max_lag"):
        sm.lag_correlation(pred, obs, max_lag=-1)
    with pytest.raises(ValueError, match="strictly increasing"):
        sm.lag_correlation(pred, obs, 2, times=np.zeros(len(pred), int))
    with pytest.raises(ValueError, match="give step"):
        sm.lag_correlation(pred, obs, 2, times=np.datetime64("2013-01-01") + np.arange(len(pred)).astype("timedelta64[h]"))
    with pytest.raises(ValueError, match="op must be"):
        sm.below_threshold_contingency(pred, obs, op=">")
