"""Station features, windows, splits and min-max scaling (numpy only; never imports jax).

Works on a *regular grid* per station (see :mod:`nowcast_jax.visibility.dataset`): a table of
canonical variables in SI-ish units (visibility m, temperature/dew point degC, wind m/s,
direction deg, pressure hPa, precipitation mm), one row per time step, NaN where missing.

Shapes: ``S`` grid steps of one station, ``T`` history steps, ``F`` features, ``H``
horizons, ``N`` windows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Feature names, and the sets offered by name (FEATURE_SETS).
BASE_FEATURES = (
    "wind_speed", "wind_dir_sin", "wind_dir_cos", "pressure",
    "precipitation", "dew_point", "temperature", "visibility",
)
#: Opt-in features derived from the canonical variables (:func:`derived_features`): dew-point
#: depression ``T - Td`` (degC) and its 3 h change, relative humidity (%, Magnus), the UTC
#: hour of day as sin/cos (UTC: a fixed offset from solar time, no DST jumps),
#: ``log(vis + 100 m)`` (fog is the bottom 6 % of linear visibility) and its 1 h / 3 h changes.
#: Changes look back only, and are 0 where the earlier value is missing (never dropping a
#: window; a gap just before a window reads as "no change", in predict too: see
#: :func:`lookback_hours`).
DERIVED_FEATURES = (
    "dewpoint_depression", "dewpoint_depression_tend3h", "relative_humidity",
    "hour_sin", "hour_cos", "log_visibility", "log_visibility_tend1h", "log_visibility_tend3h",
)
#: Features computed across stations (:mod:`nowcast_jax.visibility.neighbours`): the
#: lowest log visibility and dew-point depression among the file's other stations.
NEIGHBOUR_FEATURES = ("neighbour_log_visibility_min", "neighbour_dewpoint_depression_min")
FEATURE_NAMES = BASE_FEATURES + DERIVED_FEATURES + NEIGHBOUR_FEATURES
#: The paper's 8 factors (Li et al. 2019), in the paper's order.
PAPER_FEATURES_8 = BASE_FEATURES
#: The 6-factor set of the paper's Table 5. We could not check the table here; our reading
#: is the 8 factors without the wind-direction pair (sin, cos), the only pair whose removal
#: turns 8 factors into 6 while keeping each observed variable whole.
PAPER_FEATURES_6 = ("wind_speed", "pressure", "precipitation", "dew_point", "temperature", "visibility")
#: The paper's 8 factors plus the fog-physics features (16; not in the paper).
FOG_FEATURES_16 = PAPER_FEATURES_8 + DERIVED_FEATURES
#: ``fog16`` plus the two neighbour-station features (18; needs a file of >= 2 stations).
FOG_FEATURES_18 = FOG_FEATURES_16 + NEIGHBOUR_FEATURES
FEATURE_SETS = {"paper8": PAPER_FEATURES_8, "paper6": PAPER_FEATURES_6, "fog16": FOG_FEATURES_16,
                "fog18": FOG_FEATURES_18}
LOG_VISIBILITY_OFFSET_M = 100.0

SPLITS = ("train", "val", "test")


def resolve_features(features) -> tuple[str, ...]:
    """A feature list, or the name of a set (:data:`FEATURE_SETS`) -> tuple of names."""
    if isinstance(features, str):
        if features not in FEATURE_SETS:
            raise ValueError(f"unknown feature set {features!r}; known: {sorted(FEATURE_SETS)}")
        return FEATURE_SETS[features]
    names = tuple(features)
    unknown = [f for f in names if f not in FEATURE_NAMES]
    if unknown:
        raise ValueError(f"unknown feature(s) {unknown}; known: {list(FEATURE_NAMES)}")
    if not names or len(set(names)) != len(names):
        raise ValueError(f"features must be a non-empty list without repeats, got {list(names)}")
    return names


# --------------------------------------------------------------------------- wind

def wind_components(speed: np.ndarray, direction_deg: np.ndarray, *, calm_ms: float = 0.0,
                    variable_wind: str = "missing") -> tuple[np.ndarray, np.ndarray, dict]:
    """sin and cos of the (meteorological, "from") wind direction, with calm handled.

    Args:
      speed: ``[S]`` wind speed, m/s (NaN = missing).
      direction_deg: ``[S]`` direction in degrees (NaN = missing or variable).
      calm_ms: speeds ``<= calm_ms`` are calm: the direction is undefined, and
        ``sin = cos = 0`` (the origin of the unit circle: "no preferred direction"),
        whatever the direction column says (often 0 or missing).
      variable_wind: what a missing direction with speed above calm means: ``"missing"``
        (NaN: windows through it are dropped) or ``"calm"`` (variable wind, METAR ``VRB``:
        ``sin = cos = 0`` as for calm).

    Returns:
      ``(sin [S], cos [S], counts)`` with counts ``{"calm": n, "variable": n}``; NaN where
      the speed is missing, or the direction is missing and ``variable_wind="missing"``.
    """
    if variable_wind not in ("missing", "calm"):
        raise ValueError(f"variable_wind must be 'missing' or 'calm', got {variable_wind!r}")
    speed = np.asarray(speed, dtype=np.float64)
    rad = np.deg2rad(np.asarray(direction_deg, dtype=np.float64))
    sin, cos = np.sin(rad), np.cos(rad)
    calm = speed <= calm_ms                      # False for NaN speed
    variable = (speed > calm_ms) & np.isnan(rad)
    zero = calm | variable if variable_wind == "calm" else calm
    sin[zero], cos[zero] = 0.0, 0.0
    missing_speed = np.isnan(speed)
    sin[missing_speed], cos[missing_speed] = np.nan, np.nan
    return sin, cos, {"calm": int(calm.sum()), "variable": int(variable.sum())}


def relative_humidity(temperature_c: np.ndarray, dew_point_c: np.ndarray) -> np.ndarray:
    """Relative humidity (%) from temperature and dew point (degC), Magnus formula over water
    (a = 17.625, b = 243.04 degC); capped at 100 (a dew point reported above the temperature)."""
    t, td = np.asarray(temperature_c, np.float64), np.asarray(dew_point_c, np.float64)
    a, b = 17.625, 243.04
    rh = 100.0 * np.exp(a * td / (b + td) - a * t / (b + t))
    return np.minimum(rh, 100.0)


#: Change features: name -> (feature it is the change of, look-back in hours).
TENDENCIES = {
    "dewpoint_depression_tend3h": ("dewpoint_depression", 3.0),
    "log_visibility_tend1h": ("log_visibility", 1.0),
    "log_visibility_tend3h": ("log_visibility", 3.0),
}


def lookback_hours(features) -> float:
    """How far before a window's first step its features look (hours; 0 without changes).

    A change at the first history step compares with the value ``lag`` hours earlier, so a
    forecast needs that much grid before its window (``nowcast-jax predict`` checks it)."""
    return max((TENDENCIES[f][1] for f in features if f in TENDENCIES), default=0.0)


def _tendency(values: np.ndarray, lag: int) -> np.ndarray:
    """``values[t] - values[t - lag]`` (look-back only): NaN where ``values[t]`` is missing,
    0 where only the earlier value is (or ``t < lag``: before the grid starts)."""
    if lag <= 0:
        raise ValueError(f"tendency lag must be >= 1 step, got {lag}")
    out = np.zeros_like(values)
    out[lag:] = values[lag:] - values[:-lag]
    out[~np.isfinite(out)] = 0.0
    out[~np.isfinite(values)] = np.nan
    return out


def _lag_steps(hours: float, times) -> int:
    """``hours`` as a whole number of grid steps (the step is ``times[1] - times[0]``)."""
    if times is None or len(times) < 2:
        raise ValueError("tendency features need the grid times (a regular grid of >= 2 steps)")
    step_s = float((np.asarray(times[1]) - np.asarray(times[0])) / np.timedelta64(1, "s"))
    lag = hours * 3600.0 / step_s if step_s > 0 else 0.0
    if lag < 1 or abs(lag - round(lag)) > 1e-9:
        raise ValueError(f"a {hours} h tendency is not a whole number of {step_s:.0f} s steps")
    return int(round(lag))


def _hour_angle(times) -> np.ndarray:
    """``[S]`` UTC time of day as an angle in radians (0 at 00 UTC)."""
    if times is None:
        raise ValueError("hour_sin/hour_cos need the grid times")
    sec = (np.asarray(times, "datetime64[s]") - np.datetime64(0, "s")) / np.timedelta64(1, "s")
    return 2.0 * np.pi * np.mod(sec, 86400.0) / 86400.0


def derived_features(grid: dict[str, np.ndarray], names, times=None) -> dict[str, np.ndarray]:
    """The requested :data:`DERIVED_FEATURES` of one station's regular grid.

    Args:
      grid: canonical name -> ``[S]`` array.
      names: derived feature names wanted (others are ignored).
      times: ``[S]`` datetime64 UTC grid times (needed for the hour and tendency features).

    Returns:
      name -> ``[S]`` float64: NaN where an input at ``t`` is missing; a change is 0 where
      only its earlier value is missing (see :func:`_tendency`).
    """
    names = [n for n in names if n in DERIVED_FEATURES]
    t = np.asarray(grid["temperature"], np.float64)
    td = np.asarray(grid["dew_point"], np.float64)
    level = {"dewpoint_depression": lambda: t - td,
             "relative_humidity": lambda: relative_humidity(t, td),
             "log_visibility": lambda: np.log(np.asarray(grid["visibility"], np.float64) + LOG_VISIBILITY_OFFSET_M),
             "hour_sin": lambda: np.sin(_hour_angle(times)),
             "hour_cos": lambda: np.cos(_hour_angle(times))}
    out = {}
    for name in names:
        if name in TENDENCIES:
            base, hours = TENDENCIES[name]
            out[name] = _tendency(level[base](), _lag_steps(hours, times))
        else:
            out[name] = level[name]()
    return out


def feature_matrix(grid: dict[str, np.ndarray], features, *, calm_ms: float = 0.0,
                   variable_wind: str = "missing", times=None, neighbours=None) -> tuple[np.ndarray, dict]:
    """Stack canonical grid columns (and derived features) into the feature matrix.

    Args:
      grid: canonical name -> ``[S]`` array (all seven canonical variables).
      features: feature names (see :data:`FEATURE_NAMES`).
      times: ``[S]`` datetime64 grid times; needed only by the hour and tendency features.
      neighbours: this station's entry of
        :func:`~nowcast_jax.visibility.neighbours.neighbour_features` (name -> ``[S]``);
        needed only by the neighbour features.

    Returns:
      ``(values [S, F] float64 with NaN for missing, wind counts)``.
    """
    missing = [f for f in features if f in NEIGHBOUR_FEATURES and f not in (neighbours or {})]
    if missing:
        raise ValueError(f"features {missing} need the other stations: pass neighbours= "
                         f"(station_neighbours.neighbour_features of all the file's grids)")
    sin, cos, counts = wind_components(grid["wind_speed"], grid["wind_direction"],
                                       calm_ms=calm_ms, variable_wind=variable_wind)
    source = {"wind_dir_sin": sin, "wind_dir_cos": cos}
    source.update(derived_features(grid, features, times))
    source.update({k: v for k, v in (neighbours or {}).items() if k in features})
    cols = [source[f] if f in source else np.asarray(grid[f], np.float64) for f in features]
    return np.stack(cols, axis=1), counts


# --------------------------------------------------------------------------- windows

@dataclass
class WindowIndex:
    """Valid window positions of one station's grid.

    ``end``: ``[N]`` grid index of the last history step; inputs are rows
    ``end - T + 1 .. end``, targets rows ``end + horizon_steps``.
    """

    end: np.ndarray
    dropped: dict


def _window_any(bad: np.ndarray, history: int, horizons: np.ndarray, ends: np.ndarray,
                over_history: bool, over_targets: bool) -> np.ndarray:
    """``[len(ends)]`` True where ``bad`` is set in a window's history and/or target rows."""
    hit = np.zeros(len(ends), dtype=bool)
    if over_history:
        csum = np.concatenate([[0], np.cumsum(bad)])
        hit |= (csum[ends + 1] - csum[ends + 1 - history]) > 0
    if over_targets:
        for h in horizons:
            hit |= bad[ends + h]
    return hit


def find_windows(values: np.ndarray, vis: np.ndarray, observed: np.ndarray, history: int,
                 horizons, filled: np.ndarray | None = None) -> WindowIndex:
    """Windows with complete inputs and targets; the others are counted by reason.

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
    gap = _window_any(~observed, history, horizons, ends, True, True)
    bad_in = _window_any(~np.isfinite(values).all(axis=1), history, horizons, ends, True, False)
    bad_in |= ~np.isfinite(vis[ends])
    bad_tgt = _window_any(~np.isfinite(vis), history, horizons, ends, False, True)
    future = np.zeros(len(ends), bool) if filled is None else np.asarray(filled, bool)[ends]
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


# --------------------------------------------------------------------------- scaling

@dataclass
class MinMaxScaler:
    """Per-feature min-max scaling to [0, 1] on the data it was fitted on.

    Fit it on the training split only; other splits may then fall outside [0, 1].
    A constant feature (``max == min``) gets scale 1, so it maps to 0 without dividing by
    zero. ``min`` and ``max``: ``[F]`` float64.
    """

    features: tuple
    min: np.ndarray
    max: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, features) -> "MinMaxScaler":
        """Fit on ``x [..., F]`` (NaN ignored; every feature needs one finite value)."""
        flat = np.asarray(x, dtype=np.float64).reshape(-1, np.shape(x)[-1])
        if flat.shape[1] != len(features):
            raise ValueError(f"x has {flat.shape[1]} features, names give {len(features)}")
        empty = [f for f, ok in zip(features, np.isfinite(flat).any(axis=0)) if not ok]
        if empty:
            raise ValueError(f"cannot fit the scaler: no finite training values for {empty}")
        return cls(tuple(features), np.nanmin(flat, axis=0), np.nanmax(flat, axis=0))

    @property
    def scale(self) -> np.ndarray:
        """``[F]`` ``max - min``, with 1 where that is 0."""
        span = self.max - self.min
        return np.where(span > 0, span, 1.0)

    def transform(self, x: np.ndarray) -> np.ndarray:
        """``x [..., F]`` physical -> scaled, float64."""
        return (np.asarray(x, np.float64) - self.min) / self.scale

    def inverse_transform(self, z: np.ndarray) -> np.ndarray:
        """``z [..., F]`` scaled -> physical, float64 (exact inverse of :meth:`transform`)."""
        return np.asarray(z, np.float64) * self.scale + self.min

    def to_dict(self) -> dict:
        """JSON-able form (stored with checkpoints)."""
        return {"kind": "minmax", "features": list(self.features),
                "min": [float(v) for v in self.min], "max": [float(v) for v in self.max]}

    @classmethod
    def from_dict(cls, d: dict) -> "MinMaxScaler":
        """Inverse of :meth:`to_dict`."""
        if d.get("kind", "minmax") != "minmax":
            raise ValueError(f"not a min-max scaler: kind={d.get('kind')!r}")
        return cls(tuple(d["features"]), np.asarray(d["min"], np.float64), np.asarray(d["max"], np.float64))
