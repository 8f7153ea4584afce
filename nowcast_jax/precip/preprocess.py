"""The fitted preprocessing contract of radar nowcasting: how a radar file becomes model inputs.

One frozen, hashable, JSON-able :class:`RadarContract`, fitted from ``config.data`` and the
training archive (:func:`reading_contract`, then :func:`fit_grid`), saved with every checkpoint
(``Task.state_extras``) and in every export sidecar (``sidecar["preprocess"]``), and used by
training, evaluation and serving alike. The path from a radar file to model inputs is::

    radar files  --read_frames-->  [T, H0, W0] mm/h, NaN outside the domain
                                   (pysteps importer -> mm/h (Z-R where needed) -> downsample)
                 --centre_crop-->  [T, h, w]  (evaluation and serving; training draws random crops)
                 --observed_rain-> 0 mm/h + mask where unobserved
                 --to_model_units-> the rain transform ``(t(R) - offset) / scale``

The contract is fitted in two steps, so that training reads through it too:
:func:`reading_contract` (what to read and how, from ``config.data``) gives
:class:`nowcast_jax.precip.dataset.RadarDataset` its reader (:meth:`RadarContract.read_frames`);
:func:`fit_grid` then records the grid measured through that reader on a training event and
resolves the evaluation crop against it. Training and evaluation batches (crops placed by
:func:`crop_shape` / :func:`centre_origin`, here, beside the contract's own centre crop) are
put in model units by :meth:`RadarContract.model_batch`; serving
(:mod:`nowcast_jax.precip.serve`) reads folders with the same :meth:`RadarContract.read_frames`
and cuts :meth:`RadarContract.centre_crop`, and the exported forecaster applies
:meth:`RadarContract.to_model_units` inside (``xp=jax.numpy``).

Numpy only (never imports jax; the transform takes the array module as ``xp``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from nowcast_jax.engine.config import ConfigError
from nowcast_jax.precip import decode

CONTRACT_VERSION = 1


# --------------------------------------------------------------------------------------
# Crop geometry (shared by the dataset's crops and the contract's centre crop)
# --------------------------------------------------------------------------------------


def crop_shape(crop_size: int | tuple[int, int] | None, frame_shape: tuple[int, int]) -> tuple[int, int]:
    """``(h, w)`` of a crop: ``crop_size`` (int = square, None = the whole frame) checked to fit ``frame_shape``."""
    if crop_size is None:
        return int(frame_shape[0]), int(frame_shape[1])
    ch, cw = (crop_size, crop_size) if isinstance(crop_size, (int, np.integer)) else tuple(crop_size)
    if ch > frame_shape[0] or cw > frame_shape[1] or ch < 1 or cw < 1:
        raise ValueError(f"crop {ch}x{cw} does not fit the (downsampled) frame {frame_shape[0]}x{frame_shape[1]}")
    return int(ch), int(cw)


def check_crop(crop_size, grid: tuple[int, int], key: str = "data.crop_size", downsample_factor: int | None = None,
               *, multiple: int = 1) -> tuple[int, int]:
    """``(h, w)`` of the config crop ``crop_size`` (``key``, e.g. ``data.crop_size`` or
    ``data.eval_crop_size``; 0 = the full frame, trimmed to the largest multiple of ``multiple``:
    a 160 x 177 frame with 4x4 patches is scored on its centred 160 x 176) on the measured,
    downsampled ``grid``.

    A crop larger than the grid (or, with ``multiple`` > 1, e.g. ``model.patch_size``, a crop
    that is not a multiple of it) is a :class:`ConfigError` naming ``key``, the crop, the grid,
    the downsampling and the sizes that would work."""
    grid = (int(grid[0]), int(grid[1]))
    size = parse_crop_size(crop_size, key)
    shown = _shown_crop(crop_size)
    scale = f" after data.downsample={int(downsample_factor)}" if downsample_factor else ""
    m = max(1, int(multiple))
    fits = (grid[0] // m * m, grid[1] // m * m)  # the largest crop that fits (and is a multiple of ``multiple``)
    of_m = f" (multiples of model.patch_size={m})" if m > 1 else ""
    full = "0 (the full frame) or " if fits == grid else f"0 (the full frame trimmed to {fits}) or "
    try:
        hw = crop_shape(size, grid)
    except ValueError:
        raise ConfigError(f"{key}={shown} does not fit the frame: the files decode to {grid[0]}x{grid[1]} pixels"
                          f"{scale}; set {key}={full}a size up to {fits}{of_m}") from None
    if size is None:  # 0 = the full frame, trimmed (centred) to the largest multiple of ``multiple``
        return fits
    if hw[0] % m or hw[1] % m:
        raise ConfigError(f"{key}={shown}: {hw[0]}x{hw[1]} is not a multiple of model.patch_size={m} "
                          f"(the files decode to {grid[0]}x{grid[1]} pixels{scale}); set {key}={full}"
                          f"a size up to {fits}{of_m}")
    return hw


def _shown_crop(value) -> str:
    """A config crop size as a user would type it on the command line."""
    if isinstance(value, (list, tuple)):
        return "(" + ",".join(str(int(v)) for v in value) + ("," if len(value) == 1 else "") + ")"
    return repr(value)


def centre_origin(frame_shape: tuple[int, int], crop_hw: tuple[int, int]) -> tuple[int, int]:
    """``(y, x)`` of the centred ``crop_hw`` in ``frame_shape`` (the evaluation and serving crop)."""
    return (int(frame_shape[0]) - int(crop_hw[0])) // 2, (int(frame_shape[1]) - int(crop_hw[1])) // 2


def parse_crop_size(value, key: str = "data.crop_size") -> int | tuple[int, int] | None:
    """A config crop size -> int, ``(h, w)`` or None (0 / empty = the full frame).

    A command line ``--config.data.eval_crop_size=0`` against a tuple default arrives as
    ``(0,)``: also the full frame; ``(64,)`` is 64 x 64."""
    if value is None:
        return None
    if isinstance(value, str):
        raise ConfigError(f"{key}={value!r}: a crop size is a number or (height, width); 0 = the full frame")
    if isinstance(value, (int, np.integer)):
        return int(value) or None
    sizes = tuple(int(v) for v in value)
    if not any(sizes):
        return None
    if len(sizes) == 1:
        return sizes[0]
    if len(sizes) != 2 or min(sizes) <= 0:
        raise ConfigError(f"{key}={value!r}: a crop size is a number or (height, width) > 0; 0 = the full frame")
    return sizes


# --------------------------------------------------------------------------------------
# The rain transform
# --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
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
# The contract
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RadarContract:
    """Everything between a radar file and the model's inputs, as fitted for one training run.

    Reading: ``importer`` (pysteps name), ``importer_kwargs`` (stored as sorted ``(name,
    value)`` pairs, lists as tuples, so the contract hashes; :attr:`importer_options` gives the
    dict the importer takes), ``fn_pattern`` (pysteps file-name pattern), ``zr_a`` / ``zr_b``
    (Z-R for reflectivity importers; None = from the importer's metadata),
    ``downsample_factor`` (NaN-aware block mean), ``timestep_minutes``.
    Geometry: ``grid`` = the full downsampled frame ``(H0, W0)`` measured on a training event,
    ``eval_crop`` = the centred ``(h, w)`` the forecaster sees at evaluation and serving.
    Windows: ``input_steps`` (J) and ``output_steps`` (K). Units: ``transform``.

    ``grid`` and ``eval_crop`` are None in the reading contract (:func:`reading_contract`),
    before :func:`fit_grid` measures the grid through it. ``importer``, ``fn_pattern`` and
    ``grid`` are None in contracts rebuilt from export sidecars written before the contract
    existed (:func:`nowcast_jax.precip.serve.sidecar_contract`).
    """

    importer: str | None
    importer_kwargs: tuple[tuple[str, Any], ...]
    fn_pattern: str | None
    zr_a: float | None
    zr_b: float | None
    timestep_minutes: float
    downsample_factor: int
    grid: tuple[int, int] | None
    eval_crop: tuple[int, int] | None
    input_steps: int
    output_steps: int
    transform: RainTransform

    def __post_init__(self):
        if isinstance(self.importer_kwargs, Mapping):  # a dict given: stored as sorted pairs
            object.__setattr__(self, "importer_kwargs", _freeze_kwargs(self.importer_kwargs))

    @property
    def importer_options(self) -> dict:
        """``importer_kwargs`` as the keyword arguments of the importer (tuples back to lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.importer_kwargs}

    # ---- radar file -> model inputs -----------------------------------------------------
    def read_frames(self, paths, cache_dir=None) -> np.ndarray:
        """Decode radar files: ``[T, H0, W0]`` float32 mm/h, NaN outside the domain.

        The one reader of the application: training's events (whole, cached in ``cache_dir``)
        and serving's folders (:func:`nowcast_jax.precip.decode.decode_event` with the
        contract's importer, Z-R and downsampling). Files whose grids differ raise
        :class:`~nowcast_jax.precip.decode.GridMismatchError`.
        """
        if self.importer is None:
            raise ValueError("the contract records no importer (a sidecar written before the contract existed)")
        return decode.decode_event(list(paths), self.importer, self.importer_options,
                                   downsample_factor=self.downsample_factor, zr_a=self.zr_a, zr_b=self.zr_b,
                                   cache_dir=cache_dir)

    def crop_origin(self, frame_shape: tuple[int, int]) -> tuple[int, int]:
        """``(y, x)`` of the evaluation crop in a frame of ``frame_shape``."""
        return centre_origin(frame_shape, self.eval_crop)

    def centre_crop(self, rain: np.ndarray) -> np.ndarray:
        """``[..., H0, W0] -> [..., h, w]``: the evaluation crop, as the evaluation windows are cut."""
        h, w = self.eval_crop
        if rain.shape[-2] < h or rain.shape[-1] < w:
            raise ValueError(f"frames {rain.shape[-2]}x{rain.shape[-1]} are smaller than the crop {h}x{w}")
        y, x = self.crop_origin(rain.shape[-2:])
        return rain[..., y:y + h, x:x + w]

    def to_model_units(self, rain_mm_h, xp=np):
        """mm/h (0 where unobserved) -> the model's input units; ``xp``: numpy or jax.numpy."""
        return self.transform.forward(rain_mm_h, xp)

    def from_model_units(self, values, xp=np):
        """The model's units -> mm/h (the exact inverse of :meth:`to_model_units` above the floor)."""
        return self.transform.inverse(values, xp)

    def model_batch(self, batch_mm_h: dict) -> dict:
        """A mm/h batch of the dataset -> the same batch in model units (masks unchanged)."""
        out = dict(batch_mm_h)
        out["inputs"] = self.to_model_units(batch_mm_h["inputs"])
        out["targets"] = self.to_model_units(batch_mm_h["targets"])
        return out

    # ---- serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-able; :meth:`from_dict` inverts it."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out.update(version=CONTRACT_VERSION, transform=self.transform.to_dict(),
                   grid=list(self.grid) if self.grid is not None else None,
                   eval_crop=list(self.eval_crop) if self.eval_crop is not None else None,
                   importer_kwargs=self.importer_options)
        return json.loads(json.dumps(out))

    @classmethod
    def from_dict(cls, d: dict) -> "RadarContract":
        """The contract written by :meth:`to_dict` (a checkpoint's extras, a sidecar's ``preprocess``)."""
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in d]
        if missing:
            raise ValueError(f"radar preprocessing contract lacks {missing} (have {sorted(d)})")
        if int(d.get("version", CONTRACT_VERSION)) > CONTRACT_VERSION:
            raise ValueError(f"radar preprocessing contract version {d['version']} is newer than this "
                             f"package reads ({CONTRACT_VERSION}); upgrade nowcast_jax")
        return cls(importer=d["importer"], importer_kwargs=dict(d["importer_kwargs"] or {}),
                   fn_pattern=d["fn_pattern"], zr_a=_maybe_float(d["zr_a"]), zr_b=_maybe_float(d["zr_b"]),
                   timestep_minutes=float(d["timestep_minutes"]), downsample_factor=int(d["downsample_factor"]),
                   grid=_maybe_pair(d["grid"]), eval_crop=_maybe_pair(d["eval_crop"]),
                   input_steps=int(d["input_steps"]), output_steps=int(d["output_steps"]),
                   transform=make_transform(**d["transform"]))


def _freeze_kwargs(kwargs: Mapping) -> tuple[tuple[str, Any], ...]:
    """Importer keyword arguments as sorted ``(name, value)`` pairs, lists as tuples (hashable)."""
    return tuple(sorted((str(k), tuple(v) if isinstance(v, list) else v) for k, v in dict(kwargs).items()))


def _maybe_float(value) -> float | None:
    return None if value is None else float(value)


def _maybe_pair(value) -> tuple[int, int] | None:
    return None if value is None else (int(value[0]), int(value[1]))


# --------------------------------------------------------------------------------------
# Fitting: what to read (from the config), then the grid (measured through the reader)
# --------------------------------------------------------------------------------------


def reading_contract(data) -> RadarContract:
    """The contract of ``config.data`` before the grid is known: the reader, the step, J/K, the units.

    ``data.zr_a`` / ``data.zr_b`` of 0 (or absent) mean "from the importer's metadata".
    ``data.importer_kwargs`` are merged over the importer's defaults
    (:func:`nowcast_jax.precip.decode.resolve_importer_kwargs`; empty = the defaults, never
    another importer's) and the contract records the result. They must be JSON-able numbers,
    strings, booleans, None or lists of them (they are stored with every checkpoint and
    export): else :class:`ConfigError`.
    """
    zr_a, zr_b = float(data.get("zr_a", 0) or 0), float(data.get("zr_b", 0) or 0)
    transform = make_transform(data.transform, float(data.transform_scale), float(data.get("transform_offset", 0.0)),
                               float(data.get("transform_floor_mm_h", 0.1)))
    return RadarContract(
        importer=str(data.importer), importer_kwargs=_checked_kwargs(data.importer, data.importer_kwargs),
        fn_pattern=str(data.fn_pattern), zr_a=zr_a or None, zr_b=zr_b or None,
        timestep_minutes=float(data.timestep_minutes), downsample_factor=int(data.downsample), grid=None,
        eval_crop=None, input_steps=int(data.input_frames), output_steps=int(data.output_frames),
        transform=transform)


def _checked_kwargs(importer, kwargs) -> tuple[tuple[str, Any], ...]:
    """``data.importer_kwargs`` over the importer's defaults, frozen, or a :class:`ConfigError`
    naming the value JSON or hashing refuses."""
    given = dict(kwargs.to_dict() if hasattr(kwargs, "to_dict") else kwargs or {})
    try:
        kwargs = decode.resolve_importer_kwargs(str(importer), given)
    except ValueError as err:
        raise ConfigError(f"data.importer_kwargs: {err}") from None
    try:
        frozen = _freeze_kwargs(kwargs)
        json.dumps(kwargs)
        hash(frozen)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"data.importer_kwargs must hold numbers, strings, booleans, None or lists of them "
                          f"(they are saved with the checkpoint); got {kwargs!r}: {err}") from None
    return frozen


def fit_grid(reader: RadarContract, grid: tuple[int, int], eval_crop_size, *, multiple: int = 1) -> RadarContract:
    """``reader`` with the ``grid`` measured through it (``RadarDataset.frame_shape()``, a
    training event) and the evaluation crop (``data.eval_crop_size``; 0 = the full frame)
    resolved against it: :func:`check_crop` (a crop that does not fit, or is not a multiple of
    ``multiple`` = ``model.patch_size`` when given, is a :class:`ConfigError` naming the key)."""
    grid = (int(grid[0]), int(grid[1]))
    eval_crop = check_crop(eval_crop_size, grid, "data.eval_crop_size", reader.downsample_factor, multiple=multiple)
    return dataclasses.replace(reader, grid=grid, eval_crop=eval_crop)
