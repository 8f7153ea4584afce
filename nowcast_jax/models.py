"""Models built from the cells and the scanned stacks: pure ``init``/``apply`` pairs.

* :func:`encoder_forecaster` — the ConvLSTM paper's design (and its FC-LSTM baseline with
  ``cell="lstm"``): an encoder stack reads J frames; a forecaster stack starts from the
  encoder's final states (copied layer by layer) and rolls out K steps; each prediction is
  a 1x1 convolution over the concatenated forecaster hidden states.
* :func:`extrapolation_forecaster` — the same encoder-forecaster conditioned on an
  extrapolation nowcast: the forecaster reads the extrapolated frames and predicts the
  extrapolation plus a learned correction whose output layer starts at zero.
* :func:`station_lstm` — Li et al. (2019): LSTM -> LSTM -> dense multi-horizon head.
* :func:`mlp` — the "BP network" baseline over the flattened history.

Models return raw outputs (logits or values); the task chooses the link and the loss.
"""

from __future__ import annotations

import math
import operator
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from nowcast_jax import cells as cells_lib
from nowcast_jax.conv import pointwise
from nowcast_jax.rollout import (batch_major, depth_to_space, prepared_scan, space_to_depth, stack_init,
                                 stack_initial_carry, stack_prepare, stack_scan, stack_step_sinks, time_major)

FORECASTER_INPUTS = ("zeros", "autoregressive")
# station_lstm's default unrolls the time loop fully up to this many steps, and not above.
# Measured (2026-12-04, 2-core AVX-512 EPYC, 2 x 64 units, batch 256, training step, n = 7):
# full unroll was 1.19x faster at 12 steps (compile 1.9 vs 0.5 s), 1.47x at 24 (5.4 vs 0.5 s)
# and 1.73x slower at 48 (compile 22 s): benchmarks/trials/station_unroll.py. Unroll 4 at 12
# steps was 1.37x slower than 1 (benchmarks/results/avx512/station.md).
FULL_UNROLL_STEPS = 24
FEEDBACKS = {"identity": lambda y: y, "sigmoid": jax.nn.sigmoid}


class Model(NamedTuple):
    """A model as pure functions. ``encode``/``forecast`` are exposed for research use."""

    init: Callable[..., Any]
    apply: Callable[..., Any]
    encode: Callable[..., Any] | None = None
    forecast: Callable[..., Any] | None = None


def _dense_init(key: jax.Array, fan_in: int, fan_out: int, dtype=jnp.float32) -> dict:
    """Glorot-uniform weight ``[fan_in, fan_out]`` and zero bias ``[fan_out]``."""
    scale = math.sqrt(6.0 / (fan_in + fan_out))
    return {"w": jax.random.uniform(key, (fan_in, fan_out), dtype, -scale, scale), "b": jnp.zeros((fan_out,), dtype)}


def _make_cells(kind: str, hidden: Sequence[int], **kw) -> list[cells_lib.Cell]:
    if not hidden or min(int(f) for f in hidden) < 1:
        raise ValueError(f"hidden={tuple(hidden)}: give one size >= 1 per layer, e.g. (64, 64)")
    if kind == "convlstm":
        return [cells_lib.conv_lstm(f, kw["kernel_x"], kw["kernel_h"], peepholes=kw["peepholes"],
                                    peephole_shape=kw.get("peephole_shape"), forget_bias=kw["forget_bias"],
                                    compute_dtype=kw["compute_dtype"], conv_impl=kw["conv_impl"]) for f in hidden]
    if kind == "lstm":
        return [cells_lib.lstm(f, peepholes=kw["peepholes"], forget_bias=kw["forget_bias"],
                               compute_dtype=kw["compute_dtype"]) for f in hidden]
    raise ValueError(f"unknown cell {kind!r}; choose 'convlstm' or 'lstm'")


def _check_frames(x: jax.Array, channels: int, patch: int, what: str) -> None:
    if x.ndim != 5:
        raise ValueError(f"{what} must be [B, T, H, W, C] (rank 5); got shape {tuple(x.shape)}")
    if x.shape[-1] != channels:
        raise ValueError(f"{what} has {x.shape[-1]} channels but the model expects {channels}")
    if x.shape[2] % patch or x.shape[3] % patch:
        raise ValueError(f"{what}: frame size {x.shape[2]}x{x.shape[3]} is not divisible by patch size {patch}")


def encoder_forecaster(frame_channels: int = 1, patch_size: int = 4, hidden: Sequence[int] = (64, 64), *,
                       kernel_x: int = 5, kernel_h: int = 5, peepholes: bool = True,
                       peephole_shape: Sequence[int] | None = None, forget_bias: float = 1.0,
                       forecaster_input: str = "zeros", feedback: str = "identity", cell: str = "convlstm",
                       compute_dtype: Any = None, remat: bool = False, unroll: int = 1,
                       conv_impl: str = "auto") -> Model:
    """Encoder-forecaster over frame sequences.

    ``init(key, frame_shape=(H, W, C))``;
    ``apply(params, inputs [B,J,H,W,C], output_steps=K, targets=None, teacher_mask=None) -> [B,K,H,W,C]``.

    Forecaster input modes: ``"zeros"`` (the paper: the forecaster reads no input, so
    targets can never leak in) and ``"autoregressive"`` (step k reads a frame: the last
    observed one at k = 0, afterwards ``teacher_mask[k]`` chooses between the true frame
    k-1 (teacher forcing) and the model's own previous output passed through ``feedback``;
    a per-step 0/1 mask of shape ``[K]`` or ``[B, K]`` expresses scheduled sampling inside
    one compiled scan). ``cell="lstm"`` flattens each patched frame into a vector: FC-LSTM.
    Peepholes are per channel by default (any grid); ``peephole_shape=(H/p, W/p)`` gives the
    paper's full Hadamard weights on the patched grid (the model is then tied to that grid).
    """
    if forecaster_input not in FORECASTER_INPUTS:
        raise ValueError(f"forecaster_input must be one of {FORECASTER_INPUTS}; got {forecaster_input!r}")
    if feedback not in FEEDBACKS:
        raise ValueError(f"feedback must be one of {tuple(FEEDBACKS)}; got {feedback!r}")
    kw = dict(kernel_x=kernel_x, kernel_h=kernel_h, peepholes=peepholes, forget_bias=forget_bias,
              compute_dtype=compute_dtype, conv_impl=conv_impl,
              peephole_shape=tuple(peephole_shape) if peephole_shape else None)
    enc_cells, fc_cells = _make_cells(cell, hidden, **kw), _make_cells(cell, hidden, **kw)
    spatial = cell == "convlstm"
    depth = frame_channels * patch_size ** 2

    def to_units(frames):  # [B, T, H, W, C] -> [B, T, h, w, d] (conv) or [B, T, h*w*d] (fc)
        u = space_to_depth(frames, patch_size)
        return u if spatial else u.reshape(*u.shape[:2], -1)

    def from_units(u, frame_hw):  # inverse of to_units
        h, w = frame_hw[0] // patch_size, frame_hw[1] // patch_size
        if not spatial:
            u = u.reshape(*u.shape[:2], h, w, depth)
        return depth_to_space(u, patch_size)

    def init(key: jax.Array, frame_shape: Sequence[int]) -> dict:
        height, width, ch = frame_shape
        if ch != frame_channels or height % patch_size or width % patch_size:
            raise ValueError(f"frame_shape {tuple(frame_shape)} does not fit frame_channels={frame_channels} "
                             f"and patch_size={patch_size}")
        unit = depth if spatial else (height // patch_size) * (width // patch_size) * depth
        k_enc, k_fc, k_head = jax.random.split(key, 3)
        fc_in = unit if forecaster_input == "autoregressive" else 0
        return {"encoder": stack_init(k_enc, enc_cells, unit),
                "forecaster": stack_init(k_fc, fc_cells, fc_in),
                "head": _dense_init(k_head, sum(hidden), unit)}

    def encode(params, inputs):
        """Encoder: ``inputs [B,J,H,W,C]`` -> (final states per layer, top outputs [B,J,...])."""
        _check_frames(inputs, frame_channels, patch_size, "inputs")
        u = to_units(inputs)
        spatial_shape = u.shape[2:4] if spatial else ()
        carry = stack_initial_carry(enc_cells, u.shape[0], spatial_shape)
        return stack_scan(enc_cells, params["encoder"], carry, u, remat=remat, unroll=unroll)

    def forecast(params, states, last_frame_units, output_steps, truth_units=None, teacher_mask=None):
        """Forecaster: K steps from the encoder ``states``; returns units ``[B, K, ...]``."""
        feed = FEEDBACKS[feedback]
        spatial_shape = states[0].h.shape[1:3] if spatial else ()

        def step(p, carry, xs, sinks):
            states, prev = carry
            if forecaster_input == "zeros":
                x = jnp.zeros((*prev.shape[:-1], 0), prev.dtype)
            else:
                truth_prev, use_truth = xs
                x = jnp.where(use_truth, truth_prev, feed(prev))
            states, outs, xbs = stack_step_sinks(fc_cells, p["cells"], states, x, sinks)
            y = pointwise(jnp.concatenate(outs, axis=-1), p["head"]["w"], p["head"]["b"])
            return (states, y.astype(prev.dtype)), y, xbs

        def prepare(p):
            return {"cells": stack_prepare(fc_cells, p["cells"], spatial_shape), "head": p["head"]}

        xs = None
        if forecaster_input == "autoregressive":
            xs = _teacher_inputs(last_frame_units, truth_units, teacher_mask, output_steps)
        params = {"cells": params["forecaster"], "head": params["head"]}
        _, ys = prepared_scan(step, params, prepare, (list(states), last_frame_units), xs, length=output_steps,
                              remat=remat, unroll=unroll)
        return batch_major(ys)

    def apply(params, inputs, output_steps: int = 10, targets=None, teacher_mask=None):
        """``inputs [B,J,H,W,C]`` -> forecast ``[B,K,H,W,C]`` (raw outputs)."""
        if teacher_mask is not None and targets is None:
            raise ValueError("teacher_mask was given without targets to teach with")
        if targets is not None:
            _check_frames(targets, frame_channels, patch_size, "targets")
            if targets.shape[0] != inputs.shape[0] or targets.shape[2:] != inputs.shape[2:]:
                raise ValueError(f"targets {tuple(targets.shape)} do not match inputs {tuple(inputs.shape)} "
                                 "in batch or frame shape")
        states, _ = encode(params, inputs)
        units = to_units(inputs)
        truth = to_units(targets) if (targets is not None and forecaster_input == "autoregressive") else None
        ys = forecast(params, states, units[:, -1], output_steps, truth, teacher_mask)
        return from_units(ys, inputs.shape[2:4]).astype(inputs.dtype)

    return Model(init, apply, encode, forecast)


def _teacher_inputs(last_units, truth_units, teacher_mask, steps):
    """Time-major (truth frame k-1, use-truth flag) per forecaster step; step 0 reads the last input."""
    batch = last_units.shape[0]
    if truth_units is None:
        truth_prev = jnp.broadcast_to(last_units, (steps, *last_units.shape))
        use = jnp.zeros((steps, batch), bool)
    else:
        if truth_units.shape[1] < steps - 1:
            raise ValueError(f"teacher forcing needs {steps - 1} target frames; got {truth_units.shape[1]}")
        truth_prev = jnp.concatenate([last_units[None], time_major(truth_units)[:steps - 1]], axis=0)
        mask = jnp.zeros((steps,), bool) if teacher_mask is None else jnp.asarray(teacher_mask).astype(bool)
        if mask.shape not in ((steps,), (batch, steps)):
            raise ValueError(f"teacher_mask must be [K] or [B, K] with K={steps}; got {mask.shape}")
        use = jnp.broadcast_to(mask.T if mask.ndim == 2 else mask[:, None], (steps, batch))
    use = use.at[0].set(True)  # the first step always reads the last observed frame
    use = use.reshape(steps, batch, *([1] * (last_units.ndim - 1)))
    return truth_prev, use


def extrapolation_forecaster(frame_channels: int = 1, patch_size: int = 4, hidden: Sequence[int] = (64, 64), *,
                             kernel_x: int = 5, kernel_h: int = 5, peepholes: bool = True,
                             peephole_shape: Sequence[int] | None = None, forget_bias: float = 1.0,
                             compute_dtype: Any = None, remat: bool = False, unroll: int = 1,
                             conv_impl: str = "auto") -> Model:
    """ConvLSTM encoder-forecaster that corrects an extrapolation nowcast (motion does the transport).

    ``init(key, frame_shape=(H, W, C))``;
    ``apply(params, inputs [B,J,H,W,C], extrapolation [B,K,H,W,C], valid=None) -> [B,K,H,W,C]``.

    The encoder reads the J observed frames (as in the paper); the forecaster starts from its
    final states and at step k reads the extrapolated frame k and its validity (``valid``,
    True where the extrapolation came from observed pixels; default all True), both patched.
    The output is ``extrapolation + correction``: the 1x1 head over the concatenated
    forecaster states is initialised to ZERO, so an untrained model returns the extrapolation
    exactly, and training learns growth, decay and what the motion got wrong. All values are
    in the caller's units (the radar task passes model units, e.g. log1p mm/h).
    """
    kw = dict(kernel_x=kernel_x, kernel_h=kernel_h, peepholes=peepholes, forget_bias=forget_bias,
              compute_dtype=compute_dtype, conv_impl=conv_impl,
              peephole_shape=tuple(peephole_shape) if peephole_shape else None)
    enc_cells, fc_cells = _make_cells("convlstm", hidden, **kw), _make_cells("convlstm", hidden, **kw)
    depth = frame_channels * patch_size ** 2

    def init(key: jax.Array, frame_shape: Sequence[int]) -> dict:
        height, width, ch = frame_shape
        if ch != frame_channels or height % patch_size or width % patch_size:
            raise ValueError(f"frame_shape {tuple(frame_shape)} does not fit frame_channels={frame_channels} "
                             f"and patch_size={patch_size}")
        k_enc, k_fc = jax.random.split(key)
        head = {"w": jnp.zeros((sum(hidden), depth)), "b": jnp.zeros((depth,))}  # untrained = the extrapolation
        return {"encoder": stack_init(k_enc, enc_cells, depth),
                "forecaster": stack_init(k_fc, fc_cells, 2 * depth), "head": head}

    def encode(params, inputs):
        """Encoder: ``inputs [B,J,H,W,C]`` -> (final states per layer, top outputs)."""
        _check_frames(inputs, frame_channels, patch_size, "inputs")
        u = space_to_depth(inputs, patch_size)  # [B, J, h, w, d]
        carry = stack_initial_carry(enc_cells, u.shape[0], u.shape[2:4])
        return stack_scan(enc_cells, params["encoder"], carry, u, remat=remat, unroll=unroll)

    def forecast(params, states, guide_units):
        """Forecaster: ``guide_units [B, K, h, w, 2d]`` (extrapolation, validity) -> corrections ``[B, K, h, w, d]``."""
        def step(p, carry, x, sinks):
            carry, outs, xbs = stack_step_sinks(fc_cells, p["cells"], carry, x, sinks)
            y = pointwise(jnp.concatenate(outs, axis=-1), p["head"]["w"], p["head"]["b"])
            return carry, y.astype(x.dtype), xbs

        def prepare(p):
            return {"cells": stack_prepare(fc_cells, p["cells"], guide_units.shape[2:4]), "head": p["head"]}

        params = {"cells": params["forecaster"], "head": params["head"]}
        _, ys = prepared_scan(step, params, prepare, list(states), time_major(guide_units), remat=remat,
                              unroll=unroll)
        return batch_major(ys)

    def apply(params, inputs, extrapolation, valid=None):
        """``inputs [B,J,H,W,C]``, ``extrapolation [B,K,H,W,C]`` -> ``[B,K,H,W,C]``."""
        _check_frames(extrapolation, frame_channels, patch_size, "extrapolation")
        if extrapolation.shape[0] != inputs.shape[0] or extrapolation.shape[2:] != inputs.shape[2:]:
            raise ValueError(f"extrapolation {tuple(extrapolation.shape)} does not match inputs "
                             f"{tuple(inputs.shape)} in batch or frame shape")
        valid = jnp.ones_like(extrapolation) if valid is None else jnp.asarray(valid, extrapolation.dtype)
        states, _ = encode(params, inputs)
        guide = jnp.concatenate([space_to_depth(extrapolation, patch_size), space_to_depth(valid, patch_size)], -1)
        corrections = depth_to_space(forecast(params, states, guide), patch_size)
        return (extrapolation + corrections).astype(inputs.dtype)

    return Model(init, apply, encode, forecast)


def station_lstm(hidden: Sequence[int] = (64, 64), horizons: int = 3, *, aux_logits: bool = False,
                 peepholes: bool = False, forget_bias: float = 1.0, compute_dtype: Any = None,
                 remat: bool = False, unroll: int | None = None) -> Model:
    """Li et al. (2019): stacked LSTM over ``x [B, T, F]`` -> dense head at each horizon.

    ``apply`` returns ``{"value": [B, n_h]}`` plus ``"logits": [B, n_h]`` (below-threshold
    classification head) when ``aux_logits``. ``unroll=None`` unrolls the time loop fully when
    ``T <= FULL_UNROLL_STEPS`` and not at all above (an int is passed to ``lax.scan``).
    """
    if unroll is not None:
        try:
            steps_per_iteration = -1 if isinstance(unroll, bool) else operator.index(unroll)  # no floats, strings
        except TypeError:
            steps_per_iteration = -1
        if steps_per_iteration < 1:
            raise ValueError(f"station_lstm: unroll must be None or a positive int; got {unroll!r}")
        unroll = steps_per_iteration
    cells = [cells_lib.lstm(f, peepholes=peepholes, forget_bias=forget_bias, compute_dtype=compute_dtype)
             for f in hidden]

    def init(key, in_features: int, history: int | None = None) -> dict:
        k_stack, k_head, k_aux = jax.random.split(key, 3)
        params = {"lstm": stack_init(k_stack, cells, in_features), "head": _dense_init(k_head, hidden[-1], horizons)}
        if aux_logits:
            params["aux"] = _dense_init(k_aux, hidden[-1], horizons)
        return params

    def apply(params, x):
        if x.ndim != 3:
            raise ValueError(f"station inputs must be [B, T, F] (rank 3); got shape {tuple(x.shape)}")
        carry = stack_initial_carry(cells, x.shape[0])
        steps = x.shape[1]
        scan_unroll = unroll if unroll is not None else (steps if steps <= FULL_UNROLL_STEPS else 1)
        _, hs = stack_scan(cells, params["lstm"], carry, x, remat=remat, unroll=max(1, scan_unroll))
        last = hs[:, -1]  # [B, F_top]
        out = {"value": pointwise(last, params["head"]["w"], params["head"]["b"])}
        if aux_logits:
            out["logits"] = pointwise(last, params["aux"]["w"], params["aux"]["b"])
        return out

    return Model(init, apply)


def mlp(hidden: Sequence[int] = (64,), horizons: int = 3, *, aux_logits: bool = False) -> Model:
    """The "BP network" baseline: flattened history ``[B, T*F]`` -> ReLU layers -> ``[B, n_h]``."""

    def init(key, in_features: int, history: int) -> dict:
        sizes = [in_features * history, *hidden]
        keys = jax.random.split(key, len(sizes) + 1)
        params = {"layers": [_dense_init(k, a, b) for k, a, b in zip(keys, sizes[:-1], sizes[1:])],
                  "head": _dense_init(keys[-2], sizes[-1], horizons)}
        if aux_logits:
            params["aux"] = _dense_init(keys[-1], sizes[-1], horizons)
        return params

    def apply(params, x):
        if x.ndim != 3:
            raise ValueError(f"station inputs must be [B, T, F] (rank 3); got shape {tuple(x.shape)}")
        h = x.reshape(x.shape[0], -1)
        expected = params["layers"][0]["w"].shape[0] if params["layers"] else params["head"]["w"].shape[0]
        if h.shape[-1] != expected:
            raise ValueError(f"mlp: history x features = {h.shape[-1]} but the model was built for {expected}")
        for layer in params["layers"]:
            h = jax.nn.relu(pointwise(h, layer["w"], layer["b"]))
        out = {"value": pointwise(h, params["head"]["w"], params["head"]["b"])}
        if aux_logits:
            out["logits"] = pointwise(h, params["aux"]["w"], params["aux"]["b"])
        return out

    return Model(init, apply)
