"""The precipitation Task: ConvLSTM encoder-forecaster (Shi et al., NeurIPS 2015).

``config.data.source`` picks the data:

* ``"moving_mnist"``: frames in [0, 1]; the model outputs logits; the loss is the
  sigmoid cross-entropy (the paper's), reported per sequence as in the paper's Table 1
  (aux metric ``bce_per_sequence``; the optimised loss is the per-pixel mean, which only
  rescales it).
* ``"radar"``: rain rate through a transform (log1p by default); the model outputs values
  in transformed units, optionally as a residual on the last observed frame
  (``model.residual``); loss ``mse`` / ``mae`` / ``balanced_mse`` / ``balanced_mae`` on
  the transformed values, masked where the radar did not observe, with optional lead-time
  weights (``loss.horizon_weights``). Balanced weights are picked from the observed rain
  rate in mm/h (inverse transform of the targets).

Batches (numpy, see :mod:`nowcast_jax.precip.sources`): ``inputs [B, J, H, W, 1]``,
``targets [B, K, H, W, 1]``, for radar also ``input_mask`` / ``target_mask`` (bool, same
shapes). Scores: :mod:`nowcast_jax.precip.evaluate`.
"""

from __future__ import annotations

from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from nowcast_jax import losses, models
from nowcast_jax.engine.config import ConfigError
from nowcast_jax.precip import sources as precip_data
from nowcast_jax.precip import evaluate as precip_report

MODEL_KEYS = ("patch_size", "hidden", "kernel_x", "kernel_h", "peepholes", "peephole_shape", "forget_bias",
              "forecaster_input",
              "feedback", "cell", "remat", "unroll", "conv_impl")
RADAR_LOSSES = {"mse": losses.mse, "mae": losses.mae, "balanced_mse": losses.balanced_mse,
                "balanced_mae": losses.balanced_mae}


def build_model(model_cfg) -> models.Model:
    """``models.encoder_forecaster`` from ``config.model`` (``compute_dtype`` "" = float32)."""
    kwargs = {k: model_cfg[k] for k in MODEL_KEYS if k in model_cfg}
    kwargs["hidden"] = tuple(int(h) for h in kwargs["hidden"])
    dtype = model_cfg.get("compute_dtype", "")
    try:
        return models.encoder_forecaster(frame_channels=1, compute_dtype=jnp.dtype(dtype) if dtype else None,
                                         **kwargs)
    except (ValueError, TypeError) as err:  # a model.* value the model refuses: a config error, named
        raise ConfigError(f"config.model: {err}") from None


class PrecipTask:
    """Task protocol implementation (see ``docs/architecture.md``) for both sources."""

    name = "precip"

    def __init__(self, config):
        self.config = config
        self.source_name = config.data.source
        self.source = precip_data.make_source(config.data)
        self.input_frames = int(config.data.input_frames)
        self.output_frames = int(config.data.output_frames)
        self.model = build_model(config.model)
        self.residual = bool(config.model.get("residual", False))
        if self.residual and self.source_name != "radar":
            raise ValueError("model.residual applies to radar values only (Moving MNIST outputs logits)")
        hw = tuple(float(w) for w in config.loss.horizon_weights)
        if hw and len(hw) != self.output_frames:
            raise ValueError(f"loss.horizon_weights has {len(hw)} entries; need data.output_frames="
                             f"{self.output_frames} (or none)")
        self.horizon_weights = np.asarray(hw, np.float32) if hw else None
        if self.source_name == "radar" and config.loss.name not in RADAR_LOSSES:
            raise ValueError(f"loss.name must be one of {sorted(RADAR_LOSSES)} for radar; got {config.loss.name!r}")

    # -- model ------------------------------------------------------------------------
    def init_params(self, key):
        """Parameters for frames of the training sample shape ``source.frame_shape``."""
        return self.model.init(key, self.source.frame_shape)

    def predict(self, params, inputs):
        """``inputs [B, J, H, W, 1]`` -> raw forecast ``[B, K, H, W, 1]`` (logits or transformed values)."""
        out = self.model.apply(params, inputs, output_steps=self.output_frames)
        if self.residual:
            out = out + inputs[:, -1:]
        return out

    def loss_fn(self, params, batch, key):
        """Scalar loss and aux metrics of one batch (``key`` unused: the model is deterministic)."""
        del key
        out = self.predict(params, batch["inputs"])
        if self.source_name == "moving_mnist":
            return self._mnist_loss(out, batch["targets"])
        return self._radar_loss(out, batch["targets"], batch["target_mask"])

    def _mnist_loss(self, logits, targets):
        loss = losses.sigmoid_bce(logits, targets)
        per_seq = losses.sigmoid_bce(logits, targets, reduction="sum_per_sequence")
        mse = jnp.mean(jnp.square(jax.nn.sigmoid(logits) - targets))
        return loss, {"bce_per_sequence": per_seq, "mse": mse}

    def _radar_loss(self, pred, targets, mask):
        cfg = self.config.loss
        fn = RADAR_LOSSES[cfg.name]
        if cfg.name.startswith("balanced"):
            rain = self.source.transform.inverse(targets, jnp)
            loss = fn(pred, targets, rain, tuple(cfg.thresholds), tuple(cfg.weights), mask=mask,
                      horizon_weights=self.horizon_weights)
        else:
            loss = fn(pred, targets, mask=mask, horizon_weights=self.horizon_weights)
        return loss, {"mse_transformed": losses.mse(pred, targets, mask=mask)}

    # -- data -------------------------------------------------------------------------
    def train_batch(self, step: int, batch_size: int, seed: int) -> dict[str, np.ndarray]:
        """Stateless training batch: a pure function of ``(seed, step)``."""
        return self.source.train_batch(int(step), int(batch_size), int(seed))

    def eval_batches(self, split: str, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Fixed evaluation batches of ``split`` (at most ``eval.max_windows`` samples when > 0)."""
        return self.source.eval_batches(split, batch_size, int(self.config.eval.max_windows))

    def evaluate(self, params, split: str, out_dir=None) -> dict:
        """Model vs baselines on ``split`` (see :mod:`nowcast_jax.precip.evaluate`).

        ``out_dir`` (or ``config.eval.out_dir`` when None) receives a PNG strip.
        """
        out_dir = out_dir or self.config.eval.get("out_dir", "") or None
        if self.source_name == "moving_mnist":
            return precip_report.evaluate_moving_mnist(self, params, split, out_dir)
        return precip_report.evaluate_radar(self, params, split, out_dir)

    # -- export -----------------------------------------------------------------------
    def export_spec(self, params):
        """For ``nowcast-jax export``: ``(fn, input_specs, sidecar)``.

        Radar: ``rain [b, J, H, W, 1]`` mm/h (0 outside the domain) -> ``[b, K, H, W, 1]`` mm/h,
        the stored rain transform baked in; ``H, W`` is the evaluation grid (the centred
        ``eval_crop_size`` of the downsampled frames). The sidecar's ``radar.grid`` is the full
        downsampled frame ``[H0, W0]`` and ``radar.centre_crop`` the ``[H, W]`` cut from it, so
        ``nowcast-jax predict`` can refuse frames at another scale. Moving MNIST: frames in
        [0, 1] -> pixel probabilities.
        """
        from nowcast_jax.engine import export

        data = self.config.data
        if self.source_name == "moving_mnist":
            size = int(data.frame_size)
            fn = lambda frames: jax.nn.sigmoid(self.predict(params, frames))  # noqa: E731
            sidecar = {"kind": "frames", "units": "pixel intensity in [0, 1]"}
            return fn, export.batch_specs(((self.input_frames, size, size, 1), "float32")), sidecar
        transform = self.source.transform
        height, width = next(self.source.eval_batches("test", 1, 1))["inputs"].shape[2:4]

        def fn(rain):  # [b, J, H, W, 1] mm/h -> [b, K, H, W, 1] mm/h
            return transform.inverse(self.predict(params, transform.forward(rain, jnp)), jnp)

        sidecar = {
            "kind": "radar", "units": "mm/h", "input_steps": self.input_frames, "output_steps": self.output_frames,
            "time_step_minutes": float(data.timestep_minutes), "normalisation": self.state_extras(),
            "radar": {"importer": data.importer, "importer_kwargs": dict(data.importer_kwargs),
                      "fn_pattern": data.fn_pattern, "downsample_factor": int(data.downsample),
                      "grid": [int(v) for v in self.source.ds.frame_shape()],  # full downsampled frame
                      "centre_crop": [int(height), int(width)]},
            "inputs": [{"name": "rain", "units": "mm/h"}], "outputs": [{"name": "rain", "units": "mm/h"}]}
        return fn, export.batch_specs(((self.input_frames, height, width, 1), "float32")), sidecar

    # -- extras -----------------------------------------------------------------------
    def state_extras(self) -> dict:
        """JSON-able: the source and, for radar, the rain transform parameters."""
        return self.source.extras()

    def load_extras(self, extras: dict) -> None:
        self.source.load_extras(extras or {})


def make_task(config) -> PrecipTask:
    """Factory used by the CLI (``config.task = "precip"``)."""
    return PrecipTask(config)
