"""Motion and extrapolation of radar windows on the host (pysteps), their augmentation and cache."""

from __future__ import annotations

import numpy as np
import pytest

from nowcast_jax.precip import motion as motion_lib
from nowcast_jax.precip.dataset import augment

pytest.importorskip("pysteps")


def _blob_sequence(n=5, shape=(64, 72), start=(20.0, 18.0), velocity=(2.0, 1.0)):
    """Rain blobs moving by ``velocity`` = (x, y) pixels per frame: ``[n, H, W]`` mm/h."""
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(float)
    frames = []
    for t in range(n):
        cy, cx = start[0] + velocity[1] * t, start[1] + velocity[0] * t
        blob = 10 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 40.0)
        blob += 6 * np.exp(-((yy - cy - 18) ** 2 + (xx - cx - 20) ** 2) / 25.0)
        frames.append(blob)
    return np.asarray(frames, np.float32)


def test_lk_motion_of_moving_blobs_is_their_velocity():
    frames = _blob_sequence(velocity=(2.0, 1.0))
    m = motion_lib.estimate_motion(frames)
    assert m.shape == (64, 72, 2) and m.dtype == np.float32
    wet = frames[-1] > 1.0
    np.testing.assert_allclose(m[wet].mean(0), [2.0, 1.0], atol=0.3)


@pytest.mark.parametrize("method", [m for m in motion_lib.MOTION_METHODS if m != "LK"])
def test_every_motion_method_takes_the_recipes_five_frames(method):
    """proesmans takes 2 frames, VET 2-3 and DARTS needs N_t < J - 1: each is handed what it accepts."""
    frames = _blob_sequence(n=5, velocity=(2.0, 1.0))
    m = motion_lib.estimate_motion(frames, method)
    wet = frames[-1] > 1.0
    assert m.shape == (64, 72, 2) and np.isfinite(m).all()
    mean = m[wet].mean(0)
    assert mean @ np.array([2.0, 1.0]) / np.linalg.norm(mean) / np.sqrt(5.0) > 0.95  # the direction, within 18 deg
    if method != "darts":  # DARTS' few Fourier modes smooth small blobs' motion away (here 0.29 of 2.24 px)
        np.testing.assert_allclose(mean, [2.0, 1.0], atol=0.6)


def test_darts_with_two_frames_is_one_line():
    with pytest.raises(ValueError, match="'darts' needs >= 3 input frames"):
        motion_lib.estimate_motion(_blob_sequence(n=2), "darts")


def test_unknown_motion_method_is_named():
    with pytest.raises(ValueError, match="unknown motion method 'nope'"):
        motion_lib.estimate_motion(_blob_sequence(), "nope")


def test_uniform_integer_motion_shifts_and_masks_what_enters():
    """Plain numpy reference: 2 px/step along x moves the frame right by 2k; what enters is not valid."""
    last = np.random.default_rng(0).gamma(1.0, 2.0, (16, 20)).astype(np.float32)
    last[3:6, 8:11] = np.nan  # outside the radar domain
    motion = np.zeros((16, 20, 2), np.float32)
    motion[..., 0] = 2.0
    out = motion_lib.extrapolate_frames(last, motion, 3)
    for k in range(1, 4):
        want = np.full_like(last, np.nan)
        want[:, 2 * k:] = last[:, : 20 - 2 * k]
        np.testing.assert_allclose(out[k - 1], want, atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("rot90", [0, 1, 2, 3])
@pytest.mark.parametrize("flip", [False, True])
def test_augmented_motion_extrapolates_the_augmented_frame(rot90, flip):
    """Advecting the augmented frame with the augmented motion = augmenting the advected frame."""
    rng = np.random.default_rng(1)
    last = _blob_sequence()[-1]
    last = last[:64, :64]
    yy, xx = np.mgrid[:64, :64] / 64.0
    motion = np.stack([1.5 + np.sin(3 * yy), -1.0 + 0.8 * xx], -1).astype(np.float32)  # varies in space
    motion += rng.normal(0, 0.05, motion.shape).astype(np.float32)
    direct = augment(motion_lib.extrapolate_frames(last, motion, 4), rot90, flip)
    turned = motion_lib.extrapolate_frames(augment(last, rot90, flip), motion_lib.augment_motion(motion, rot90, flip),
                                           4)
    np.testing.assert_allclose(turned, direct, atol=1e-4, equal_nan=True)


def test_event_motion_is_cached_and_keyed_by_the_rain(tmp_path):
    rain = _blob_sequence(n=8)
    windows = np.asarray([[0, 1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6, 7]])
    motion, extrap = motion_lib.event_motion(rain, windows, 4, 3, cache_dir=tmp_path)
    assert motion.shape == (2, 64, 72, 2) and extrap.shape == (2, 3, 64, 72)
    np.testing.assert_array_equal(motion[1], motion_lib.estimate_motion(rain[1:5]))
    np.testing.assert_array_equal(extrap[1], motion_lib.extrapolate_frames(rain[4], motion[1], 3))
    again = motion_lib.event_motion(rain, windows, 4, 3, cache_dir=tmp_path)
    assert isinstance(again[0], np.memmap)  # loaded, not recomputed
    np.testing.assert_array_equal(again[1], extrap)
    assert len(list(tmp_path.glob("motion-*.npy"))) == 1
    motion_lib.event_motion(rain * 2, windows, 4, 3, cache_dir=tmp_path)  # other rain: another entry
    assert len(list(tmp_path.glob("motion-*.npy"))) == 2
