"""Semi-Lagrangian advection against pysteps / scipy (real MeteoSwiss frames and synthetic
fields), plain numpy references (shifts, the adjoint as a scatter-add), finite differences
and the symmetries of the grid."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.ndimage import map_coordinates

from nowcast_jax import advection as adv

pysteps_sl = pytest.importorskip("pysteps.extrapolation.semilagrangian", reason="pysteps is not installed")


# ---------------------------------------------------------------------------- references


def _grid(h: int, w: int) -> np.ndarray:
    """``[H, W, 2]`` absolute positions (x = column, y = row), float64."""
    yy, xx = np.mgrid[:h, :w]
    return np.stack([xx, yy], axis=-1).astype(np.float64)


def _to_pysteps(motion_hw2: np.ndarray) -> np.ndarray:
    return np.moveaxis(np.asarray(motion_hw2, np.float64), -1, 0)  # [H, W, 2] -> [2, H, W]


def _pysteps_displacements(velocity: np.ndarray, steps: int) -> np.ndarray:
    """pysteps' displacement of each lead, chained one step at a time: ``[K, H, W, 2]``."""
    out, prev = [], None
    for _ in range(steps):
        _, prev = pysteps_sl.extrapolate(None, velocity, 1, displacement_prev=prev, return_displacement=True)
        out.append(np.moveaxis(prev, 0, -1))
    return np.stack(out)


def _smooth_motion(h: int, w: int, amp: float = 2.0) -> np.ndarray:
    """A spatially varying motion ``[H, W, 2]`` (x, y) with rotation and shear."""
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    vx = amp * np.sin(yy / 5.0) + 0.6 + 0.02 * xx
    vy = -0.8 * amp * np.cos(xx / 7.0) + 0.3 - 0.03 * yy
    return np.stack([vx, vy], axis=-1)


def _blob(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth field that vanishes towards the edges, with some texture."""
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    g = np.exp(-((yy - h / 2) ** 2 / (2 * (h / 6) ** 2) + (xx - w / 2) ** 2 / (2 * (w / 6) ** 2)))
    return g * (3.0 + np.sin(xx / 2.3) * np.cos(yy / 3.1)) + 0.01 * g * rng.random((h, w))


# ---------------------------------------------------------------------------- 1. parity with pysteps


def _read_mch(path) -> np.ndarray:
    from pysteps.io.importers import import_mch_gif

    rain = import_mch_gif(str(path), product="AQC", unit="mm", accutime=5.0)[0]
    return np.ma.filled(np.ma.asarray(rain, dtype=np.float64), np.nan) * 12.0  # mm / 5 min -> mm/h


def _block_mean2(x: np.ndarray) -> np.ndarray:
    """NaN-aware 2x2 block mean (NaN where fewer than half of the block is finite)."""
    h, w = x.shape[0] // 2, x.shape[1] // 2
    blocks = x[: 2 * h, : 2 * w].reshape(h, 2, w, 2)
    ok = np.isfinite(blocks)
    count = ok.sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(ok, blocks, 0.0).sum(axis=(1, 3)) / count
    mean[count < 2] = np.nan
    return mean


@pytest.fixture(scope="module")
def mch_case(radar_dir):
    paths = sorted((radar_dir / "mch" / "20160711").glob("*.gif"))
    if len(paths) < 23:
        pytest.skip(f"MeteoSwiss 2016-07-11 frames not found under {radar_dir / 'mch' / '20160711'}")
    from nowcast_jax import baselines

    frames = np.stack([_block_mean2(_read_mch(p)) for p in paths[20:23]])  # [3, 320, 355] mm/h
    velocity = baselines.lk_motion(frames)  # [2, H, W] (x, y) px / step
    return frames[-1], velocity


@pytest.mark.data
def test_parity_with_pysteps_on_real_meteoswiss(mch_case):
    last, velocity = mch_case
    steps = 10
    domain = np.isfinite(last)
    assert 0.4 < domain.mean() < 0.9 and np.nanmax(last) > 10.0 and np.abs(velocity).max() > 0.5
    filled = np.where(domain, last, 0.0)
    ref, d_last = pysteps_sl.extrapolate(filled, velocity, steps, outval=0.0, return_displacement=True)
    d_ref = _pysteps_displacements(velocity, steps)  # [K, H, W, 2]
    np.testing.assert_array_equal(d_ref[-1], np.moveaxis(d_last, 0, -1))  # chaining == one call

    motion = jnp.asarray(np.moveaxis(velocity, 0, -1)[None], jnp.float32)  # [1, H, W, 2]
    d = np.asarray(adv.displacements(motion, steps))[0]
    d_err = np.abs(d - d_ref).max(axis=(1, 2, 3))  # per lead; measured 1.0e-6 .. 4.7e-6 px
    assert np.all(d_err < 2e-5), d_err

    out, valid = adv.extrapolate(jnp.asarray(last[None], jnp.float32), motion, steps)
    out, valid = np.asarray(out)[0], np.asarray(valid)[0]
    assert out.shape == valid.shape == (steps,) + last.shape and out.dtype == np.float32
    scale = np.nanmax(last)
    err = np.abs(out - ref)[valid].max()  # measured 1.1e-3 mm/h for a maximum of 103 mm/h (1.1e-5 relative)
    assert err < 3e-5 * scale, (err, scale)
    assert (out[~valid] == 0).all()
    # valid: the warped domain mask >= 0.5, as pysteps warps it
    warped_mask = pysteps_sl.extrapolate(domain.astype(np.float64), velocity, steps, outval=0.0)
    assert np.mean((warped_mask >= 0.5) != valid) < 1e-4  # measured: identical
    assert 0.4 < valid.mean() < domain.mean()

    # the raw sample (no masking) is pysteps' field everywhere, domain edge included
    coords = jnp.asarray(_grid(*last.shape)[None, None] + d[None], jnp.float32)
    raw = np.asarray(adv.sample_bilinear(jnp.asarray(filled[None, ..., None], jnp.float32), coords))[0, ..., 0]
    assert np.abs(raw - ref).max() < 3e-5 * scale


def test_parity_with_pysteps_synthetic_leaving_the_grid():
    h, w, steps = 24, 30, 8
    rng = np.random.default_rng(1)
    field = 5.0 * rng.random((h, w))
    motion = _smooth_motion(h, w, amp=2.0)
    velocity = _to_pysteps(motion)
    ref = pysteps_sl.extrapolate(field, velocity, steps, outval=-3.0)
    d_ref = _pysteps_displacements(velocity, steps)

    out, valid = adv.extrapolate(jnp.asarray(field[None], jnp.float32), jnp.asarray(motion[None], jnp.float32),
                                 steps, outside=-3.0)
    out, valid = np.asarray(out)[0], np.asarray(valid)[0]
    assert 0.2 < valid.mean() < 0.9  # many trajectories leave the grid
    pos = _grid(h, w)[None] + d_ref
    inside = (pos[..., 0] >= 0) & (pos[..., 0] <= w - 1) & (pos[..., 1] >= 0) & (pos[..., 1] <= h - 1)
    np.testing.assert_array_equal(valid, inside)
    np.testing.assert_allclose(out, ref, atol=5e-5 * field.max(), rtol=0)
    # in float64 the recursion is pysteps' arithmetic, not an approximation of it
    with jax.enable_x64(True):
        d64 = np.asarray(adv.displacements(jnp.asarray(motion[None]), steps))[0]
        out64, _ = adv.extrapolate(jnp.asarray(field[None]), jnp.asarray(motion[None]), steps, outside=-3.0)
        assert out64.dtype == jnp.float64
    np.testing.assert_allclose(d64, d_ref, atol=1e-12, rtol=0)
    np.testing.assert_allclose(np.asarray(out64)[0], ref, atol=1e-11, rtol=0)


def test_boundary_semantics_are_scipy_constant():
    h, w = 5, 8
    rng = np.random.default_rng(2)
    field = rng.random((h, w)) + 1.0
    f32 = np.float32
    xs = np.array([-1.5, -1.0, -0.5, -1e-6, 0.0, 0.25, 3.5, w - 1 - 1e-3, w - 1, np.nextafter(f32(w - 1), f32(w)),
                   w - 0.5, w, w + 2.0], f32)
    ys = np.array([0.0, 1.5, h - 1, np.nextafter(f32(h - 1), f32(h)), -1e-6, h - 0.5], f32)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")  # every x against every y
    coords = np.stack([xx, yy], axis=-1)[None]  # [1, len(ys), len(xs), 2]
    got = np.asarray(adv.sample_bilinear(jnp.asarray(field[None, ..., None], jnp.float32), jnp.asarray(coords),
                                         outside=-7.0))[0, ..., 0]
    ref = map_coordinates(field, [yy.astype(np.float64), xx.astype(np.float64)], order=1, mode="constant",
                          cval=-7.0, prefilter=False)
    np.testing.assert_allclose(got, ref, atol=1e-6, rtol=0)
    assert (got == -7.0).sum() > got.size // 2 and (got != -7.0).sum() >= 12
    # the motion lookup is scipy "nearest": positions clamped to the grid
    motion = rng.normal(size=(1, h, w, 2))
    for c in range(2):
        near = map_coordinates(motion[0, ..., c], [yy.astype(np.float64), xx.astype(np.float64)], order=1,
                               mode="nearest", prefilter=False)
        clamped = np.stack([np.clip(xx, 0, w - 1), np.clip(yy, 0, h - 1)], axis=-1)[None]
        mine = np.asarray(adv.sample_bilinear(jnp.asarray(motion[..., c:c + 1], jnp.float32),
                                              jnp.asarray(clamped)))[0, ..., 0]
        np.testing.assert_allclose(mine, near, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------- 2. masks and NaN


def test_nan_region_stays_invalid_and_outside_is_invalid():
    h, w, steps = 20, 26, 4
    rng = np.random.default_rng(3)
    field = rng.random((h, w)) + 0.5
    field[6:13, 9:17] = np.nan  # unobserved block
    vx, vy = 1.5, 0.75
    motion = np.broadcast_to(np.array([vx, vy]), (1, h, w, 2))
    out, valid = adv.extrapolate(jnp.asarray(field[None], jnp.float32), jnp.asarray(motion, jnp.float32), steps,
                                 outside=-1.0)
    out, valid = np.asarray(out)[0], np.asarray(valid)[0]
    assert np.isfinite(out).all()
    observed = np.isfinite(field).astype(np.float64)
    filled = np.nan_to_num(field, nan=0.0)
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    for k in range(1, steps + 1):
        sx, sy = xx - k * vx, yy - k * vy  # uniform motion: the source is exactly k steps upstream
        from_outside = (sx < 0) | (sy < 0)
        weight = map_coordinates(observed, [sy, sx], order=1, mode="constant", cval=0.0, prefilter=False)
        np.testing.assert_array_equal(valid[k - 1], (weight >= 0.5) & ~from_outside)
        assert not valid[k - 1][from_outside].any() and from_outside.any()
        deep = (sy > 6.5) & (sy < 11.5) & (sx > 9.5) & (sx < 15.5)  # well inside the NaN block's image
        assert deep.sum() >= 20 and not valid[k - 1][deep].any()
        assert (out[k - 1][~valid[k - 1]] == -1.0).all()
        val = map_coordinates(filled, [sy, sx], order=1, mode="constant", cval=0.0, prefilter=False)
        np.testing.assert_allclose(out[k - 1][valid[k - 1]], val[valid[k - 1]], atol=2e-6, rtol=0)
    # an explicit mask works like NaN; a [B, H, W] mask broadcasts over channels
    mask = np.isfinite(field)
    field_c = np.repeat(np.nan_to_num(field, nan=123.0)[None, ..., None], 2, axis=-1)
    out_m, valid_m = adv.extrapolate(jnp.asarray(field_c, jnp.float32), jnp.asarray(motion, jnp.float32), steps,
                                     mask=jnp.asarray(mask[None]), outside=-1.0)
    for c in range(2):
        np.testing.assert_array_equal(np.asarray(valid_m)[0, ..., c], valid)
        np.testing.assert_array_equal(np.asarray(out_m)[0, ..., c], out)


# ---------------------------------------------------------------------------- 3. identity and shifts


def test_zero_motion_is_identity_exactly():
    rng = np.random.default_rng(4)
    field = (100 * rng.standard_normal((2, 11, 13, 3))).astype(np.float32)
    motion = jnp.zeros((2, 11, 13, 2), jnp.float32)
    out, valid = adv.extrapolate(jnp.asarray(field), motion, 5)
    assert out.shape == (2, 5, 11, 13, 3) and out.dtype == jnp.float32 and bool(valid.all())
    for k in range(5):
        np.testing.assert_array_equal(np.asarray(out[:, k]), field)
    np.testing.assert_array_equal(np.asarray(adv.displacements(motion, 5)), 0.0)
    holes = field.copy()
    holes[0, 2:5, 3:7, 1] = np.nan
    out1, valid1 = adv.extrapolate(jnp.asarray(holes), motion, 5, outside=np.nan)
    for k in range(5):
        np.testing.assert_array_equal(np.asarray(out1[:, k]), holes)  # NaN where unobserved (outside=nan)
        np.testing.assert_array_equal(np.asarray(valid1[:, k]), np.isfinite(holes))
    assert adv.displacements(motion, 0).shape == (2, 0, 11, 13, 2)


@pytest.mark.parametrize("vx,vy", [(2, -1), (-3, 1), (0, 2)])
def test_integer_uniform_motion_is_an_exact_shift(vx, vy):
    h, w, steps = 12, 15, 3
    rng = np.random.default_rng(5)
    field = rng.random((h, w)).astype(np.float32) * 10
    motion = np.broadcast_to(np.array([vx, vy], np.float32), (1, h, w, 2))
    out, valid = adv.extrapolate(jnp.asarray(field[None]), jnp.asarray(motion), steps)
    out, valid = np.asarray(out)[0], np.asarray(valid)[0]
    yy, xx = np.mgrid[:h, :w]
    for k in range(1, steps + 1):
        shifted = np.roll(field, (k * vy, k * vx), axis=(0, 1))  # the field moves by k * (vx, vy)
        entering = (xx - k * vx < 0) | (xx - k * vx > w - 1) | (yy - k * vy < 0) | (yy - k * vy > h - 1)
        np.testing.assert_array_equal(valid[k - 1], ~entering)
        np.testing.assert_array_equal(out[k - 1], np.where(entering, 0.0, shifted))


# ---------------------------------------------------------------------------- 4. transformations


def _case(b: int = 2, h: int = 15, w: int = 19, seed: int = 6):
    rng = np.random.default_rng(seed)
    field = np.stack([_blob(h, w, rng) for _ in range(b)])
    motion = np.stack([_smooth_motion(h, w, amp=1.0 + 0.3 * i) for i in range(b)])
    return field, motion


def test_jit_and_vmap_match_eager():
    field, motion = _case()
    f, m = jnp.asarray(field, jnp.float32), jnp.asarray(motion, jnp.float32)
    eager = adv.extrapolate(f, m, 5)
    jitted = jax.jit(lambda f, m: adv.extrapolate(f, m, 5))(f, m)
    for a, b in zip(eager, jitted):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    stacked_f = jnp.stack([f, 2.0 * f[::-1]])  # [N, B, H, W]
    stacked_m = jnp.stack([m, -m[::-1]])
    mapped = jax.vmap(functools.partial(adv.extrapolate, steps=5))(stacked_f, stacked_m)
    for n in range(2):
        one = adv.extrapolate(stacked_f[n], stacked_m[n], 5)
        np.testing.assert_allclose(np.asarray(mapped[0][n]), np.asarray(one[0]), atol=1e-6)
        np.testing.assert_array_equal(np.asarray(mapped[1][n]), np.asarray(one[1]))


def test_field_gradient_is_the_adjoint_scatter_add():
    field, motion = _case(seed=7)
    b, h, w = field.shape
    steps = 3
    m = jnp.asarray(motion, jnp.float32)
    f = jnp.asarray(field, jnp.float32)
    ct = np.random.default_rng(8).standard_normal((b, steps, h, w)).astype(np.float32)
    _, vjp = jax.vjp(lambda x: adv.extrapolate(x, m, steps)[0], f)
    (grad,) = vjp(jnp.asarray(ct))
    # numpy adjoint: scatter each cotangent to the four corners of its source position
    pos = _grid(h, w)[None, None] + np.asarray(adv.displacements(m, steps), np.float64)  # [B, K, H, W, 2]
    x, y = pos[..., 0], pos[..., 1]
    inside = (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    x0, y0 = np.clip(x0, 0, w - 1).astype(int), np.clip(y0, 0, h - 1).astype(int)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    bb = np.broadcast_to(np.arange(b)[:, None, None, None], x.shape)
    c = np.where(inside, ct, 0.0)
    adjoint = np.zeros((b, h, w))
    for yi, xi, wt in [(y0, x0, (1 - fy) * (1 - fx)), (y0, x1, (1 - fy) * fx), (y1, x0, fy * (1 - fx)),
                       (y1, x1, fy * fx)]:
        np.add.at(adjoint, (bb, yi, xi), c * wt)
    np.testing.assert_allclose(np.asarray(grad), adjoint, rtol=1e-4, atol=1e-5)
    assert np.abs(adjoint).max() > 1.0


def test_motion_gradient_matches_central_differences():
    field, motion = _case(b=1, seed=9)
    steps = 4
    weights = np.random.default_rng(10).standard_normal((1, steps) + field.shape[1:])
    with jax.enable_x64(True):  # float64: central differences with a small step, no kink crossed
        f = jnp.asarray(field)
        wts = jnp.asarray(weights)

        @jax.jit
        def loss(m):
            return jnp.sum(wts * adv.extrapolate(f, m, steps)[0])

        m0 = jnp.asarray(motion)
        grad = np.asarray(jax.grad(loss)(m0))
        assert np.abs(grad).max() > 1e-2
        eps = 1e-6
        for seed in range(3):
            t = np.random.default_rng(20 + seed).standard_normal(motion.shape)
            fd = (float(loss(m0 + eps * t)) - float(loss(m0 - eps * t))) / (2 * eps)
            np.testing.assert_allclose(np.sum(grad * t), fd, rtol=1e-5, atol=1e-7)


def test_coordinate_gradient_at_integer_positions_is_the_right_difference():
    rng = np.random.default_rng(11)
    field = rng.random((6, 7))
    coords = np.array([[2.0, 3.0], [0.0, 1.0], [4.0, 0.0]], np.float32)  # (x, y), integer, interior in x

    def sample(cs):
        return jnp.sum(adv.sample_bilinear(jnp.asarray(field[None, ..., None], jnp.float32), cs[None])[0, :, 0])

    g = np.asarray(jax.grad(sample)(jnp.asarray(coords)))
    ix, iy = coords[:, 0].astype(int), coords[:, 1].astype(int)
    np.testing.assert_allclose(g[:, 0], field[iy, ix + 1] - field[iy, ix], rtol=1e-5)
    np.testing.assert_allclose(g[:, 1], field[iy + 1, ix] - field[iy, ix], rtol=1e-5)

    def jax_mc(cs):
        return jnp.sum(jax.scipy.ndimage.map_coordinates(jnp.asarray(field, jnp.float32), [cs[:, 1], cs[:, 0]],
                                                         order=1))

    np.testing.assert_allclose(g, np.asarray(jax.grad(jax_mc)(jnp.asarray(coords))), rtol=1e-5)


# ---------------------------------------------------------------------------- 5. symmetries


def _run(field, motion, steps=5):
    out, valid = adv.extrapolate(jnp.asarray(field, jnp.float32), jnp.asarray(motion, jnp.float32), steps)
    return np.asarray(out), np.asarray(valid)


def _assert_same(a, b, valid_a, valid_b):
    assert np.mean(valid_a != valid_b) < 1e-3  # only float-rounding ties at the grid edge may differ
    both = valid_a & valid_b
    np.testing.assert_allclose(a[both], b[both], atol=2e-5 * np.abs(a).max(), rtol=0)


def _rot_motion(motion, k):
    """Motion of the field turned by ``np.rot90(., k, axes=(H, W))``: rotate the grid, then each
    vector: k = 1 maps (vx, vy) -> (vy, -vx)."""
    m = np.rot90(motion, k, axes=(1, 2))
    vx, vy = m[..., 0], m[..., 1]
    for _ in range(k % 4):
        vx, vy = vy, -vx
    return np.stack([vx, vy], axis=-1)


def test_flips_negate_the_matching_motion_component():
    field, motion = _case(seed=12)
    out, valid = _run(field, motion)
    # flip along W (x): the x component changes sign
    fw = _run(field[:, :, ::-1], motion[:, :, ::-1] * np.array([-1.0, 1.0]))
    _assert_same(fw[0], out[..., ::-1], fw[1], valid[..., ::-1])
    # flip along H (y): the y component changes sign
    fh = _run(field[:, ::-1], motion[:, ::-1] * np.array([1.0, -1.0]))
    _assert_same(fh[0], out[:, :, ::-1], fh[1], valid[:, :, ::-1])
    # the wrong sign is really wrong (the test can fail)
    bad = _run(field[:, :, ::-1], motion[:, :, ::-1])
    assert np.abs(bad[0] - out[..., ::-1]).max() > 0.1 * np.abs(out).max()


@pytest.mark.parametrize("k", [1, 2, 3])
def test_quarter_turns_rotate_the_motion_vectors(k):
    field, motion = _case(seed=13)  # H != W: a swapped axis would not even fit
    out, valid = _run(field, motion)
    rot = _run(np.rot90(field, k, axes=(1, 2)), _rot_motion(motion, k))
    _assert_same(rot[0], np.rot90(out, k, axes=(2, 3)), rot[1], np.rot90(valid, k, axes=(2, 3)))
    if k == 1:  # the opposite turn of the vectors, (vx, vy) -> (-vy, vx), is wrong
        m = np.rot90(motion, 1, axes=(1, 2))
        bad = _run(np.rot90(field, 1, axes=(1, 2)), np.stack([-m[..., 1], m[..., 0]], axis=-1))
        assert np.abs(bad[0] - np.rot90(out, 1, axes=(2, 3))).max() > 0.1 * np.abs(out).max()


def test_bad_arguments_are_rejected():
    f = jnp.zeros((1, 4, 5))
    with pytest.raises(ValueError, match="motion must be"):
        adv.extrapolate(f, jnp.zeros((1, 4, 5, 3)), 2)
    with pytest.raises(ValueError, match="does not match"):
        adv.extrapolate(f, jnp.zeros((1, 5, 4, 2)), 2)
    with pytest.raises(ValueError, match="steps must be"):
        adv.displacements(jnp.zeros((1, 4, 5, 2)), -1)
    with pytest.raises(ValueError, match="coords"):
        adv.sample_bilinear(jnp.zeros((1, 4, 5, 1)), jnp.zeros((2, 3, 2)))
