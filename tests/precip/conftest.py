"""Fixtures of the precipitation tests: the tiny radar and Moving MNIST tasks on the real data."""

from __future__ import annotations

import numpy as np
import pytest

from nowcast_jax.engine import config as config_lib
from nowcast_jax.precip import task as precip
from tests.engine_utils import REPO

MNIST_CFG = str(REPO / "configs" / "precip_moving_mnist.py")
RADAR_CFG = str(REPO / "configs" / "precip_radar.py")


def tiny_radar_config(radar_dir, cache, **overrides):
    """``configs/precip_radar.py:tiny`` on the shared MeteoSwiss files, decoded into ``cache``."""
    c = config_lib.load_config(RADAR_CFG + ":tiny")
    c.data.files = str(radar_dir / "mch" / "*" / "*.gif")
    c.data.cache_dir = str(cache)
    return config_lib.apply_overrides(c, [f"{k}={v}" for k, v in overrides.items()])


@pytest.fixture(scope="session")
def radar_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("radar_cache")


@pytest.fixture(scope="session")
def radar_config(radar_dir, radar_cache):
    """``radar_config(**overrides)``: the tiny radar config with overrides like ``{"loss.name": "mse"}``."""
    return lambda **overrides: tiny_radar_config(radar_dir, radar_cache, **overrides)


@pytest.fixture(scope="session")
def radar_task(radar_config):
    return precip.make_task(radar_config())


@pytest.fixture(scope="session")
def mnist_task(mnist_dir):
    c = config_lib.load_config(MNIST_CFG + ":tiny")
    c.data.mnist_path = str(mnist_dir)
    return precip.make_task(c)


# The centre 320x360 of the 640x710 MeteoSwiss composites: another archive, same importer, step and
# downsampling, on another grid (40x45 after downsampling by 8).
CROP_ROWS, CROP_COLS = slice(160, 480), slice(175, 535)


@pytest.fixture(scope="session")
def cropped_radar(radar_dir, tmp_path_factory):
    """A copy of the MeteoSwiss archive cut to its centre (the GIF's palette indices kept): a glob."""
    from PIL import Image

    root = tmp_path_factory.mktemp("mch_cropped")
    for path in sorted((radar_dir / "mch").glob("*/*.gif")):
        out = root / path.parent.name / path.name
        out.parent.mkdir(exist_ok=True)
        with Image.open(path) as img:
            img.crop((CROP_COLS.start, CROP_ROWS.start, CROP_COLS.stop, CROP_ROWS.stop)).save(out, optimize=False)
            native = np.asarray(img)
        with Image.open(out) as cut:
            assert (np.asarray(cut) == native[CROP_ROWS, CROP_COLS]).all()  # the same palette indices
    return str(root / "*" / "*.gif")
