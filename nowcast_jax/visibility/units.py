"""Canonical station variables, their units, and conversions to them (numpy only).

A part of the first stage of the station pipeline (:mod:`nowcast_jax.visibility.readers`):
every reader gives :data:`CANONICAL` in :data:`CANONICAL_UNITS`. :func:`convert_units`
takes a column from the unit a file states (``data.units.<name>``; names are
case-insensitive) to the canonical one; :func:`check_scale` checks the per-column factors
(``data.scale.<name>``) applied before it, for files that store e.g. visibility in units of
10 m (KMA ASOS ``시정(10m)``: scale 10 with unit ``m``, or unit ``dam``).
"""

from __future__ import annotations

import math

import numpy as np

CANONICAL = ("visibility", "temperature", "dew_point", "wind_speed", "wind_direction",
             "pressure", "precipitation")
CANONICAL_UNITS = {"visibility": "m", "temperature": "C", "dew_point": "C", "wind_speed": "m/s",
                   "wind_direction": "deg", "pressure": "hPa", "precipitation": "mm"}
MILE_M = 1609.344
KNOT_MS = 1852.0 / 3600.0


def _same(v):
    return v


def _f_to_c(v):
    return (v - 32.0) * 5.0 / 9.0


_C_FROM = {"c": _same, "degc": _same, "°c": _same, "f": _f_to_c, "degf": _f_to_c, "°f": _f_to_c,
           "k": lambda v: v - 273.15}
#: canonical name -> unit (lower case) -> function to canonical units
UNITS = {
    "visibility": {"m": _same, "dam": lambda v: v * 10.0, "km": lambda v: v * 1000.0,
                   "miles": lambda v: v * MILE_M, "mi": lambda v: v * MILE_M},
    "temperature": _C_FROM,
    "dew_point": _C_FROM,
    "wind_speed": {"m/s": _same, "knots": lambda v: v * KNOT_MS, "kt": lambda v: v * KNOT_MS,
                   "kts": lambda v: v * KNOT_MS, "kn": lambda v: v * KNOT_MS, "mph": lambda v: v * 0.44704,
                   "km/h": lambda v: v / 3.6, "kmh": lambda v: v / 3.6, "kph": lambda v: v / 3.6},
    "wind_direction": {"deg": _same, "degrees": _same},
    "pressure": {"hpa": _same, "mb": _same, "mbar": _same, "inhg": lambda v: v * 33.8638866667,
                 "pa": lambda v: v / 100.0, "kpa": lambda v: v * 10.0},
    "precipitation": {"mm": _same, "cm": lambda v: v * 10.0, "inches": lambda v: v * 25.4,
                      "in": lambda v: v * 25.4},
}


def convert_units(values, quantity: str, unit: str) -> np.ndarray:
    """Convert ``values`` (any shape) of canonical ``quantity`` from ``unit`` to canonical units.

    Unit names are case-insensitive (``"F"``, ``"knots"``, ``"inHg"``, ``"km/h"``, ``"kPa"``, ...).
    """
    if quantity not in UNITS:
        raise ValueError(f"unknown quantity {quantity!r}; known: {list(CANONICAL)}")
    table = UNITS[quantity]
    key = str(unit).strip().lower()
    if key not in table:
        raise ValueError(f"unknown unit {unit!r} for {quantity!r} (data.units.{quantity}); known: {sorted(table)}")
    return table[key](np.asarray(values, dtype=np.float64))


def check_scale(scale) -> dict:
    """``data.scale``: canonical name -> factor the file's numbers are multiplied by before
    unit conversion; complete (1.0 where not given). A ``ValueError`` names a bad key or factor."""
    scale = dict(scale or {})
    unknown = [k for k in scale if k not in CANONICAL]
    if unknown:
        raise ValueError(f"data.scale has unknown variable(s) {unknown}; known: {list(CANONICAL)}")
    out = {}
    for name in CANONICAL:
        try:
            factor = float(scale.get(name, 1.0))
        except (TypeError, ValueError):
            factor = math.nan
        if not (math.isfinite(factor) and factor > 0):
            raise ValueError(f"data.scale.{name}={scale.get(name)!r} is not a number > 0 "
                             "(e.g. 10 for a column in units of 10 m; 1 = as written)")
        out[name] = factor
    return out
