"""Scores and figures of the precipitation task: model vs persistence (vs optical flow).

Radar (:func:`evaluate_radar`): every forecaster is scored on the same test windows and
the same pixels: ``target_mask`` (radar observed the target) AND the mask of the last
input frame (a forecaster could start from there), in mm/h, with the streaming verifier
of :mod:`nowcast_jax.metrics` (event ``>=`` threshold). Optical flow is pysteps LK +
semi-Lagrangian extrapolation on the mm/h inputs (NaN outside the domain).

Moving MNIST (:func:`evaluate_moving_mnist`): cross-entropy per 10-frame sequence (the
paper's Table 1 number) and MSE per lead on probabilities; persistence as a probability
clipped to ``[eps, 1 - eps]``.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from nowcast_jax import baselines, losses, metrics
from nowcast_jax.precip import plots

RADAR_SCORES = ("csi", "pod", "far", "corr", "mse", "mae")
PERSISTENCE_EPS = 1e-3


def _common_mask(batch: dict) -> np.ndarray:
    """``[B, K, H, W, 1]``: target observed and last input frame observed."""
    return batch["target_mask"] & batch["input_mask"][:, -1:]


def radar_forecasts(task, predict, params, batch_mm: dict) -> dict[str, np.ndarray]:
    """All forecasts of one mm/h batch: ``{"model", "persistence", "optical_flow"}`` each ``[B, K, H, W, 1]`` mm/h."""
    k = task.output_frames
    transform = task.source.transform
    inputs = transform.forward(np.where(batch_mm["input_mask"], batch_mm["inputs"], 0.0))  # unobserved: 0 mm/h
    model = transform.inverse(np.asarray(predict(params, inputs)))
    raw = np.where(batch_mm["input_mask"], batch_mm["inputs"], np.nan)
    return {"model": model,
            "persistence": baselines.persistence(batch_mm["inputs"], k),
            "optical_flow": baselines.optical_flow(raw, k, outside_value=0.0)}


def evaluate_radar(task, params, split: str, out_dir=None) -> dict:
    """``{forecaster: {"csi_0.5": [K], "pod_0.5", "far_0.5", "csi_2.0", ..., "corr", "mse", "mae"}}``.

    Forecasters: ``model``, ``persistence``, ``optical_flow``; scores in mm/h per lead time
    (thresholds from ``config.eval.thresholds``). ``"windows"`` counts the scored windows.
    """
    cfg = task.config.eval
    verifier = metrics.make_verifier(tuple(cfg.thresholds))
    predict = jax.jit(task.predict)
    acc, first, n = {}, None, 0
    for batch in task.source.eval_batches(split, int(cfg.predict_batch_size), int(cfg.max_windows), units="mm_h"):
        fc = radar_forecasts(task, predict, params, batch)
        mask = _common_mask(batch)
        for name, pred in fc.items():
            acc.setdefault(name, verifier.init(task.output_frames))
            acc[name] = verifier.update(acc[name], pred, batch["targets"], mask)
        if first is None:
            first = (batch, fc)
        n += len(batch["inputs"])
    if first is None:
        raise ValueError(f"split {split!r} produced no windows")
    results = {name: metrics.named_scores(verifier.compute(a), RADAR_SCORES) for name, a in acc.items()}
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


def evaluate_moving_mnist(task, params, split: str, out_dir=None) -> dict:
    """``{"model": {"bce_per_sequence": float, "mse": [K]}, "persistence": {...}, "sequences": n}``.

    Also ``"model_3digits"`` (the out-of-domain set) when ``eval.ood`` is true and
    ``split == "test"``.
    """
    cfg = task.config.eval
    predict = jax.jit(task.predict)
    results = _score_mnist(task, predict, params, split, cfg, out_dir)
    if cfg.get("ood", False) and split == "test":
        ood = _score_mnist(task, predict, params, "ood", cfg, None)
        results["model_3digits"] = ood["model"]
        results["persistence_3digits"] = ood["persistence"]
    return results


def _score_mnist(task, predict, params, split, cfg, out_dir) -> dict:
    k = task.output_frames
    sums = {"model": [0.0, np.zeros(k)], "persistence": [0.0, np.zeros(k)]}
    n, first = 0, None
    for batch in task.source.eval_batches(split, int(cfg.predict_batch_size), int(cfg.max_windows)):
        logits = {"model": np.asarray(predict(params, batch["inputs"])),
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
