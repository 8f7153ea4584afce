"""Data sources of the precipitation task, built from ``config.data`` (numpy only).

Two sources share one small interface (all batches are numpy dicts, channels last)::

    source.frame_shape                      -> (H, W, 1) of a training sample
    source.train_batch(step, batch_size, seed)
        Moving MNIST: {"inputs": [B, J, 64, 64, 1], "targets": [B, K, 64, 64, 1]} in [0, 1]
        radar:        {"inputs", "targets", "input_mask", "target_mask"} in transformed
                      units (see ``nowcast_jax.precip.dataset``), masks bool, same shapes
    source.eval_batches(split, batch_size)  -> same layout, fixed sets (no augmentation)

Paths: ``data.mnist_path`` / ``data.files`` may be absolute or relative to the data root
(``$NOWCAST_JAX_DATA`` or ``../shared/data``, see :mod:`nowcast_jax._paths`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np

from nowcast_jax._paths import data_root

SOURCES = ("moving_mnist", "radar")


def resolve_data_path(path: str) -> str:
    """``path`` as is when absolute (or ``~``); else joined to the data root.

    Raises ``FileNotFoundError`` naming ``NOWCAST_JAX_DATA`` when a relative path is given
    and no data root exists.
    """
    path = os.path.expanduser(str(path))
    if os.path.isabs(path):
        return path
    root = data_root()
    if root is None:
        raise FileNotFoundError(
            f"data path {path!r} is relative but no data root was found: set NOWCAST_JAX_DATA or "
            "place ../shared/data beside the checkout, or give an absolute path")
    return str(Path(root) / path)


def default_cache_dir() -> str:
    """``$NOWCAST_JAX_CACHE/radar`` or ``~/.cache/nowcast_jax/radar`` (decoded radar events)."""
    base = os.environ.get("NOWCAST_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "nowcast_jax")
    return os.path.join(base, "radar")


def _size(value):
    """Config crop size -> int, (h, w) tuple or None (0 / empty = full frame)."""
    if value is None or value == 0 or value == () or value == []:
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    return tuple(int(v) for v in value)


# ------------------------------------------------------------------------------ Moving MNIST
class MovingMNISTSource:
    """Moving MNIST over the MNIST test digits (train/test digit pools never overlap).

    Splits: ``"val"`` = a fixed set over training digits, ``"test"`` = fixed set over test
    digits, ``"ood"`` = test digits with 3 per sequence (the paper's out-of-domain test).
    """

    def __init__(self, data):
        from nowcast_jax.precip.moving_mnist import MovingMNIST

        path = resolve_data_path(data.mnist_path) if data.mnist_path else None
        self.mm = MovingMNIST.from_mnist(path, n_train=int(data.n_train_digits) or None,
                                         num_digits=int(data.num_digits), input_frames=int(data.input_frames),
                                         output_frames=int(data.output_frames), frame_size=int(data.frame_size))
        self.eval_seed = int(data.eval_seed)
        self.eval_sizes = {"val": int(data.val_sequences), "test": int(data.test_sequences),
                           "ood": int(data.test_sequences)}
        self.frame_shape = (self.mm.frame_size, self.mm.frame_size, 1)

    def train_batch(self, step: int, batch_size: int, seed: int) -> dict[str, np.ndarray]:
        """Sequences ``step*B .. step*B+B-1`` of the endless stream of ``seed``."""
        return self.mm.batch(seed, step, batch_size)

    def eval_batches(self, split: str, batch_size: int, limit: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """The fixed set of ``split`` (``val``, ``test`` or ``ood``), at most ``limit`` (>0) sequences."""
        if split not in self.eval_sizes:
            raise ValueError(f"Moving MNIST split must be one of {sorted(self.eval_sizes)}; got {split!r}")
        n = self.eval_sizes[split] if limit <= 0 else min(limit, self.eval_sizes[split])
        pool = "train" if split == "val" else "test"
        digits = 3 if split == "ood" else None
        yield from self.mm.iter_fixed_set(self.eval_seed, n, batch_size, split=pool, num_digits=digits)

    def extras(self) -> dict:
        return {"source": "moving_mnist"}

    def load_extras(self, extras: dict) -> None:
        pass


# ------------------------------------------------------------------------------ radar
class RadarSource:
    """A pysteps-readable radar archive as training crops and evaluation windows.

    ``config.data`` keys: ``files`` (glob, absolute or relative to the data root),
    ``fn_pattern``, ``importer``, ``importer_kwargs``, ``timestep_minutes``,
    ``input_frames`` (J), ``output_frames`` (K), ``downsample``, ``crop_size``,
    ``eval_crop_size`` (0 = full frame), ``augment``, ``min_rain_fraction``,
    ``rain_threshold``, ``transform`` (``log1p`` | ``dbr`` | ``none``), ``transform_scale``,
    ``test_events``, ``val_events``, ``event_gap_minutes``, ``cache_dir`` ("" = default).
    """

    def __init__(self, data):
        from nowcast_jax.precip import dataset as radar

        self._radar = radar
        files = [resolve_data_path(f) for f in ([data.files] if isinstance(data.files, str) else data.files)]
        self.ds = radar.RadarDataset.open(
            files, data.fn_pattern, data.importer, float(data.timestep_minutes),
            int(data.input_frames), int(data.output_frames),
            importer_kwargs=dict(data.importer_kwargs), event_gap_minutes=float(data.event_gap_minutes),
            transform=data.transform, transform_scale=float(data.transform_scale),
            downsample_factor=int(data.downsample), cache_dir=data.cache_dir or default_cache_dir(),
            crop_size=_size(data.crop_size), eval_crop_size=_size(data.eval_crop_size),
            augment=bool(data.augment), min_rain_fraction=float(data.min_rain_fraction),
            rain_threshold=float(data.rain_threshold), max_tries=int(data.max_tries),
            test_events=_events(data.test_events), val_events=_events(data.val_events))
        crop = _size(data.crop_size)
        if crop is None:
            h, w = self.ds.frame_shape()
        else:
            h, w = (crop, crop) if isinstance(crop, int) else crop
        self.frame_shape = (h, w, 1)

    @property
    def transform(self):
        return self.ds.transform

    def train_batch(self, step: int, batch_size: int, seed: int) -> dict[str, np.ndarray]:
        """Random (rainy, augmented) crops of training windows; pure function of (seed, step)."""
        return self.ds.train_batch(step, batch_size, seed)

    def eval_batches(self, split: str, batch_size: int, limit: int = 0,
                     units: str = "transformed") -> Iterator[dict[str, np.ndarray]]:
        """Every window of ``split`` in time order (centred eval crop), at most ``limit`` (>0)."""
        count = 0
        for batch in self.ds.eval_batches(split, batch_size, units=units):
            if limit > 0:
                if count >= limit:
                    return
                batch = {k: v[: limit - count] for k, v in batch.items()}
            count += len(batch["inputs"])
            yield batch

    def extras(self) -> dict:
        return {"source": "radar", "transform": self.ds.transform.to_dict()}

    def load_extras(self, extras: dict) -> None:
        if "transform" in extras:
            self.ds.transform = self._radar.make_transform(**extras["transform"])


def _events(value) -> tuple:
    """Config event selectors (ints or id prefixes) -> tuple."""
    if isinstance(value, (int, str)):
        return (value,)
    return tuple(value)


def make_source(data):
    """Build the source named by ``data.source``."""
    if data.source == "moving_mnist":
        return MovingMNISTSource(data)
    if data.source == "radar":
        return RadarSource(data)
    raise ValueError(f"config.data.source must be one of {SOURCES}; got {data.source!r}")
