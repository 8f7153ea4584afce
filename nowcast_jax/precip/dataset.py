"""Radar archives -> rain-rate windows, masks, crops and numpy batches in mm/h (numpy only).

The last stages of the radar pipeline (archive -> decode -> events -> windows -> **crops**);
each step is a small function, :class:`RadarDataset` ties them together::

    glob + fn_pattern      archive.list_frames()        -> [Frame(time, path)], sorted by time
    events                 archive.group_events()       -> [Event], contiguous runs of frames
    windows                archive.find_frame_windows() -> frame indices of J+K consecutive frames;
                                                           windows crossing a gap are dropped + counted
    split                  archive.split_events()       -> train / val / test by whole events
    decode                 reader(paths, cache_dir)     -> [T, H, W] mm/h per event: the contract's
                                                           RadarContract.read_frames (read, downsample,
                                                           cached on disk as .npy)
    sample                 sample_crop()                -> CropSpec, a pure function of (seed, index)
    batch                  RadarDataset.train_batch / eval_batches -> numpy dict in mm/h

Units and layout of a batch (``B`` windows, ``J`` input and ``K`` target frames)::

    {"inputs":  [B, J, H, W, 1] float32,  "input_mask":  [B, J, H, W, 1] bool,
     "targets": [B, K, H, W, 1] float32,  "target_mask": [B, K, H, W, 1] bool}

and, when the dataset has a ``motion_method`` (the extrapolation-conditioned model), the crops
of each window's full-frame motion and extrapolation (:mod:`nowcast_jax.precip.motion`)::

    {"motion": [B, H, W, 2] float32 (x, y) pixels per step,
     "extrapolation": [B, K, H, W, 1] float32 mm/h,  "extrapolation_mask": [B, K, H, W, 1] bool}

Values are rain rates in mm/h. Masks are ``True`` where the radar observed (finite value);
masked pixels hold 0 mm/h (:func:`nowcast_jax.precip.decode.observed_rain`). The rain
transform to model units belongs to the fitted contract
(:class:`nowcast_jax.precip.preprocess.RadarContract`), not to the data.

The grid (:meth:`RadarDataset.frame_shape`) is measured through the reader on the first
training event. This module never imports jax; pysteps is imported lazily (only when files
are decoded).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np

from nowcast_jax.precip.archive import (Event, check_time_step, find_frame_windows, group_events, list_frames,
                                        split_events)
from nowcast_jax.precip.decode import observed_rain
from nowcast_jax.precip.preprocess import centre_origin, crop_shape

Reader = Callable[..., np.ndarray]
"""``reader(paths, cache_dir=None) -> [T, H, W]`` float32 mm/h: ``RadarContract.read_frames``."""

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
    ch, cw = crop_shape(crop_size, frame_shape)
    window = int(rng.integers(n_windows))
    y = int(rng.integers(h - ch + 1))
    x = int(rng.integers(w - cw + 1))
    rot, flip = 0, False
    if augment_flips:
        rot = int(rng.integers(4)) if ch == cw else 2 * int(rng.integers(2))
        flip = bool(rng.integers(2))
    return CropSpec(window, y, x, rot, flip)


# --------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------


@dataclass
class RadarDataset:
    """A radar archive as events, windows and numpy batches.

    Build it with :meth:`open` and a ``reader`` (the reading contract's
    :meth:`~nowcast_jax.precip.preprocess.RadarContract.read_frames`). Decoding is lazy: an
    event is read (or loaded from ``cache_dir``) the first time one of its windows is needed,
    then kept in memory.

    Attributes: ``events`` (list of :class:`Event`), ``windows`` (``[N, 2]`` int64 rows
    ``(event index, first frame index)``), ``window_frames`` (``[N, J+K]`` frame indices),
    ``splits`` (``{"train"|"val"|"test": window ids}``), ``stats`` (counts).
    """

    events: list[Event]
    reader: Reader
    timestep_minutes: float
    input_frames: int
    output_frames: int
    cache_dir: str | None = None
    crop_size: int | tuple[int, int] | None = None
    augment: bool = False
    min_rain_fraction: float = 0.0
    min_valid_fraction: float = 0.5
    rain_threshold: float = 0.5
    max_tries: int = 20
    test_events: Sequence[int | str] = (-1,)
    val_events: Sequence[int | str] = ()
    motion_method: str | None = None
    # derived
    window_frames: np.ndarray = field(init=False)
    windows: np.ndarray = field(init=False)
    splits: dict = field(init=False)
    stats: dict = field(init=False)
    _event_split: dict = field(init=False, repr=False)
    _grid: tuple[int, int] | None = field(init=False, default=None, repr=False)
    _rain: dict = field(init=False, default_factory=dict, repr=False)
    _motion: dict = field(init=False, default_factory=dict, repr=False)

    def __post_init__(self):
        length = self.input_frames + self.output_frames
        if self.input_frames < 1 or self.output_frames < 1:
            raise ValueError("input_frames and output_frames must be >= 1")
        check_time_step(self.events, self.timestep_minutes, length)
        rows, frames, dropped, per_event = [], [], 0, []
        for e_idx, event in enumerate(self.events):
            win, drop = find_frame_windows(event.times, self.timestep_minutes, length)
            dropped += drop
            per_event.append(len(win))
            rows.extend((e_idx, int(w[0])) for w in win)
            frames.extend(win.tolist())
        self.windows = np.asarray(rows, np.int64).reshape(-1, 2)
        self.window_frames = np.asarray(frames, np.int64).reshape(-1, length)
        event_split = self._event_split = split_events(self.events, self.test_events, self.val_events)
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
        reader: Reader,
        timestep_minutes: float,
        input_frames: int,
        output_frames: int,
        *,
        event_by: str = "gap",
        event_gap_minutes: float = 60.0,
        **options,
    ) -> "RadarDataset":
        """Index an archive (no decoding happens here).

        ``files``: glob (or list); ``fn_pattern``: pysteps file-name pattern (see
        :func:`~nowcast_jax.precip.archive.fn_pattern_regex`); ``reader``: paths -> mm/h frames
        (``RadarContract.read_frames``); ``timestep_minutes``; ``input_frames`` (J);
        ``output_frames`` (K). Events are grouped with :func:`group_events` (``event_by``,
        ``event_gap_minutes``). Other keyword options are dataclass fields: ``cache_dir``,
        ``crop_size``, ``augment``, ``min_rain_fraction``, ``min_valid_fraction``,
        ``rain_threshold``, ``max_tries``, ``test_events``, ``val_events``.
        """
        frames = list_frames(files, fn_pattern)
        events = group_events(frames, by=event_by, max_gap_minutes=event_gap_minutes)
        return cls(events=events, reader=reader, timestep_minutes=timestep_minutes, input_frames=input_frames,
                   output_frames=output_frames, **options)

    # ---- decoded data -------------------------------------------------------------------

    def event_rain(self, event_index: int) -> np.ndarray:
        """Rain rate of one event, ``[T, H, W]`` float32 mm/h (NaN outside the domain), through the reader.

        Raises ``ValueError`` when the event's grid is not the training grid (:meth:`frame_shape`).
        """
        if event_index not in self._rain:
            rain = self.reader(self.events[event_index].paths, cache_dir=self.cache_dir)
            if self._grid is not None and tuple(rain.shape[1:]) != self._grid:
                raise ValueError(f"event {self.events[event_index].id} decodes to {rain.shape[1]}x{rain.shape[2]} "
                                 f"frames; the training events' grid is {self._grid[0]}x{self._grid[1]}")
            self._rain[event_index] = rain
        return self._rain[event_index]

    def frame_shape(self) -> tuple[int, int]:
        """(H, W) of the decoded, downsampled frames, measured on the first training event
        (decoded if needed); an archive without training events (evaluation only) is
        measured on its first event."""
        if self._grid is None:
            train = self._event_split.get("train")
            first = int(train[0]) if len(train) else 0
            self._grid = tuple(int(n) for n in self.event_rain(first).shape[1:])
        return self._grid

    def window_rain(self, window: int, y: int = 0, x: int = 0, size: tuple[int, int] | None = None) -> np.ndarray:
        """Rain rate of one window (all J+K frames) cropped at ``(y, x)``: ``[J+K, h, w]`` mm/h."""
        e, _ = self.windows[window]
        rain = self.event_rain(int(e))
        h, w = size if size is not None else rain.shape[1:]
        return np.asarray(rain[self.window_frames[window], y : y + h, x : x + w], np.float32)

    def window_motion(self, window: int) -> tuple[np.ndarray, np.ndarray]:
        """``(motion [H0, W0, 2], extrapolation [K, H0, W0] mm/h, NaN where not valid)`` of one window,
        on the full frame (:func:`nowcast_jax.precip.motion.event_motion`, computed once per event
        and cached in ``cache_dir``). Needs ``motion_method``."""
        if not self.motion_method:
            raise ValueError("this dataset was opened without a motion method (motion_method=None)")
        e = int(self.windows[window, 0])
        if e not in self._motion:
            from nowcast_jax.precip.motion import event_motion

            ids = np.flatnonzero(self.windows[:, 0] == e)
            arrays = event_motion(self.event_rain(e), self.window_frames[ids], self.input_frames,
                                  self.output_frames, method=self.motion_method, cache_dir=self.cache_dir)
            self._motion[e] = (ids, *arrays)
        ids, motion, extrapolation = self._motion[e]
        at = int(np.searchsorted(ids, window))
        return motion[at], extrapolation[at]

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
        size = crop_shape(self.crop_size, shape)
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

    def batch_from_crops(self, crops: Sequence[CropSpec],
                         crop_size: int | tuple[int, int] | None = None) -> dict[str, np.ndarray]:
        """Assemble a mm/h batch dict from crop specs (see the module docstring for shapes)."""
        size = crop_shape(crop_size, self.frame_shape())
        seqs = [augment(self.window_rain(c.window, c.y, c.x, size), c.rot90, c.flip) for c in crops]
        rain, mask = observed_rain(np.stack(seqs)[..., None])  # [B, J+K, h, w, 1]; unobserved: 0 mm/h
        j = self.input_frames
        batch = {"inputs": rain[:, :j], "targets": rain[:, j:], "input_mask": mask[:, :j], "target_mask": mask[:, j:]}
        if self.motion_method:
            batch.update(self._motion_batch(crops, size))
        return batch

    def _motion_batch(self, crops: Sequence[CropSpec], size: tuple[int, int]) -> dict[str, np.ndarray]:
        """The crops of each window's full-frame motion and extrapolation, augmented like the frames."""
        from nowcast_jax.precip.motion import augment_motion

        (h, w), motions, extraps = size, [], []
        for c in crops:
            motion, extrap = self.window_motion(c.window)
            motions.append(augment_motion(motion[c.y : c.y + h, c.x : c.x + w], c.rot90, c.flip))
            extraps.append(augment(np.asarray(extrap[:, c.y : c.y + h, c.x : c.x + w], np.float32), c.rot90, c.flip))
        extrap, valid = observed_rain(np.stack(extraps)[..., None])  # [B, K, h, w, 1]
        return {"motion": np.stack(motions).astype(np.float32), "extrapolation": extrap, "extrapolation_mask": valid}

    def train_batch(self, step: int, batch_size: int, seed: int, *, split: str = "train") -> dict[str, np.ndarray]:
        """Training batch ``step``: sample ``i`` is :meth:`train_crop` ``(seed, step*batch_size+i)``."""
        crops = [self.train_crop(seed, step * batch_size + i, split) for i in range(batch_size)]
        return self.batch_from_crops(crops, self.crop_size)

    def eval_crops(self, split: str, crop_size: int | tuple[int, int] | None) -> list[CropSpec]:
        """Fixed crops for evaluation: every window of the split, centred ``crop_size`` (None = the full frame)."""
        shape = self.frame_shape()
        y, x = centre_origin(shape, crop_shape(crop_size, shape))
        return [CropSpec(int(w), y, x) for w in self._split_ids(split)]

    def eval_batches(self, split: str, batch_size: int,
                     crop_size: int | tuple[int, int] | None) -> Iterator[dict[str, np.ndarray]]:
        """All windows of ``split`` in order, centred ``crop_size`` crops (None = the full frame; the task
        passes ``contract.eval_crop``), no augmentation; the last batch may be smaller."""
        crops = self.eval_crops(split, crop_size)
        for start in range(0, len(crops), batch_size):
            yield self.batch_from_crops(crops[start : start + batch_size], crop_size)
