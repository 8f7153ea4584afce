"""A training workdir as the rest of the package sees it: its stored config, its task, its
best (or any) checkpoint.

``workdir/config.json`` is the resolved config written by ``train``; ``config.task`` names
the task, either a short name from :data:`TASKS` or ``"module.path:factory"`` (the factory
takes the ConfigDict and returns a Task). Tasks are imported by name at run time, so this
module sits with the engine and imports no task.

    restored = workdir.restore("runs/visibility")      # config, task (extras loaded), step, params
    forecast = restored.task.evaluate(restored.params, "test")
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Any, Sequence

from nowcast_jax.engine import config as config_lib

TASKS = {
    "precip": "nowcast_jax.precip.task:make_task",
    "visibility": "nowcast_jax.visibility.task:make_task",
}


class WorkdirError(ValueError):
    """A workdir or task name that cannot be used (missing config, no checkpoint, bad task)."""


@dataclasses.dataclass
class Restored:
    config: Any
    task: Any
    step: int
    params: Any


def load_task(config):
    """Build the task named by ``config.task`` (short name or ``"module.path:factory"``)."""
    spec = TASKS.get(config.task, config.task)
    module_name, sep, factory_name = spec.partition(":")
    if not sep or not module_name or not factory_name:
        raise WorkdirError(f"config.task={config.task!r}: expected one of {sorted(TASKS)} or 'module.path:factory'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise WorkdirError(f"config.task={config.task!r}: cannot import {module_name!r} ({err})") from err
    factory = getattr(module, factory_name, None)
    if factory is None:
        raise WorkdirError(f"config.task={config.task!r}: {module_name} has no {factory_name!r}")
    return factory(config)


def stored_config(workdir) -> config_lib.ConfigDict:
    """The resolved config saved in ``workdir/config.json`` by ``train``."""
    path = Path(workdir) / "config.json"
    if not path.is_file():
        raise WorkdirError(f"{path} not found: is {workdir} a training workdir?")
    return config_lib.from_json(path.read_text(encoding="utf-8"))


def restore_params(config, workdir, task, step: int | None = None) -> tuple[int, Any]:
    """(step, params) of the best checkpoint (the latest when none was scored, or ``step``);
    the task's extras (normalisation) are loaded from that checkpoint."""
    from nowcast_jax.engine import loop
    from nowcast_jax.engine import state as engine

    mesh = engine.make_mesh()
    tx, _ = engine.optimizer_from_config(config.train)
    manager = loop.open_checkpoints(config, Path(workdir))
    try:
        if step is None:
            step = manager.best_step()
        if step is None:
            step = manager.latest_step()
        if step is None:
            raise WorkdirError(f"no checkpoint in {manager.directory}")
        restored = manager.restore(engine.abstract_state(task, tx, config.seed, mesh), step)
    finally:
        manager.close()
    task.load_extras(restored.extras)
    return restored.step, restored.state.params


def restore(workdir, step: int | None = None, overrides: Sequence[str] = ()) -> Restored:
    """Config (stored, plus ``overrides`` like ``"eval.split=val"``), task and checkpoint of ``workdir``."""
    config = config_lib.apply_overrides(stored_config(workdir), list(overrides))
    task = load_task(config)
    step, params = restore_params(config, workdir, task, step)
    return Restored(config, task, step, params)
