"""Station features: the feature columns of one station's grid (numpy only; never imports jax).

The third stage of the station pipeline (read -> grid -> **features** -> windows -> scale).
Works on a *regular grid* per station (:mod:`nowcast_jax.visibility.grid`): canonical
variables in SI-ish units (visibility m, temperature/dew point degC, wind m/s, direction deg,
pressure hPa, precipitation mm), one row per time step, NaN where missing.

Shapes: ``S`` grid steps of one station, ``F`` features.
"""

from __future__ import annotations

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
_TD = ("temperature", "dew_point")
_VIS = ("visibility",)
#: feature -> the canonical variables it is computed from (the wind direction's sin/cos also
#: need the speed: calm is a speed). A station that does not report one of them
#: (``data.columns.<variable>=""``) cannot have the feature (:func:`select_features`).
FEATURE_INPUTS = {
    "wind_speed": ("wind_speed",), "wind_dir_sin": ("wind_speed", "wind_direction"),
    "wind_dir_cos": ("wind_speed", "wind_direction"), "pressure": ("pressure",),
    "precipitation": ("precipitation",), "dew_point": ("dew_point",), "temperature": ("temperature",),
    "visibility": _VIS, "dewpoint_depression": _TD, "dewpoint_depression_tend3h": _TD,
    "relative_humidity": _TD, "hour_sin": (), "hour_cos": (), "log_visibility": _VIS,
    "log_visibility_tend1h": _VIS, "log_visibility_tend3h": _VIS,
    "neighbour_log_visibility_min": _VIS, "neighbour_dewpoint_depression_min": _TD,
}


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


NOT_REPORTED = "which data.columns maps to '' (not reported)"


def select_features(features, absent, why: str = NOT_REPORTED) -> tuple[tuple[str, ...], dict]:
    """The features that can be built when the station does not report the ``absent``
    canonical variables.

    A set name (``"paper8"``, ...) drops the features that need one of them; a list of names
    is what was asked for, so a listed feature that needs one is an error naming the
    variable, as is a set left empty. Returns ``(features, dropped)``: ``dropped`` maps each
    dropped feature to the absent variables it needs (empty when nothing was dropped).
    ``why``: how the error says the variables are absent.
    """
    names = resolve_features(features)
    absent = set(absent or ())
    dropped = {f: [v for v in FEATURE_INPUTS[f] if v in absent] for f in names}
    dropped = {f: need for f, need in dropped.items() if need}
    if dropped and not isinstance(features, str):
        f, need = next(iter(dropped.items()))
        raise ValueError(f"feature {f!r} of data.features needs {need[0]!r}, {why}: remove {sorted(dropped)} "
                         "from data.features" + (" or give the column" if why == NOT_REPORTED else ""))
    kept = tuple(f for f in names if f not in dropped)
    if not kept:
        raise ValueError(f"feature set {features!r} cannot be built without {sorted(absent)}: every feature "
                         "needs one of them; give their data.columns or choose other data.features")
    return kept, dropped


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
                         f"(neighbours.neighbour_features of all the file's grids)")
    sin, cos, counts = wind_components(grid["wind_speed"], grid["wind_direction"],
                                       calm_ms=calm_ms, variable_wind=variable_wind)
    source = {"wind_dir_sin": sin, "wind_dir_cos": cos}
    source.update(derived_features(grid, features, times))
    source.update({k: v for k, v in (neighbours or {}).items() if k in features})
    cols = [source[f] if f in source else np.asarray(grid[f], np.float64) for f in features]
    return np.stack(cols, axis=1), counts
