"""Figures of the precipitation application: the forecast strip of an evaluation and the
radar forecast PNG of serving.

matplotlib's ``Figure`` only (never pyplot), so the caller's backend and figures are left alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_strip(batch: dict, forecasts: dict, path: Path, *, rain: bool, sample: int | None = None) -> Path:
    """PNG: row 1 inputs, row 2 truth, one row per forecaster; one sample of the batch.

    ``sample=None`` picks the sample with the most observed rain (radar) or the first.
    Radar fields are drawn in mm/h on a log colour scale; pixels below 0.1 mm/h or unobserved
    are blank.
    """
    import matplotlib.colors as mcolors
    from matplotlib.figure import Figure  # not pyplot: leaves the caller's backend and figures alone

    targets = batch["targets"][..., 0]
    if sample is None:
        sample = int(np.argmax(targets.reshape(len(targets), -1).sum(-1))) if rain else 0
    rows = [("inputs", batch["inputs"][sample, ..., 0]), ("truth", targets[sample])]
    rows += [(name, np.asarray(f)[sample, ..., 0]) for name, f in forecasts.items()]
    cols = max(len(r[1]) for r in rows)
    fig = Figure(figsize=(1.3 * cols, 1.4 * len(rows)))
    axes = fig.subplots(len(rows), cols, squeeze=False)
    kw = dict(cmap="viridis", norm=mcolors.LogNorm(0.1, 50.0)) if rain else dict(cmap="gray", vmin=0, vmax=1)
    mask_in = batch.get("input_mask")
    for r, (label, frames) in enumerate(rows):
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(frames):
                ax.axis("off")
                continue
            img = frames[c].astype(np.float32)
            if rain:
                valid = (mask_in[sample, c, ..., 0] if r == 0 else batch["target_mask"][sample, c, ..., 0])
                img = np.where(valid & (img >= 0.1), img, np.nan)
            ax.imshow(img, **kw)
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
            if r == 0 or r == 1:
                ax.set_title(f"t{'-' if r == 0 else '+'}{(len(frames) - 1 - c) if r == 0 else c + 1}", fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    return path


def plot_radar(inputs: np.ndarray, forecast: np.ndarray, path: Path, step=None) -> Path:
    """A PNG: the input frames (top row) and the forecast frames (bottom row), mm/h."""
    from matplotlib.figure import Figure  # not pyplot: leaves the caller's backend and figures alone

    cols = max(len(inputs), len(forecast))
    fig = Figure(figsize=(1.6 * cols, 3.4))
    axes = fig.subplots(2, cols, squeeze=False)
    vmax = max(float(np.nanmax(inputs)) if np.isfinite(inputs).any() else 1.0, 1.0)
    for row, frames, label in ((0, inputs, "input"), (1, forecast, "forecast")):
        for k in range(cols):
            ax = axes[row, k]
            ax.axis("off")
            if k < len(frames):
                im = ax.imshow(frames[k], vmin=0, vmax=vmax, cmap="Blues")
                minutes = (k - len(frames) + 1 if row == 0 else k + 1) * (step or 0)
                ax.set_title(f"{label} {minutes:+.0f} min" if step else f"{label} {k}", fontsize=7)
    fig.colorbar(im, ax=axes, shrink=0.8, label="mm/h")
    fig.savefig(path, dpi=80)
    return path
