"""Moving MNIST generator: determinism, physics (digits inside, reflection at walls),
rendering, train/test digit disjointness, shapes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from nowcast_jax.precip.moving_mnist import (
    MovingMNIST,
    fold_into_box,
    render,
    sample_trajectory,
    split_digit_indices,
)

L = 64 - 28  # range of a digit's top-left corner


@pytest.fixture(scope="module")
def synthetic_digits():
    """100 random 28x28 "digits" with a full nonzero footprint (every pixel >= 1)."""
    rng = np.random.default_rng(123)
    return rng.integers(1, 256, size=(100, 28, 28), dtype=np.uint8)


@pytest.fixture(scope="module")
def gen(synthetic_digits):
    return MovingMNIST(synthetic_digits)


@pytest.fixture(scope="module")
def real_gen(mnist_dir):
    return MovingMNIST.from_mnist(mnist_dir)


# ---------------------------------------------------------------------------------------
# Shapes, range, determinism
# ---------------------------------------------------------------------------------------


def test_batch_shapes_and_range(gen):
    b = gen.batch(seed=0, step=3, batch_size=5)
    assert set(b) == {"inputs", "targets"}
    for key in b:
        assert b[key].shape == (5, 10, 64, 64, 1) and b[key].dtype == np.float32
        assert 0.0 <= b[key].min() and b[key].max() <= 1.0
    custom = MovingMNIST(gen.digits, input_frames=4, output_frames=6)
    c = custom.batch(0, 0, 2)
    assert c["inputs"].shape == (2, 4, 64, 64, 1) and c["targets"].shape == (2, 6, 64, 64, 1)


def test_same_seed_and_index_identical_across_instances(synthetic_digits):
    a, b = MovingMNIST(synthetic_digits), MovingMNIST(synthetic_digits.copy())
    np.testing.assert_array_equal(a.sequence(7, 42), b.sequence(7, 42))
    for key in ("inputs", "targets"):
        np.testing.assert_array_equal(a.batch(7, 2, 3)[key], b.batch(7, 2, 3)[key])


def test_different_seed_index_or_stream_differ(gen):
    base = gen.sequence(0, 0)
    assert not np.array_equal(base, gen.sequence(0, 1))
    assert not np.array_equal(base, gen.sequence(1, 0))
    assert not np.array_equal(base, gen.sequence(0, 0, fixed=True, split="train"))
    assert not np.array_equal(base, gen.sequence(0, 0, num_digits=3))


def test_batches_are_stateless_slices_of_one_stream(gen):
    """batch(seed, step, B) holds sequences step*B .. step*B+B-1, whatever came before."""
    big = gen.batch(5, 0, 8)
    later = gen.batch(5, 1, 4)  # sequences 4..7
    np.testing.assert_array_equal(later["inputs"], big["inputs"][4:])
    np.testing.assert_array_equal(later["targets"], big["targets"][4:])
    seq = gen.sequence(5, 6)
    np.testing.assert_array_equal(big["inputs"][6], seq[:10])
    np.testing.assert_array_equal(big["targets"][6], seq[10:])


def test_fixed_set_reproducible_and_iterable(gen):
    fs = gen.fixed_set(3, 7)
    assert fs["inputs"].shape == (7, 10, 64, 64, 1)
    again = gen.fixed_set(3, 7)
    np.testing.assert_array_equal(fs["targets"], again["targets"])
    parts = list(gen.iter_fixed_set(3, 7, batch_size=3))
    assert [p["inputs"].shape[0] for p in parts] == [3, 3, 1]
    np.testing.assert_array_equal(np.concatenate([p["inputs"] for p in parts]), fs["inputs"])
    assert gen.fixed_set(3, 0)["inputs"].shape == (0, 10, 64, 64, 1)


def test_bad_arguments(gen, synthetic_digits):
    with pytest.raises(ValueError, match="seed"):
        gen.batch(-1, 0, 2)
    with pytest.raises(ValueError, match="batch_size"):
        gen.batch(0, 0, 0)
    with pytest.raises(ValueError, match="split"):
        gen.fixed_set(0, 1, split="valid")
    with pytest.raises(ValueError, match="num_digits"):
        gen.fixed_set(0, 1, num_digits=21)  # test pool has 20 synthetic digits
    with pytest.raises(ValueError, match="n_train"):
        MovingMNIST(synthetic_digits, n_train=100)
    with pytest.raises(ValueError, match="uint8"):
        MovingMNIST(synthetic_digits.astype(np.float32))


# ---------------------------------------------------------------------------------------
# Physics: digits stay inside, reflection at walls, constant speed
# ---------------------------------------------------------------------------------------


def _naive_bounce(p0, v0, steps, limit):
    """Step-by-step elastic bounce (independent of the closed form in the module)."""
    p, v = p0.copy(), v0.copy()
    ps, vs = [p.copy()], [v.copy()]
    for _ in range(steps - 1):
        p = p + v
        low, high = p < 0, p > limit
        p = np.where(low, -p, np.where(high, 2 * limit - p, p))
        v = np.where(low | high, -v, v)
        ps.append(p.copy())
        vs.append(v.copy())
    return np.stack(ps), np.stack(vs)


def test_trajectory_matches_step_by_step_reflection():
    rng = np.random.default_rng(0)
    traj = sample_trajectory(rng, np.arange(50), num_digits=3, num_frames=200, limit=L, speed_range=(3.0, 5.0))
    ps, vs = _naive_bounce(traj.positions[0], traj.velocities[0], 200, L)
    np.testing.assert_allclose(traj.positions, ps, atol=1e-9)
    np.testing.assert_array_equal(np.sign(traj.velocities), np.sign(vs))
    speed = np.linalg.norm(traj.velocities, axis=-1)
    assert np.ptp(speed, axis=0).max() < 1e-12  # constant per digit
    assert ((3.0 <= speed) & (speed < 5.0)).all()
    flips = np.diff(np.sign(traj.velocities), axis=0) != 0  # [T-1, D, 2]
    assert flips.sum() > 20, "200 frames at 3-5 px/frame in a 36 px box must bounce often"
    # a component flips only when the digit is within one step of that wall
    near_wall = np.minimum(traj.positions[1:], L - traj.positions[1:]) < 5.0
    assert near_wall[flips].all()


def test_fold_into_box_reflects_at_both_walls():
    p = np.array([-1.0, 0.5, 37.0, 73.0, 80.0])
    v = np.ones_like(p)
    pos, vel = fold_into_box(p, v, 36.0)
    np.testing.assert_allclose(pos, [1.0, 0.5, 35.0, 1.0, 8.0])
    np.testing.assert_array_equal(vel, [-1, 1, -1, 1, 1])


def test_digits_stay_fully_inside_and_mass_is_conserved(gen):
    """One full-footprint digit: nonzero box == its corner + 28, pixel sum == digit sum."""
    for index in range(20):
        traj = gen.trajectory(11, index, num_digits=1)
        frames = gen.sequence(11, index, num_digits=1)[..., 0]
        digit = gen.digits[traj.digit_ids[0]].astype(np.float64) / 255.0
        assert ((0 <= traj.corners) & (traj.corners <= L)).all()
        for t in range(gen.num_frames):
            rows = np.flatnonzero(frames[t].any(axis=1))
            cols = np.flatnonzero(frames[t].any(axis=0))
            r, c = traj.corners[t, 0]
            assert (rows[0], rows[-1], cols[0], cols[-1]) == (r, r + 27, c, c + 27)
            np.testing.assert_allclose(frames[t].sum(), digit.sum(), rtol=1e-5)


def test_real_digit_mass_conserved_in_every_frame(real_gen):
    for index in range(10):
        traj = real_gen.trajectory(2, index, split="test", fixed=True, num_digits=1)
        frames = real_gen.sequence(2, index, split="test", fixed=True, num_digits=1)
        mass = real_gen.digits[traj.digit_ids[0]].sum() / 255.0
        np.testing.assert_allclose(frames.sum(axis=(1, 2, 3)), mass, rtol=1e-5)


def test_render_is_max_of_digits_placed_at_corners(gen):
    traj = gen.trajectory(4, 9, num_digits=3)
    frames = render(traj, gen.digits, 64)[..., 0]
    for t in range(traj.corners.shape[0]):
        layers = np.zeros((3, 64, 64), np.float32)
        for d in range(3):
            r, c = traj.corners[t, d]
            layers[d, r : r + 28, c : c + 28] = gen.digits[traj.digit_ids[d]] / np.float32(255)
        np.testing.assert_allclose(frames[t], layers.max(axis=0), atol=1e-7)


def test_start_state_distribution():
    """Uniform start corners over [0, L]^2, directions over the circle, speeds in [3, 5)."""
    rng = np.random.default_rng(1)
    trajs = [sample_trajectory(rng, np.arange(10), num_digits=2, num_frames=2, limit=L, speed_range=(3.0, 5.0))
             for _ in range(1500)]
    p0 = np.concatenate([t.positions[0] for t in trajs])
    v0 = np.concatenate([t.velocities[0] for t in trajs])
    assert abs(p0.mean() - L / 2) < 1.0 and p0.min() < 1.0 and p0.max() > L - 1.0
    angle = np.arctan2(v0[:, 0], v0[:, 1])
    quadrant_counts = np.histogram(angle, bins=4, range=(-np.pi, np.pi))[0]
    assert quadrant_counts.min() > 0.2 * len(angle)
    speed = np.linalg.norm(v0, axis=1)
    assert 3.0 <= speed.min() < 3.05 and 4.95 < speed.max() < 5.0


# ---------------------------------------------------------------------------------------
# Train/test digit disjointness
# ---------------------------------------------------------------------------------------


def test_default_split_is_8000_2000():
    train, test = split_digit_indices(10000)
    assert (train[0], train[-1], len(train)) == (0, 7999, 8000)
    assert (test[0], test[-1], len(test)) == (8000, 9999, 2000)
    assert len(split_digit_indices(10000, n_train=9000)[1]) == 1000


def test_train_and_test_sequences_never_share_a_digit(real_gen):
    assert len(real_gen.train_indices) == 8000 and len(real_gen.test_indices) == 2000
    train_ids = {int(i) for step in range(50) for k in range(8)
                 for i in real_gen.trajectory(0, step * 8 + k).digit_ids}
    test_ids = {int(i) for k in range(400) for i in real_gen.trajectory(0, k, split="test", fixed=True).digit_ids}
    ood_ids = {int(i) for k in range(100)
               for i in real_gen.trajectory(0, k, split="test", fixed=True, num_digits=3).digit_ids}
    assert train_ids and max(train_ids) < 8000
    assert min(test_ids | ood_ids) >= 8000
    assert not train_ids & (test_ids | ood_ids)
    assert len(train_ids) > 600 and len(test_ids) > 500  # the pools are actually used widely


def test_configurable_split(synthetic_digits):
    g = MovingMNIST(synthetic_digits, n_train=30)
    ids = {int(i) for k in range(200) for i in g.trajectory(0, k, split="test", fixed=True).digit_ids}
    assert min(ids) >= 30
    ids = {int(i) for k in range(200) for i in g.trajectory(0, k).digit_ids}
    assert max(ids) < 30
    tiny = MovingMNIST(synthetic_digits[:6], n_train=3, num_digits=3)
    for k in range(20):  # digits of one sequence are drawn without replacement
        assert sorted(tiny.trajectory(0, k).digit_ids.tolist()) == [0, 1, 2]


def test_out_of_domain_set_has_three_distinct_test_digits(real_gen):
    ood = real_gen.out_of_domain_set(0, 2)
    assert ood["inputs"].shape == (2, 10, 64, 64, 1)
    traj = real_gen.trajectory(0, 1, split="test", fixed=True, num_digits=3)
    assert len(set(traj.digit_ids.tolist())) == 3
    seq = real_gen.sequence(0, 1, split="test", fixed=True, num_digits=3)
    np.testing.assert_array_equal(np.concatenate([ood["inputs"][1], ood["targets"][1]]), seq)


def test_data_modules_never_import_jax():
    code = (
        "import sys, nowcast_jax.precip.mnist, nowcast_jax.precip.moving_mnist; "
        "bad = [m for m in sys.modules if m == 'jax' or m.startswith('jax.')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
