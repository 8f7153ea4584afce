"""Gridded verification: parity with pysteps on real radar, streaming, masks, ties, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nowcast_jax import metrics

THRESHOLDS = (0.5, 2.0, 5.0)
SCALES = (1, 2, 5, 16)


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def radar(radar_dir):
    """Persistence on real MeteoSwiss frames: pred = frame t for both leads, obs = t+1, t+2.

    Returns float32 mm/h fields ``[1, 2, 128, 128]`` for a crop on the domain edge (NaN
    outside the radar domain) and for a crop fully inside it.
    """
    importers = pytest.importorskip("pysteps.io.importers")
    files = sorted((radar_dir / "mch" / "20160711").glob("AQC*.gif"))
    if len(files) < 13:
        pytest.skip(f"expected MeteoSwiss frames under {radar_dir / 'mch' / '20160711'}")
    frames = []
    for path in files[10:13]:
        field, _, meta = importers.import_mch_gif(str(path), product="AQC", unit="mm", accutime=5.0)
        assert meta["unit"] == "mm" and meta["accutime"] == 5.0
        frames.append(field * (60.0 / meta["accutime"]))  # mm per 5 min -> mm/h
    frames = np.stack(frames).astype(np.float32)  # pysteps then sees the same float32 values

    def crop(i, j):
        c = frames[:, i:i + 128, j:j + 128]
        return np.stack([c[0], c[0]])[None], c[1:][None]  # pred, obs: [1, 2, H, W]

    edge, inner = crop(256, 512), crop(160, 416)
    assert 0.05 < np.isnan(edge[1]).mean() < 0.5 and np.isfinite(inner[1]).all()
    assert (np.nan_to_num(edge[1]) >= 2.0).mean() > 0.01 and (inner[1] >= 2.0).mean() > 0.1
    return {"edge": edge, "inner": inner}


def _synthetic(seed, shape=(6, 3, 20, 24)):
    rng = np.random.default_rng(seed)
    pred = rng.gamma(0.4, 3.0, shape).astype(np.float32)
    obs = (0.6 * pred + rng.gamma(0.4, 2.0, shape)).astype(np.float32)
    mask = rng.random(shape) > 0.2
    return pred, obs, mask


# ----------------------------------------------------------------------- pysteps parity
def test_contingency_matches_pysteps_det_cat_fct(radar):
    cat = pytest.importorskip("pysteps.verification.detcatscores")
    pred, obs = radar["edge"]
    counts = metrics.contingency(pred, obs, THRESHOLDS, op=">")  # NaN -> invalid
    ours = metrics.scores_from_contingency(*(counts[k] for k in metrics.CONTINGENCY_KEYS))
    for t in range(2):
        valid = np.isfinite(pred[0, t]) & np.isfinite(obs[0, t])
        for i, thr in enumerate(THRESHOLDS):
            table = cat.det_cat_fct_init(thr)
            cat.det_cat_fct_accum(table, pred[0, t][valid], obs[0, t][valid])
            for key in metrics.CONTINGENCY_KEYS:
                assert int(counts[key][i, t]) == int(table[key]), (key, thr, t)
            ref = cat.det_cat_fct_compute(table, ["CSI", "POD", "FAR", "HSS", "ETS", "BIAS"])
            for name, value in ref.items():
                np.testing.assert_allclose(ours[name.lower()][i, t], value, rtol=1e-12, err_msg=name)
    assert counts["hits"][0].min() > 100  # the comparison is not vacuous


def test_pysteps_det_cat_counts_nan_as_correct_negative(radar):
    """Why the parity test feeds pysteps only valid pixels: it counts NaN pairs as 'no/no'."""
    cat = pytest.importorskip("pysteps.verification.detcatscores")
    pred, obs = radar["edge"]
    table = cat.det_cat_fct_init(0.5)
    cat.det_cat_fct_accum(table, pred[0, 0], obs[0, 0])
    ours = metrics.contingency(pred, obs, (0.5,), op=">")
    n_invalid = int((~(np.isfinite(pred[0, 0]) & np.isfinite(obs[0, 0]))).sum())
    assert int(table["correct_negatives"]) == int(ours["correct_negatives"][0, 0]) + n_invalid
    assert int(table["hits"]) == int(ours["hits"][0, 0])


def test_continuous_scores_match_pysteps_det_cont_fct(radar):
    cont = pytest.importorskip("pysteps.verification.detcontscores")
    pred, obs = radar["edge"]
    ours = metrics.scores_from_moments(metrics.moments(pred, obs))
    for t in range(2):
        ref = cont.det_cont_fct(pred[0, t], obs[0, t], scores=["corr_p", "MSE", "MAE", "RMSE"])
        np.testing.assert_allclose(ours["corr"][t], ref["corr_p"], rtol=1e-5)
        np.testing.assert_allclose(ours["mse"][t], ref["MSE"], rtol=1e-5)
        np.testing.assert_allclose(ours["rmse"][t], ref["RMSE"], rtol=1e-5)
        np.testing.assert_allclose(ours["mae"][t], ref["MAE"], rtol=1e-5)
    assert 0.3 < ours["corr"][0] < 1.0


@pytest.mark.parametrize("crop", ["edge", "inner"])
def test_fss_matches_pysteps(radar, crop):
    spatial = pytest.importorskip("pysteps.verification.spatialscores")
    pred, obs = radar[crop]
    # pysteps sums over every grid point with NaN as "no event": centres="all" reproduces it.
    ours = metrics.fss_from_sums(**metrics.fss_sums(pred, obs, THRESHOLDS, SCALES, op=">=", centres="all"))
    for t in range(2):
        for i, thr in enumerate(THRESHOLDS):
            for j, scale in enumerate(SCALES):
                ref = spatial.fss(pred[0, t], obs[0, t], thr, scale)
                np.testing.assert_allclose(ours[i, j, t], ref, rtol=1e-5, atol=1e-6,
                                           err_msg=f"thr={thr} scale={scale} lead={t}")
    assert np.all(np.diff(ours[0, :, 0]) > 0)  # skill grows with scale on this case
    if crop == "inner":  # no invalid pixel: both centre conventions agree
        valid_centres = metrics.fss_from_sums(**metrics.fss_sums(pred, obs, THRESHOLDS, SCALES))
        np.testing.assert_allclose(valid_centres, ours, rtol=1e-6)


def test_fss_valid_centres_against_scipy_reference(radar):
    from scipy.ndimage import uniform_filter

    pred, obs = radar["edge"]
    ours = metrics.fss_from_sums(**metrics.fss_sums(pred, obs, (0.5,), (5,), op=">="))
    for t in range(2):
        valid = np.isfinite(pred[0, t]) & np.isfinite(obs[0, t])
        pf = uniform_filter(((np.nan_to_num(pred[0, t]) >= 0.5) & valid).astype(float), 5, mode="constant")
        po = uniform_filter(((np.nan_to_num(obs[0, t]) >= 0.5) & valid).astype(float), 5, mode="constant")
        pf, po = pf[valid], po[valid]
        ref = 1 - np.sum((pf - po) ** 2) / (np.sum(pf**2) + np.sum(po**2))
        np.testing.assert_allclose(ours[0, 0, t], ref, rtol=1e-5)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 7])
def test_box_sum_matches_scipy_window_placement(size):
    from scipy.ndimage import uniform_filter

    x = np.random.default_rng(size).integers(0, 2, (2, 9, 11)).astype(np.int32)
    ref = np.stack([uniform_filter(a.astype(float), size, mode="constant") * size**2 for a in x])
    np.testing.assert_allclose(np.asarray(metrics.box_sum(jnp.asarray(x), size)), ref, atol=1e-9)


# -------------------------------------------------------------------------- streaming
def test_streaming_equals_one_shot_and_merge():
    pred, obs, mask = _synthetic(0)
    v = metrics.make_verifier(THRESHOLDS, fss_scales=(1, 3), op=">=")
    one = v.compute(v.update(v.init(3), pred, obs, mask))
    acc = v.init(3)
    for b in range(0, 6, 3):  # two batches of 3 (one compile), then the same halves merged
        acc = v.update(acc, pred[b:b + 3], obs[b:b + 3], mask[b:b + 3])
    streamed = v.compute(acc)
    halves = [v.update(v.init(3), pred[s], obs[s], mask[s]) for s in (slice(0, 3), slice(3, 6))]
    merged = v.compute(v.merge(*halves))
    for key, value in one.items():
        for other in (streamed, merged):
            if key in metrics.CONTINGENCY_KEYS or key == "n":
                np.testing.assert_array_equal(other[key], value, err_msg=key)
            else:
                np.testing.assert_allclose(other[key], value, rtol=1e-5, err_msg=key)
    assert one["fss"].shape == (3, 2, 3) and one["csi"].shape == (3, 3)


def test_verifier_compute_against_numpy_reference():
    pred, obs, mask = _synthetic(1)
    v = metrics.make_verifier((1.0,), op=">")
    out = v.compute(v.update(v.init(3), pred, obs, mask))
    for t in range(3):
        p, o = pred[:, t][mask[:, t]], obs[:, t][mask[:, t]]
        h, m = np.sum((p > 1) & (o > 1)), np.sum((p <= 1) & (o > 1))
        f, r = np.sum((p > 1) & (o <= 1)), np.sum((p <= 1) & (o <= 1))
        assert (out["hits"][0, t], out["misses"][0, t], out["false_alarms"][0, t],
                out["correct_negatives"][0, t]) == (h, m, f, r)
        np.testing.assert_allclose(out["csi"][0, t], h / (h + m + f))
        np.testing.assert_allclose(out["corr"][t], np.corrcoef(p, o)[0, 1], rtol=1e-5)
        np.testing.assert_allclose(out["mae"][t], np.mean(np.abs(p - o)), rtol=1e-5)
        assert out["n"][t] == p.size


# ------------------------------------------------------------------------------ masks
def test_masked_pixels_do_not_count():
    pred, obs, mask = _synthetic(2)
    noisy_pred = np.where(mask, pred, 1e6).astype(np.float32)
    noisy_obs = np.where(mask, obs, np.nan).astype(np.float32)
    for centres in ("valid", "all"):
        v = metrics.make_verifier(THRESHOLDS, fss_scales=(3,), fss_centres=centres)
        a = v.compute(v.update(v.init(3), pred, obs, mask))
        b = v.compute(v.update(v.init(3), noisy_pred, noisy_obs, mask))
        for key in a:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-6, err_msg=key)
    # NaN alone (no mask) marks a pixel invalid; counts only cover valid pixels.
    c = metrics.contingency(pred, noisy_obs, (0.5,))
    total = sum(np.asarray(c[k]) for k in metrics.CONTINGENCY_KEYS)
    np.testing.assert_array_equal(total[0], mask.sum(axis=(0, 2, 3)))


def test_mask_broadcasting_and_channel_axis():
    pred, obs, _ = _synthetic(3)
    domain = np.ones((20, 24), bool)
    domain[:5] = False
    a = metrics.contingency(pred[..., None], obs[..., None], (1.0,), mask=domain[..., None])
    b = metrics.contingency(pred, obs, (1.0,), mask=np.broadcast_to(domain, pred.shape))
    for key in metrics.CONTINGENCY_KEYS:
        np.testing.assert_array_equal(a[key], b[key])
    all_masked = metrics.make_verifier((1.0,), fss_scales=(3,))
    out = all_masked.compute(all_masked.update(all_masked.init(3), pred, obs, np.zeros(pred.shape, bool)))
    assert np.all(out["hits"] == 0) and np.all(out["n"] == 0)
    for key in ("csi", "pod", "far", "hss", "ets", "bias", "corr", "mse", "mae", "fss"):
        assert np.all(np.isnan(out[key])), key


# ------------------------------------------------------------------ event direction, ties
def test_ge_and_gt_differ_on_ties(radar):
    pred, obs = radar["edge"]
    rain = obs[np.isfinite(obs) & (obs > 1.0)]
    values, counts = np.unique(rain, return_counts=True)
    tie = float(values[np.argmax(counts)])  # a quantised rain rate many pixels sit on exactly
    ge = metrics.contingency(pred, obs, (tie,), op=">=")
    gt = metrics.contingency(pred, obs, (tie,), op=">")
    n_tied_obs = int(np.sum(obs[0] == tie))
    assert n_tied_obs > 0
    events_ge = np.asarray(ge["hits"] + ge["misses"]).sum()
    events_gt = np.asarray(gt["hits"] + gt["misses"]).sum()
    assert events_ge - events_gt == n_tied_obs
    valid = np.isfinite(pred) & np.isfinite(obs)
    assert int(np.asarray(ge["hits"]).sum()) == int(np.sum((pred >= tie) & (obs >= tie) & valid))


# ---------------------------------------------------------------------- derived scores
def test_scores_from_contingency_known_values_and_nan():
    s = metrics.scores_from_contingency(50, 20, 30, 900)
    n, hr = 1000, 70 * 80 / 1000
    np.testing.assert_allclose(s["pod"], 50 / 70)
    np.testing.assert_allclose(s["far"], 30 / 80)
    np.testing.assert_allclose(s["csi"], 0.5)
    np.testing.assert_allclose(s["bias"], 80 / 70)
    np.testing.assert_allclose(s["ets"], (50 - hr) / (100 - hr))
    expected = (50 + 900 - (70 * 80 + 930 * 920) / n) / (n - (70 * 80 + 930 * 920) / n)
    np.testing.assert_allclose(s["hss"], expected)
    empty = metrics.scores_from_contingency(0, 0, 0, 10)  # no event anywhere
    assert all(np.isnan(empty[k]) for k in ("pod", "far", "csi", "bias", "hss", "ets"))
    only_fa = metrics.scores_from_contingency(0, 0, 5, 10)  # no observed event
    assert np.isnan(only_fa["pod"]) and np.isnan(only_fa["bias"]) and only_fa["far"] == 1.0


def test_named_scores_layout():
    pred, obs, mask = _synthetic(4)
    v = metrics.make_verifier((0.5, 2.0), fss_scales=(3,))
    out = metrics.named_scores(v.compute(v.update(v.init(3), pred, obs, mask)), ("csi", "corr", "fss"))
    assert set(out) == {"csi_0.5", "csi_2.0", "corr", "fss_0.5_3", "fss_2.0_3"}
    assert all(len(x) == 3 for x in out.values())


# ------------------------------------------------------------------------ jit, errors
def test_functions_are_jittable():
    pred, obs, mask = _synthetic(5)
    jitted = jax.jit(metrics.contingency, static_argnames=("thresholds", "op"))
    a = jitted(pred, obs, thresholds=(1.0,), mask=mask, op=">")
    b = metrics.contingency(pred, obs, (1.0,), mask, ">")
    np.testing.assert_array_equal(a["hits"], b["hits"])
    fss = jax.jit(lambda p, o: metrics.fss_sums(p, o, (1.0,), (3,)))(pred, obs)
    assert fss["fss_ff"].shape == (1, 1, 3)
    v = metrics.make_verifier((1.0,))
    acc = jax.jit(v.update)(v.init(3), pred, obs, None)  # mask=None under jit
    assert int(acc["n"].sum()) == pred.size


def test_errors_name_the_problem():
    pred, obs, _ = _synthetic(6)
    with pytest.raises(ValueError, match="pred shape"):
        metrics.contingency(pred, obs[:, :2], (1.0,))
    with pytest.raises(ValueError, match=r"\[B, T, H, W\]"):
        metrics.contingency(pred[0], obs[0], (1.0,))
    with pytest.raises(ValueError, match="mask of shape"):
        metrics.contingency(pred, obs, (1.0,), mask=np.ones((7,), bool))
    with pytest.raises(ValueError, match="op must be"):
        metrics.make_verifier((1.0,), op="=>")
    with pytest.raises(ValueError, match="positive integers"):
        metrics.make_verifier((1.0,), fss_scales=(2.5,))
    with pytest.raises(ValueError, match="thresholds"):
        metrics.make_verifier(())
    v = metrics.make_verifier((1.0,))
    with pytest.raises(ValueError, match="init\\(n_leads\\)"):
        v.update(v.init(5), pred, obs)
