"""A tiny Task for engine tests: an MLP regressing 3 "horizons" from 4 features.

Stateless data: ``train_batch(step, batch_size, seed)`` draws from
``np.random.default_rng([seed, step])``. ``config.data.nan_steps`` lists steps whose batch
holds a NaN (for the non-finite guard). The environment variable ``TOY_KILL_AT_STEP=k``
makes the process SIGKILL itself when batch ``k`` is requested (for kill/resume tests).
"""

from __future__ import annotations

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np

_W_TRUE = np.random.default_rng(1234).normal(size=(4, 3)).astype(np.float32)


def _sample(rng: np.random.Generator, n: int, features: int, horizons: int):
    x = rng.normal(size=(n, features)).astype(np.float32) * 2.0 + 1.0
    w = np.resize(_W_TRUE, (features, horizons))
    y = (x @ w + 0.1 * rng.normal(size=(n, horizons))).astype(np.float32)
    return x, y


class ToyTask:
    name = "toy"

    def __init__(self, config):
        self.features = int(config.data.features)
        self.horizons = int(config.data.horizons)
        self.hidden = tuple(int(h) for h in config.model.hidden)
        self.dropout = float(config.model.dropout)
        self.nan_steps = set(int(s) for s in config.data.nan_steps)
        self.eval_size = int(config.data.eval_size)
        x, _ = _sample(np.random.default_rng(999), 256, self.features, self.horizons)
        self.norm = {"mean": x.mean(0).tolist(), "std": x.std(0).tolist()}

    # -- model ------------------------------------------------------------------------
    def init_params(self, key):
        sizes = (self.features, *self.hidden, self.horizons)
        keys = jax.random.split(key, len(sizes) - 1)
        return {f"layer{i}": {"w": jax.random.normal(k, (a, b)) / np.sqrt(a), "b": jnp.zeros((b,))}
                for i, (k, a, b) in enumerate(zip(keys, sizes[:-1], sizes[1:]))}

    def apply(self, params, x, key=None):
        h = (x - jnp.asarray(self.norm["mean"])) / jnp.asarray(self.norm["std"])
        n = len(params)
        for i in range(n):
            h = h @ params[f"layer{i}"]["w"] + params[f"layer{i}"]["b"]
            if i < n - 1:
                h = jnp.tanh(h)
                if key is not None and self.dropout > 0:
                    keep = jax.random.bernoulli(jax.random.fold_in(key, i), 1 - self.dropout, h.shape)
                    h = jnp.where(keep, h / (1 - self.dropout), 0.0)
        return h

    def loss_fn(self, params, batch, key):
        pred = self.apply(params, batch["x"], key)
        err = pred - batch["y"]
        return jnp.mean(err**2), {"mae": jnp.mean(jnp.abs(err))}

    # -- data -------------------------------------------------------------------------
    def train_batch(self, step, batch_size, seed):
        if os.environ.get("TOY_KILL_AT_STEP") and int(os.environ["TOY_KILL_AT_STEP"]) == step:
            os.kill(os.getpid(), signal.SIGKILL)
        x, y = _sample(np.random.default_rng([seed, step]), batch_size, self.features, self.horizons)
        if step in self.nan_steps:
            x[0, 0] = np.nan
        return {"x": x, "y": y}

    def eval_batches(self, split, batch_size):
        x, y = _sample(np.random.default_rng({"val": 1, "test": 2}.get(split, 3)), self.eval_size,
                       self.features, self.horizons)
        for i in range(0, self.eval_size, batch_size):
            yield {"x": x[i:i + batch_size], "y": y[i:i + batch_size]}

    # -- extras -----------------------------------------------------------------------
    def state_extras(self):
        return {"normalisation": self.norm}

    def load_extras(self, extras):
        if "normalisation" in extras:
            self.norm = extras["normalisation"]


def make_task(config):
    return ToyTask(config)


def evaluate(run, split, out_dir=None):
    """The CLI's evaluate hook (found beside ``make_task``): model and zero forecast MSE per horizon."""
    task, params = run.task, run.params
    sq_model, sq_zero, n = 0.0, 0.0, 0
    for batch in task.eval_batches(split, 16):
        pred = np.asarray(task.apply(params, batch["x"]))
        sq_model = sq_model + ((pred - batch["y"]) ** 2).sum(0)
        sq_zero = sq_zero + (batch["y"] ** 2).sum(0)
        n += len(batch["y"])
    return {"model": {"mse": (sq_model / n).tolist()}, "zero": {"mse": (sq_zero / n).tolist()}}
