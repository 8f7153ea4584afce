"""Station windows: where a window may start, cutting them, and splitting them in time.

The fourth stage of the station pipeline (read -> grid -> features -> **windows** -> scale;
numpy only). A window of one station ends at grid step ``e`` (its issue time): inputs are
the feature rows ``e - T + 1 .. e``, targets the visibility at ``e + h`` for each horizon
step ``h``. :func:`check_window_inputs` holds the input-side rules (training's windows and
serving's last window alike); :func:`find_station_windows` keeps the windows with complete inputs and
targets (the others are counted by reason); :class:`SplitPlan` labels them train/val/test
(chronological blocks with a purge gap, or the paper's leaky random split);
:func:`gather_windows` cuts them out.

Shapes: ``S`` grid steps of one station, ``T`` history steps, ``F`` features, ``H``
horizons, ``N`` windows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

#: The split names, in their default time order.
SPLITS = ("train", "val", "test")
SPLIT_KINDS = ("chronological", "random")


@dataclass
class WindowIndex:
    """Valid window positions of one station's grid.

    ``end``: ``[N]`` grid index of the last history step; inputs are rows
    ``end - T + 1 .. end``, targets rows ``end + horizon_steps``.
    """

    end: np.ndarray
    dropped: dict


@dataclass(frozen=True)
class InputCheck:
    """What is wrong with the inputs of windows ending at ``ends [N]`` (:func:`check_window_inputs`).

    ``unobserved [N]``: history steps without any observation (steps the grid created);
    ``missing [N, F]``: feature missing (NaN) somewhere in the history; ``last_vis_missing
    [N]``: no visibility at the last step (``start_vis``, persistence); ``last_filled [N]``:
    the last step was interpolated (towards an observation after the forecast time).
    """

    unobserved: np.ndarray
    missing: np.ndarray
    last_vis_missing: np.ndarray
    last_filled: np.ndarray

    @property
    def gap(self) -> np.ndarray:
        return self.unobserved > 0

    @property
    def missing_input(self) -> np.ndarray:
        return self.missing.any(axis=1) | self.last_vis_missing


def _history_counts(bad: np.ndarray, history: int, ends: np.ndarray) -> np.ndarray:
    """``[N, ...]`` how many of the rows ``end - T + 1 .. end`` of ``bad [S, ...]`` are set."""
    csum = np.concatenate([np.zeros((1, *bad.shape[1:]), np.int64), np.cumsum(bad, axis=0)])
    return csum[ends + 1] - csum[ends + 1 - history]


def check_window_inputs(values: np.ndarray, vis: np.ndarray, observed: np.ndarray, history: int, ends,
                        filled: np.ndarray | None = None) -> InputCheck:
    """THE input-side validity rules of a window (training's :func:`find_station_windows` and
    serving's last window alike): every history step observed, every feature finite over the
    history, the last visibility finite, the last step not interpolated.

    Args: as :func:`find_station_windows`; ``ends [N]`` last history steps, each ``>= T - 1``.
    """
    ends = np.asarray(ends, dtype=np.int64)
    if len(ends) and ends.min() < history - 1:
        raise ValueError(f"a window ending at step {int(ends.min())} has fewer than {history} history steps")
    unobserved = _history_counts(~np.asarray(observed, bool), history, ends)
    missing = _history_counts(~np.isfinite(values), history, ends) > 0
    last_filled = np.zeros(len(ends), bool) if filled is None else np.asarray(filled, bool)[ends]
    return InputCheck(unobserved, missing, ~np.isfinite(vis[ends]), last_filled)


def find_station_windows(values: np.ndarray, vis: np.ndarray, observed: np.ndarray, history: int,
                         horizons, filled: np.ndarray | None = None) -> WindowIndex:
    """Windows with complete inputs (:func:`check_window_inputs`) and targets; the others are
    counted by reason.

    Args:
      values: ``[S, F]`` features (NaN = missing).
      vis: ``[S]`` visibility in metres (targets and ``start_vis``; never interpolated).
      observed: ``[S]`` False for time steps the resampling created (no observation).
      history: ``T`` history steps.
      horizons: ``[H]`` target offsets in steps after the last history step.
      filled: ``[S]`` True where an input was interpolated. A window whose LAST history step
        was filled is dropped (``future_fill``): that value was interpolated towards an
        observation made after the forecast time, which a live forecast cannot have. Filled
        steps earlier in the history are fine: their right anchor lies inside the history.

    Returns:
      :class:`WindowIndex`; ``dropped`` counts each dropped window once, under the first
      reason that applies: ``gap`` (a step without any observation in the history or at a
      target), ``missing_input`` (a NaN feature or a NaN last visibility), ``missing_target``,
      ``future_fill``.
    """
    horizons = np.asarray(horizons, dtype=np.int64)
    n_steps = len(vis)
    first, last = history - 1, n_steps - 1 - int(horizons.max())
    if last < first:
        return WindowIndex(np.zeros(0, np.int64),
                           {"gap": 0, "missing_input": 0, "missing_target": 0, "future_fill": 0})
    ends = np.arange(first, last + 1)
    inputs = check_window_inputs(values, vis, observed, history, ends, filled)
    target_rows = ends[:, None] + horizons[None, :]
    gap = inputs.gap | (~np.asarray(observed, bool)[target_rows]).any(axis=1)
    bad_in = inputs.missing_input
    bad_tgt = (~np.isfinite(vis[target_rows])).any(axis=1)
    future = inputs.last_filled
    earlier = gap | bad_in | bad_tgt
    dropped = {
        "gap": int(gap.sum()),
        "missing_input": int((bad_in & ~gap).sum()),
        "missing_target": int((bad_tgt & ~gap & ~bad_in).sum()),
        "future_fill": int((future & ~earlier).sum()),
    }
    return WindowIndex(ends[~(earlier | future)], dropped)


def gather_windows(values: np.ndarray, vis: np.ndarray, ends: np.ndarray, history: int,
                   horizons) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut windows: ``x [N, T, F]`` (unscaled), ``y [N, H]`` metres, ``start_vis [N]`` metres."""
    horizons = np.asarray(horizons, dtype=np.int64)
    steps = ends[:, None] + np.arange(1 - history, 1)[None, :]
    x = values[steps]
    y = vis[ends[:, None] + horizons[None, :]]
    return x, y, vis[ends]


# --------------------------------------------------------------------------- splits

def chronological_split(end_times: np.ndarray, boundaries, gap) -> tuple[np.ndarray, int]:
    """Blocked split by window end time, with a purge gap before each boundary.

    Args:
      end_times: ``[N]`` datetime64 window end times (last history step).
      boundaries: ``(b1, b2)`` datetime64: val starts at ``b1``, test at ``b2``.
      gap: timedelta64; windows ending in ``[b - gap, b)`` are purged. With
        ``gap >= (history + max_horizon) * step`` no time step is shared by two splits.

    Returns:
      ``(labels [N] int8: 0 train, 1 val, 2 test, -1 purged; number purged)``.
    """
    b1, b2 = boundaries
    labels = np.full(len(end_times), -1, dtype=np.int8)
    labels[end_times < b1 - gap] = 0
    labels[(end_times >= b1) & (end_times < b2 - gap)] = 1
    labels[end_times >= b2] = 2
    return labels, int((labels < 0).sum())


def random_split(n: int, fractions, seed: int) -> np.ndarray:
    """The paper's random split of windows: ``[n]`` labels 0/1/2 drawn by ``fractions``.

    This split LEAKS. Consecutive windows overlap in all but one step, so nearly every
    test window shares most of its hours (inputs and targets) with training windows: the
    model is scored on hours it has fitted, and with a persistent variable like visibility
    that inflates skill (see :func:`overlap_share`). Use it only to reproduce the paper.
    """
    rng = np.random.default_rng(seed)
    counts = np.floor(np.asarray(fractions, dtype=np.float64) * n).astype(np.int64)
    counts[0] = n - counts[1:].sum()
    labels = np.repeat(np.arange(3, dtype=np.int8), counts)
    return labels[rng.permutation(n)]


def overlap_share(test_end: np.ndarray, test_station: np.ndarray, train_end: np.ndarray,
                  train_station: np.ndarray, span) -> float:
    """Share of test windows that use a time step also used by a training window.

    Args:
      test_end, train_end: ``[N]`` datetime64 window end times.
      test_station, train_station: ``[N]`` station names.
      span: ``(before, after)`` timedelta64: a window uses ``[end - before, end + after]``
        (``before = (T - 1) * step``, ``after = max_horizon * step``).

    Returns:
      a fraction in [0, 1] (0.0 for an empty test set).
    """
    before, after = span
    if len(test_end) == 0:
        return 0.0
    hit = np.zeros(len(test_end), dtype=bool)
    for name in np.unique(test_station):
        tr = np.sort(train_end[train_station == name])
        sel = test_station == name
        if len(tr) == 0:
            continue
        # two windows of equal length intersect iff their end times differ by <= length
        length = before + after
        lo = np.searchsorted(tr, test_end[sel] - length, side="left")
        hi = np.searchsorted(tr, test_end[sel] + length, side="right")
        hit[sel] = hi > lo
    return float(hit.mean())


# --------------------------------------------------------------------------- the split plan

@dataclass(frozen=True)
class SplitPlan:
    """How windows are split (the ``data.split*``, ``fractions``, ``gap_steps``, ``seed`` keys).

    ``kind``: ``"chronological"`` (blocks by window end time, boundaries at ``fractions`` of
    the time range or at ``split_dates``, ``order`` the splits' order in time, windows within
    the purge gap of a boundary dropped) or ``"random"`` (the paper's leaky split of windows
    by ``fractions`` with ``seed``). ``fractions`` are per split name (train, val, test).
    ``per_station`` (chronological only): each station's windows are split by that station's
    own time range (:meth:`station_labels`), so no station's test block starts before its
    training block ends, whatever years the stations cover.
    """

    kind: str = "chronological"
    fractions: tuple = (0.7, 0.15, 0.15)
    split_dates: tuple = ()
    gap_steps: int = 0
    seed: int = 0
    order: tuple = SPLITS
    per_station: bool = False

    def __post_init__(self):
        f = tuple(float(v) for v in self.fractions)
        if len(f) != 3 or min(f) < 0 or abs(sum(f) - 1.0) > 1e-6:
            raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {self.fractions}")
        if self.kind not in SPLIT_KINDS:
            raise ValueError(f"split must be 'chronological' or 'random', got {self.kind!r}")
        order = tuple(str(s) for s in self.order)
        if sorted(order) != sorted(SPLITS):
            raise ValueError(f"split_order must name {list(SPLITS)} once each, in time order; got {list(order)}")
        if self.kind == "random" and order != SPLITS:
            raise ValueError(f"split_order={list(order)} orders chronological blocks; the random split has none")
        if self.per_station and (self.kind != "chronological" or self.split_dates):
            raise ValueError("split_per_station=True splits each station's own time range at data.fractions: it needs "
                             "split='chronological' and no data.split_dates (the same dates for every station)")
        object.__setattr__(self, "fractions", f)
        object.__setattr__(self, "order", order)
        object.__setattr__(self, "split_dates", tuple(self.split_dates or ()))

    def labels(self, end_times: np.ndarray, time_range: tuple, step: str, gap: int) -> tuple[np.ndarray, dict]:
        """``(labels [N] int8: index into SPLITS, -1 purged; report)`` for windows ending at
        ``end_times [N]``; ``time_range``: (first, last) grid time of all stations; ``gap``:
        purge gap in steps."""
        report = {"kind": self.kind, "gap_steps": int(gap)}
        if self.kind == "random":
            report.update(fractions=list(self.fractions), seed=int(self.seed))
            return random_split(len(end_times), self.fractions, int(self.seed)), report
        block_f = tuple(self.fractions[SPLITS.index(name)] for name in self.order)
        b1, b2 = block_boundaries(time_range, step, block_f, self.split_dates)
        step_td = np.timedelta64(int(pd.Timedelta(step).total_seconds()), "s")
        blocks, purged = chronological_split(end_times, (b1, b2), gap * step_td)
        to_split = np.array([SPLITS.index(name) for name in self.order] + [-1], np.int8)
        starts = dict(zip(self.order, (str(time_range[0]), str(b1), str(b2))))
        ends = dict(zip(self.order, (str(b1), str(b2), "end of data")))
        report.update(val_start=starts["val"], test_start=starts["test"], test_end=ends["test"], purged=purged)
        if self.order != SPLITS:
            report["order"] = list(self.order)
        return to_split[blocks], report   # block -1 (purged) -> -1


    def station_labels(self, end_times: list, ranges: list, names: list, step: str,
                       gap: int) -> tuple[list, dict]:
        """Per station ``labels [N_s]`` (as :meth:`labels`) and the split report: with
        ``per_station`` each station's block boundaries come from its own ``ranges[s]``
        (first, last grid time), reported under ``stations``; else one split of all stations
        over the overall range. ``end_times``: per station ``[N_s]`` datetime64."""
        if not self.per_station:
            whole = (min(r[0] for r in ranges), max(r[1] for r in ranges))
            labels, report = self.labels(np.concatenate(end_times), whole, step, gap)
            return np.split(labels, np.cumsum([len(e) for e in end_times])[:-1]), report
        parts = [self.labels(e, r, step, gap) for e, r in zip(end_times, ranges)]
        keep = ("val_start", "test_start", "test_end", "purged")
        report = {"kind": self.kind, "gap_steps": int(gap), "per_station": True,
                  "purged": sum(p[1]["purged"] for p in parts),
                  "stations": {n: {k: p[1][k] for k in keep} for n, p in zip(names, parts)}}
        if self.order != SPLITS:
            report["order"] = list(self.order)
        return [p[0] for p in parts], report


def block_boundaries(time_range: tuple, step: str, fractions, split_dates) -> tuple:
    """``(b1, b2)`` datetime64[s]: start of the second and of the third time block, from
    the blocks' ``fractions`` (in time order) or ``split_dates``."""
    if split_dates:
        if len(split_dates) != 2:
            raise ValueError(f"split_dates must be the starts of the 2nd and 3rd blocks "
                             f"(val_start, test_start by default), got {split_dates}")
        b = [pd.Timestamp(d) for d in split_dates]
        b = [(t.tz_convert("UTC") if t.tzinfo else t).tz_localize(None) for t in b]
        b1, b2 = (np.datetime64(t.to_datetime64(), "s") for t in b)
    else:
        t0, t1 = time_range
        span = (t1 - t0).astype(np.float64)
        step_s = int(pd.Timedelta(step).total_seconds())
        cut = [np.timedelta64(int(span * f) // step_s * step_s, "s")
               for f in (fractions[0], fractions[0] + fractions[1])]
        b1, b2 = t0 + cut[0], t0 + cut[1]
    if b2 < b1:
        raise ValueError(f"the third block must start after the second: {b1} > {b2}")
    return b1, b2
