"""Radar nowcasting with the extrapolation-conditioned ConvLSTM: motion does the transport.

The radar recipe of ``precip_radar.py`` (MeteoSwiss events 2015-05-15 and 2016-07-11 for
training, 2017-01-31 as the test event; 2 km, log1p rain, balanced MSE, 5 -> 10 frames) with
``model.kind="extrapolation"`` (:func:`nowcast_jax.models.extrapolation_forecaster`): each
window's motion is estimated on the full frame of its 5 input frames (``data.motion_method``,
pysteps Lucas-Kanade), the last frame is extrapolated 10 steps with pysteps' semi-Lagrangian
scheme (both once per window, cached beside the decoded events), and the network reads the
extrapolated frames and predicts the extrapolation plus a correction that starts at zero (an
untrained model IS the extrapolation nowcast). The exported forecaster takes the motion
field as a second input; ``nowcast-jax predict`` computes it from the frames.

Variants: ``cpu`` (2000 steps on a 2-core CPU: 35 s of motion + 955 s of training measured, 23 min
when other jobs share the cores; the recipe of
``experiments/radar_extrapolation.py``) and ``tiny`` (seconds, for tests).
"""

from precip_radar import get_config as radar_config


def get_config(variant=None):
    if variant not in (None, "", "cpu", "tiny"):
        raise ValueError(f"unknown variant {variant!r} (known: cpu, tiny)")
    c = radar_config(variant or None)
    c.model.kind = "extrapolation"
    c.model.residual = False  # the extrapolation is the base the correction is added to
    c.data.motion_method = "LK"
    c.eval.thresholds = (0.5, 2.0, 5.0)
    c.eval.fss_scales = (4,)  # pixels of the downsampled grid: 4 x 2 km = 8 km (FSS at 2 mm/h over 8 km)
    return c
