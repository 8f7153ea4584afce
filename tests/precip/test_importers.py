"""One frame of every shared radar source through the package's decoder, against the pysteps
importer read directly (the radar extra must install what each of them needs)."""

from __future__ import annotations

import glob

import numpy as np
import pytest

from nowcast_jax.precip import decode

# folder glob, importer, kwargs, Z-R, (H, W), mm/h per raw unit: None for dBZ (converted by Z-R)
SOURCES = {
    "mch": ("mch/20170131/*", "mch_gif", {"product": "AQC", "unit": "mm", "accutime": 5.0}, None, (640, 710), 12.0),
    "bom_2": ("bom/prcp-cscn/2/2018/06/16/*.nc", "bom_rf3", {}, None, (512, 512), 10.0),
    "bom_66": ("bom/prcp-c10/66/2020/10/31/*.nc", "bom_rf3", {}, None, (512, 512), 6.0),
    "fmi": ("fmi/20170509/*.pgm.gz", "fmi_pgm", {"gzipped": True}, (223.0, 1.53), (1226, 760), None),
    "mrms": ("mrms/20190610/*.grib2", "mrms_grib", {}, None, (875, 1750), 1.0),
}


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_one_frame_of_each_source(radar_dir, name):
    pattern, importer, kwargs, zr, shape, per_unit = SOURCES[name]
    path = sorted(glob.glob(str(radar_dir / pattern)))[0]
    rain, meta = decode.read_rain_rate(path, importer, kwargs, zr_a=zr[0] if zr else None,
                                       zr_b=zr[1] if zr else None)
    assert rain.shape == shape and rain.dtype == np.float32
    finite = rain[np.isfinite(rain)]
    assert finite.size > 0 and finite.min() >= 0 and finite.max() < 500  # mm/h, not dBZ or 0.01 mm
    raw, _, raw_meta = decode.get_importer(importer)(path, **kwargs)  # pysteps itself
    raw = np.asarray(raw, np.float64)
    assert np.array_equal(np.isnan(raw), np.isnan(rain))  # the domain mask survives
    if per_unit is not None:  # accumulations: mm per step -> mm/h
        np.testing.assert_allclose(rain[np.isfinite(rain)], (raw * per_unit)[np.isfinite(raw)], rtol=1e-5, atol=1e-5)
    else:  # reflectivity: Z = a R^b
        dbz = raw[np.isfinite(raw)]
        expect = (10 ** (dbz / 10) / zr[0]) ** (1 / zr[1])
        got = rain[np.isfinite(rain)]
        wet = dbz > raw_meta.get("zerovalue", -np.inf) + 1e-6  # below the importer's zero: 0 mm/h
        np.testing.assert_allclose(got[wet], expect[wet], rtol=1e-4)
