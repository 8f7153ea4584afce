"""Radar archives without decoding: file names -> timestamps -> events -> windows -> splits.

The first stage of the radar pipeline (**archive** -> decode -> events -> windows -> crops):
what is known from file names alone. Numpy only (never imports jax or pysteps).
"""

from __future__ import annotations

import glob as _glob
import math
import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Sequence

import numpy as np

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


# a directive ("%Y", "%%", a lone "%" at the end) or one character; wildcards as in pysteps (+ "*")
_PATTERN_TOKEN = re.compile(r"%.?|.", re.DOTALL)
_WILDCARDS = {"?": ".", "*": ".*?"}


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
    for token in _PATTERN_TOKEN.findall(fn_pattern):
        if token == "%":
            raise ValueError(f"fn_pattern {fn_pattern!r} ends with a lone '%'")
        if token == "%%":
            parts.append("%")
        elif token[0] == "%":
            if token[1] not in _DIRECTIVE_WIDTH:
                raise ValueError(f"fn_pattern {fn_pattern!r} uses {token}; supported directives are "
                                 + " ".join("%" + c for c in _DIRECTIVE_WIDTH))
            parts.append(rf"(\d{{{_DIRECTIVE_WIDTH[token[1]]}}})")
            directives.append(token)
        else:
            parts.append(_WILDCARDS.get(token) or re.escape(token))
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
    are dropped by :func:`find_frame_windows`). ``by="date"``: one event per calendar date of
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


def find_frame_windows(times: Sequence[datetime], timestep_minutes: float, length: int) -> tuple[np.ndarray, int]:
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


def event_time_step(event: Event) -> float | None:
    """The step of an event's files in minutes: the median spacing of its consecutive frames
    (robust to a missing file); None for an event of one frame."""
    times = event.times
    if len(times) < 2:
        return None
    gaps = [(b - a).total_seconds() for a, b in zip(times[:-1], times[1:])]
    return float(np.median(gaps)) / 60.0


def _is_multiple(step_minutes: float, of_minutes: float) -> bool:
    """``step_minutes`` is a whole number (>= 1) of ``of_minutes`` (to a second's rounding)."""
    ratio = step_minutes / of_minutes
    n = round(ratio)
    return n >= 1 and abs(step_minutes - n * of_minutes) * 60.0 < 0.5


def _minutes(value: float) -> str:
    return f"{value:g}"


def check_time_step(
    events: Sequence[Event], timestep_minutes: float, length: int = 2, *, key: str = "data.timestep_minutes",
    length_key: str = "data.input_frames + data.output_frames",
) -> float | None:
    """Refuse a window step that the files do not have; returns the files' step in minutes.

    Every event with at least ``length`` frames (the window length J+K: shorter events can
    hold no window) is measured (:func:`event_time_step`). ``timestep_minutes`` must be that
    step or a whole multiple of it (windows then take every n-th file:
    :func:`find_frame_windows` subsamples), else ``ValueError`` naming ``key``, the measured
    step and the fix; never are files used at a step they do not have. A ``ValueError`` too
    when no event is long enough for one window of ``length`` frames at ``timestep_minutes``
    (naming the longest event, the span a window needs, and ``length_key``). Returns the files'
    step in minutes (the smallest when events differ; None when no event was measured). Reads
    file names only.
    """
    step = float(timestep_minutes)
    if not step > 0:
        raise ValueError(f"{key}={timestep_minutes!r}: the step between frames must be > 0 minutes")
    long_enough = [e for e in events if len(e.frames) >= max(2, int(length))]
    steps = {e.id: event_time_step(e) for e in long_enough}
    wrong = {eid: s for eid, s in steps.items() if not _is_multiple(step, s)}
    if wrong:
        found = sorted(set(wrong.values()))
        if len(found) == 1 and len(wrong) == len(steps):
            files = sum(len(e.frames) for e in long_enough)
            where = f"{len(steps)} event{'s' if len(steps) > 1 else ''}, {files} files"
            multiples = ", ".join(_minutes(found[0] * n) for n in range(2, 5))
            raise ValueError(f"{key}={_minutes(step)} but the files are {_minutes(found[0])} min apart (median "
                             f"spacing of consecutive files within events; {where}): set {key}="
                             f"{_minutes(found[0])} (the files' step) or a multiple of it ({multiples}, ...: "
                             "windows then take every n-th file)")
        listed = ", ".join(f"{eid} ({_minutes(s)} min)" for eid, s in sorted(wrong.items()))
        every = sorted(set(steps.values()))
        common = math.lcm(*(max(1, round(s * 60)) for s in every)) / 60.0
        raise ValueError(f"{key}={_minutes(step)} is not a whole multiple of the files' step in event(s) {listed} "
                         f"(steps in this archive: {', '.join(_minutes(s) + ' min' for s in every)}): set {key}="
                         f"{_minutes(common)} (or another multiple of every event's step), or choose files of one "
                         "step in data.files")
    if length > 1 and not any(len(find_frame_windows(e.times, step, length)[0]) for e in long_enough):
        if not events:
            raise ValueError("the archive holds no files")
        longest = max(events, key=lambda e: (e.times[-1] - e.times[0], len(e.frames)))
        span = (longest.times[-1] - longest.times[0]).total_seconds() / 60.0
        spacing = event_time_step(longest)
        apart, hint = "", ""
        if spacing is not None:
            apart = f", {_minutes(spacing)} min apart"
            n = int(span / (length - 1) / spacing + 1e-9)
            if n >= 1:
                hint = f", e.g. {_minutes(n * spacing)}"
        raise ValueError(f"no event holds a window of {length} frames ({length_key}) at {key}={_minutes(step)}: "
                         f"that needs {_minutes((length - 1) * step)} min of files without a gap, the longest "
                         f"event {longest.id} spans {_minutes(span)} min ({len(longest.frames)} files{apart}); "
                         f"use a smaller {key} (the files' step or a multiple of it{hint}), fewer "
                         f"{length_key.replace(' + ', ' / ')}, or longer events (data.event_gap_minutes groups "
                         "files into events)")
    measured = [s for s in steps.values() if s is not None]
    return min(measured) if measured else None


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
