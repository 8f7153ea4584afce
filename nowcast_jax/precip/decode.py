"""Decoding radar files: pysteps importer -> rain rate in mm/h -> downsampling -> disk cache;
and the rain transforms (log1p, dBR) with their exact inverses.

Numpy only (never imports jax; pysteps is imported lazily). Part of :mod:`nowcast_jax.precip.dataset`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

CACHE_VERSION = 1

# Decoding: importer -> mm/h -> downsample -> cache
# --------------------------------------------------------------------------------------

Importer = Callable[..., tuple]


def get_importer(importer: str | Importer) -> Importer:
    """A pysteps importer by name (e.g. ``"mch_gif"``, ``"bom_rf3"``) or a callable as is.

    A callable must behave like a pysteps importer: ``f(path, **kwargs) -> (field,
    quality, metadata)``.
    """
    if callable(importer):
        return importer
    from pysteps import io as pysteps_io

    try:
        return pysteps_io.get_method(str(importer), "importer")
    except ValueError as err:
        raise ValueError(f"unknown importer {importer!r}: {err}") from None


def to_rain_rate(
    field_: np.ndarray, metadata: dict, *, zr_a: float | None = None, zr_b: float | None = None
) -> np.ndarray:
    """Convert an importer's field to rain rate in mm/h using its metadata.

    Uses ``metadata["unit"]`` (``mm``, ``mm/h`` or ``dBZ``), ``metadata["transform"]``
    (``None``, ``dB``, ...), ``metadata["accutime"]`` (minutes; accumulations are divided
    by it and multiplied by 60) and, for reflectivity, the Z-R coefficients (``zr_a``,
    ``zr_b`` given here, else from the metadata; there is no silent default Z-R). NaN
    stays NaN. Returns float32 with the field's shape.
    """
    from pysteps.utils import conversion

    meta = dict(metadata)
    unit = meta.get("unit")
    if unit not in ("mm", "mm/h", "dBZ"):
        raise ValueError(f"cannot convert unit {unit!r} to mm/h (expected 'mm', 'mm/h' or 'dBZ')")
    if unit == "mm" and not meta.get("accutime"):
        raise ValueError("metadata has unit 'mm' but no accumulation time 'accutime' (minutes)")
    if unit == "dBZ":
        zr_a = zr_a if zr_a is not None else meta.get("zr_a")
        zr_b = zr_b if zr_b is not None else meta.get("zr_b")
        if zr_a is None or zr_b is None:
            raise ValueError(
                "reflectivity (dBZ) needs Z-R coefficients: pass zr_a and zr_b or use an importer that sets them"
            )
    meta.setdefault("transform", None)
    meta.setdefault("threshold", 0.0)
    meta.setdefault("zerovalue", 0.0)
    rain, _ = conversion.to_rainrate(np.asarray(field_, np.float64), meta, zr_a=zr_a, zr_b=zr_b)
    return np.asarray(rain, np.float32)


def read_rain_rate(
    path: str,
    importer: str | Importer,
    importer_kwargs: dict | None = None,
    *,
    zr_a: float | None = None,
    zr_b: float | None = None,
) -> tuple[np.ndarray, dict]:
    """Decode one file: ``(rain [H, W] float32 mm/h with NaN outside the domain, metadata)``."""
    fn = get_importer(importer)
    out = fn(path, **(importer_kwargs or {}))
    field_, metadata = out[0], out[-1]
    field_ = np.ma.filled(np.ma.asarray(field_, dtype=np.float64), np.nan)
    return to_rain_rate(field_, metadata, zr_a=zr_a, zr_b=zr_b), metadata


def downsample(x: np.ndarray, factor: int, min_valid_fraction: float = 0.5) -> np.ndarray:
    """NaN-aware block mean over the last two axes: ``[..., H, W] -> [..., H//f, W//f]``.

    Rows/columns beyond a multiple of ``factor`` are dropped (bottom/right). A block is
    the mean of its finite pixels, or NaN when fewer than ``min_valid_fraction`` of them
    are finite. ``factor=1`` returns the input unchanged.
    """
    if factor == 1:
        return x
    if factor < 1:
        raise ValueError(f"downsample factor must be >= 1, got {factor}")
    *lead, h, w = x.shape
    hh, ww = h // factor, w // factor
    if hh == 0 or ww == 0:
        raise ValueError(f"downsample factor {factor} is larger than the field {h}x{w}")
    blocks = x[..., : hh * factor, : ww * factor].reshape(*lead, hh, factor, ww, factor)
    valid = np.isfinite(blocks)
    count = valid.sum(axis=(-3, -1))
    total = np.where(valid, blocks, 0.0).sum(axis=(-3, -1), dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
    mean[count < min_valid_fraction * factor * factor] = np.nan
    mean[count == 0] = np.nan
    return mean.astype(x.dtype)


def _importer_name(importer: str | Importer) -> str:
    if callable(importer):
        return f"{getattr(importer, '__module__', '?')}.{getattr(importer, '__qualname__', repr(importer))}"
    return str(importer)


def cache_key(
    paths: Sequence[str],
    importer: str | Importer,
    importer_kwargs: dict | None,
    *,
    downsample_factor: int = 1,
    zr_a: float | None = None,
    zr_b: float | None = None,
) -> str:
    """Hex key of a decoded event: file list (path, size, mtime), importer, kwargs, options."""
    files = []
    for p in paths:
        st = os.stat(p)
        files.append([os.path.abspath(p), st.st_size, st.st_mtime_ns])
    payload = {
        "version": CACHE_VERSION,
        "importer": _importer_name(importer),
        "kwargs": sorted((str(k), repr(v)) for k, v in (importer_kwargs or {}).items()),
        "downsample": int(downsample_factor),
        "zr": [zr_a, zr_b],
        "files": files,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def decode_event(
    paths: Sequence[str],
    importer: str | Importer,
    importer_kwargs: dict | None = None,
    *,
    downsample_factor: int = 1,
    zr_a: float | None = None,
    zr_b: float | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> np.ndarray:
    """Rain rate of a list of files, ``[T, H, W]`` float32 mm/h, NaN outside the domain.

    With ``cache_dir`` the result is stored as ``<cache_dir>/<cache_key>.npy`` (written
    atomically) and later calls, in this or any process, load it (memory-mapped, read
    only) without calling the importer.
    """
    path = None
    if cache_dir is not None:
        key = cache_key(paths, importer, importer_kwargs, downsample_factor=downsample_factor, zr_a=zr_a, zr_b=zr_b)
        path = Path(cache_dir).expanduser() / f"radar-{key}.npy"
        if path.is_file():
            return np.load(path, mmap_mode="r")
    frames, grid = [], None
    for p in paths:
        rain, _ = read_rain_rate(p, importer, importer_kwargs, zr_a=zr_a, zr_b=zr_b)
        grid = grid or rain.shape
        if rain.shape != grid:
            raise ValueError(f"{p} has grid {rain.shape}, the event's first file has {grid}")
        frames.append(downsample(rain, downsample_factor))
    data = np.stack(frames).astype(np.float32)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, data)
        os.replace(tmp, path)
    return data


# --------------------------------------------------------------------------------------
# Rain transform
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RainTransform:
    """A rain-rate transform and its inverse, followed by a scaling ``(t - offset) / scale``.

    ``kind``:
      * ``"log1p"``: ``t = log(1 + R)``; inverse ``R = exp(t) - 1`` (negative R clipped to
        0 first; inverse is exact to float rounding, negatives out of the model -> 0).
      * ``"dbr"``: ``t = 10 log10(R)`` for ``R > floor``; ``R <= floor`` maps to
        ``10 log10(floor) - zero_gap_db`` (pysteps' convention, 5 dB below the floor).
        Inverse: ``R = 10**(t/10)``, and 0 where ``t`` is below
        ``10 log10(floor) - zero_gap_db/2``. Exact for ``R > floor``; ``R <= floor`` -> 0.
      * ``"none"``: identity (mm/h).

    NaN stays NaN in both directions. Inputs/outputs keep their shape; float32 out.
    """

    kind: str = "log1p"
    scale: float = 1.0
    offset: float = 0.0
    floor_mm_h: float = 0.1
    zero_gap_db: float = 5.0

    def __post_init__(self):
        if self.kind not in ("log1p", "dbr", "none"):
            raise ValueError(f"unknown rain transform {self.kind!r}; use 'log1p', 'dbr' or 'none'")
        if self.scale == 0:
            raise ValueError("transform scale must be non-zero")
        if self.kind == "dbr" and self.floor_mm_h <= 0:
            raise ValueError("dBR needs floor_mm_h > 0")

    def forward(self, rain_mm_h, xp=np):
        """mm/h -> transformed and scaled units (float32).

        ``xp`` is the array module: ``numpy`` (default) or ``jax.numpy`` inside a compiled
        function (the exported forecaster bakes the transform in this way).
        """
        r = xp.asarray(rain_mm_h, np.float64 if xp is np else np.float32)
        if self.kind == "log1p":
            t = xp.log1p(xp.maximum(r, 0.0))  # NaN propagates
        elif self.kind == "dbr":
            floor_db = 10.0 * math.log10(self.floor_mm_h)
            with np.errstate(divide="ignore", invalid="ignore"):
                floor = np.float32(self.floor_mm_h)  # the same cut for float32 (jax) and float64 (numpy)
                t = xp.where(r > floor, 10.0 * xp.log10(xp.where(r > 0, r, 1.0)), floor_db - self.zero_gap_db)
            t = xp.where(xp.isnan(r), np.nan, t)
        else:
            t = r
        return ((t - self.offset) / self.scale).astype(np.float32)

    def inverse(self, x, xp=np):
        """Transformed and scaled units -> mm/h (float32); ``xp`` as in :meth:`forward`."""
        t = xp.asarray(x, np.float64 if xp is np else np.float32) * self.scale + self.offset
        if self.kind == "log1p":
            r = xp.maximum(xp.expm1(t), 0.0)
        elif self.kind == "dbr":
            floor_db = 10.0 * math.log10(self.floor_mm_h)
            r = xp.where(t < floor_db - 0.5 * self.zero_gap_db, 0.0, 10.0 ** (t / 10.0))
        else:
            r = t
        return r.astype(np.float32)

    def to_dict(self) -> dict:
        """JSON-able parameters (store with the checkpoint)."""
        return {"kind": self.kind, "scale": self.scale, "offset": self.offset,
                "floor_mm_h": self.floor_mm_h, "zero_gap_db": self.zero_gap_db}


def make_transform(kind: str = "log1p", scale: float = 1.0, offset: float = 0.0, floor_mm_h: float = 0.1,
                   zero_gap_db: float = 5.0) -> RainTransform:
    """Build a :class:`RainTransform` from plain config values."""
    return RainTransform(kind=kind, scale=float(scale), offset=float(offset), floor_mm_h=float(floor_mm_h),
                         zero_gap_db=float(zero_gap_db))


# --------------------------------------------------------------------------------------
