"""A training workdir as the rest of the package sees it: its stored config and its best (or
any) checkpoint, restored into a task.

``workdir/config.json`` is the resolved config written by ``train``. The engine never builds
an application's task itself: callers pass the factory (``make_task(config) -> Task``), so an
evaluator that compares with another run restores it with its own application's factory::

    run = workdir.restore("runs/visibility", make_task)   # config, task (extras loaded), step, params
    run.task, run.params
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Sequence

from nowcast_jax.engine import config as config_lib


class WorkdirError(ValueError):
    """A workdir that cannot be used (missing config, no checkpoint)."""


@dataclasses.dataclass
class RestoredRun:
    """A restored training run: its config (stored + overrides), task, checkpoint step, params."""

    config: Any
    task: Any
    step: int
    params: Any


def stored_config(workdir) -> config_lib.ConfigDict:
    """The resolved config saved in ``workdir/config.json`` by ``train``."""
    path = Path(workdir) / "config.json"
    if not path.is_file():
        raise WorkdirError(f"{path} not found: is {workdir} a training workdir?")
    return config_lib.from_json(path.read_text(encoding="utf-8"))


def restore_params(config, workdir, task, step: int | None = None, train_config=None) -> tuple[int, Any]:
    """(step, params) of the best checkpoint (the latest when none was scored, or ``step``);
    the task's extras (e.g. its fitted preprocessing contract) are loaded from that checkpoint.
    The optimizer state is restored as ``train_config`` (default ``config.train``) shapes it:
    :func:`restore` passes the stored config's, so a ``train.*`` override cannot break a read."""
    from nowcast_jax.engine import loop
    from nowcast_jax.engine import state as state_lib

    if not (Path(workdir) / "checkpoints").is_dir():
        raise WorkdirError(f"no checkpoint in {Path(workdir) / 'checkpoints'}: has {workdir} been trained?")
    mesh = state_lib.make_mesh()
    tx, _ = state_lib.optimizer_from_config(train_config if train_config is not None else config.train)
    manager = loop.open_checkpoints(config, Path(workdir), read_only=True)  # a trainer may be writing
    try:
        if manager.latest_step() is None:
            raise WorkdirError(f"no checkpoint in {manager.directory}")
        target = state_lib.abstract_state(task, tx, config.seed, mesh)
        restored = manager.restore_best(target) if step is None else manager.restore(target, step)
    finally:
        manager.close()
    task.load_extras(restored.extras)
    return restored.step, restored.state.params


def restore(workdir, make_task: Callable[[Any], Any], step: int | None = None,
            overrides: Sequence[str] = ()) -> RestoredRun:
    """Config (stored, plus ``overrides`` like ``"eval.split=val"``), ``make_task(config)`` and
    the best (or ``step``) checkpoint of ``workdir``."""
    stored = stored_config(workdir)
    config = config_lib.apply_overrides(config_lib.copy_config(stored), list(overrides))
    task = make_task(config)
    step, params = restore_params(config, workdir, task, step, train_config=stored.train)
    return RestoredRun(config, task, step, params)
