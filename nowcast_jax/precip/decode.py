"""Decoding radar files: pysteps importer -> rain rate in mm/h -> downsampling -> disk cache.

The second stage of the radar pipeline (archive -> **decode** -> events -> windows -> crops):
:func:`decode_event` is the one function that turns radar files into rain-rate frames, for
training (whole events, cached) and serving (the last frames of a folder) alike, both
through :meth:`nowcast_jax.precip.preprocess.RadarContract.read_frames`.

Numpy only (never imports jax; pysteps is imported lazily).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

CACHE_VERSION = 1


def radar_cache_dir() -> str:
    """``$NOWCAST_JAX_CACHE/radar`` or ``~/.cache/nowcast_jax/radar``: where decoded events are cached."""
    base = os.environ.get("NOWCAST_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "nowcast_jax")
    return os.path.join(base, "radar")


# --------------------------------------------------------------------------------------
# Decoding: importer -> mm/h -> downsample -> cache
# --------------------------------------------------------------------------------------

Importer = Callable[..., tuple]


class GridMismatchError(ValueError):
    """Files decoded together (one event, one serving folder) hold fields of different shapes."""

    def __init__(self, path: str, shape: tuple[int, ...], first: tuple[int, ...]):
        self.path, self.shapes = path, sorted({tuple(shape), tuple(first)})
        super().__init__(f"{path} has grid {tuple(shape)}, the first file has {tuple(first)}")


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
        known = str(err).strip().splitlines()[-1]  # pysteps: "The available methods are:[...]"
        raise ValueError(f"unknown importer {importer!r} ({known})") from None


# The keyword arguments each known pysteps importer is called with when ``data.importer_kwargs``
# is empty: what the shared data's README and pysteps' data sources (``pystepsrc``) use, with
# the importer's own signature defaults written out where they shape the field (MRMS
# ``window_size``, the HDF5 quantity), so that a fitted contract records them and stays
# reproducible if pysteps changes a default. Importers not listed: ``{}``.
IMPORTER_DEFAULTS: dict[str, dict] = {
    "mch_gif": {"product": "AQC", "unit": "mm", "accutime": 5.0},  # required by pysteps; AQC = 5-min sums in mm
    "fmi_pgm": {"gzipped": True},  # FMI's archive (and pysteps' example data) is .pgm.gz
    "bom_rf3": {},
    "mrms_grib": {"window_size": 4},  # pysteps' default: 3500x7000 at 0.01 deg -> 875x1750 at 0.04 deg
    "knmi_hdf5": {"qty": "ACRR", "accutime": 5.0},
    "odim_hdf5": {"qty": "RATE"},
    "opera_hdf5": {"qty": "RATE"},
    "dwd_hdf5": {"qty": "RATE"},
    "mch_hdf5": {"qty": "RATE"},
    "saf_crri": {},
    "fmi_geotiff": {},
}


# Arguments that only make sense together: one given without the others would be merged with
# defaults of another product (MeteoSwiss: a rate product with accutime=5 reads as 12x the rain).
IMPORTER_TOGETHER: dict[str, tuple[str, ...]] = {"mch_gif": ("product", "unit", "accutime")}


def resolve_importer_kwargs(importer: str | Importer, importer_kwargs=None) -> dict:
    """The keyword arguments ``importer`` is called with: its :data:`IMPORTER_DEFAULTS`
    (``{}`` for an importer not listed or a callable) with ``importer_kwargs`` (the user's,
    e.g. ``data.importer_kwargs``) merged over them. Empty or None = the importer's defaults.

    So switching ``data.importer`` never carries another importer's arguments along."""
    defaults = {} if callable(importer) else IMPORTER_DEFAULTS.get(str(importer), {})
    given = importer_kwargs.to_dict() if hasattr(importer_kwargs, "to_dict") else dict(importer_kwargs or {})
    together = () if callable(importer) else IMPORTER_TOGETHER.get(str(importer), ())
    if any(k in given for k in together) and not all(k in given for k in together):
        raise ValueError(f"importer {importer!r} needs {', '.join(together)} together (they describe one product; "
                         f"got {sorted(given)}): give all three, e.g. {{'product': 'RZC', 'unit': 'mm/h', "
                         "'accutime': 5.0}, or none for the AQC defaults")
    return {**defaults, **given}


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
    field_, metadata = _import_field(path, importer, importer_kwargs)
    return to_rain_rate(field_, metadata, zr_a=zr_a, zr_b=zr_b), metadata


def _import_field(path: str, importer: str | Importer, importer_kwargs: dict | None) -> tuple[np.ndarray, dict]:
    """The importer's field of one file (float64, masked -> NaN) and its metadata, units as stored."""
    out = get_importer(importer)(path, **(importer_kwargs or {}))
    return np.ma.filled(np.ma.asarray(out[0], dtype=np.float64), np.nan), out[-1]


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
    only) without calling the importer. Files of different shapes raise
    :class:`GridMismatchError` (checked before each file's conversion to mm/h).
    """
    path = None
    if cache_dir is not None:
        key = cache_key(paths, importer, importer_kwargs, downsample_factor=downsample_factor, zr_a=zr_a, zr_b=zr_b)
        path = Path(cache_dir).expanduser() / f"radar-{key}.npy"
        if path.is_file():
            return np.load(path, mmap_mode="r")
    frames, grid = [], None
    for p in paths:
        field_, metadata = _import_field(p, importer, importer_kwargs)
        grid = grid or field_.shape
        if field_.shape != grid:  # before the conversion, whose errors would hide it
            raise GridMismatchError(p, field_.shape, grid)
        frames.append(downsample(to_rain_rate(field_, metadata, zr_a=zr_a, zr_b=zr_b), downsample_factor))
    data = np.stack(frames).astype(np.float32)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, data)
        os.replace(tmp, path)
    return data


def observed_rain(rain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(rain with 0 mm/h where unobserved, mask)``: the mask is True where the value is finite.

    The one place where "outside the radar domain" becomes a mask and a zero; batches for
    training and evaluation and frames for serving all go through it. Shapes are kept.
    """
    mask = np.isfinite(rain)
    return np.where(mask, rain, 0.0).astype(np.float32), mask
