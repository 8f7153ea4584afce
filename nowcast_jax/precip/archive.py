"""Radar archives without decoding: file names -> timestamps -> events -> windows -> splits.

The first stage of the radar pipeline (**archive** -> decode -> events -> windows -> crops):
what is known from file names alone. Numpy only (never imports jax or pysteps).
"""

from __future__ import annotations

import glob as _glob
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
