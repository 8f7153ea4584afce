"""The fitted station preprocessing contract: ONE path from a raw CSV row to model inputs.

:class:`StationContract` holds every choice between a station CSV and the model: the CSV
contract (:class:`~nowcast_jax.visibility.readers.CsvContract`: columns, units, times,
missing markers, valid ranges), the visibility cap, the grid step, the short-gap rules,
calm/variable wind, the features, history and horizons, the neighbour stations (``fog18``),
the min-max scaler and the target transform. It is frozen and JSON-able
(:meth:`~StationContract.to_dict` / :meth:`~StationContract.from_dict`); the task saves it
with every checkpoint (``state_extras``) and the export writes it into the sidecar, so
training, evaluation and serving all call the same stage methods:

    observations = contract.read_stations(path)      # read -> cap -> grid -> fill short gaps
    matrices, _ = contract.feature_matrices(observations)   # per station [S, F] raw features
    x = contract.model_inputs(raw_windows)           # [N, T, F] model inputs (float32)
    metres = contract.to_metres(z)                   # model value head -> visibility in [0, cap]

:meth:`~StationContract.model_inputs` and :meth:`~StationContract.to_metres` take the array
module as ``xp``: training and evaluation call them with numpy, the loss and the exported
forecaster with ``jax.numpy``, so there is one input stage and one output stage.

Fitting (on the training split; :mod:`nowcast_jax.visibility.dataset`): the cap (when not
given: the largest visibility observed), the neighbour stations (those of the file), the
scaler (training windows' rows) and the target transform (training targets; the task).
:meth:`~StationContract.with_fitted_parts_of` is the restore rule: this contract's reading
(the config's) with a stored contract's fitted scaler, target transform and cap.
numpy/pandas only (``xp`` may be ``jax.numpy``; this module never imports jax).
"""

from __future__ import annotations

import ast
import copy
import dataclasses

import numpy as np
import pandas as pd

from nowcast_jax.visibility import features as feature_lib
from nowcast_jax.visibility import grid as grid_lib
from nowcast_jax.visibility.neighbours import neighbour_features
from nowcast_jax.visibility.readers import CsvContract
from nowcast_jax.visibility.scaling import MinMaxScaler, TargetTransform
from nowcast_jax.visibility.sources import expand_sources, read_sources

STATION_CONTRACT_VERSION = 1
VARIABLE_WIND = ("missing", "calm")


@dataclasses.dataclass(frozen=True)
class StationObservations:
    """One CSV read under a contract: per station its :class:`~nowcast_jax.visibility.grid.FilledGrid`
    (sorted by name), the cap used (m) and what each step counted (JSON-able ``report``)."""

    stations: list
    cap_m: float
    report: dict

    @property
    def names(self) -> list[str]:
        return [s.grid.name for s in self.stations]


@dataclasses.dataclass(frozen=True, eq=False)
class StationContract:
    """The station preprocessing contract (see the module docstring). ``visibility_cap_m``,
    ``neighbour_stations``, ``scaler``, ``target``, ``stations`` and ``station_stats`` are
    None / empty until fitted. ``stations``: the stations the scaler was fitted on (those
    with training windows first seen: all stations read); ``station_stats``: per station
    what its training data were (JSON-able: ``rows``, ``steps``, ``missing_steps``,
    ``first``/``last`` grid time, the split's ``val_start``/``test_start`` of that station
    and per split its ``windows`` and ``fog_hours``; see
    :func:`nowcast_jax.visibility.dataset.station_summary`)."""

    csv: CsvContract
    visibility_cap_m: float | None = None
    step: str = "1h"
    interpolate: tuple = grid_lib.DEFAULT_INTERPOLATE
    max_interp_steps: int = 3
    calm_wind_ms: float = 0.0
    variable_wind: str = "missing"
    features: tuple = feature_lib.PAPER_FEATURES_8
    history_steps: int = 12
    horizons_hours: tuple = (1.0, 3.0, 6.0)
    neighbour_stations: tuple = ()
    scaler: MinMaxScaler | None = None
    target: TargetTransform | None = None
    stations: tuple = ()
    station_stats: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        set_ = object.__setattr__
        set_(self, "stations", tuple(str(s) for s in self.stations))
        set_(self, "station_stats", {str(k): copy.deepcopy(dict(v)) for k, v in sorted(dict(self.station_stats or {}).items())})
        set_(self, "features", feature_lib.resolve_features(self.features))
        feature_lib.select_features(self.features, self.csv.absent)  # none needs a variable not reported
        set_(self, "interpolate", grid_lib.check_interpolate(self.interpolate))
        set_(self, "horizons_hours", tuple(float(h) for h in self.horizons_hours))
        set_(self, "neighbour_stations", tuple(str(s) for s in self.neighbour_stations))
        set_(self, "step", str(self.step))
        if self.variable_wind not in VARIABLE_WIND:
            raise ValueError(f"variable_wind must be 'missing' or 'calm', got {self.variable_wind!r}")
        if int(self.history_steps) < 1 or not self.horizons_hours:
            raise ValueError(f"need history_steps >= 1 and horizons, got {self.history_steps}, {self.horizons_hours}")
        self.horizon_steps  # noqa: B018 - whole numbers of steps, else a ValueError now
        if self.scaler is not None and tuple(self.scaler.features) != self.features:
            raise ValueError(f"the scaler was fitted on {list(self.scaler.features)}, not {list(self.features)}")

    # -- geometry --------------------------------------------------------------------------
    @property
    def horizon_steps(self) -> tuple[int, ...]:
        """Target offsets in grid steps after a window's last input step."""
        return tuple(grid_lib.steps_of(h, self.step, "horizon") for h in self.horizons_hours)

    @property
    def step_minutes(self) -> float:
        return pd.Timedelta(self.step).total_seconds() / 60.0

    @property
    def needs_neighbours(self) -> bool:
        return any(f in feature_lib.NEIGHBOUR_FEATURES for f in self.features)

    @property
    def steps_needed(self) -> int:
        """Grid steps a CSV must cover to give one window's inputs as training computed them:
        the history; with change features also their look-back and ``max_interp_steps`` more
        (the interpolation that may have filled a look-back value needs its left anchor)."""
        hours = feature_lib.lookback_hours(self.features)
        if hours <= 0:
            return int(self.history_steps)
        lookback = int(round(hours * 60.0 / self.step_minutes))
        return int(self.history_steps) + lookback + int(self.max_interp_steps)

    # -- the stages ------------------------------------------------------------------------
    def read_stations(self, path) -> StationObservations:
        """Read ``path`` (:class:`CsvContract`; one file, a list of files or a glob:
        :mod:`~nowcast_jax.visibility.sources`), clip visibility at the cap (none yet: the
        largest observed is the cap), put each station on the grid, fill short gaps."""
        sources = expand_sources(path)
        table, read_report = read_sources(self.csv, sources, step=self.step)
        if table.empty:
            raise ValueError(f"no observations left in {sources.pattern} after reading")
        cap = float(self.visibility_cap_m) if self.visibility_cap_m else float(np.nanmax(table["visibility"]))
        table, clipped = grid_lib.clip_visibility(table, cap)
        grids, grid_report = grid_lib.to_grid(table, self.step)
        stations = [grid_lib.fill_short_gaps(g, self.interpolate, self.max_interp_steps) for g in grids]
        interpolated = {n: sum(s.counts[n] for s in stations) for n in self.interpolate}
        report = {**read_report, "visibility_clipped": clipped, "visibility_cap_m": cap, "step": self.step,
                  "stations": grid_report, "interpolated": interpolated,
                  "max_interp_steps": int(self.max_interp_steps)}
        return StationObservations(stations, cap, report)

    def check_stations(self, names) -> None:
        """Neighbour features compare a station with the others of its file: the file must
        hold the stations the contract was fitted on (ValueError naming both)."""
        if self.needs_neighbours and self.neighbour_stations and sorted(names) != sorted(self.neighbour_stations):
            raise ValueError(f"the neighbour-station features compare stations {sorted(self.neighbour_stations)}; "
                             f"the CSV holds {sorted(names)} (it needs the same stations)")

    def feature_matrices(self, observations: StationObservations) -> tuple[list[np.ndarray], dict]:
        """Per station, the raw feature matrix ``[S, F]`` float64 (NaN = missing) on its grid,
        and a report (``wind`` calm/variable counts, ``neighbours``). Neighbour features take
        the other stations' observed values, never their filled ones."""
        self.check_stations(observations.names)
        grids = [s.grid for s in observations.stations]
        near, near_report = neighbour_features(grids, self.features, observed=[s.raw.values for s in
                                                                                observations.stations])
        matrices, wind = [], {"calm": 0, "variable": 0}
        for g, g_near in zip(grids, near):
            values, counts = feature_lib.feature_matrix(
                g.values, self.features, calm_ms=float(self.calm_wind_ms), variable_wind=self.variable_wind,
                times=g.times, neighbours=g_near)
            matrices.append(values)
            wind = {k: wind[k] + counts[k] for k in wind}
        return matrices, {"wind": wind, "neighbours": {"stations": observations.names, **near_report}}

    def model_inputs(self, raw, xp=np):
        """Raw features ``[..., F]`` -> model inputs ``(raw - min) / scale`` (the fitted
        min-max scaler), float32. THE input stage of training, evaluation and the exported
        forecaster: ``xp`` is the array module (numpy computes in float64, then rounds;
        ``jax.numpy`` in its default float type)."""
        if self.scaler is None:
            raise ValueError("the contract has no fitted scaler yet")
        lo, scale = xp.asarray(self.scaler.min), xp.asarray(self.scaler.scale)
        return ((xp.asarray(raw) - lo) / scale).astype(xp.float32)

    def to_metres(self, z, xp=np):
        """The model's value head ``z [...]`` -> visibility ``[...]`` m in ``[0, cap]``: the
        fitted target transform inverted, clipped at 0 and the visibility cap. THE output
        stage of the loss, evaluation and the exported forecaster (``xp``: the array module)."""
        if self.target is None or self.visibility_cap_m is None:
            raise ValueError("the contract has no fitted target transform or visibility cap yet")
        return xp.clip(self.target.inverse(z, xp), 0.0, float(self.visibility_cap_m))

    # -- fitting ---------------------------------------------------------------------------
    def fitted_to(self, observations: StationObservations) -> "StationContract":
        """The cap and neighbour stations of ``observations`` where not yet set."""
        near = tuple(observations.names) if self.needs_neighbours and not self.neighbour_stations else None
        return dataclasses.replace(self, visibility_cap_m=observations.cap_m,
                                   neighbour_stations=near if near is not None else self.neighbour_stations)

    def with_fitted_parts_of(self, stored: "StationContract") -> "StationContract":
        """The restore rule: this contract (what to read and how, the split's stations: the
        config's) with the FITTED parts of ``stored`` (a checkpoint's): the scaler, the target
        transform, the visibility cap (kept where ``stored`` has none) and the stations it was
        fitted on with their statistics (where ``stored`` records them). The geometry must
        agree (see :meth:`geometry`; the caller checks it, naming its config keys)."""
        cap = self.visibility_cap_m if stored.visibility_cap_m is None else stored.visibility_cap_m
        fitted_on = (dict(stations=stored.stations, station_stats=stored.station_stats) if stored.stations
                     else {})   # a contract saved before they were recorded: this one's
        return dataclasses.replace(self, scaler=stored.scaler, target=stored.target or self.target,
                                   visibility_cap_m=cap, **fitted_on)

    # -- JSON ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-able form (checkpoint extras and export sidecars)."""
        return {"version": STATION_CONTRACT_VERSION, "csv": self.csv.to_dict(),
                "visibility_cap_m": None if self.visibility_cap_m is None else float(self.visibility_cap_m),
                "step": self.step, "interpolate": list(self.interpolate),
                "max_interp_steps": int(self.max_interp_steps), "calm_wind_ms": float(self.calm_wind_ms),
                "variable_wind": self.variable_wind, "features": list(self.features),
                "history_steps": int(self.history_steps), "horizons_hours": list(self.horizons_hours),
                "neighbour_stations": list(self.neighbour_stations),
                "scaler": None if self.scaler is None else self.scaler.to_dict(),
                "target": None if self.target is None else self.target.to_dict(),
                "stations": list(self.stations), "station_stats": copy.deepcopy(self.station_stats)}

    @classmethod
    def from_dict(cls, d: dict) -> "StationContract":
        """Inverse of :meth:`to_dict` (a contract saved before ``stations`` and
        ``station_stats`` were recorded reads with none)."""
        if int(d.get("version", 0)) != STATION_CONTRACT_VERSION:
            raise ValueError(f"station contract version {d.get('version')!r}; this code reads {STATION_CONTRACT_VERSION}")
        plain = {k: d[k] for k in ("visibility_cap_m", "step", "interpolate", "max_interp_steps", "calm_wind_ms",
                                   "variable_wind", "features", "history_steps", "horizons_hours",
                                   "neighbour_stations")}
        return cls(csv=CsvContract.from_dict(d["csv"]),
                   scaler=None if d.get("scaler") is None else MinMaxScaler.from_dict(d["scaler"]),
                   target=None if d.get("target") is None else TargetTransform.from_dict(d["target"]),
                   stations=tuple(d.get("stations") or ()), station_stats=dict(d.get("station_stats") or {}), **plain)

    def same_as(self, other: "StationContract") -> bool:
        return self.to_dict() == other.to_dict()

    def geometry(self) -> dict:
        """What the model's parameters and outputs depend on, by the ``data_spec`` keyword
        (the ``config.data`` key) that sets it: ``features``, ``step``, ``history_hours``
        and ``horizons_hours``."""
        return {"features": list(self.features), "step": self.step,
                "history_hours": int(self.history_steps) * self.step_minutes / 60.0,
                "horizons_hours": list(self.horizons_hours)}


def parse_names(value):
    """A list of names from a config value: a tuple/list, or the string a command-line
    override gives (``"('a', 'b')"`` or ``"a,b"``). A single known feature-set name (or a
    one-element list of it) comes back as that name."""
    if isinstance(value, str):
        text = value.strip()
        if text in feature_lib.FEATURE_SETS:
            return text
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            parsed = [f.strip() for f in text.split(",") if f.strip()]
        value = [parsed] if isinstance(parsed, str) else parsed
    names = tuple(value)
    return names[0] if len(names) == 1 and names[0] in feature_lib.FEATURE_SETS else names
