"""Radar archives -> rain-rate windows, masks, crops and numpy batches (numpy + pysteps only).

Pipeline (each step a small function, the :class:`RadarDataset` ties them together)::

    glob + fn_pattern      list_frames()          -> [Frame(time, path)], sorted by time
    events                 group_events()         -> [Event], contiguous runs of frames
    windows                find_windows()         -> frame indices of J+K consecutive frames;
                                                     windows crossing a gap are dropped + counted
    decode                 read_rain_rate()       -> mm/h float32 [H, W], NaN outside the domain
                           downsample()           -> NaN-aware block mean
                           decode_event()         -> [T, H, W] per event, cached on disk (.npy)
    split                  split_events()         -> train / val / test by whole events
    sample                 sample_crop()          -> CropSpec, a pure function of (seed, index)
    batch                  RadarDataset.train_batch / eval_batches -> numpy dict

Units and layout of a batch (``B`` windows, ``J`` input and ``K`` target frames)::

    {"inputs":  [B, J, H, W, 1] float32,  "input_mask":  [B, J, H, W, 1] bool,
     "targets": [B, K, H, W, 1] float32,  "target_mask": [B, K, H, W, 1] bool}

Values are in the units of the dataset's :class:`RainTransform` (``units="transformed"``,
the default) or in mm/h (``units="mm_h"``). Masks are ``True`` where the radar observed
(finite value); masked pixels hold the finite fill value ``0.0`` (in output units).

This module never imports jax; pysteps is imported lazily (only when files are decoded).
"""

from __future__ import annotations

import glob as _glob
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

__all__ = [
    "Frame",
    "Event",
    "CropSpec",
    "RainTransform",
    "make_transform",
    "fn_pattern_regex",
    "parse_timestamp",
    "list_frames",
    "group_events",
    "find_windows",
    "split_events",
    "get_importer",
    "to_rain_rate",
    "read_rain_rate",
    "downsample",
    "decode_event",
    "cache_key",
    "sample_crop",
    "augment",
    "RadarDataset",
]

CACHE_VERSION = 1

# --------------------------------------------------------------------------------------
# File names -> timestamps
# --------------------------------------------------------------------------------------

# strftime directives understood in ``fn_pattern`` and the digits each one occupies.
_DIRECTIVE_WIDTH = {"Y": 4, "y": 2, "m": 2, "d": 2, "j": 3, "H": 2, "M": 2, "S": 2}


@dataclass(frozen=True)
class Frame:
    """One archived field: its valid time and file path."""

    time: datetime
    path: str


@dataclass(frozen=True)
class Event:
    """A contiguous run of frames (the unit of the train/test split).

    ``id`` is the start time as ``YYYYmmddTHHMM``; ``frames`` are sorted by time.
    """

    id: str
    frames: tuple[Frame, ...]

    @property
    def times(self) -> list[datetime]:
        return [f.time for f in self.frames]

    @property
    def paths(self) -> list[str]:
        return [f.path for f in self.frames]


def fn_pattern_regex(fn_pattern: str) -> tuple[re.Pattern, str]:
    """Compile a pysteps-style file-name pattern into a regex and a ``strptime`` format.

    The pattern is the one of ``pysteps.io.archive.find_by_date`` (file name without the
    extension): literal text, strftime directives ``%Y %y %m %d %j %H %M %S`` (fixed
    width digits), ``%%`` for a literal percent, ``?`` for any single character (as in
    pysteps) and ``*`` for any run of characters. Examples: MeteoSwiss
    ``"AQC%y%j%H%M?_00005.801"``, BoM ``"2_%Y%m%d_%H%M00.prcp-cscn"``.

    Returns ``(regex, strptime_format)``: the regex matches a file name from its start
    and captures one group per directive; joining the groups with ``"|"`` and parsing
    with ``strptime_format`` gives the timestamp.
    """
    parts: list[str] = []
    directives: list[str] = []
    i = 0
    while i < len(fn_pattern):
        ch = fn_pattern[i]
        if ch == "%":
            if i + 1 >= len(fn_pattern):
                raise ValueError(f"fn_pattern {fn_pattern!r} ends with a lone '%'")
            code = fn_pattern[i + 1]
            if code == "%":
                parts.append("%")
            elif code in _DIRECTIVE_WIDTH:
                parts.append(rf"(\d{{{_DIRECTIVE_WIDTH[code]}}})")
                directives.append("%" + code)
            else:
                raise ValueError(
                    f"fn_pattern {fn_pattern!r} uses %{code}; supported directives are "
                    + " ".join("%" + c for c in _DIRECTIVE_WIDTH)
                )
            i += 2
            continue
        if ch == "?":
            parts.append(".")
        elif ch == "*":
            parts.append(".*?")
        else:
            parts.append(re.escape(ch))
        i += 1
    if not directives:
        raise ValueError(f"fn_pattern {fn_pattern!r} contains no time directive (e.g. %Y%m%d%H%M)")
    return re.compile("".join(parts)), "|".join(directives)


def parse_timestamp(path: str | os.PathLike, fn_pattern: str) -> datetime:
    """Timestamp of a file from its base name and a pysteps ``fn_pattern``.

    The pattern must match the start of the base name (the extension and anything after
    the pattern are ignored). Raises ``ValueError`` naming the file and the pattern when
    it does not match or the digits do not form a valid date.
    """
    regex, fmt = fn_pattern_regex(fn_pattern)
    name = os.path.basename(os.fspath(path))
    m = regex.match(name)
    if m is None:
        raise ValueError(f"timestamp not parseable: file name {name!r} does not match fn_pattern {fn_pattern!r}")
    try:
        return datetime.strptime("|".join(m.groups()), fmt)
    except ValueError as err:
        raise ValueError(f"timestamp not parseable from {name!r} with fn_pattern {fn_pattern!r}: {err}") from None


def _expand_files(files: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Paths matched by one glob or a list of globs/paths (recursive ``**`` allowed)."""
    patterns = [files] if isinstance(files, (str, os.PathLike)) else list(files)
    out: set[str] = set()
    for pat in patterns:
        pat = os.path.expanduser(os.fspath(pat))
        out.update(p for p in _glob.glob(pat, recursive=True) if os.path.isfile(p))
    if not out:
        raise FileNotFoundError(f"no files matched the glob {files!r}")
    return sorted(out)


def list_frames(files: str | os.PathLike | Sequence[str | os.PathLike], fn_pattern: str) -> list[Frame]:
    """All files matched by ``files`` (glob or list of globs) with their timestamps, sorted.

    Raises ``FileNotFoundError`` when nothing matches, ``ValueError`` when a name does not
    match ``fn_pattern`` or two files carry the same timestamp.
    """
    frames = sorted((Frame(parse_timestamp(p, fn_pattern), p) for p in _expand_files(files)), key=lambda f: f.time)
    for a, b in zip(frames, frames[1:]):
        if a.time == b.time:
            raise ValueError(f"two files have the same timestamp {a.time:%Y-%m-%d %H:%M}: {a.path} and {b.path}")
    return frames


# --------------------------------------------------------------------------------------
# Events, windows, splits (timestamps only; nothing is decoded)
# --------------------------------------------------------------------------------------


def group_events(frames: Sequence[Frame], *, by: str = "gap", max_gap_minutes: float = 60.0) -> list[Event]:
    """Group time-sorted frames into events.

    ``by="gap"``: a new event starts where consecutive frames are more than
    ``max_gap_minutes`` apart (shorter gaps stay inside the event; windows crossing them
    are dropped by :func:`find_windows`). ``by="date"``: one event per calendar date of
    the frame times. ``by="dir"``: one event per parent directory.
    """
    if by not in ("gap", "date", "dir"):
        raise ValueError(f"unknown event grouping {by!r}; use 'gap', 'date' or 'dir'")
    frames = sorted(frames, key=lambda f: f.time)
    groups: list[list[Frame]] = []
    for f in frames:
        if groups:
            prev = groups[-1][-1]
            if by == "gap":
                same = (f.time - prev.time) <= timedelta(minutes=max_gap_minutes)
            elif by == "date":
                same = f.time.date() == prev.time.date()
            else:
                same = os.path.dirname(f.path) == os.path.dirname(prev.path)
            if same:
                groups[-1].append(f)
                continue
        groups.append([f])
    return [Event(g[0].time.strftime("%Y%m%dT%H%M"), tuple(g)) for g in groups]


def find_windows(times: Sequence[datetime], timestep_minutes: float, length: int) -> tuple[np.ndarray, int]:
    """Windows of ``length`` frames at a fixed step inside one event.

    For every frame time ``t0`` with ``t0 + (length-1)*step <= times[-1]`` the window
    ``t0, t0+step, ..., t0+(length-1)*step`` is a candidate. It is kept when every one of
    those times is present and dropped (counted) when one is missing, i.e. the window
    crosses a gap. ``timestep_minutes`` may be a multiple of the archive step
    (subsampling).

    Returns ``(windows [N, length] int64 frame indices, n_dropped)``.
    """
    if length < 1:
        raise ValueError(f"window length must be >= 1, got {length}")
    step = timedelta(minutes=timestep_minutes)
    if step <= timedelta(0):
        raise ValueError(f"timestep_minutes must be > 0, got {timestep_minutes}")
    index = {t: i for i, t in enumerate(times)}
    windows: list[list[int]] = []
    dropped = 0
    if not times:
        return np.zeros((0, length), np.int64), 0
    last = times[-1]
    for t0 in times:
        if t0 + (length - 1) * step > last:
            continue
        idx = [index.get(t0 + k * step) for k in range(length)]
        if any(i is None for i in idx):
            dropped += 1
        else:
            windows.append(idx)
    return np.asarray(windows, np.int64).reshape(-1, length), dropped


def _select_event(selector: int | str, events: Sequence[Event]) -> int:
    """Index of the event named by an int index (negative allowed) or an id prefix."""
    if isinstance(selector, (int, np.integer)):
        if not -len(events) <= selector < len(events):
            raise IndexError(f"event index {selector} out of range for {len(events)} events")
        return int(selector) % len(events)
    hits = [i for i, e in enumerate(events) if e.id.startswith(str(selector))]
    if len(hits) != 1:
        ids = [e.id for e in events]
        raise ValueError(f"event selector {selector!r} matches {len(hits)} events (need 1); event ids: {ids}")
    return hits[0]


def split_events(
    events: Sequence[Event], test: Sequence[int | str] = (-1,), val: Sequence[int | str] = ()
) -> dict[str, list[int]]:
    """Split events into ``train``/``val``/``test`` lists of event indices.

    ``test`` and ``val`` name events by index (``-1`` = last) or by a prefix of the event
    id (e.g. ``"20170131"``); every other event is training. A window never spans two
    events, so splits never share a frame. Raises when an event is named twice.
    """
    test_idx = [_select_event(s, events) for s in test]
    val_idx = [_select_event(s, events) for s in val]
    chosen = test_idx + val_idx
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"an event is selected twice across test={list(test)} and val={list(val)}")
    train_idx = [i for i in range(len(events)) if i not in set(chosen)]
    return {"train": train_idx, "val": sorted(val_idx), "test": sorted(test_idx)}


# --------------------------------------------------------------------------------------
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
# Crops and augmentation (stateless)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CropSpec:
    """Which window and which part of it: window id, crop origin, augmentation.

    ``rot90`` in 0..3 (quarter turns in the H-W plane), ``flip`` mirrors W first.
    """

    window: int
    y: int
    x: int
    rot90: int = 0
    flip: bool = False


def augment(x: np.ndarray, rot90: int, flip: bool) -> np.ndarray:
    """Flip (along W) then rotate by ``rot90`` quarter turns over axes (-2, -1) of ``[..., H, W]``."""
    if flip:
        x = x[..., ::-1]
    return np.rot90(x, k=rot90, axes=(-2, -1)) if rot90 % 4 else x


def sample_crop(
    seed: int,
    index: int,
    n_windows: int,
    frame_shape: tuple[int, int],
    crop_size: int | tuple[int, int] | None,
    *,
    augment_flips: bool = False,
    attempt: int = 0,
) -> CropSpec:
    """One random crop as a pure function of ``(seed, index, attempt)``.

    Picks a window uniformly among ``n_windows``, an origin uniformly so the crop lies in
    ``frame_shape``, and (with ``augment_flips``) a flip and a rotation (only 0/180
    degrees for non-square crops, so the shape stays fixed). ``crop_size=None``: full
    frame.
    """
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(index), int(attempt)])
    h, w = frame_shape
    ch, cw = _crop_hw(crop_size, frame_shape)
    window = int(rng.integers(n_windows))
    y = int(rng.integers(h - ch + 1))
    x = int(rng.integers(w - cw + 1))
    rot, flip = 0, False
    if augment_flips:
        rot = int(rng.integers(4)) if ch == cw else 2 * int(rng.integers(2))
        flip = bool(rng.integers(2))
    return CropSpec(window, y, x, rot, flip)


def _crop_hw(crop_size: int | tuple[int, int] | None, frame_shape: tuple[int, int]) -> tuple[int, int]:
    if crop_size is None:
        return tuple(frame_shape)
    ch, cw = (crop_size, crop_size) if isinstance(crop_size, (int, np.integer)) else tuple(crop_size)
    if ch > frame_shape[0] or cw > frame_shape[1] or ch < 1 or cw < 1:
        raise ValueError(f"crop {ch}x{cw} does not fit the (downsampled) frame {frame_shape[0]}x{frame_shape[1]}")
    return int(ch), int(cw)


# --------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------


@dataclass
class RadarDataset:
    """A radar archive as events, windows and numpy batches.

    Build it with :meth:`open` (plain config values). Decoding is lazy: an event is read
    (or loaded from ``cache_dir``) the first time one of its windows is needed, then kept
    in memory.

    Attributes: ``events`` (list of :class:`Event`), ``windows`` (``[N, 2]`` int64 rows
    ``(event index, first frame index)``), ``window_frames`` (``[N, J+K]`` frame indices),
    ``splits`` (``{"train"|"val"|"test": window ids}``), ``stats`` (counts).
    """

    events: list[Event]
    importer: Any
    importer_kwargs: dict
    timestep_minutes: float
    input_frames: int
    output_frames: int
    downsample_factor: int = 1
    cache_dir: str | None = None
    zr_a: float | None = None
    zr_b: float | None = None
    crop_size: int | tuple[int, int] | None = None
    eval_crop_size: int | tuple[int, int] | None = None
    augment: bool = False
    min_rain_fraction: float = 0.0
    min_valid_fraction: float = 0.5
    rain_threshold: float = 0.5
    max_tries: int = 20
    transform: RainTransform = field(default_factory=RainTransform)
    test_events: Sequence[int | str] = (-1,)
    val_events: Sequence[int | str] = ()
    # derived
    window_frames: np.ndarray = field(init=False)
    windows: np.ndarray = field(init=False)
    splits: dict = field(init=False)
    stats: dict = field(init=False)
    _rain: dict = field(init=False, default_factory=dict, repr=False)

    def __post_init__(self):
        length = self.input_frames + self.output_frames
        if self.input_frames < 1 or self.output_frames < 1:
            raise ValueError("input_frames and output_frames must be >= 1")
        rows, frames, dropped, per_event = [], [], 0, []
        for e_idx, event in enumerate(self.events):
            win, drop = find_windows(event.times, self.timestep_minutes, length)
            dropped += drop
            per_event.append(len(win))
            rows.extend((e_idx, int(w[0])) for w in win)
            frames.extend(win.tolist())
        self.windows = np.asarray(rows, np.int64).reshape(-1, 2)
        self.window_frames = np.asarray(frames, np.int64).reshape(-1, length)
        event_split = split_events(self.events, self.test_events, self.val_events)
        self.splits = {
            name: np.flatnonzero(np.isin(self.windows[:, 0], idx)) for name, idx in event_split.items()
        }
        self.stats = {
            "files": sum(len(e.frames) for e in self.events),
            "events": [e.id for e in self.events],
            "windows": len(self.windows),
            "windows_per_event": per_event,
            "dropped_gap": dropped,
            "split_events": {k: [self.events[i].id for i in v] for k, v in event_split.items()},
            "split_windows": {k: len(v) for k, v in self.splits.items()},
        }

    # ---- construction -------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        files: str | Sequence[str],
        fn_pattern: str,
        importer: str | Importer,
        timestep_minutes: float,
        input_frames: int,
        output_frames: int,
        *,
        importer_kwargs: dict | None = None,
        event_by: str = "gap",
        event_gap_minutes: float = 60.0,
        transform: str | RainTransform = "log1p",
        transform_scale: float = 1.0,
        transform_offset: float = 0.0,
        transform_floor_mm_h: float = 0.1,
        **options,
    ) -> "RadarDataset":
        """Index an archive from plain config values (no decoding happens here).

        ``files``: glob (or list); ``fn_pattern``: pysteps file-name pattern (see
        :func:`fn_pattern_regex`); ``importer``: pysteps importer name or callable;
        ``timestep_minutes``; ``input_frames`` (J); ``output_frames`` (K). Events are
        grouped with :func:`group_events` (``event_by``, ``event_gap_minutes``). Other
        keyword options are dataclass fields: ``downsample_factor``, ``cache_dir``,
        ``zr_a``, ``zr_b``, ``crop_size``, ``eval_crop_size``, ``augment``,
        ``min_rain_fraction``, ``min_valid_fraction``, ``rain_threshold``, ``max_tries``,
        ``test_events``, ``val_events``.
        """
        frames = list_frames(files, fn_pattern)
        events = group_events(frames, by=event_by, max_gap_minutes=event_gap_minutes)
        if not isinstance(transform, RainTransform):
            transform = make_transform(transform, transform_scale, transform_offset, transform_floor_mm_h)
        return cls(events=events, importer=importer, importer_kwargs=dict(importer_kwargs or {}),
                   timestep_minutes=timestep_minutes, input_frames=input_frames, output_frames=output_frames,
                   transform=transform, **options)

    # ---- decoded data -------------------------------------------------------------------

    def event_rain(self, event_index: int) -> np.ndarray:
        """Rain rate of one event, ``[T, H, W]`` float32 mm/h (NaN outside the domain)."""
        if event_index not in self._rain:
            self._rain[event_index] = decode_event(
                self.events[event_index].paths, self.importer, self.importer_kwargs,
                downsample_factor=self.downsample_factor, zr_a=self.zr_a, zr_b=self.zr_b,
                cache_dir=self.cache_dir)
        return self._rain[event_index]

    def frame_shape(self) -> tuple[int, int]:
        """(H, W) of the decoded, downsampled frames (decodes the first event if needed)."""
        for e in range(len(self.events)):
            if e in self._rain:
                return tuple(self._rain[e].shape[1:])
        return tuple(self.event_rain(0).shape[1:])

    def window_rain(self, window: int, y: int = 0, x: int = 0, size: tuple[int, int] | None = None) -> np.ndarray:
        """Rain rate of one window (all J+K frames) cropped at ``(y, x)``: ``[J+K, h, w]`` mm/h."""
        e, _ = self.windows[window]
        rain = self.event_rain(int(e))
        h, w = size if size is not None else rain.shape[1:]
        return np.asarray(rain[self.window_frames[window], y : y + h, x : x + w], np.float32)

    # ---- sampling -------------------------------------------------------------------------

    def train_crop(self, seed: int, index: int, split: str = "train") -> CropSpec:
        """The crop of training sample ``index``: pure function of ``(seed, index)``.

        Draws up to ``max_tries`` candidates (``attempt`` 0, 1, ...) and keeps the first
        whose valid (in-domain) fraction is >= ``min_valid_fraction`` and whose fraction of
        pixels with rain >= ``rain_threshold`` mm/h (over all J+K frames) is >=
        ``min_rain_fraction``; if none qualifies, the candidate with most rain.
        ``window`` in the result is a global window id.
        """
        ids = self._split_ids(split)
        shape = self.frame_shape()
        size = _crop_hw(self.crop_size, shape)
        best, best_score = None, -1.0
        for attempt in range(max(1, self.max_tries)):
            spec = sample_crop(seed, index, len(ids), shape, self.crop_size,
                               augment_flips=self.augment, attempt=attempt)
            spec = CropSpec(int(ids[spec.window]), spec.y, spec.x, spec.rot90, spec.flip)
            if self.min_rain_fraction <= 0 and self.min_valid_fraction <= 0:
                return spec
            rain = self.window_rain(spec.window, spec.y, spec.x, size)
            valid = np.isfinite(rain)
            valid_frac = valid.mean()
            rain_frac = (np.where(valid, rain, 0.0) >= self.rain_threshold).mean()
            if valid_frac >= self.min_valid_fraction and rain_frac >= self.min_rain_fraction:
                return spec
            score = rain_frac + (valid_frac >= self.min_valid_fraction)
            if score > best_score:
                best, best_score = spec, score
        return best

    def _split_ids(self, split: str) -> np.ndarray:
        if split not in self.splits:
            raise KeyError(f"unknown split {split!r}; have {sorted(self.splits)}")
        ids = self.splits[split]
        if len(ids) == 0:
            raise ValueError(f"split {split!r} has no windows (events {self.stats['split_events'][split]})")
        return ids

    # ---- batches --------------------------------------------------------------------------

    def batch_from_crops(self, crops: Sequence[CropSpec], units: str = "transformed",
                         crop_size: int | tuple[int, int] | None = None) -> dict[str, np.ndarray]:
        """Assemble a batch dict from crop specs (see the module docstring for shapes).

        ``units``: ``"transformed"`` (the dataset's :class:`RainTransform`) or ``"mm_h"``.
        """
        if units not in ("transformed", "mm_h"):
            raise ValueError(f"unknown units {units!r}; use 'transformed' or 'mm_h'")
        size = _crop_hw(crop_size, self.frame_shape())
        seqs = [augment(self.window_rain(c.window, c.y, c.x, size), c.rot90, c.flip) for c in crops]
        rain = np.stack(seqs)[..., None]  # [B, J+K, h, w, 1]
        mask = np.isfinite(rain)
        values = self.transform.forward(rain) if units == "transformed" else rain.astype(np.float32)
        values = np.where(mask, values, 0.0).astype(np.float32)
        j = self.input_frames
        return {"inputs": values[:, :j], "targets": values[:, j:],
                "input_mask": mask[:, :j], "target_mask": mask[:, j:]}

    def train_batch(self, step: int, batch_size: int, seed: int, *, split: str = "train",
                    units: str = "transformed") -> dict[str, np.ndarray]:
        """Training batch ``step``: sample ``i`` is :meth:`train_crop` ``(seed, step*batch_size+i)``."""
        crops = [self.train_crop(seed, step * batch_size + i, split) for i in range(batch_size)]
        return self.batch_from_crops(crops, units, self.crop_size)

    def eval_crops(self, split: str) -> list[CropSpec]:
        """Fixed crops for evaluation: every window of the split, centred ``eval_crop_size``."""
        shape = self.frame_shape()
        ch, cw = _crop_hw(self.eval_crop_size, shape)
        y, x = (shape[0] - ch) // 2, (shape[1] - cw) // 2
        return [CropSpec(int(w), y, x) for w in self._split_ids(split)]

    def eval_batches(
        self, split: str, batch_size: int, *, units: str = "transformed"
    ) -> Iterator[dict[str, np.ndarray]]:
        """All windows of ``split`` in order, centred crops, no augmentation; last batch may be smaller."""
        crops = self.eval_crops(split)
        for start in range(0, len(crops), batch_size):
            yield self.batch_from_crops(crops[start : start + batch_size], units, self.eval_crop_size)
