"""NOAA NCEI Global Hourly (ISD) CSV -> the canonical station table (numpy/pandas only).

A reader of the first stage of the station pipeline (see :mod:`nowcast_jax.visibility.readers`):
:func:`read_ncei_global_hourly` returns what :func:`~nowcast_jax.visibility.readers.read_station_csv`
returns (the same table columns and report keys, plus an ``"ncei"`` part of the report), so
its result goes wherever a ``read_station_csv`` result goes. The format is that of NCEI's
"Global Hourly" CSV access files (about 35,000 stations): one row per report, ``DATE`` in
UTC, values packed as comma-separated groups with scale factors and quality codes (ISD
format document, "Federal Climate Complex Data Documentation for Integrated Surface Data").

Decoding (what each rule chose and why):

* Quality codes (every group): ISD's ``2``/``6`` "suspect" and ``3``/``7`` "erroneous"
  (``6``/``7``: of an NCEI data source) values are dropped (NaN) and counted per variable
  (``ncei.rejected_quality``); ``0``/``4`` (passed gross limits), ``1``/``5`` (passed all
  checks), ``9`` ("passed gross limits check if element is present") and the validators'
  letters (``A`` flagged suspect but accepted as good, ``C``, ``I``, ``M``, ``P``, ``R``,
  ``U``: inserted, edited or replaced values) are kept. ``reject_quality`` changes the set.
* ``VIS`` "distance m (6 digits), q, variability, q": ``999999`` missing. CAVOK (the
  ``CIG`` group's CAVOK code ``Y``, or the word CAVOK in the METAR text in ``REM``) means
  visibility >= 10 km: :data:`TEN_KM_M` (10000 m) whatever ``VIS`` holds (at SBGR the CAVOK
  rows carry ``009900`` or ``999999``, ISD artefacts, and one garbled row ``002608``). A
  METAR in metres cannot report more than ``9999`` ("10 km or more"): ``VIS`` = ``009999``,
  and ``VIS`` above 9999 m in a report whose METAR text gives visibility in metres (no
  statute-mile ``...SM`` group; at SBGR ``011265`` = 7 mi, how 2009-2013 rows carry METAR
  ``9999``), are set to 10000 m too, so that "10 km or more" is one value in every year.
  Reports whose METAR text is in statute miles (US stations: ``016093`` = 10 mi) keep ``VIS``.
* ``TMP``/``DEW`` "+tttt, q": deg C x 10, ``+9999`` missing.
* ``WND`` "ddd, q, type, ssss, q": direction deg (``999`` missing), speed m/s x 10
  (``9999`` missing). Type ``C`` (calm; also type ``9`` with speed ``0000``, as the ISD
  document says): speed 0, direction NaN (a calm wind has no direction; the features
  (:func:`~nowcast_jax.visibility.features.wind_components`) make sin = cos = 0 of every
  speed <= ``calm_wind_ms``, whatever the direction). Type ``V`` (variable): direction NaN
  when ``999`` (METAR ``VRB``), kept when given (METAR ``dddff KT dddVddd``: the reported
  mean direction); both counted.
* Pressure: ``SLP`` "ppppp, q" (hPa x 10, ``99999`` missing); where it is missing, ``MA1``'s
  altimeter setting (QNH: reduced to sea level like SLP, the closest to it; "QNH hPa x 10, q,
  station pressure hPa x 10, q", ``99999`` missing). ``ncei.pressure`` counts which.
* Precipitation: ``AA1``-``AA4`` "period h, depth mm x 10, condition, q": the first group of a
  1-hour period (depth ``9999`` missing); other periods are not hourly amounts (NaN, counted).
  No ``AA`` column (METAR-only stations such as SBGR): all NaN, reported as not reported
  (``absent``: a variable without a value in any row of a station, whose features the named
  feature sets then drop, :func:`unreported`).
* Report types: only ``report_types`` (default METAR ``FM-15`` and SPECI ``FM-16``) are kept;
  the others are counted by type (``ncei.dropped_report_types``).
* One row per hour (``collapse="1h"``; ``None`` keeps every report at its own time): the
  report at time ``t`` belongs to the hour ``H = ceil(t)``, i.e. to ``(H - 1 h, H]``, the
  grid's own rule (:func:`~nowcast_jax.visibility.grid.to_grid`): a row labelled ``H`` only
  holds what was observed by ``H``, and a METAR stamped HH:50-HH:59 (US stations' routine
  time; at SBGR e.g. ``160259Z``) is the report of hour HH+1. Of the reports of an hour the
  row is ONE whole report (values are never averaged or mixed): the routine FM-15 that has a
  visibility, the latest one (closest to ``H``) if several; else the latest report with a
  visibility (a SPECI); else the latest report. Two reports of the same time and type: the
  later in the file (corrections follow). ``ncei.collapse`` counts each case.

Counts in ``ncei`` are over reports (after the report-type filter, before collapsing) unless
they say ``hours``. Errors (``ValueError``, as ``read_station_csv``) name the file and the
column: an empty file, a missing ``DATE``/``VIS`` column, groups that are not ISD groups.
"""

from __future__ import annotations

import warnings

from typing import TYPE_CHECKING

import numpy as np

from nowcast_jax.visibility.readers import (CANONICAL, DEFAULT_VALID_RANGES, CsvContract, _duplicate_conflicts,
                                            _parse_times)

if TYPE_CHECKING:  # pandas is imported where a CSV is read (as in readers)
    import pandas as pd

NCEI_FORMAT = "ncei_global_hourly"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"
REQUIRED = ("DATE", "VIS")
ROUTINE = "FM-15"
DEFAULT_REPORT_TYPES = ("FM-15", "FM-16")
#: ISD quality codes "suspect" (2, 6) and "erroneous" (3, 7): dropped by default.
REJECTED_QUALITY = ("2", "3", "6", "7")
#: Visibility of CAVOK and METAR ``9999`` reports: "10 km or more".
TEN_KM_M = 10000.0
#: More malformed groups than this share of a column's present values: not an ISD file.
MAX_MALFORMED_SHARE = 0.01
_PRECIP = ("AA1", "AA2", "AA3", "AA4")
_OPTIONAL = ("STATION", "CALL_SIGN", "REPORT_TYPE", "WND", "CIG", "TMP", "DEW", "SLP", "MA1", "REM", *_PRECIP)
# column -> (regex of the whole group, its layout in words for error messages)
_GROUPS = {
    "VIS": (r"^(\d{6}),(\w),(\w),(\w)$", "'distance m (6 digits),q,variability,q' e.g. '009999,1,N,1'"),
    "TMP": (r"^([+-]\d{4}),(\w)$", "'+tttt,q' e.g. '+0200,1'"),
    "DEW": (r"^([+-]\d{4}),(\w)$", "'+tttt,q' e.g. '+0190,1'"),
    "WND": (r"^(\d{3}),(\w),(\w),(\d{4}),(\w)$", "'ddd,q,type,ssss,q' e.g. '130,1,N,0021,1'"),
    "SLP": (r"^(\d{5}),(\w)$", "'ppppp,q' e.g. '10132,1'"),
    "MA1": (r"^(\d{5}),(\w),(\d{5}),(\w)$", "'altimeter,q,station pressure,q' e.g. '10149,1,99999,9'"),
    "CIG": (r"^(\d{5}),(\w),(\w),(\w)$", "'height,q,determination,cavok' e.g. '99999,9,C,Y'"),
    **{c: (r"^(\d{2}),(\d{4}),(\w),(\w)$", "'period h,depth mm x10,condition,q' e.g. '01,0005,9,1'")
       for c in _PRECIP},
}
_CAVOK_TEXT = r"\bCAVOK\b"
_METAR_TEXT = r"(?:METAR|SPECI)\s"
_MILES_TEXT = r"\d\s?SM\b"
_NOT_TEXT = (UnicodeDecodeError, ValueError, OSError, EOFError)  # what read_csv raises on a non-CSV


def _read(path) -> tuple[pd.DataFrame, list]:
    """The file's ISD columns as strings ('' = empty), and its header; clear errors."""
    import pandas as pd

    try:
        header = list(pd.read_csv(path, nrows=0).columns)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path} is empty (not even a header row)") from None
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except _NOT_TEXT as err:  # binary, or compressed by its name and not in fact
        raise ValueError(f"{path} is not an NCEI Global Hourly (ISD) CSV: {err}") from None
    for col in REQUIRED:
        if col not in header:
            raise ValueError(f"column {col!r} not found in {path}: not an NCEI Global Hourly (ISD) CSV? "
                             f"(it needs {list(REQUIRED)}); available columns: {header[:20]}")
    wanted = [c for c in (*REQUIRED, *_OPTIONAL) if c in header]
    try:
        raw = pd.read_csv(path, usecols=wanted, dtype=str, keep_default_na=False)
    except _NOT_TEXT as err:
        raise ValueError(f"{path} is not an NCEI Global Hourly (ISD) CSV: {err}") from None
    return raw, header


def _groups(raw: pd.DataFrame, column: str, path) -> tuple[pd.DataFrame | None, int]:
    """``column``'s groups split into their fields (NaN where empty or malformed), and the
    number of malformed ones; None when the file has no such column. Too many malformed
    groups: a ``ValueError`` naming the file, the column and an example."""
    if column not in raw:
        return None, 0
    import pandas as pd

    pattern, layout = _GROUPS[column]
    text = raw[column].str.strip()
    codes, uniques = pd.factorize(text)  # a few hundred distinct groups: split those, then index
    fields = pd.Series(uniques, dtype=object).str.extract(pattern)
    parts = fields.iloc[codes].reset_index(drop=True) if len(text) else fields.iloc[:0]
    present = (text != "").to_numpy()
    bad = present & parts[0].isna().to_numpy()
    if bad.sum() > MAX_MALFORMED_SHARE * max(int(present.sum()), 1):
        example = text[bad].iloc[0]
        raise ValueError(f"column {column!r} of {path}: {int(bad.sum())} of {int(present.sum())} values are not "
                         f"ISD groups {layout} (e.g. {example!r}): not an NCEI Global Hourly (ISD) CSV?")
    return parts, int(bad.sum())


def _decode(parts, field: int, quality: int, missing: float, scale: float, reject) -> tuple[np.ndarray, dict]:
    """One number of a group -> float64 / scale, NaN where missing or rejected; counts."""
    import pandas as pd

    num = pd.to_numeric(parts[field], errors="coerce").to_numpy(np.float64)
    is_missing = ~np.isfinite(num) | (np.abs(num) == missing)
    rejected = ~is_missing & np.isin(parts[quality].to_numpy(object), list(reject))
    out = np.where(is_missing | rejected, np.nan, num / scale)
    return out, {"missing": int(is_missing.sum()), "rejected_quality": int(rejected.sum())}


def _nan(n: int) -> np.ndarray:
    return np.full(n, np.nan)


def _text_flags(raw: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per report: CAVOK in the METAR text, and a METAR text that gives visibility in metres."""
    n = len(raw)
    if "REM" not in raw:
        return np.zeros(n, bool), np.zeros(n, bool)
    rem = raw["REM"]
    cavok = rem.str.contains(_CAVOK_TEXT, regex=True).to_numpy(bool)
    metric = (rem.str.contains(_METAR_TEXT, regex=True) & ~rem.str.contains(_MILES_TEXT, regex=True)).to_numpy(bool)
    return cavok, metric


def _visibility(raw, path, reject) -> tuple[np.ndarray, dict]:
    import pandas as pd

    vis_parts, malformed = _groups(raw, "VIS", path)
    vis, counts = _decode(vis_parts, 0, 1, 999999, 1.0, reject)
    cig, cig_malformed = _groups(raw, "CIG", path)
    cavok_text, metric = _text_flags(raw)
    cavok_code = np.zeros(len(raw), bool) if cig is None else (cig[3] == "Y").to_numpy(bool)
    cavok = cavok_code | cavok_text
    ten_km = ~cavok & np.isfinite(vis) & ((vis == 9999.0) | (metric & (vis > 9999.0)))
    codes = vis_parts[0].fillna("")

    def by_code(sel):
        return {str(k): int(v) for k, v in pd.Series(codes[sel]).value_counts().items()}

    out = np.where(cavok | ten_km, TEN_KM_M, vis)
    return out, {**counts, "missing_not_cavok": int(np.isnan(out).sum()), "malformed": malformed,
                 "cig_malformed": cig_malformed,
                 "cavok": int(cavok.sum()), "cavok_vis_codes": by_code(cavok),
                 "cavok_by": {"cig_cavok_code": int(cavok_code.sum()), "rem_text": int(cavok_text.sum())},
                 "ten_km": int(ten_km.sum()), "ten_km_vis_codes": by_code(ten_km), "ten_km_m": TEN_KM_M}


def _wind(raw, path, reject) -> tuple[np.ndarray, np.ndarray, dict]:
    parts, malformed = _groups(raw, "WND", path)
    n = len(raw)
    if parts is None:
        return _nan(n), _nan(n), {"absent": True}
    direction, dir_counts = _decode(parts, 0, 1, 999, 1.0, reject)
    speed, speed_counts = _decode(parts, 3, 4, 9999, 10.0, reject)
    kind = parts[2].to_numpy(object)
    calm = (kind == "C") | ((kind == "9") & (speed == 0.0))
    variable = kind == "V"
    speed = np.where(calm, 0.0, speed)
    direction = np.where(calm, np.nan, direction)
    report = {"direction": dir_counts, "speed": speed_counts, "malformed": malformed, "calm": int(calm.sum()),
              "variable_no_direction": int((variable & np.isnan(direction)).sum()),
              "variable_with_direction": int((variable & np.isfinite(direction)).sum()),
              "direction_missing_not_calm": int((~calm & np.isnan(direction)).sum())}
    return speed, direction, report


def _pressure(raw, path, reject) -> tuple[np.ndarray, dict]:
    n = len(raw)
    slp_parts, slp_bad = _groups(raw, "SLP", path)
    ma1_parts, ma1_bad = _groups(raw, "MA1", path)
    slp, slp_counts = (_nan(n), {"absent": True}) if slp_parts is None else _decode(slp_parts, 0, 1, 99999, 10.0, reject)
    alt, alt_counts = (_nan(n), {"absent": True}) if ma1_parts is None else _decode(ma1_parts, 0, 1, 99999, 10.0, reject)
    from_slp = np.isfinite(slp)
    from_ma1 = ~from_slp & np.isfinite(alt)
    source = ("SLP" if not from_ma1.any() else "MA1 altimeter (QNH)" if not from_slp.any()
              else "SLP, MA1 altimeter (QNH) where SLP is missing")
    report = {"source": source if (from_slp | from_ma1).any() else "none", "from_slp": int(from_slp.sum()),
              "from_ma1_altimeter": int(from_ma1.sum()), "missing": int((~from_slp & ~from_ma1).sum()),
              "slp": {**slp_counts, "malformed": slp_bad}, "ma1_altimeter": {**alt_counts, "malformed": ma1_bad}}
    return np.where(from_slp, slp, alt), report


def _precipitation(raw, path, reject) -> tuple[np.ndarray, dict]:
    n = len(raw)
    columns = [c for c in _PRECIP if c in raw]
    if not columns:
        return _nan(n), {"source": "not reported by this station (no AA1-AA4 column)", "hourly_amounts": 0}
    out, other = _nan(n), np.zeros(n, bool)
    counts = {}
    for col in columns:
        parts, malformed = _groups(raw, col, path)
        depth, c = _decode(parts, 1, 3, 9999, 10.0, reject)
        period = parts[0].astype(float).to_numpy()
        hourly = period == 1.0
        take = np.isnan(out) & hourly & np.isfinite(depth)
        out[take] = depth[take]
        other |= np.isfinite(depth) & ~hourly
        counts[col] = {**c, "malformed": malformed}
    found = np.isfinite(out)
    return out, {"source": f"{'/'.join(columns)} 1-hour amounts", "hourly_amounts": int(found.sum()),
                 "other_periods_only": int((other & ~found).sum()), "groups": counts}


def _station_names(raw, station) -> np.ndarray:
    """Per report its station name: ``station`` when given (one station in the file), else
    the most common real call sign of its ``STATION`` id (e.g. ``SBGR``), else the id."""
    import pandas as pd

    n = len(raw)
    ids = raw["STATION"].str.strip() if "STATION" in raw else pd.Series(["station"] * n, index=raw.index)
    if station:
        if ids.nunique() > 1:
            raise ValueError(f"station={station!r} names every row, but the file holds stations "
                             f"{sorted(ids.unique())[:10]}; leave station empty (names from CALL_SIGN/STATION)")
        return np.full(n, str(station), dtype=object)
    if "CALL_SIGN" not in raw:
        return ids.to_numpy(object)
    call = raw["CALL_SIGN"].str.strip()
    real = (call != "") & (call != "99999")
    best = call[real].groupby(ids[real]).agg(lambda s: s.value_counts().index[0])
    return ids.map(best).fillna(ids).to_numpy(object)


def _collapse(table: pd.DataFrame, routine: np.ndarray, step: str) -> tuple[pd.DataFrame, dict]:
    """One whole report per station and period ``(H - step, H]``, labelled ``H`` (module docstring)."""
    import pandas as pd

    label = table["time"].dt.ceil(pd.Timedelta(step))
    has_vis = np.isfinite(table["visibility"].to_numpy())
    # np.lexsort: the LAST key is the primary one; negated keys sort descending
    by = np.lexsort((-np.arange(len(table)), -pd.DatetimeIndex(table["time"]).asi8, -routine.astype(np.int64),
                     -has_vis.astype(np.int64), pd.DatetimeIndex(label).asi8, pd.factorize(table["station"])[0]))
    ranked = table.iloc[by].reset_index(drop=True)
    ranked["time"] = label.iloc[by].reset_index(drop=True)
    flags = pd.DataFrame({"station": ranked["station"], "time": ranked["time"], "routine": routine[by],
                          "vis": has_vis[by]})
    per_hour = flags.groupby(["station", "time"], sort=False)
    any_routine = per_hour["routine"].transform("any").to_numpy(bool)
    several = (per_hour["routine"].transform("size") > 1).to_numpy()
    first = ~flags.duplicated(["station", "time"], keep="first").to_numpy()
    chosen_routine, chosen_vis = routine[by][first], has_vis[by][first]
    report = {
        "step": str(step),
        "rule": ("report at t -> period (ceil(t) - step, ceil(t)]; per period the latest routine FM-15 with a "
                 "visibility, else the latest report with a visibility, else the latest report; never averaged"),
        "hours": int(first.sum()),
        "hours_with_several_reports": int((several & first).sum()),
        "reports_collapsed": int(len(table) - first.sum()),
        "hours_routine": int(chosen_routine.sum()),
        "hours_special_no_routine": int((~any_routine[first]).sum()),
        "hours_special_over_routine_without_visibility": int((any_routine[first] & ~chosen_routine).sum()),
        "hours_without_visibility": int((~chosen_vis).sum()),
        "same_time_reports": int(table.duplicated(["station", "time"], keep=False).sum()),
    }
    return ranked[first], report


def read_ncei_global_hourly(path, *, station: str | None = None, stations=(),
                            report_types=DEFAULT_REPORT_TYPES, collapse: str | None = "1h",
                            reject_quality=REJECTED_QUALITY,
                            valid_ranges: dict | None = None) -> tuple[pd.DataFrame, dict]:
    """Read an NCEI Global Hourly (ISD) CSV into canonical variables and units.

    Args:
      station: the name of every row (the file must hold one ``STATION``); None: per
        ``STATION`` id its call sign (``CALL_SIGN``, e.g. ``"SBGR"``) where it has one, else the id.
      stations: keep only these names (error naming those not in the file).
      report_types: ``REPORT_TYPE`` values kept (default METAR ``FM-15``, SPECI ``FM-16``);
        empty or None: all.
      collapse: one report per period of this length (pandas frequency, default ``"1h"``),
        labelled with the period's end (rule in the module docstring); None: every report at
        its own time (the grid then keeps each variable's latest value per step).
      reject_quality: ISD quality codes whose values become NaN (default suspect and
        erroneous: ``2``, ``3``, ``6``, ``7``).
      valid_ranges: canonical name -> ``(lo, hi)`` merged over ``DEFAULT_VALID_RANGES``;
        decoded values outside become NaN (``out_of_range``).

    Returns:
      ``(table, report)`` as :func:`~nowcast_jax.visibility.readers.read_station_csv`: ``table``
      has ``station`` (str), ``time`` (tz-aware UTC) and the seven canonical variables
      (float64, NaN = missing), sorted by station and time; ``report`` has ``rows`` (kept),
      ``rows_bad_time``, ``conflicting_duplicates``, ``out_of_range`` per variable, ``absent``
      (variables a station of the file does not report at all: :func:`unreported`; the named
      feature sets drop the features that need them, as for a CSV column mapped to ``""``) and
      ``ncei``: the decoding counts (module docstring). CAVOK and METAR ``9999`` ("10 km or
      more") are 10000 m.
    """
    import pandas as pd

    raw, _ = _read(path)
    n_raw = len(raw)
    reject = tuple(str(q) for q in (reject_quality or ()))
    types = raw["REPORT_TYPE"].str.strip() if "REPORT_TYPE" in raw else pd.Series([""] * n_raw, index=raw.index)
    type_counts = {str(k): int(v) for k, v in types.value_counts().items()}
    wanted_types = [str(t) for t in (report_types or ())] if "REPORT_TYPE" in raw else []
    if wanted_types:  # (a file without REPORT_TYPE keeps every row: nothing to filter, no routine report)
        keep = types.isin(wanted_types).to_numpy()
        raw, types = raw[keep].reset_index(drop=True), types[keep].reset_index(drop=True)
    dropped_types = {k: v for k, v in type_counts.items() if wanted_types and k not in wanted_types}
    try:
        times = _parse_times(raw["DATE"], TIME_FORMAT, "UTC")
    except ValueError as err:
        raise ValueError(f"column 'DATE' of {path}: {err}") from None
    n = len(raw)
    decoded, ncei = {}, {}
    decoded["visibility"], ncei["visibility"] = _visibility(raw, path, reject)
    for name, column in (("temperature", "TMP"), ("dew_point", "DEW")):
        parts, malformed = _groups(raw, column, path)
        if parts is None:
            decoded[name], ncei[name] = _nan(n), {"absent": True}
        else:
            decoded[name], counts = _decode(parts, 0, 1, 9999, 10.0, reject)
            ncei[name] = {**counts, "malformed": malformed}
    decoded["wind_speed"], decoded["wind_direction"], ncei["wind"] = _wind(raw, path, reject)
    decoded["pressure"], ncei["pressure"] = _pressure(raw, path, reject)
    decoded["precipitation"], ncei["precipitation"] = _precipitation(raw, path, reject)

    table = pd.DataFrame({"station": _station_names(raw, station), "time": times.reset_index(drop=True)})
    ranges = {**DEFAULT_VALID_RANGES, **(valid_ranges or {})}
    out_of_range = {}
    for name in CANONICAL:
        values = decoded[name]
        lo, hi = ranges[name]
        bad = (values < lo) | (values > hi)
        out_of_range[name] = int(bad.sum())
        table[name] = np.where(bad, np.nan, values)
    if stations:
        known = sorted(table["station"].unique())
        unknown = [s for s in stations if s not in known]
        if unknown:
            raise ValueError(f"stations {unknown} not in {path}; available: {known}")
        keep = table["station"].isin(list(stations)).to_numpy()
        table, types = table[keep], types[keep]
    bad_time = table["time"].isna().to_numpy()
    table, routine = table[~bad_time].reset_index(drop=True), (types[~bad_time] == ROUTINE).to_numpy()
    n_reports = len(table)
    if collapse:
        table, ncei["collapse"] = _collapse(table, routine, collapse)
    table = table.sort_values(["station", "time"], kind="stable").reset_index(drop=True)
    conflicts = _duplicate_conflicts(table)
    if conflicts:  # only without collapsing: reports of the same time with other values
        warnings.warn(f"{path}: {conflicts} rows repeat a station and time of another row with other values; "
                      "the grid uses the last of each", stacklevel=2)
    rejected = {k: _rejected(v) for k, v in ncei.items() if k != "collapse"}
    absent = unreported(table)
    ncei = {"format": NCEI_FORMAT, "raw_reports": int(n_raw), "report_types": type_counts,
            "dropped_report_types": dropped_types, "reports": int(n_reports),
            "rejected_quality_codes": list(reject), "rejected_quality": rejected, **ncei}
    return table, {"rows": int(len(table)), "rows_bad_time": int(bad_time.sum()),
                   "conflicting_duplicates": conflicts, "out_of_range": out_of_range, "absent": absent,
                   "ncei": ncei}


def unreported(table: pd.DataFrame) -> list[str]:
    """Canonical variables without a single value in the rows of some station of ``table``
    (SBGR: ``precipitation``, no ``AA1``-``AA4`` column): what ``data.columns.<name>=""``
    declares for a CSV, found in the file (the report's ``absent``)."""
    if table.empty:
        return []
    counts = table.groupby("station")[list(CANONICAL)].count()
    return [name for name in CANONICAL if (counts[name] == 0).any()]


def read_station_file(contract: CsvContract, path, step: str = "1h") -> tuple[pd.DataFrame, dict]:
    """``path`` read under ``contract`` in its ``format``: ``"csv"`` = :meth:`CsvContract.read`;
    ``"ncei_global_hourly"`` = :func:`read_ncei_global_hourly` with reports collapsed to one per
    ``step`` (the contract's CSV columns, units and time settings do not apply; its stations and
    valid ranges do)."""
    if contract.format == NCEI_FORMAT:
        return read_ncei_global_hourly(path, stations=contract.stations, collapse=step,
                                       valid_ranges=dict(contract.valid_ranges))
    return contract.read(path)


def _rejected(part: dict) -> int:
    """All ``rejected_quality`` counts inside one variable's report part."""
    total = int(part.get("rejected_quality", 0))
    return total + sum(_rejected(v) for v in part.values() if isinstance(v, dict))
