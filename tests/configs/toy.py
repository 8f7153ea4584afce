"""Toy config for engine tests. Variants: ``long`` (for signal tests), ``rmsprop``, ``cosine``."""

import ml_collections

from nowcast_jax.engine.defaults import default_engine_config


def get_config(variant=None):
    c = default_engine_config()
    c.task = "tests.toy_task:make_task"
    c.seed = 0
    c.train.steps = 20
    c.train.batch_size = 8
    c.train.log_every_steps = 1
    c.checkpoint.every_steps = 5
    c.checkpoint.max_to_keep = 2
    c.eval.every_steps = 5
    c.eval.batches = 2
    c.model = ml_collections.ConfigDict(dict(hidden=(8,), dropout=0.1))
    c.data = ml_collections.ConfigDict(dict(features=4, horizons=3, nan_steps=(), eval_size=20))
    if variant in (None, ""):
        return c
    if variant == "long":
        c.train.steps = 1_000_000
        c.checkpoint.every_steps = 100_000
        c.eval.every_steps = 100_000
        c.train.log_every_steps = 1
        return c
    if variant == "rmsprop":
        c.train.optimizer.name = "rmsprop"
        c.train.optimizer.decay = 0.9
        return c
    if variant == "cosine":
        c.train.schedule.name = "cosine"
        c.train.schedule.warmup_steps = 3
        c.train.grad_clip_norm = 1.0
        c.train.weight_decay = 1e-4
        return c
    raise ValueError(f"unknown variant {variant!r} (known: long, rmsprop, cosine)")
