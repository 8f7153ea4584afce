"""Baselines: persistence exactness, optical flow on a translating blob and on real
MeteoSwiss frames, climatology."""

from __future__ import annotations

import numpy as np
import pytest

from nowcast_jax.precip import decode
from nowcast_jax import baselines


def test_persistence_repeats_last_frame_exactly():
    rng = np.random.default_rng(0)
    x = rng.random((4, 6, 5)).astype(np.float32)
    x[-1, 0, 0] = np.nan
    p = baselines.persistence(x, 3)
    assert p.shape == (3, 6, 5) and p.dtype == x.dtype
    for k in range(3):
        np.testing.assert_array_equal(p[k], x[-1])
    b = rng.random((2, 5, 8, 8, 1))
    pb = baselines.persistence(b, 4)
    assert pb.shape == (2, 4, 8, 8, 1)
    np.testing.assert_array_equal(pb, np.repeat(b[:, -1:], 4, axis=1))
    by_axis = baselines.persistence(b[..., 0], 2, time_axis=1)
    np.testing.assert_array_equal(by_axis, np.repeat(b[:, -1:, ..., 0], 2, axis=1))
    with pytest.raises(ValueError, match="steps must be >= 1"):
        baselines.persistence(x, 0)


def _translating_blob(n_frames: int, dy: int, dx: int, size: int = 96) -> np.ndarray:
    """A textured rain cell (mm/h) moving ``(dy, dx)`` pixels per step: ``[T, size, size]``."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    pad = size + 60
    texture = ndimage.gaussian_filter(rng.standard_normal((pad, pad)), 3)
    yy, xx = np.mgrid[:pad, :pad]
    cell = np.exp(-((yy - pad / 2) ** 2 + (xx - pad / 2) ** 2) / (2 * 18.0**2))
    field = np.maximum(0.0, 8.0 * cell * (1.0 + 3.0 * texture))
    frames = [np.roll(field, (dy * t, dx * t), axis=(0, 1))[30 : 30 + size, 30 : 30 + size] for t in range(n_frames)]
    return np.stack(frames)


def test_optical_flow_recovers_translation():
    seq = _translating_blob(8, dy=1, dx=2)
    inputs, truth = seq[:4], seq[4:]
    motion = baselines.lk_motion(inputs)
    assert motion.shape == (2, 96, 96)
    centre = (slice(None), slice(24, 72), slice(24, 72))
    np.testing.assert_allclose(motion[centre].mean(axis=(1, 2)), [2.0, 1.0], atol=0.15)  # (x, y) px/step
    fcst = baselines.optical_flow(inputs, 4)
    assert fcst.shape == (4, 96, 96) and fcst.dtype == np.float32 and np.isfinite(fcst).all()
    err_of = np.abs(fcst - truth).mean(axis=(1, 2))
    err_pe = np.abs(baselines.persistence(inputs, 4) - truth).mean(axis=(1, 2))
    assert np.all(err_of < 0.2 * err_pe), (err_of, err_pe)
    batched = baselines.optical_flow(np.stack([inputs, inputs])[..., None], 4)
    assert batched.shape == (2, 4, 96, 96, 1)
    np.testing.assert_allclose(batched[1, ..., 0], fcst, rtol=1e-6)


def test_optical_flow_keeps_the_domain_mask():
    seq = _translating_blob(5, dy=0, dx=1, size=64)
    seq[:, :, :10] = np.nan  # outside the radar domain
    fcst = baselines.optical_flow(seq[:4], 2)
    assert np.isnan(fcst[:, :, :10]).all() and np.isfinite(fcst[:, :, 10:]).all()
    zero = baselines.optical_flow(seq[:4], 2, outside_value=0.0)
    assert np.isfinite(zero).all() and (zero[:, :, :10] == 0).all()


def test_optical_flow_without_rain_is_zero_motion():
    fcst = baselines.optical_flow(np.zeros((3, 32, 32)), 2)
    np.testing.assert_array_equal(fcst, 0.0)


@pytest.mark.data
def test_optical_flow_on_real_meteoswiss(radar_dir):

    paths = sorted((radar_dir / "mch" / "20160711").glob("*.gif"))[:8]
    kwargs = {"product": "AQC", "unit": "mm", "accutime": 5.0}
    rain = decode.decode_event([str(p) for p in paths], "mch_gif", kwargs, downsample_factor=2)  # [8, 320, 355]
    inputs, truth = rain[:5], rain[5:]
    fcst = baselines.optical_flow(inputs, 3)
    assert fcst.shape == (3, 320, 355)
    domain = np.isfinite(inputs[-1])
    assert 0.4 < domain.mean() < 0.9 and np.isfinite(fcst[:, domain]).all()
    assert np.isnan(fcst[:, ~domain]).all() and (fcst[:, domain] >= 0).all()
    valid = np.isfinite(truth) & domain
    mae_of = np.abs(fcst - truth)[valid].mean()
    mae_pe = np.abs(baselines.persistence(inputs, 3) - truth)[valid].mean()
    assert mae_of < mae_pe, (mae_of, mae_pe)


def test_climatology_mean_per_horizon():
    y = np.array([[1.0, 2.0, np.nan], [3.0, 6.0, 5.0], [5.0, np.nan, 7.0]])
    clim = baselines.climatology(y)
    np.testing.assert_allclose(clim, [3.0, 4.0, 6.0])
    mask = np.array([[True, True, True], [True, False, True], [False, True, True]])
    np.testing.assert_allclose(baselines.climatology(y, mask), [2.0, 2.0, 6.0])
    fc = baselines.climatology_forecast(clim, 4)
    assert fc.shape == (4, 3) and (fc == clim).all()
    with pytest.raises(ValueError, match="no valid training target"):
        baselines.climatology(np.full((2, 2), np.nan))


def test_baselines_never_import_jax():
    import subprocess
    import sys

    code = ("import sys, numpy, nowcast_jax.baselines as b; b.persistence(numpy.zeros((2, 3, 3)), 1); "
            "assert 'jax' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
