"""The engine's config keys and their defaults (``ml_collections`` only: imports no JAX).

Application configs (``configs/*.py``) start from :func:`default_engine_config` and add their
``data``, ``model``, ``loss`` and ``eval`` keys, so loading a config never imports JAX.
"""

from __future__ import annotations

import math

import ml_collections


class EngineConfigError(ValueError):
    """An engine config value is invalid; the message names the key."""


def default_engine_config() -> ml_collections.ConfigDict:
    """The keys the engine reads, with defaults; task configs start from this.

    ``train.optimizer.name`` is ``"adam"`` or ``"rmsprop"`` (the other fields are that
    optimizer's arguments; unused ones are ignored). ``train.schedule.name`` is
    ``"constant"`` or ``"cosine"`` (to ``alpha * lr`` at ``train.steps``), with an optional
    linear warmup of ``warmup_steps``. ``grad_clip_norm`` / ``weight_decay`` of 0 disable
    clipping / decoupled weight decay (applied to parameters with ndim >= 2).
    ``checkpoint.best_metric`` names an eval metric (``"loss"`` or an aux metric of the
    task's ``loss_fn``); ``""`` keeps only the latest steps. ``train.prefetch_batches``
    training batches are built ahead in a background thread while the step runs (0: each
    batch is built in the loop's thread; the batches are the same either way).
    """
    c = ml_collections.ConfigDict()
    c.task = ""
    c.seed = 0
    c.train = ml_collections.ConfigDict(dict(
        steps=1000, batch_size=16, learning_rate=1e-3,
        optimizer=dict(name="adam", b1=0.9, b2=0.999, eps=1e-8, decay=0.9, momentum=0.0,
                       centered=False),
        schedule=dict(name="constant", warmup_steps=0, alpha=0.0),
        grad_clip_norm=0.0, weight_decay=0.0, max_consecutive_skips=10,
        log_every_steps=50, tensorboard=False, prefetch_batches=2))
    c.checkpoint = ml_collections.ConfigDict(dict(
        every_steps=500, max_to_keep=3, best_metric="loss", best_mode="min", async_save=True))
    c.eval = ml_collections.ConfigDict(dict(every_steps=500, batches=8, batch_size=0, split="val"))
    return c


_RULES = (  # (key, test, what a valid value is)
    ("train.steps", lambda v: v >= 1, "a whole number >= 1"),
    ("train.batch_size", lambda v: v >= 1, "a whole number >= 1 (and a multiple of the device count)"),
    ("train.learning_rate", lambda v: v > 0, "> 0 (a negative rate would ascend the loss)"),
    ("train.grad_clip_norm", lambda v: v >= 0, ">= 0 (0 turns clipping off)"),
    ("train.weight_decay", lambda v: v >= 0, ">= 0 (0 turns it off)"),
    ("train.schedule.warmup_steps", lambda v: v >= 0, ">= 0"),
    ("train.max_consecutive_skips", lambda v: v >= 0, ">= 0 (0: never stop)"),
    ("train.log_every_steps", lambda v: v >= 0, ">= 0"),
    ("train.prefetch_batches", lambda v: v >= 0 and v == int(v), "a whole number >= 0 (0: build each batch when its step starts)"),
    ("checkpoint.every_steps", lambda v: v >= 0, ">= 0 (0: only at the end)"),
    ("checkpoint.max_to_keep", lambda v: v >= 1, ">= 1"),
    ("eval.batch_size", lambda v: v >= 0, ">= 0 (0: train.batch_size)"),
)  # eval.every_steps <= 0 turns periodic evaluation off; eval.batches <= 0 means every batch
_CHOICES = (("train.optimizer.name", ("adam", "rmsprop")), ("train.schedule.name", ("constant", "cosine")),
            ("checkpoint.best_mode", ("min", "max")))


def _value(config, key: str):
    node = config
    for part in key.split("."):
        if part not in node:
            return None  # an older config without the key: the engine's default applies
        node = node[part]
    return node


def check_engine_config(config) -> None:
    """Raise :class:`EngineConfigError` naming the first engine key whose value cannot work;
    called before any data are read or any step runs."""
    for key, ok, valid in _RULES:
        value = _value(config, key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
            raise EngineConfigError(f"{key}={value!r}: must be {valid}")
    for key, allowed in _CHOICES:
        value = _value(config, key)
        if value is not None and value not in allowed:
            raise EngineConfigError(f"{key} must be {' or '.join(repr(a) for a in allowed)}, got {value!r}")
