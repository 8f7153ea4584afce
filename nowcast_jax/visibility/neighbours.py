"""Neighbour-station features: what the *other* stations of a file show at the same step.

numpy only. Fog often reaches one airport before another a few tens of km away, which a
one-station history cannot see. For each station ``s`` and grid step ``t`` the features are
the lowest value among the other stations of the file at ``t`` (the same instant: no
look-ahead). The other stations contribute only values observed at ``t``, never values
interpolated there (those would use their later observations: a look-ahead); where none of
them has one, the station's own value is used (no evidence of a difference), so these
features never drop a window that the station's own features keep; such steps are counted
(``fallback_steps``).

* ``neighbour_log_visibility_min``: lowest ``log(vis + 100 m)`` of the other stations.
* ``neighbour_dewpoint_depression_min``: lowest ``T - Td`` (degC) of the other stations.

The stations' grids must share the step; their time ranges may differ (aligned by time).
"""

from __future__ import annotations

import numpy as np

from nowcast_jax.visibility.features import NEIGHBOUR_FEATURES, derived_features

#: neighbour feature -> the station's own derived feature it takes the minimum of.
LEVEL_OF = dict(zip(NEIGHBOUR_FEATURES, ("log_visibility", "dewpoint_depression")))
#: The canonical variables they are computed from.
NEIGHBOUR_INPUTS = ("visibility", "temperature", "dew_point")


def _levels(values: dict) -> dict[str, np.ndarray]:
    """Neighbour feature name -> the ``[S]`` quantity of one station it takes the minimum of."""
    derived = derived_features(values, tuple(LEVEL_OF.values()))
    return {name: derived[base] for name, base in LEVEL_OF.items()}


def _aligned(times: np.ndarray, other_times: np.ndarray, other_values: np.ndarray) -> np.ndarray:
    """``other_values`` read at ``times`` (NaN where the other grid has no such step)."""
    out = np.full(len(times), np.nan)
    if len(other_times) == 0:
        return out
    pos = np.clip(np.searchsorted(other_times, times), 0, len(other_times) - 1)
    hit = other_times[pos] == times
    out[hit] = other_values[pos[hit]]
    return out


def neighbour_features(grids, names, *, observed=None) -> tuple[list[dict], dict]:
    """The requested :data:`NEIGHBOUR_FEATURES` of every station of ``grids``.

    Args:
      grids: station grids (``.name``, ``.times [S]`` datetime64, ``.values`` canonical
        name -> ``[S]``), all on the same step; their values give the own-value fallback.
      names: feature names wanted (names not in :data:`NEIGHBOUR_FEATURES` are ignored).
      observed: per grid, its values (at least :data:`NEIGHBOUR_INPUTS`) before
        interpolation, e.g. ``FilledGrid.raw.values`` (what the contract passes): what the
        other stations contribute. None = ``grids``' values (right only when nothing was
        interpolated).

    Returns:
      ``(features, report)``: ``features[i]`` maps each requested name to a ``[S_i]`` float64
      array for ``grids[i]`` (NaN only where the station's own value is missing too);
      ``report["fallback_steps"]`` counts, per station and feature, the steps where no other
      station observed a value and the station's own (finite) value stood in.

    Raises:
      ValueError: a neighbour feature is requested and there is only one station, or the
        grids' steps differ.
    """
    wanted = [n for n in names if n in NEIGHBOUR_FEATURES]
    if not wanted:
        return [{} for _ in grids], {"fallback_steps": {}}
    if len(grids) < 2:
        raise ValueError(f"features {wanted} compare stations, but the data holds {len(grids)} station "
                         f"(they need a file of >= 2 stations, data.station_column naming them, and "
                         f"data.stations empty or listing >= 2)")
    steps = {g.name: np.unique(np.diff(np.asarray(g.times, "datetime64[s]"))) for g in grids}
    distinct = {tuple(s.tolist()) for s in steps.values() if len(s)}
    if len(distinct) > 1:
        raise ValueError(f"neighbour features need the stations on one grid step, got {steps}")
    times = [np.asarray(g.times, "datetime64[s]") for g in grids]
    own = [_levels(g.values) for g in grids]
    if observed is None:
        observed = [g.values for g in grids]
    if len(observed) != len(grids):
        raise ValueError(f"observed holds {len(observed)} stations, grids {len(grids)}")
    seen = [_levels(v) for v in observed]
    features, fallback = [], {}
    for i, g in enumerate(grids):
        out, counts = {}, {}
        for name in wanted:
            others = np.stack([_aligned(times[i], times[j], seen[j][name])
                               for j in range(len(grids)) if j != i])  # [n_others, S]
            none = ~np.isfinite(others).any(axis=0)
            lowest = np.min(np.where(np.isfinite(others), others, np.inf), axis=0)
            out[name] = np.where(none, own[i][name], lowest)
            counts[name] = int((none & np.isfinite(own[i][name])).sum())   # own value stood in
        features.append(out)
        fallback[g.name] = counts
    return features, {"fallback_steps": fallback}
