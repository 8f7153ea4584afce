"""The precipitation Tasks: the ConvLSTM encoder-forecaster (Shi et al., NeurIPS 2015) on
Moving MNIST or on a radar archive, chosen once by :func:`make_task` from ``config.data.source``.

* :class:`MovingMNISTTask` (``"moving_mnist"``): frames in [0, 1]; the model outputs logits;
  the loss is the sigmoid cross-entropy (the paper's), reported per sequence as in the
  paper's Table 1 (aux ``bce_per_sequence``; the optimised loss is the per-pixel mean, which
  only rescales it).
* :class:`RadarTask` (``"radar"``): rain rate in the units of the fitted contract
  (:class:`~nowcast_jax.precip.preprocess.RadarContract`, log1p by default); the model
  outputs those units, optionally as a residual on the last observed frame
  (``model.residual``); loss ``mse`` / ``mae`` / ``balanced_mse`` / ``balanced_mae``, masked
  where the radar did not observe, with optional lead-time weights (``loss.horizon_weights``).
  Balanced weights are picked from the observed rain rate in mm/h (inverse transform).
  The contract's reading part is fitted first and the archive is read through it
  (:meth:`RadarContract.read_frames`); the grid is measured through it on a training event.

Restoring a radar checkpoint (:meth:`RadarTask.load_extras`): the fitted part of the contract,
the rain transform, comes from the checkpoint; what to read (``data.files``,
``data.importer``, ``data.importer_kwargs``, ``data.fn_pattern``, Z-R) and the grid and crops
follow the config and the data, so a run can be evaluated on another archive or grid. Only what
changes what the weights mean is refused (``ConfigError`` naming the ``data.*`` key and both
values): ``data.downsample``, ``data.timestep_minutes``, ``data.input_frames``,
``data.output_frames``.

Evaluation (:mod:`nowcast_jax.precip.evaluate`) and serving (:mod:`nowcast_jax.precip.serve`)
dispatch on the task's class; only :func:`make_task` reads ``config.data.source``.

Both implement the engine's narrow protocol (``init_params``, ``loss_fn``, ``train_batch``,
``eval_batches``, ``state_extras``, ``load_extras``) plus ``raw_forecast(params, inputs)``:
``inputs [B, J, H, W, 1] -> [B, K, H, W, 1]`` logits (Moving MNIST) or model-unit rain
(radar). Batches are numpy dicts; radar batches also hold ``input_mask`` / ``target_mask``.
Radar tasks forecast a model-unit batch with ``forecast_batch(params, batch)`` (what the loss
and evaluation call). :class:`ExtrapolationTask` (``model.kind="extrapolation"``) is the radar
task whose model corrects an extrapolation nowcast: its batches also carry ``motion``,
``extrapolation`` and ``extrapolation_mask``, and its ``raw_forecast`` needs the extrapolation.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from nowcast_jax import losses, models
from nowcast_jax._paths import data_root
from nowcast_jax.engine.config import ConfigError
from nowcast_jax.precip.dataset import RadarDataset
from nowcast_jax.precip.decode import get_importer, radar_cache_dir
from nowcast_jax.precip.preprocess import (RadarContract, check_crop, fit_grid, make_transform, parse_crop_size,
                                           reading_contract)

MODEL_KEYS = ("patch_size", "hidden", "kernel_x", "kernel_h", "peepholes", "peephole_shape", "forget_bias",
              "forecaster_input", "feedback", "cell", "remat", "unroll", "conv_impl")
RADAR_LOSSES = {"mse": losses.mse, "mae": losses.mae, "balanced_mse": losses.balanced_mse,
                "balanced_mae": losses.balanced_mae}
MOVING_MNIST_SPLITS = ("val", "test", "ood")
# What a radar checkpoint's weights mean besides the rain transform: contract field -> config key.
WEIGHTS_MEAN = {"downsample_factor": "data.downsample", "timestep_minutes": "data.timestep_minutes",
                "input_steps": "data.input_frames", "output_steps": "data.output_frames"}


MODEL_KINDS = ("encoder_forecaster", "extrapolation")
EXTRAPOLATION_UNUSED = ("forecaster_input", "feedback", "cell")  # keys the extrapolation model has no use for


def build_model(model_cfg) -> models.Model:
    """The model of ``config.model`` (``compute_dtype`` "" = float32): ``kind="encoder_forecaster"``
    (default: the paper's :func:`~nowcast_jax.models.encoder_forecaster`) or ``"extrapolation"``
    (:func:`~nowcast_jax.models.extrapolation_forecaster`, which corrects an extrapolation nowcast)."""
    kind = model_cfg.get("kind", "encoder_forecaster") or "encoder_forecaster"
    if kind not in MODEL_KINDS:
        raise ConfigError(f"config.model.kind must be one of {MODEL_KINDS}; got {kind!r}")
    kwargs = {k: model_cfg[k] for k in MODEL_KEYS if k in model_cfg}
    kwargs["hidden"] = tuple(int(h) for h in kwargs["hidden"])
    dtype = model_cfg.get("compute_dtype", "")
    build = models.encoder_forecaster
    if kind == "extrapolation":
        if kwargs.get("cell", "convlstm") != "convlstm":
            raise ConfigError(f"config.model.cell={kwargs['cell']!r}: the extrapolation model is a ConvLSTM")
        kwargs = {k: v for k, v in kwargs.items() if k not in EXTRAPOLATION_UNUSED}
        build = models.extrapolation_forecaster
    try:
        return build(frame_channels=1, compute_dtype=jnp.dtype(dtype) if dtype else None, **kwargs)
    except (ValueError, TypeError) as err:  # a model.* value the model refuses: a config error, named
        raise ConfigError(f"config.model: {err}") from None


def _data_path(path: str) -> str:
    """``path`` as is when absolute (or ``~``); else joined to the data root (``$NOWCAST_JAX_DATA``)."""
    path = os.path.expanduser(str(path))
    if os.path.isabs(path):
        return path
    root = data_root()
    if root is None:
        raise FileNotFoundError(
            f"data path {path!r} is relative but no data root was found: set NOWCAST_JAX_DATA or "
            "place ../shared/data beside the checkout, or give an absolute path")
    return str(Path(root) / path)


class _EncoderForecasterTask:
    """What both tasks share: the model of ``config.model``, its raw forecast, lead weights."""

    residual = False

    def __init__(self, config, frame_shape: tuple[int, int, int]):
        self.config = config
        self.input_frames = int(config.data.input_frames)
        self.output_frames = int(config.data.output_frames)
        self.frame_shape = tuple(frame_shape)  # (H, W, 1) of a training sample
        self.model = build_model(config.model)
        weights = tuple(float(w) for w in config.loss.horizon_weights)
        if weights and len(weights) != self.output_frames:
            raise ValueError(f"loss.horizon_weights has {len(weights)} entries; need data.output_frames="
                             f"{self.output_frames} (or none)")
        self.horizon_weights = np.asarray(weights, np.float32) if weights else None

    def init_params(self, key):
        """Parameters for frames of the training sample shape ``frame_shape``."""
        return self.model.init(key, self.frame_shape)

    def raw_forecast(self, params, inputs):
        """``inputs [B, J, H, W, 1]`` -> ``[B, K, H, W, 1]`` in the model's units (logits or model-unit rain)."""
        out = self.model.apply(params, inputs, output_steps=self.output_frames)
        if self.residual:
            out = out + inputs[:, -1:]
        return out

    def _capped(self, batches: Iterator[dict]) -> Iterator[dict]:
        """``batches`` cut to at most ``eval.max_windows`` samples in all (0 = no cap)."""
        limit, count = int(self.config.eval.max_windows), 0
        for batch in batches:
            if limit > 0:
                if count >= limit:
                    return
                batch = {k: v[: limit - count] for k, v in batch.items()}
            count += len(batch["inputs"])
            yield batch


class MovingMNISTTask(_EncoderForecasterTask):
    """Moving MNIST over the MNIST test digits (train/test digit pools never overlap).

    Splits: ``"val"`` = a fixed set over training digits, ``"test"`` = fixed set over test
    digits, ``"ood"`` = test digits with 3 per sequence (the paper's out-of-domain test).
    """

    source = "moving_mnist"

    def __init__(self, config):
        from nowcast_jax.precip.moving_mnist import MovingMNIST

        if config.model.get("residual", False):
            raise ValueError("model.residual applies to radar values only (Moving MNIST outputs logits)")
        if config.model.get("kind", "encoder_forecaster") != "encoder_forecaster":
            raise ConfigError(f"model.kind={config.model.kind!r} applies to radar only (Moving MNIST has no motion "
                              "to extrapolate); use 'encoder_forecaster'")
        data = config.data
        path = _data_path(data.mnist_path) if data.mnist_path else None
        self.movie = MovingMNIST.from_mnist(path, n_train=int(data.n_train_digits) or None,
                                            num_digits=int(data.num_digits), input_frames=int(data.input_frames),
                                            output_frames=int(data.output_frames), frame_size=int(data.frame_size))
        self.eval_seed = int(data.eval_seed)
        self.eval_sizes = {"val": int(data.val_sequences), "test": int(data.test_sequences),
                           "ood": int(data.test_sequences)}
        super().__init__(config, (self.movie.frame_size, self.movie.frame_size, 1))

    def loss_fn(self, params, batch, key):
        """Mean per-pixel cross-entropy; aux ``bce_per_sequence`` and ``mse`` (``key`` unused)."""
        del key
        logits, targets = self.raw_forecast(params, batch["inputs"]), batch["targets"]
        per_seq = losses.sigmoid_bce(logits, targets, reduction="sum_per_sequence")
        mse = jnp.mean(jnp.square(jax.nn.sigmoid(logits) - targets))
        return losses.sigmoid_bce(logits, targets), {"bce_per_sequence": per_seq, "mse": mse}

    def train_batch(self, step: int, batch_size: int, seed: int) -> dict[str, np.ndarray]:
        """Sequences ``step*B .. step*B+B-1`` of the endless training stream of ``seed``."""
        return self.movie.batch(int(seed), int(step), int(batch_size))

    def eval_batches(self, split: str, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """The fixed set of ``split`` (``val``, ``test`` or ``ood``), at most ``eval.max_windows`` (>0)."""
        if split not in MOVING_MNIST_SPLITS:
            raise ValueError(f"Moving MNIST split must be one of {sorted(MOVING_MNIST_SPLITS)}; got {split!r}")
        limit = int(self.config.eval.max_windows)
        n = self.eval_sizes[split] if limit <= 0 else min(limit, self.eval_sizes[split])
        pool = "train" if split == "val" else "test"
        digits = 3 if split == "ood" else None
        yield from self.movie.iter_fixed_set(self.eval_seed, n, batch_size, split=pool, num_digits=digits)

    def state_extras(self) -> dict:
        return {"source": self.source}

    def load_extras(self, extras: dict) -> None:
        del extras  # nothing is fitted: the generator is a pure function of the config


def open_radar_dataset(data, reader: RadarContract, motion_method: str | None = None) -> RadarDataset:
    """The radar archive of ``config.data`` (``files`` absolute or relative to the data root), read
    through ``reader`` (its importer, Z-R, downsampling; its pattern, step and J/K index the files);
    with ``motion_method`` batches also carry each window's motion and extrapolation."""
    files = [_data_path(f) for f in ([data.files] if isinstance(data.files, str) else data.files)]
    test, val = (tuple([e]) if isinstance(e, (int, str)) else tuple(e) for e in (data.test_events, data.val_events))
    return RadarDataset.open(
        files, reader.fn_pattern, reader.read_frames, reader.timestep_minutes, reader.input_steps,
        reader.output_steps, event_gap_minutes=float(data.event_gap_minutes),
        cache_dir=data.cache_dir or radar_cache_dir(), crop_size=parse_crop_size(data.crop_size),
        augment=bool(data.augment), min_rain_fraction=float(data.min_rain_fraction),
        rain_threshold=float(data.rain_threshold), max_tries=int(data.max_tries), test_events=test, val_events=val,
        motion_method=motion_method)


class RadarTask(_EncoderForecasterTask):
    """A pysteps-readable radar archive: random rainy crops for training, every window of an
    event (centred ``contract.eval_crop``) for evaluation, all through :attr:`contract`."""

    source = "radar"
    motion_method: str | None = None  # batches carry motion and extrapolation when set (subclass)

    def __init__(self, config):
        if config.loss.name not in RADAR_LOSSES:
            raise ValueError(f"loss.name must be one of {sorted(RADAR_LOSSES)} for radar; got {config.loss.name!r}")
        build_model(config.model)  # model and crop mistakes now, before any event is decoded
        for key in ("crop_size", "eval_crop_size"):
            parse_crop_size(config.data[key], f"data.{key}")
        reader = reading_contract(config.data)  # what to read and how; the grid is measured through it
        try:
            get_importer(reader.importer)  # an unknown importer: now, not after "starting at step 0"
            self.dataset = open_radar_dataset(config.data, reader, self.motion_method)
        except FileNotFoundError as err:
            raise ConfigError(f"config.data.files: {err}") from None
        except ValueError as err:  # an unknown importer, fn_pattern or event selector
            raise ConfigError(f"config.data: {err}") from None
        patch = int(config.model.get("patch_size", 1) or 1)
        self.contract: RadarContract = fit_grid(reader, self.dataset.frame_shape(), config.data.eval_crop_size,
                                                multiple=patch)
        h, w = check_crop(config.data.crop_size, self.contract.grid, "data.crop_size",
                          self.contract.downsample_factor, multiple=patch)
        super().__init__(config, (h, w, 1))
        self.residual = bool(config.model.get("residual", False))

    def loss_fn(self, params, batch, key):
        """Masked loss of ``loss.name`` on model units; aux ``mse_transformed`` (``key`` unused)."""
        del key
        cfg, targets, mask = self.config.loss, batch["targets"], batch["target_mask"]
        pred, fn = self.forecast_batch(params, batch), RADAR_LOSSES[cfg.name]
        if cfg.name.startswith("balanced"):
            rain = self.contract.from_model_units(targets, jnp)
            loss = fn(pred, targets, rain, tuple(cfg.thresholds), tuple(cfg.weights), mask=mask,
                      horizon_weights=self.horizon_weights)
        else:
            loss = fn(pred, targets, mask=mask, horizon_weights=self.horizon_weights)
        return loss, {"mse_transformed": losses.mse(pred, targets, mask=mask)}

    def forecast_batch(self, params, batch: dict):
        """The forecast of a model-unit batch, ``[B, K, H, W, 1]`` model units (what the loss scores)."""
        return self.raw_forecast(params, batch["inputs"])

    def model_batch(self, batch_mm_h: dict) -> dict:
        """A mm/h batch of the dataset in model units (the contract's transform; masks unchanged)."""
        return self.contract.model_batch(batch_mm_h)

    def train_batch(self, step: int, batch_size: int, seed: int) -> dict[str, np.ndarray]:
        """Random (rainy, augmented) crops of training windows in model units; pure in (seed, step)."""
        return self.model_batch(self.dataset.train_batch(int(step), int(batch_size), int(seed)))

    def eval_windows(self, split: str, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Every window of ``split`` in time order, in mm/h, cut to ``contract.eval_crop``
        (at most ``eval.max_windows`` when > 0): what evaluation scores every forecaster on."""
        return self._capped(self.dataset.eval_batches(split, batch_size, crop_size=self.contract.eval_crop))

    def eval_batches(self, split: str, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """:meth:`eval_windows` in model units."""
        return (self.model_batch(b) for b in self.eval_windows(split, batch_size))

    def state_extras(self) -> dict:
        """JSON-able: the fitted contract (``preprocess``), the model kind and (extrapolation) motion method."""
        extras = {"source": self.source, "preprocess": self.contract.to_dict(), "model_kind": self.model_kind}
        if self.motion_method:
            extras["motion_method"] = self.motion_method
        return extras

    @property
    def model_kind(self) -> str:
        return "extrapolation" if self.motion_method else "encoder_forecaster"

    def _check_conditioning(self, extras: dict) -> None:
        """The model kind and motion method are what the weights were trained with: a change is refused."""
        kind = extras.get("model_kind")  # absent in older checkpoints: the parameter tree decides
        if kind is not None and kind != self.model_kind:
            raise ConfigError(f"model.kind is {self.model_kind!r} but the checkpoint holds a {kind!r} model; "
                              "restore without that override")
        method = extras.get("motion_method")
        if method is not None and method != self.motion_method:
            raise ConfigError(f"data.motion_method is {self.motion_method!r} but the checkpoint was trained on "
                              f"{method!r} motion: the weights would mean something else; restore without that override")

    def load_extras(self, extras: dict) -> None:
        """Adopt a checkpoint's rain transform (the fitted part); reading, grid and crops stay the
        config's and the data's. ``ConfigError`` when the config changes what the weights mean
        (:data:`WEIGHTS_MEAN`). Checkpoints written before the contract existed hold only ``transform``."""
        extras = extras or {}
        self._check_conditioning(extras)
        if "preprocess" in extras:
            stored = RadarContract.from_dict(extras["preprocess"])
            for name, key in WEIGHTS_MEAN.items():
                was, now = getattr(stored, name), getattr(self.contract, name)
                if was != now:
                    raise ConfigError(f"{key} is {now!r} but the checkpoint was trained with {was!r}: the weights "
                                      f"would mean something else; restore without that override")
            transform = stored.transform
        elif "transform" in extras:
            transform = make_transform(**extras["transform"])
        else:
            return
        self.contract = dataclasses.replace(self.contract, transform=transform)


class ExtrapolationTask(RadarTask):
    """:class:`RadarTask` with the extrapolation-conditioned model (``model.kind="extrapolation"``).

    Each window's motion is estimated on the full frame of its J inputs (``data.motion_method``,
    pysteps LK by default) and its last input frame is extrapolated K steps on the full frame
    (pysteps semi-Lagrangian), once per window and cached (:mod:`nowcast_jax.precip.motion`);
    batches carry the crops of both. The model predicts the extrapolation (in model units) plus
    a learned correction that starts at zero, so the untrained model is the extrapolation
    nowcast. ``model.residual`` does not apply (the extrapolation is the residual's base).
    Serving takes the motion as a second input and extrapolates inside the exported function
    with :func:`nowcast_jax.advection.extrapolate` (:meth:`forecast_from_motion`).
    """

    def __init__(self, config):
        from nowcast_jax.precip.motion import MOTION_METHODS

        self.motion_method = str(config.data.get("motion_method", "") or "LK")
        if self.motion_method not in MOTION_METHODS:
            raise ConfigError(f"config.data.motion_method must be one of {MOTION_METHODS}; got {self.motion_method!r}")
        if int(config.data.input_frames) < 2:
            raise ConfigError(f"data.input_frames={config.data.input_frames}: motion needs at least 2 input frames")
        if self.motion_method == "darts" and int(config.data.input_frames) < 3:
            raise ConfigError("data.motion_method='darts' needs >= 3 input frames: raise data.input_frames or use 'LK'")
        model = config.model
        if model.get("residual", False):
            raise ConfigError("model.residual=True does not apply to model.kind='extrapolation' (the extrapolation "
                              "is what the correction is added to): set model.residual=False, or use "
                              "configs/precip_radar_extrapolation.py")
        for key, default in (("forecaster_input", "zeros"), ("feedback", "identity")):
            if model.get(key, default) != default:
                raise ConfigError(f"model.{key}={model[key]!r} does not apply to model.kind='extrapolation' "
                                  f"(its forecaster reads the extrapolated frames); leave it {default!r}")
        super().__init__(config)

    def raw_forecast(self, params, inputs, extrapolation=None, valid=None):
        """``inputs [B, J, H, W, 1]``, ``extrapolation [B, K, H, W, 1]`` (model units), ``valid``
        (bool, same shape) -> ``[B, K, H, W, 1]`` model units."""
        if extrapolation is None:
            raise ValueError("the extrapolation model needs the extrapolated frames (or use forecast_from_motion)")
        return self.model.apply(params, inputs, extrapolation, valid)

    def forecast_batch(self, params, batch: dict):
        return self.raw_forecast(params, batch["inputs"], batch["extrapolation"], batch["extrapolation_mask"])

    def model_batch(self, batch_mm_h: dict) -> dict:
        out = self.contract.model_batch(batch_mm_h)
        out["extrapolation"] = self.contract.to_model_units(batch_mm_h["extrapolation"])
        return out

    def forecast_from_motion(self, params, rain_mm_h, motion):
        """Serving's path, all in JAX, on the FULL grid as in training: ``rain [B, J, H0, W0, 1]``
        mm/h (NaN or inf = unobserved) and ``motion [B, H0, W0, 2]`` -> ``[B, K, h, w, 1]`` mm/h on
        the centre crop ``contract.eval_crop``. The last frame is extrapolated over the whole grid
        with :func:`nowcast_jax.advection.extrapolate` (pysteps' scheme; parity is tested), then
        frames, extrapolation and validity are cropped and the model runs on the crop."""
        from nowcast_jax import advection

        observed = jnp.isfinite(rain_mm_h)
        rain = jnp.where(observed, jnp.maximum(rain_mm_h, 0.0), 0.0)
        extrap, valid = advection.extrapolate(rain[:, -1], motion, self.output_frames, mask=observed[:, -1])
        (y, x), (h, w) = self.contract.crop_origin(rain.shape[2:4]), self.contract.eval_crop
        crop = lambda a: a[:, :, y:y + h, x:x + w]  # noqa: E731 - [B, T, H0, W0, 1] -> [B, T, h, w, 1]
        to_units = self.contract.to_model_units
        out = self.raw_forecast(params, to_units(crop(rain), jnp), to_units(crop(extrap), jnp), crop(valid))
        return self.contract.from_model_units(out, jnp)


TASKS = {task.source: task for task in (MovingMNISTTask, RadarTask)}


def make_task(config) -> MovingMNISTTask | RadarTask:  # an ExtrapolationTask is a RadarTask
    """The task of ``config.data.source`` (``config.task = "precip"``): the one place the source is read.

    A radar config with ``model.kind="extrapolation"`` makes an :class:`ExtrapolationTask`."""
    task_class = TASKS.get(config.data.source)
    if task_class is None:
        raise ConfigError(f"config.data.source must be one of {sorted(TASKS)}; got {config.data.source!r}")
    kind = config.model.get("kind", "") or "encoder_forecaster"
    if kind not in MODEL_KINDS:  # before any event is decoded
        raise ConfigError(f"config.model.kind must be one of {MODEL_KINDS}; got {kind!r}")
    if task_class is RadarTask and kind == "extrapolation":
        task_class = ExtrapolationTask
    return task_class(config)
