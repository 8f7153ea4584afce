"""Spectral convolution against numpy and lax.conv; the deferred-tangent scan against autodiff."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nowcast_jax import cells, models, rollout
from nowcast_jax import _spectral as spectral
from nowcast_jax.conv import conv2d_same
from tests.reference import conv_same


def _rand(key, shape):
    return jax.random.normal(jax.random.PRNGKey(key), shape)


@pytest.mark.parametrize("height,width,k,cin,cout", [(16, 16, 5, 7, 9), (10, 12, 3, 4, 5), (9, 7, 4, 3, 2),
                                                     (6, 6, 1, 3, 4), (5, 8, 2, 2, 3)])
def test_spectral_conv_matches_numpy_correlation(height, width, k, cin, cout):
    x, w = _rand(0, (2, height, width, cin)), _rand(1, (k, k, cin, cout))
    got = spectral.spectral_conv2d(x, spectral.kernel_spectrum(w, height, width))
    want = conv_same(np.asarray(x, np.float64), np.asarray(w, np.float64))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_spectral_gradients_match_lax_conv():
    x, w, r = _rand(0, (3, 8, 8, 4)), _rand(1, (5, 5, 4, 6)), _rand(2, (3, 8, 8, 6))
    loss = lambda impl: (lambda x, w: jnp.sum(jnp.tanh(conv2d_same(x, w, impl=impl)) * r))
    got = jax.grad(loss("spectral"), argnums=(0, 1))(x, w)
    want = jax.grad(loss("xla"), argnums=(0, 1))(x, w)
    for g, ref in zip(got, want):
        np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


def test_spectral_errors_name_the_problem():
    with pytest.raises(ValueError, match="square kernel"):
        spectral.kernel_spectrum(jnp.zeros((3, 5, 2, 2)), 8, 8)
    spec = spectral.kernel_spectrum(jnp.zeros((3, 3, 2, 4)), 8, 8)
    with pytest.raises(ValueError, match="does not fit an input"):
        spectral.spectral_conv2d(jnp.zeros((1, 8, 8, 3)), spec)  # wrong channels
    with pytest.raises(ValueError, match="does not fit an input"):
        spectral.spectral_conv2d(jnp.zeros((1, 10, 8, 2)), spec)  # wrong grid
    # At k = 3, 16x15 and 16x16 have the same number of frequencies (circular grids 17x16 and 17x17,
    # both 17 x 9 half-spectra): only the grid the spectrum records tells them apart.
    narrow = spectral.kernel_spectrum(jnp.zeros((3, 3, 2, 4)), 16, 15)
    assert narrow.block.shape == spectral.kernel_spectrum(jnp.zeros((3, 3, 2, 4)), 16, 16).block.shape
    with pytest.raises(ValueError, match=r"made for a \(16, 15\) grid does not fit an input"):
        spectral.spectral_conv2d(jnp.zeros((1, 16, 16, 2)), narrow)


def test_auto_choice():
    """Which grids get a spectrum (independent of the backend: under "auto" it is used only
    where the computation is lowered for CPU, see tests/test_transformations.py's export test)."""
    assert spectral.use_spectral("auto", 5, (16, 16), jnp.float32)
    assert spectral.use_spectral("auto", 5, (24, 24), jnp.float32)
    assert spectral.use_spectral("auto", 5, (32, 32), jnp.float32)  # tiled (see test_large_grids_are_tiled_by_default)
    assert not spectral.use_spectral("auto", 5, (16, 16), jnp.bfloat16)
    assert not spectral.use_spectral("auto", 1, (16, 16), jnp.float32)
    assert not spectral.use_spectral("direct", 5, (16, 16), jnp.float32)
    assert spectral.use_spectral("spectral", 5, (64, 64), jnp.bfloat16)
    tile = spectral.TILE
    assert spectral.use_spectral("auto", tile + 1, (32, 32), jnp.float32)  # the widest halo a tile holds
    assert not spectral.use_spectral("auto", tile + 2, (32, 32), jnp.float32)  # beyond the range measured
    assert spectral.use_spectral("auto", tile + 2, (16, 16), jnp.float32)  # small grids are not tiled
    assert spectral.tile_size(32, 32, tile + 3) == tile + 2  # impl="spectral": the tile grows to the halo
    assert cells.conv_lstm(4, conv_impl="auto").prepare(cells.conv_lstm(4).init(jax.random.PRNGKey(0), 2),
                                                        (6, 6))["spectrum"].cpu_only
    assert not cells.conv_lstm(4, conv_impl="spectral").prepare(cells.conv_lstm(4).init(jax.random.PRNGKey(0), 2),
                                                                (6, 6))["spectrum"].cpu_only


def test_prepare_adds_spectrum_only_where_it_applies():
    cell = cells.conv_lstm(4, 5, 3, conv_impl="spectral")
    params = cell.init(jax.random.PRNGKey(0), 2)
    prepared = cell.prepare(params, (6, 6))
    assert isinstance(prepared["spectrum"], spectral.Spectrum)
    assert prepared["spectrum"].block.shape[1:] == (2 * (2 + 4), 16)  # fused kernel: Cin + F -> 4F
    assert len(jax.tree_util.tree_leaves(prepared["spectrum"])) == 1  # the block is its only array
    assert "spectrum" not in cells.conv_lstm(4, conv_impl="direct").prepare(params, (6, 6))
    x, carry = _rand(1, (2, 6, 6, 2)), cell.initial_carry(2, (6, 6))
    got, want = cell.apply(prepared, carry, x)[1], cells.conv_lstm(4, 5, 3, conv_impl="xla").apply(params, carry, x)[1]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _stack_loss(impl, remat, unroll):
    stack = [cells.conv_lstm(5, 3, 3, conv_impl=impl), cells.conv_lstm(3, 5, 5, conv_impl=impl,
                                                                        peephole_shape=(6, 6))]
    def loss(params, carry, xs):
        final, hs = rollout.stack_scan(stack, params, carry, xs, remat=remat, unroll=unroll)
        return jnp.sum(jnp.sin(hs)) + jnp.sum(final[0].c ** 2)
    return stack, loss


@pytest.mark.parametrize("remat,unroll", [(False, 1), (False, 2), (True, 1)])
def test_deferred_scan_gradients_equal_autodiff(remat, unroll):
    """All gradients (weights, peepholes, biases, initial state, inputs) of the spectral stack,
    whose weight gradients are deferred to after the scan, equal lax.conv autodiff. (With
    remat the stack is not prepared: the per-step spectral conv with its own VJP is checked.)"""
    stack, spectral_loss = _stack_loss("spectral", remat, unroll)
    _, xla_loss = _stack_loss("xla", remat, unroll)
    params = rollout.stack_init(jax.random.PRNGKey(0), stack, 2)
    carry = [cells.LSTMState(0.1 * _rand(10 + i, (2, 6, 6, c.hidden)), 0.1 * _rand(20 + i, (2, 6, 6, c.hidden)))
             for i, c in enumerate(stack)]
    xs = _rand(3, (2, 4, 6, 6, 2))
    got = jax.jit(jax.grad(spectral_loss, argnums=(0, 1, 2)))(params, carry, xs)
    want = jax.grad(xla_loss, argnums=(0, 1, 2))(params, carry, xs)
    for path, g in jax.tree_util.tree_leaves_with_path(got):
        ref = dict(jax.tree_util.tree_leaves_with_path(want))[path]
        np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(ref).max())),
                                   err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("forecaster_input", ["zeros", "autoregressive"])
def test_encoder_forecaster_training_gradient_equals_lax_conv(forecaster_input):
    def value_and_grad(impl):
        model = models.encoder_forecaster(1, 2, (4, 3), kernel_x=5, kernel_h=3, conv_impl=impl,
                                          forecaster_input=forecaster_input)
        params = model.init(jax.random.PRNGKey(0), (8, 8, 1))
        x, y = jax.random.uniform(jax.random.PRNGKey(1), (2, 3, 8, 8, 1)), jax.random.uniform(jax.random.PRNGKey(2),
                                                                                           (2, 4, 8, 8, 1))
        teach = dict(targets=y, teacher_mask=jnp.array([1, 0, 1, 0])) if forecaster_input != "zeros" else {}
        loss = lambda p: jnp.mean((model.apply(p, x, 4, **teach) - y) ** 2)
        return jax.jit(jax.value_and_grad(loss))(params)

    (v, g), (v_ref, g_ref) = value_and_grad("spectral"), value_and_grad("xla")
    np.testing.assert_allclose(v, v_ref, rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(g_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * max(1e-3, float(np.abs(b).max())))


def test_prepared_scan_without_spectra_is_a_plain_scan():
    step = lambda p, c, x, sinks: (c + p["a"] * x, c * x, [])
    params, xs = {"a": jnp.float32(2.0)}, jnp.arange(4.0)
    got = rollout.prepared_scan(step, params, lambda p: p, jnp.float32(1.0), xs)
    want = jax.lax.scan(lambda c, x: step(params, c, x, None)[:2], jnp.float32(1.0), xs)
    np.testing.assert_allclose(got[1], want[1])
    np.testing.assert_allclose(got[0], want[0])


def test_deferred_scan_refuses_a_step_that_does_not_return_each_spectral_input():
    spec = spectral.kernel_spectrum(_rand(0, (3, 3, 2, 2)), 4, 4)

    def step(p, c, x, sinks):  # uses the spectrum but does not hand back its product input
        y = spectral.spectral_conv2d(x + c, p["s"])
        return c + y, y, []

    loss = lambda s: jnp.sum(rollout.prepared_scan(step, {"s": s}, lambda p: p, jnp.zeros((1, 4, 4, 2)),
                                                   _rand(1, (3, 1, 4, 4, 2)))[1])
    with pytest.raises(ValueError, match="returned 0 spectral inputs for 1 spectra"):
        jax.grad(loss)(spec)


def test_auto_takes_the_direct_path_at_batch_one(monkeypatch):
    """At batch 1 "auto" runs the plain scan (direct convolution: measured faster there, see
    ``_spectral.MIN_BATCH``); from batch 2 the deferred spectral scan; an explicit "spectral"
    always. Values and gradients equal lax.conv's either way."""
    taken = []
    real = rollout._deferred_scan
    monkeypatch.setattr(rollout, "_deferred_scan", lambda *a: taken.append(1) or real(*a))
    for impl, batch, spectral_expected in [("auto", 1, False), ("auto", 2, True), ("spectral", 1, True)]:
        taken.clear()
        stack, loss = _stack_loss(impl, False, 1)
        params = rollout.stack_init(jax.random.PRNGKey(0), stack, 2)
        carry = rollout.stack_initial_carry(stack, batch, (6, 6))
        xs = _rand(3, (batch, 4, 6, 6, 2))
        got = jax.value_and_grad(loss)(params, carry, xs)
        assert bool(taken) == spectral_expected, (impl, batch)
        want = jax.value_and_grad(_stack_loss("xla", False, 1)[1])(params, carry, xs)
        for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * (np.abs(w).max() + 1e-12))


# --------------------------------------------------------------------------- tiled (large grids)

@pytest.mark.parametrize("height,width,k,tile", [(16, 16, 5, 8), (10, 13, 3, 4), (9, 7, 4, 3), (12, 12, 5, 4),
                                                 (6, 6, 1, 2), (5, 8, 2, 1), (3, 3, 3, 8)])
def test_tiled_spectral_conv_matches_numpy_correlation(height, width, k, tile):
    """Overlap-save tiles (grids that are and are not multiples of the tile; even and odd k)."""
    x, w = _rand(0, (2, height, width, 3)), _rand(1, (k, k, 3, 4))
    spec = spectral.kernel_spectrum(w, height, width, tile=tile)
    assert spec.tile == tile
    got = spectral.spectral_conv2d(x, spec)
    want = conv_same(np.asarray(x, np.float64), np.asarray(w, np.float64))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_tiled_spectral_gradients_match_lax_conv():
    x, w, r = _rand(0, (3, 10, 9, 4)), _rand(1, (5, 5, 4, 6)), _rand(2, (3, 10, 9, 6))
    tiled = lambda x, w: jnp.sum(jnp.tanh(spectral.spectral_conv2d(x, spectral.kernel_spectrum(w, 10, 9, tile=4))) * r)
    plain = lambda x, w: jnp.sum(jnp.tanh(conv2d_same(x, w, impl="xla")) * r)
    for g, ref in zip(jax.grad(tiled, argnums=(0, 1))(x, w), jax.grad(plain, argnums=(0, 1))(x, w)):
        np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


def test_large_grids_are_tiled_by_default():
    w = jnp.zeros((5, 5, 2, 4))
    assert spectral.kernel_spectrum(w, 24, 24).tile == 0  # whole grid up to MAX_POSITIONS
    big = spectral.kernel_spectrum(w, 32, 48)
    assert big.tile == spectral.TILE
    assert big.block.shape == spectral.kernel_spectrum(w, 40, 40).block.shape  # one window's size, any grid
    w, x = _rand(0, (5, 5, 2, 3)), _rand(1, (1, 30, 27, 2))
    got = spectral.spectral_conv2d(x, spectral.kernel_spectrum(w, 32, 48))  # a tiled spectrum fits any grid
    want = conv_same(np.asarray(x, np.float64), np.asarray(w, np.float64))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    with pytest.raises(ValueError, match="smaller than the 5x5 kernel's halo"):
        spectral.kernel_spectrum(jnp.zeros((5, 5, 2, 4)), 8, 8, tile=3)


def test_deferred_scan_gradients_equal_autodiff_with_tiles(monkeypatch):
    """The ConvLSTM stack on tiled spectra (6x6 grid in 4x4 tiles, padded to 8x8): values and
    all gradients equal lax.conv autodiff through the deferred scan."""
    monkeypatch.setattr(spectral, "MAX_POSITIONS", 16)
    monkeypatch.setattr(spectral, "TILE", 4)
    stack, spectral_loss = _stack_loss("spectral", False, 1)
    _, xla_loss = _stack_loss("xla", False, 1)
    params = rollout.stack_init(jax.random.PRNGKey(0), stack, 2)
    prepared = [c.prepare(p, (6, 6)) for c, p in zip(stack, params)]
    assert all(p["spectrum"].tile == 4 for p in prepared)
    carry = rollout.stack_initial_carry(stack, 2, (6, 6))
    xs = _rand(3, (2, 4, 6, 6, 2))
    got = jax.jit(jax.value_and_grad(spectral_loss, argnums=(0, 2)))(params, carry, xs)
    want = jax.value_and_grad(xla_loss, argnums=(0, 2))(params, carry, xs)
    for g, ref in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(ref).max())))
