"""Station files: ``data.path`` as one file, a list of files or a glob, read and pooled.

Part of the first stage of the station pipeline (numpy/pandas only). ``data.path`` is

* one file (``"obs.csv"``): read as it always was (:func:`nowcast_jax.visibility.ncei.read_station_file`);
* a list (``("a.csv", "b.csv")``, or the string ``"('a.csv', 'b.csv')"`` a command-line
  override gives) or a glob (``"stations/*_SEA_*.csv"``; list items may be globs too):
  every file is read with the same contract (format, columns, units, times) and the
  stations of all files are pooled.

A station's name is its ``data.station_column`` value; with ``station_column=""`` in a list
or glob, each file is one station named after the file (its stem: ``SEA_2015.csv`` ->
``SEA_2015``), so one-file-per-station archives need no station column. A name that two
files give is an error naming both files (the grid would merge two records silently).
``data.stations`` selects among the pooled stations (an error names those no file holds).
"""

from __future__ import annotations

import ast
import dataclasses
import glob
import os
from pathlib import Path

import pandas as pd

from nowcast_jax.visibility import ncei
from nowcast_jax.visibility.readers import CANONICAL, CsvContract

_GLOB = set("*?[")


@dataclasses.dataclass(frozen=True)
class StationSources:
    """The files of ``data.path``: ``paths`` (sorted per pattern, each once); ``multi`` True
    for a list or glob (then a file's stations are pooled and ``station_column=""`` names a
    station after its file), False for one plain path (read exactly as before)."""

    paths: tuple
    multi: bool
    pattern: str


def _as_items(path) -> tuple[list[str], bool]:
    """``data.path`` -> (its items, whether it was a list); the string form of a list is parsed."""
    if isinstance(path, (list, tuple)):
        return [str(p) for p in path], True
    text = str(path).strip()
    if text[:1] in "([" and text[-1:] in ")]":
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            parsed = None  # e.g. the glob "[ab]*.csv"
        if isinstance(parsed, (list, tuple)):
            return [str(p) for p in parsed], True
    return [text], False


def expand_sources(path) -> StationSources:
    """The files ``data.path`` names (see the module docstring). FileNotFoundError with one
    line naming the pattern or file that matches nothing."""
    items, is_list = _as_items(path)
    if is_list and not items:
        raise ValueError("data.path is an empty list: give a file, a list of files or a glob")
    paths, multi = [], is_list
    for item in items:
        if _GLOB & set(item):
            found = sorted(glob.glob(os.path.expanduser(item)))
            found = [f for f in found if Path(f).is_file()]
            if not found:
                raise FileNotFoundError(f"data.path: {item!r} matches no file (relative to {os.getcwd()})")
            paths.extend(found)
            multi = True
        elif Path(item).expanduser().is_dir():
            raise FileNotFoundError(f"data.path: {item!r} is a folder; give a file, a list of files or a glob such "
                                    f"as {os.path.join(item, '*.csv')!r}")
        elif not Path(item).expanduser().is_file():
            where = f" (item of data.path={list(items)})" if is_list else ""
            raise FileNotFoundError(f"data.path: no file {item!r}{where} (relative to {os.getcwd()})")
        else:
            paths.append(item)
    unique = list(dict.fromkeys(paths))
    return StationSources(tuple(unique), multi, str(path if not is_list else list(items)))


def read_sources(csv: CsvContract, sources: StationSources, step: str) -> tuple[pd.DataFrame, dict]:
    """Every file of ``sources`` under ``csv``, pooled: ``(table, report)`` as
    :func:`~nowcast_jax.visibility.ncei.read_station_file` gives for one file, the counts
    summed over files, plus ``files``: per file its rows and stations."""
    if not sources.multi:
        return ncei.read_station_file(csv, sources.paths[0], step=step)
    unfiltered = dataclasses.replace(csv, stations=())
    tables, reports, owner = [], [], {}
    for path in sources.paths:
        table, report = ncei.read_station_file(unfiltered, path, step=step)
        if csv.format == "csv" and not csv.station_column:
            table = table.assign(station=Path(path).stem)
        for name in sorted(table["station"].unique()):
            if name in owner:
                raise ValueError(f"station {name!r} is in {owner[name]} and in {path}: one file per station name "
                                 f"(drop one from data.path, or set data.station_column='' to name each file's "
                                 f"station after the file)")
            owner[name] = path
        tables.append(table)
        reports.append(report)
    table = _select(pd.concat(tables, ignore_index=True), csv.stations, owner)
    report = _merge_reports(reports)
    report["files"] = {p: {"rows": int(r["rows"]), "stations": sorted(n for n, o in owner.items() if o == p)}
                       for p, r in zip(sources.paths, reports)}
    report["rows"] = int(len(table))
    return table.sort_values(["station", "time"], kind="stable").reset_index(drop=True), report


def _select(table: pd.DataFrame, stations, owner: dict) -> pd.DataFrame:
    if not stations:
        return table
    unknown = [s for s in stations if s not in owner]
    if unknown:
        raise ValueError(f"data.stations {unknown} are in no file of data.path; the files hold {sorted(owner)}")
    return table[table["station"].isin(list(stations))]


def _merge_reports(reports: list) -> dict:
    """Reports of several files -> one: numbers summed, dicts merged key by key, ``absent``
    the variables absent in any file, other values (lists, names) those of the first file."""
    out = {}
    for key in dict.fromkeys(k for r in reports for k in r):
        values = [r[key] for r in reports if key in r]
        if key == "absent":  # not reported by a station of some file: not reported in the pool
            out[key] = [c for c in CANONICAL if any(c in v for v in values)]
        elif all(isinstance(v, dict) for v in values):
            out[key] = _merge_reports(values)
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            out[key] = sum(values)
        else:
            out[key] = values[0]
    return out
