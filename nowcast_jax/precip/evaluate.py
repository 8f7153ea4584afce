"""Scores and figures of the precipitation application: model vs persistence (vs optical flow).

The CLI's hooks: :func:`evaluate` (``nowcast-jax evaluate``) and :func:`format_report`.

Radar (:func:`score_radar`): every forecaster is scored on the same test windows and the
same pixels: ``target_mask`` (radar observed the target) AND the mask of the last input
frame (a forecaster could start from there), in mm/h, with the streaming verifier of
:mod:`nowcast_jax.metrics` (event ``>=`` threshold). The model sees the windows through the
task's fitted contract (mm/h -> model units -> forecast -> mm/h). Optical flow is pysteps
LK + semi-Lagrangian extrapolation on the mm/h inputs (NaN outside the domain). The
extrapolation model adds ``extrapolation``: pysteps' extrapolation of the full frame along the
model's own motion, cropped (what the model corrects). With ``eval.fss_scales`` (pixels of the
downsampled grid) the FSS; ``rain_area`` / ``mean_rain`` per lead for every forecaster and the
observations (``observed``), to see blurring and lost intensity.

Moving MNIST (:func:`score_moving_mnist`): cross-entropy per 10-frame sequence (the paper's
Table 1 number) and MSE per lead on probabilities; persistence as a probability clipped to
``[eps, 1 - eps]``.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from nowcast_jax import baselines, losses, metrics
from nowcast_jax.precip import plots
from nowcast_jax.precip.task import MovingMNISTTask, RadarTask

RADAR_SCORES = ("csi", "pod", "far", "corr", "mse", "mae")
FORECAST_KEYS = ("inputs", "extrapolation", "extrapolation_mask")  # what a forecaster may read of a batch
PERSISTENCE_EPS = 1e-3


def _common_mask(batch: dict) -> np.ndarray:
    """``[B, K, H, W, 1]``: target observed and last input frame observed."""
    return batch["target_mask"] & batch["input_mask"][:, -1:]


def radar_forecasts(task, forecast, params, batch_mm: dict) -> dict[str, np.ndarray]:
    """All forecasts of one mm/h batch, each ``[B, K, H, W, 1]`` mm/h: ``model``, ``persistence``,
    ``optical_flow`` and, for the extrapolation model, ``extrapolation`` (what it corrects).

    ``forecast`` is the (jitted) ``task.forecast_batch``; the batch's unobserved pixels hold 0 mm/h.
    """
    k = task.output_frames
    units = task.model_batch(batch_mm)
    units = {name: units[name] for name in FORECAST_KEYS if name in units}
    model = task.contract.from_model_units(np.asarray(forecast(params, units)))
    raw = np.where(batch_mm["input_mask"], batch_mm["inputs"], np.nan)
    out = {"model": model}
    if "extrapolation" in batch_mm:
        out["extrapolation"] = np.asarray(batch_mm["extrapolation"], np.float32)
    out.update(persistence=baselines.persistence(batch_mm["inputs"], k),
               optical_flow=baselines.optical_flow(raw, k, outside_value=0.0))
    return out


def _rain_amounts(field: np.ndarray, mask: np.ndarray, threshold: float) -> np.ndarray:
    """``[3, K]`` sums over the scored pixels: pixel count, pixels >= ``threshold``, rain (mm/h)."""
    m = mask.astype(np.float64)
    axes = tuple(i for i in range(field.ndim) if i != 1)
    wet = (field >= threshold) * m
    return np.stack([m.sum(axes), wet.sum(axes), (np.where(mask, field, 0.0)).sum(axes)])


def _amount_scores(sums: np.ndarray) -> dict[str, list]:
    """Mean rain area (fraction of scored pixels >= the first threshold) and mean rain rate per lead."""
    n = np.maximum(sums[0], 1.0)
    return {"rain_area": (sums[1] / n).tolist(), "mean_rain": (sums[2] / n).tolist()}


def score_radar(task, params, split: str, out_dir=None) -> dict:
    """``{forecaster: {"csi_0.5": [K], "pod_0.5", "far_0.5", ..., "fss_2.0_4", "corr", "mse", "mae",
    "rain_area", "mean_rain"}}`` plus ``"observed": {"rain_area", "mean_rain"}``.

    Forecasters: see :func:`radar_forecasts`; scores in mm/h per lead time (thresholds from
    ``config.eval.thresholds``, FSS windows in pixels of the downsampled grid from
    ``config.eval.fss_scales``; ``rain_area`` counts pixels >= the first threshold).
    ``"windows"`` counts the scored windows.
    """
    cfg = task.config.eval
    scales = tuple(int(s) for s in cfg.get("fss_scales", ()) or ())
    verifier = metrics.make_verifier(tuple(cfg.thresholds), scales)
    names = RADAR_SCORES + (("fss",) if scales else ())
    wet = float(tuple(cfg.thresholds)[0])
    forecast = jax.jit(task.forecast_batch)
    acc, amounts, first, n = {}, {}, None, 0
    for batch in task.eval_windows(split, int(cfg.predict_batch_size)):
        fc = radar_forecasts(task, forecast, params, batch)
        mask = _common_mask(batch)
        for name, pred in fc.items():
            acc.setdefault(name, verifier.init(task.output_frames))
            acc[name] = verifier.update(acc[name], pred, batch["targets"], mask)
        for name, field in [*fc.items(), ("observed", batch["targets"])]:
            amounts[name] = amounts.get(name, 0.0) + _rain_amounts(field, mask, wet)
        if first is None:
            first = (batch, fc)
        n += len(batch["inputs"])
    if first is None:
        raise ValueError(f"split {split!r} produced no windows")
    results = {name: metrics.named_scores(verifier.compute(a), names) for name, a in acc.items()}
    for name, sums in amounts.items():
        results.setdefault(name, {}).update(_amount_scores(sums))
    results["windows"] = n
    if out_dir:
        plots.plot_strip(first[0], first[1], Path(out_dir) / f"precip_radar_{split}.png", rain=True)
    return results


def _persistence_logits(inputs: np.ndarray, k: int) -> np.ndarray:
    p = np.clip(baselines.persistence(inputs, k), PERSISTENCE_EPS, 1 - PERSISTENCE_EPS)
    return np.log(p) - np.log1p(-p)


def _mnist_sums(logits, targets) -> tuple[float, np.ndarray]:
    """(sum over sequences of cross-entropy, squared-error sums per lead ``[K]``)."""
    per_seq = float(losses.sigmoid_bce(logits, targets, reduction="sum_per_sequence")) * len(targets)
    se = np.square(np.asarray(jax.nn.sigmoid(jnp.asarray(logits))) - targets)
    return per_seq, se.reshape(se.shape[0], se.shape[1], -1).mean(-1).sum(0)


def score_moving_mnist(task, params, split: str, out_dir=None) -> dict:
    """``{"model": {"bce_per_sequence": float, "mse": [K]}, "persistence": {...}, "sequences": n}``.

    Also ``"model_3digits"`` (the out-of-domain set) when ``eval.ood`` is true and
    ``split == "test"``.
    """
    cfg = task.config.eval
    forecast = jax.jit(task.raw_forecast)
    results = _score_mnist(task, forecast, params, split, cfg, out_dir)
    if cfg.get("ood", False) and split == "test":
        ood = _score_mnist(task, forecast, params, "ood", cfg, None)
        results["model_3digits"] = ood["model"]
        results["persistence_3digits"] = ood["persistence"]
    return results


def _score_mnist(task, forecast, params, split, cfg, out_dir) -> dict:
    k = task.output_frames
    sums = {"model": [0.0, np.zeros(k)], "persistence": [0.0, np.zeros(k)]}
    n, first = 0, None
    for batch in task.eval_batches(split, int(cfg.predict_batch_size)):
        logits = {"model": np.asarray(forecast(params, batch["inputs"])),
                  "persistence": _persistence_logits(batch["inputs"], k)}
        for name, lg in logits.items():
            ce, se = _mnist_sums(lg, batch["targets"])
            sums[name][0] += ce
            sums[name][1] += se
        if first is None:
            first = (batch, {name: 1 / (1 + np.exp(-lg)) for name, lg in logits.items()})
        n += len(batch["inputs"])
    if n == 0:
        raise ValueError(f"split {split!r} produced no sequences")
    out = {name: {"bce_per_sequence": ce / n, "mse": (se / n).tolist()} for name, (ce, se) in sums.items()}
    out["sequences"] = n
    if out_dir:
        plots.plot_strip(first[0], first[1], Path(out_dir) / f"precip_moving_mnist_{split}.png", rain=False)
    return out


SCORERS = ((RadarTask, score_radar), (MovingMNISTTask, score_moving_mnist))


def evaluate(restored, split: str, out_dir=None) -> dict:
    """Scores of a restored run (``.config``, ``.task``, ``.params``) on ``split`` (JSON-able).

    The scorer follows the task's class (:data:`SCORERS`); ``out_dir`` (or
    ``config.eval.out_dir`` when None) receives the PNG strip.
    """
    task = restored.task
    scorer = next((fn for cls, fn in SCORERS if isinstance(task, cls)), None)
    if scorer is None:
        raise TypeError(f"no precipitation scorer for a {type(task).__name__}; have {[c.__name__ for c, _ in SCORERS]}")
    out_dir = out_dir or restored.config.eval.get("out_dir", "") or None
    return scorer(task, restored.params, split, out_dir)


def format_report(results: dict, restored) -> str:
    """What ``nowcast-jax evaluate`` prints: one row per forecaster and score, one column per lead."""
    source = restored.task.source
    count = results.get("windows", results.get("sequences"))
    step = float(restored.config.data.get("timestep_minutes", 0) or 0)
    rows = []
    for forecaster, scores in results.items():
        if isinstance(scores, dict):
            rows += [(forecaster, name, v if isinstance(v, (list, tuple)) else [v]) for name, v in scores.items()]
    width = max((len(r[2]) for r in rows), default=1)
    leads = [f"+{(i + 1) * step:g}min" if step else f"lead{i + 1}" for i in range(width)]
    head = ["forecaster", "score"] + (leads if width > 1 else ["value"])
    body = [[f, s] + [f"{v:.4g}" for v in vals] for f, s, vals in rows]
    cols = [max(len(r[i]) for r in [head] + body if i < len(r)) for i in range(len(head))]
    lines = ["  ".join(c.ljust(cols[i]) for i, c in enumerate(r)) for r in [head, ["-" * c for c in cols]] + body]
    unit = "windows (scores in mm/h)" if isinstance(restored.task, RadarTask) else "sequences"
    return "\n".join([f"{source}: {count} {unit}, model vs baselines", *lines])
