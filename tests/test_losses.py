"""Losses against plain-numpy references; masks, weights, edge cases, jit, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nowcast_jax import losses


def _data(seed=0, shape=(3, 4, 6, 5, 1)):
    rng = np.random.default_rng(seed)
    pred = rng.normal(size=shape).astype(np.float32)
    target = rng.gamma(0.5, 4.0, size=shape).astype(np.float32)
    mask = rng.random(shape) > 0.3
    return pred, target, mask


def _np_sigmoid_bce(x, z):
    p = 1.0 / (1.0 + np.exp(-x.astype(np.float64)))
    return -(z * np.log(p) + (1 - z) * np.log(1 - p))


# ------------------------------------------------------------------------- references
@pytest.mark.parametrize("name, fn", [("mse", np.square), ("mae", np.abs)])
def test_mse_mae_match_numpy(name, fn):
    pred, target, mask = _data()
    loss = getattr(losses, name)
    np.testing.assert_allclose(loss(pred, target), fn(pred - target).mean(), rtol=1e-6)
    np.testing.assert_allclose(loss(pred, target, mask=mask), fn(pred - target)[mask].mean(), rtol=1e-6)
    w = np.random.default_rng(1).random(pred.shape).astype(np.float32)
    hw = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    full_w = w * hw[None, :, None, None, None]
    ref = (full_w * fn(pred - target))[mask].sum() / mask.sum()  # normaliser: valid count
    got = loss(pred, target, mask=mask, weights=w, horizon_weights=hw)
    np.testing.assert_allclose(got, ref, rtol=1e-5)


def test_mask_broadcasts_from_domain_shape():
    pred, target, _ = _data()
    domain = np.zeros((6, 5, 1), bool)
    domain[2:] = True  # [H, W, 1] broadcasts over batch and time
    full = np.broadcast_to(domain, pred.shape)
    np.testing.assert_allclose(losses.mse(pred, target, mask=domain),
                               np.square(pred - target)[full].mean(), rtol=1e-6)
    float_mask = domain.astype(np.float32)  # 0/1 floats are accepted as well
    np.testing.assert_allclose(losses.mse(pred, target, mask=float_mask), losses.mse(pred, target, mask=domain))


def test_sigmoid_bce_reductions_match_numpy():
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 3, (2, 3, 8, 8, 1)).astype(np.float32)
    target = (rng.random(logits.shape) > 0.7).astype(np.float32) * rng.random(logits.shape).astype(np.float32)
    ce = _np_sigmoid_bce(logits, target)
    np.testing.assert_allclose(losses.sigmoid_bce(logits, target), ce.mean(), rtol=1e-5)
    np.testing.assert_allclose(losses.sigmoid_bce(logits, target, reduction="sum_per_sequence"),
                               ce.sum(axis=(1, 2, 3, 4)).mean(), rtol=1e-5)
    np.testing.assert_allclose(losses.sigmoid_bce(logits, target, reduction="sum_per_frame"),
                               ce.sum(axis=(2, 3, 4)).mean(), rtol=1e-5)
    mask = np.ones(logits.shape, bool)
    mask[1] = False  # the second sequence is fully masked: it is not counted as a sequence
    np.testing.assert_allclose(losses.sigmoid_bce(logits, target, mask=mask, reduction="sum_per_sequence"),
                               ce[0].sum(), rtol=1e-5)


def test_sigmoid_bce_is_stable_for_large_logits():
    logits = jnp.array([-200.0, -30.0, 0.0, 30.0, 200.0])
    target = jnp.array([0.0, 1.0, 0.5, 0.0, 1.0])
    value = losses.sigmoid_bce(logits, target, reduction="mean")
    ref = np.array([0.0, 30.0, np.log(2.0), 30.0, 0.0]).mean()
    np.testing.assert_allclose(value, ref, rtol=1e-5)
    assert np.all(np.isfinite(jax.grad(losses.sigmoid_bce)(logits, target)))


# -------------------------------------------------------------------------- balanced
def test_rain_weights_piecewise_at_boundaries():
    r = np.array([0.0, 0.49, 0.5, 1.99, 2.0, 4.99, 5.0, 9.99, 10.0, 29.9, 30.0, 100.0, np.nan])
    expected = [1, 1, 1, 1, 2, 2, 5, 5, 10, 10, 30, 30, 1]
    np.testing.assert_array_equal(losses.rain_weights(r), expected)
    custom = losses.rain_weights(r, thresholds=(1.0,), weights=(0.5, 4.0))
    np.testing.assert_array_equal(custom, np.where(r >= 1.0, 4.0, 0.5))


def _np_weights(rate):
    return np.select([rate >= 30, rate >= 10, rate >= 5, rate >= 2], [30.0, 10.0, 5.0, 2.0], 1.0)


@pytest.mark.parametrize("name, fn", [("balanced_mse", np.square), ("balanced_mae", np.abs)])
def test_balanced_losses_match_numpy(name, fn):
    pred, target, mask = _data(3)
    loss = getattr(losses, name)
    w = _np_weights(target)
    np.testing.assert_allclose(loss(pred, target, mask=mask), (w * fn(pred - target))[mask].sum() / mask.sum(),
                               rtol=1e-5)
    # Training in log space: weights still come from the rain rate in mm/h.
    lp, lt = np.log1p(np.abs(pred)), np.log1p(target)
    got = loss(lp, lt, rain_rate=target, mask=mask)
    np.testing.assert_allclose(got, (w * fn(lp - lt))[mask].sum() / mask.sum(), rtol=1e-5)
    assert float(got) > float(getattr(losses, name[9:])(lp, lt, mask=mask))  # weights >= 1 add mass


# ------------------------------------------------------------------ masks, edge cases
@pytest.mark.parametrize("name", ["mse", "mae", "balanced_mse", "balanced_mae", "sigmoid_bce"])
def test_all_masked_gives_zero_and_finite_grad(name):
    pred, target, _ = _data(4)
    target = np.where(target > 1, np.nan, target).astype(np.float32)  # NaN only where masked below
    loss = getattr(losses, name)
    nothing = np.zeros(pred.shape, bool)
    assert float(loss(pred, target, mask=nothing)) == 0.0
    grad = jax.grad(lambda p: loss(p, target, mask=np.isfinite(target)))(pred)
    assert np.all(np.isfinite(grad)) and np.any(grad != 0)
    assert np.all(np.asarray(grad)[~np.isfinite(target)] == 0)  # masked pixels get no gradient


def test_masked_values_do_not_change_the_loss():
    pred, target, mask = _data(5)
    other = np.where(mask, target, 1e4).astype(np.float32)
    for fn in (losses.mse, losses.mae, losses.balanced_mse, losses.sigmoid_bce):
        np.testing.assert_allclose(fn(pred, target, mask=mask), fn(pred, other, mask=mask), rtol=1e-6)


# ------------------------------------------------------------------------- jit, errors
def test_losses_are_jittable():
    pred, target, mask = _data(6)
    hw = jnp.linspace(1.0, 2.0, 4)
    for fn in (losses.mse, losses.mae):
        np.testing.assert_allclose(jax.jit(fn)(pred, target, mask, None, hw), fn(pred, target, mask, None, hw),
                                   rtol=1e-6)
    bal = jax.jit(lambda p, t, m: losses.balanced_mse(p, t, mask=m, thresholds=(1.0, 3.0), weights=(1, 2, 4)))
    np.testing.assert_allclose(bal(pred, target, mask),
                               losses.balanced_mse(pred, target, None, (1.0, 3.0), (1, 2, 4), mask), rtol=1e-6)
    bce = jax.jit(losses.sigmoid_bce, static_argnames="reduction")
    np.testing.assert_allclose(bce(pred, target / 10, mask, reduction="sum_per_frame"),
                               losses.sigmoid_bce(pred, target / 10, mask, reduction="sum_per_frame"), rtol=1e-6)


def test_errors_name_the_problem():
    pred, target, _ = _data(7)
    with pytest.raises(ValueError, match="target shape"):
        losses.mse(pred, target[:, :2])
    with pytest.raises(ValueError, match="mask of shape"):
        losses.mae(pred, target, mask=np.ones((3, 4), bool))
    with pytest.raises(ValueError, match="weights of shape"):
        losses.mse(pred, target, weights=np.ones(7))
    with pytest.raises(ValueError, match="horizon_weights"):
        losses.mse(pred, target, horizon_weights=np.ones(3))
    with pytest.raises(ValueError, match="len\\(weights\\)"):
        losses.balanced_mse(pred, target, weights=(1.0, 2.0))
    with pytest.raises(ValueError, match="strictly increasing"):
        losses.balanced_mae(pred, target, thresholds=(2.0, 1.0), weights=(1, 2, 3))
    with pytest.raises(ValueError, match="rain_rate shape"):
        losses.balanced_mse(pred, target, rain_rate=target[0])
    with pytest.raises(ValueError, match="unknown reduction"):
        losses.sigmoid_bce(pred, target, reduction="sum")
