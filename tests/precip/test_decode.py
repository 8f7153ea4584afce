"""Importer keyword arguments: each importer's defaults, the user's merged over them, recorded
resolved in the fitted contract (so switching ``data.importer`` never carries another
importer's arguments along, and checkpoints and exports stay reproducible)."""

from __future__ import annotations

import glob

import numpy as np
import pytest

from nowcast_jax.engine import config as config_lib
from nowcast_jax.engine.config import ConfigError
from nowcast_jax.precip import decode
from nowcast_jax.precip.preprocess import RadarContract, reading_contract
from tests.precip.conftest import RADAR_CFG

MCH = {"product": "AQC", "unit": "mm", "accutime": 5.0}


def _data(*overrides):
    """``config.data`` of ``configs/precip_radar.py:tiny`` with command-line style overrides."""
    return config_lib.apply_overrides(config_lib.load_config(RADAR_CFG + ":tiny"), list(overrides)).data


def test_the_config_leaves_the_importer_defaults_and_the_contract_records_them():
    data = _data()
    assert dict(data.importer_kwargs) == {}  # "the importer's defaults"
    assert reading_contract(data).importer_options == MCH


@pytest.mark.parametrize("importer,expected", [("fmi_pgm", {"gzipped": True}), ("bom_rf3", {}),
                                               ("mrms_grib", {"window_size": 4}),
                                               ("odim_hdf5", {"qty": "RATE"}),
                                               ("knmi_hdf5", {"qty": "ACRR", "accutime": 5.0}),
                                               ("some_other_importer", {})])
def test_a_switched_importer_gets_its_own_defaults_never_mch(importer, expected):
    """``--config.data.importer=fmi_pgm`` alone used to hand MeteoSwiss' product/unit/accutime to FMI."""
    contract = reading_contract(_data(f"data.importer={importer}"))
    assert contract.importer == importer and contract.importer_options == expected
    assert not set(MCH) & set(contract.importer_options) - set(expected)
    assert decode.resolve_importer_kwargs(importer) == expected == decode.resolve_importer_kwargs(importer, {})


def test_user_kwargs_are_merged_over_the_defaults():
    assert decode.resolve_importer_kwargs("fmi_pgm", {"gzipped": False}) == {"gzipped": False}
    rzc = {"product": "RZC", "unit": "mm/h", "accutime": 5.0}
    assert decode.resolve_importer_kwargs("mch_gif", rzc) == rzc
    assert decode.resolve_importer_kwargs(lambda path: None, {"a": 1}) == {"a": 1}  # a callable: no defaults
    # the command line gives a whole dict (the default {} has no sub-keys to override one by one)
    contract = reading_contract(_data("data.importer=fmi_pgm", "data.importer_kwargs={'gzipped': False}"))
    assert contract.importer_options == {"gzipped": False}
    assert decode.IMPORTER_DEFAULTS["fmi_pgm"] == {"gzipped": True}  # a merge does not change the table


@pytest.mark.parametrize("given", [{"product": "RZC"}, {"product": "CPC", "unit": "mm/h"}, {"accutime": 10.0}])
def test_meteoswiss_product_unit_and_accutime_come_together(given):
    """A rate product merged with the AQC defaults' accutime=5 would read as 12x the rain: refused."""
    with pytest.raises(ValueError, match="product, unit, accutime together"):
        decode.resolve_importer_kwargs("mch_gif", given)
    text = "{" + ", ".join(f"'{k}': {v!r}" for k, v in given.items()) + "}"
    with pytest.raises(ConfigError, match="data.importer_kwargs: .*give all three"):
        reading_contract(_data(f"data.importer_kwargs={text}"))


def test_a_stored_contract_is_read_as_it_was_written():
    """Old checkpoints and sidecars hold the kwargs they were trained with: used as is, never merged
    with today's defaults (an explicit ``{}`` stays ``{}``)."""
    fitted = reading_contract(_data("data.importer=fmi_pgm"))
    stored = fitted.to_dict()
    assert stored["importer_kwargs"] == {"gzipped": True}
    assert RadarContract.from_dict(stored) == fitted
    old = {**stored, "importer": "mch_gif", "importer_kwargs": {"product": "AQC", "unit": "mm", "accutime": 5}}
    assert RadarContract.from_dict(old).importer_options == {"product": "AQC", "unit": "mm", "accutime": 5}
    assert RadarContract.from_dict({**stored, "importer_kwargs": {}}).importer_options == {}


@pytest.mark.data
def test_fmi_files_read_with_the_default_kwargs(radar_dir):
    """A real FMI composite (.pgm.gz) through the contract of ``data.importer=fmi_pgm`` with no kwargs."""
    paths = sorted(glob.glob(str(radar_dir / "fmi" / "20170509" / "*.pgm.gz")))
    if not paths:
        pytest.skip(f"no FMI files under {radar_dir / 'fmi' / '20170509'}")
    contract = reading_contract(_data("data.importer=fmi_pgm", "data.zr_a=223", "data.zr_b=1.53"))
    rain = contract.read_frames(paths[:1])
    assert rain.shape == (1, 1226 // 8, 760 // 8) and np.nanmax(rain) > 0
    direct = decode.downsample(decode.read_rain_rate(paths[0], "fmi_pgm", {"gzipped": True}, zr_a=223.0,
                                                     zr_b=1.53)[0], 8)
    np.testing.assert_array_equal(rain[0], direct)
