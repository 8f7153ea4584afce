"""Radar nowcasting with the ConvLSTM encoder-forecaster: 5 frames in -> 10 out.

Default: the MeteoSwiss AQC composites of the shared data (3 events of 40 frames, 5 min;
``data.files`` relative to ``$NOWCAST_JAX_DATA`` or ``../shared/data``), trained on the
2015 and 2016 events, tested on 2017-01-31 (``data.test_events``). Rain rate in mm/h from
the importer metadata, downsampled 2x (2 km), log1p transform, random 64x64 crops that
must hold rain (``min_rain_fraction`` of pixels >= ``rain_threshold`` mm/h), flips and
quarter turns, balanced MSE (HKO-7 weights) on log1p rain, masked outside the radar domain.
``model.residual``: the network predicts the change from the last observed frame.

Pointing it at another archive: ``data.importer`` (pysteps name, e.g. ``bom_rf3``),
``data.importer_kwargs`` (empty = that importer's defaults, ``decode.IMPORTER_DEFAULTS``; given
keys are merged over them, so switching the importer never carries another's arguments along;
set the whole dict, e.g. ``--config.data.importer_kwargs="{'product': 'RZC', 'unit': 'mm/h',
'accutime': 5.0}"``: MeteoSwiss needs product, unit and accutime together),
``data.files`` (glob), ``data.fn_pattern`` (pysteps archive pattern), ``data.input_frames``,
``data.output_frames``,
``data.downsample``, ``data.crop_size``, ``data.eval_crop_size`` (0 = the full frame, trimmed
to the largest multiple of ``model.patch_size``; other sizes must fit the downsampled frame and
be multiples of ``model.patch_size``, else a config error names both sizes), ``data.timestep_minutes`` (the files' step or a multiple of it: windows then take
every n-th file; any other step is refused naming the files' step), ``data.test_events`` /
``data.val_events`` (event index or id prefix), ``data.zr_a`` / ``data.zr_b`` (Z-R for
reflectivity importers; 0 = from the importer's metadata). These settings, the downsampled
grid and the rain transform form the fitted contract (``nowcast_jax.precip.preprocess``)
saved with every checkpoint and export. A restored run keeps the checkpoint's rain
transform and reads what the config says (``evaluate --config.data.files=...`` on another
archive or grid works); ``data.downsample``, ``data.timestep_minutes``,
``data.input_frames`` and ``data.output_frames`` must stay the checkpoint's.

``model.kind``: ``"encoder_forecaster"`` (the paper's model, here) or ``"extrapolation"`` (the
extrapolation-conditioned model; use ``configs/precip_radar_extrapolation.py``).

Variants: ``cpu`` (trains on a 2-core CPU in about 20 minutes; see
``experiments/radar.py``) and ``tiny`` (seconds, for tests).
"""

import ml_collections

from nowcast_jax.engine.defaults import default_engine_config

HKO7_THRESHOLDS = (0.5, 2.0, 5.0, 10.0, 30.0)
HKO7_WEIGHTS = (1.0, 1.0, 2.0, 5.0, 10.0, 30.0)


def get_config(variant=None):
    c = default_engine_config()
    c.task = "precip"
    c.seed = 0
    c.train.steps = 20_000
    c.train.batch_size = 16
    c.train.learning_rate = 1e-3
    c.train.optimizer.name = "adam"
    c.train.schedule.name = "cosine"
    c.train.schedule.warmup_steps = 100
    c.train.schedule.alpha = 0.1
    c.train.grad_clip_norm = 1.0
    c.train.log_every_steps = 50
    c.checkpoint.every_steps = 1000
    c.checkpoint.best_metric = ""
    c.eval.every_steps = 0        # no validation event by default: keep the latest checkpoint
    c.eval.batches = 4
    c.eval.split = "val"
    c.eval.update(dict(max_windows=0, predict_batch_size=4, thresholds=(0.5, 2.0), out_dir=""))
    c.data = ml_collections.ConfigDict(dict(
        source="radar", files="radar/mch/*/*.gif", fn_pattern="AQC%y%j%H%M?_00005.801",
        importer="mch_gif", importer_kwargs=dict(),
        timestep_minutes=5.0, input_frames=5, output_frames=10, event_gap_minutes=60.0,
        downsample=2, crop_size=64, eval_crop_size=(320, 352), augment=True,
        min_rain_fraction=0.1, rain_threshold=0.5, max_tries=20,
        transform="log1p", transform_scale=1.0, zr_a=0.0, zr_b=0.0,
        test_events=("20170131",), val_events=(), cache_dir=""))
    c.model = ml_collections.ConfigDict(dict(
        kind="encoder_forecaster", cell="convlstm", patch_size=4, hidden=(64, 64), kernel_x=5, kernel_h=5,
        peepholes=True, peephole_shape=(),
        forget_bias=1.0, forecaster_input="zeros", feedback="identity", compute_dtype="", remat=False,
        unroll=1, conv_impl="auto", residual=True))
    c.loss = ml_collections.ConfigDict(dict(
        name="balanced_mse", thresholds=HKO7_THRESHOLDS, weights=HKO7_WEIGHTS, horizon_weights=()))
    if variant in (None, ""):
        return c
    if variant == "cpu":
        c.model.hidden = (32, 32)
        c.model.kernel_x = c.model.kernel_h = 3
        c.train.batch_size = 8
        c.train.steps = 2000
        c.train.schedule.warmup_steps = 50
        c.train.log_every_steps = 10
        c.checkpoint.every_steps = 100
        return c
    if variant == "tiny":
        c.data.downsample = 8
        c.data.crop_size = 32
        c.data.eval_crop_size = (80, 88)
        c.data.min_rain_fraction = 0.02
        c.model.hidden = (4,)
        c.model.kernel_x = c.model.kernel_h = 3
        c.train.batch_size = 2
        c.train.steps = 3
        c.train.schedule.warmup_steps = 0
        c.train.log_every_steps = 1
        c.checkpoint.every_steps = 3
        c.checkpoint.async_save = False
        c.eval.max_windows = 3
        c.eval.predict_batch_size = 3
        return c
    raise ValueError(f"unknown variant {variant!r} (known: cpu, tiny)")
