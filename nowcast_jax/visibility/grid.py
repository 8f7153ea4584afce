"""Station grid: the canonical table on a fixed step, its gaps, and short-gap interpolation.

The second stage of the station pipeline (read -> **grid** -> features -> windows -> scale;
numpy/pandas only). Each station becomes a :class:`StationGrid`: the value at grid time
``t`` is the latest observation in ``(t - step, t]``; steps without any observation are
NaN rows, marked ``observed = False`` and counted ("gaps"). Short inner runs of missing
values of some variables are then filled linearly between observations
(:func:`fill_short_gaps`); visibility (the target) and wind direction (circular) never are.
A fill uses the next observation, so a window whose last input step was filled is not a
forecast a live system could make (:mod:`nowcast_jax.visibility.windows` drops it).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from nowcast_jax.visibility.readers import CANONICAL

DEFAULT_INTERPOLATE = ("pressure", "temperature", "dew_point")
_NOT_INTERPOLABLE = ("visibility", "wind_direction")


@dataclasses.dataclass(frozen=True)
class StationGrid:
    """One station on a regular grid: ``times [S]`` UTC datetime64[s]; ``values`` canonical
    name -> ``[S]`` float64 (NaN = missing); ``observed [S]`` False where no observation fell
    in the step."""

    name: str
    times: np.ndarray
    values: dict
    observed: np.ndarray


def steps_of(hours: float, step: str, what: str) -> int:
    """Hours -> a whole number of grid steps (error when not a whole number)."""
    n = pd.Timedelta(hours=float(hours)) / pd.Timedelta(step)
    if n <= 0 or abs(n - round(n)) > 1e-9:
        raise ValueError(f"{what} of {hours} h is not a positive whole number of {step} steps")
    return int(round(n))


def clip_visibility(table: pd.DataFrame, cap_m: float) -> tuple[pd.DataFrame, int]:
    """``(copy of table with visibility above cap_m set to cap_m, number clipped)``."""
    clipped = int((table["visibility"] > cap_m).sum())
    return table.assign(visibility=table["visibility"].clip(upper=cap_m)), clipped


def to_grid(table: pd.DataFrame, step: str) -> tuple[list[StationGrid], dict]:
    """Resample each station onto ``step``: value at ``t`` = latest observation in ``(t - step, t]``.

    Within a step, each variable takes its latest non-missing value. Returns the grids and a
    report: per station ``rows``, ``steps``, ``missing_steps``, ``merged_rows`` (observations
    that shared a step with a later one).
    """
    delta = pd.Timedelta(step)
    grids, report = [], {}
    for name, part in table.groupby("station", sort=True):
        label = part["time"].dt.ceil(delta)
        binned = part[list(CANONICAL)].groupby(label.to_numpy()).last()
        index = pd.date_range(binned.index.min(), binned.index.max(), freq=delta)
        full = binned.reindex(index)
        observed = index.isin(binned.index)
        times = index.tz_convert("UTC").tz_localize(None).to_numpy().astype("datetime64[s]")
        grids.append(StationGrid(str(name), times, {c: full[c].to_numpy(np.float64) for c in CANONICAL},
                                 np.asarray(observed)))
        report[str(name)] = {"rows": int(len(part)), "steps": int(len(index)),
                             "missing_steps": int((~observed).sum()),
                             "merged_rows": int(len(part) - len(binned))}
    return grids, report


def check_interpolate(names) -> tuple:
    """The variables short gaps may be filled in (error for visibility and wind direction)."""
    names = tuple(names)
    bad = [n for n in names if n in _NOT_INTERPOLABLE or n not in CANONICAL]
    if bad:
        allowed = [c for c in CANONICAL if c not in _NOT_INTERPOLABLE]
        raise ValueError(f"cannot interpolate {bad}: allowed {allowed} (visibility is the target; "
                         f"wind direction is circular)")
    return names


def interpolate_short_gaps(values: np.ndarray, max_steps: int) -> tuple[np.ndarray, int]:
    """Linearly fill NaN runs of at most ``max_steps`` with finite values on both sides.

    Longer runs, and runs at either end, stay NaN (never partially filled).
    ``values``: ``[S]``. Returns ``(filled copy [S], number of values filled)``.
    """
    out = np.array(values, dtype=np.float64, copy=True)
    nan = np.isnan(out)
    if max_steps <= 0 or not nan.any() or nan.all():
        return out, 0
    edges = np.diff(np.concatenate([[0], nan.astype(np.int8), [0]]))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    inner = (starts > 0) & (stops < len(out)) & (stops - starts <= max_steps)
    idx = np.arange(len(out))
    good = ~nan
    filled = 0
    for a, b in zip(starts[inner], stops[inner]):
        out[a:b] = np.interp(idx[a:b], idx[good], out[good])
        filled += b - a
    return out, int(filled)


@dataclasses.dataclass(frozen=True)
class FilledGrid:
    """A station grid after :func:`fill_short_gaps`: ``grid`` (values filled), ``raw`` (the
    same grid before filling: what the station observed), ``filled [S]`` True where any
    variable was filled, ``counts`` variable -> number of values filled."""

    grid: StationGrid
    raw: StationGrid
    filled: np.ndarray
    counts: dict


def fill_short_gaps(grid: StationGrid, variables, max_steps: int) -> FilledGrid:
    """Fill the inner NaN runs of at most ``max_steps`` of ``variables`` (a new grid; the
    given one is left as it was)."""
    values, counts = dict(grid.values), {}
    filled = np.zeros(len(grid.times), bool)
    for name in variables:
        values[name], counts[name] = interpolate_short_gaps(grid.values[name], int(max_steps))
        filled |= np.isnan(grid.values[name]) & np.isfinite(values[name])
    return FilledGrid(dataclasses.replace(grid, values=values), grid, filled, counts)


def missing_share(grids, low: float) -> dict:
    """Share of low-visibility steps (``vis < low``) where each input variable is NaN."""
    vis = np.concatenate([g.values["visibility"] for g in grids])
    sel = vis < low
    out = {}
    for name in CANONICAL:
        if name != "visibility":
            col = np.concatenate([g.values[name] for g in grids])[sel]
            out[name] = round(float(np.isnan(col).mean()), 4) if len(col) else 0.0
    return out
