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
import json
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


GIVE_A_WORKDIR = "give the folder that 'nowcast-jax train --workdir' wrote"
RESTORE_KEYS = ("seed", "train", "checkpoint", "eval")  # what restoring a run reads, besides the task


def _not_a_workdir(workdir: Path) -> str:
    """Why ``workdir`` (which has no config.json) is no training workdir, and the fix."""
    if not workdir.exists():
        return f"workdir {workdir} does not exist: {GIVE_A_WORKDIR}"
    if not workdir.is_dir():
        return f"workdir {workdir} is a file, not a training workdir: {GIVE_A_WORKDIR}"
    return f"{workdir} is not a training workdir (it holds no config.json): {GIVE_A_WORKDIR}"


def stored_config(workdir) -> config_lib.ConfigDict:
    """The resolved config saved in ``workdir/config.json`` by ``train``; a missing or
    unreadable one is a :class:`WorkdirError` naming the folder and the fix."""
    workdir = Path(workdir)
    path = workdir / "config.json"
    if not path.is_file():
        raise WorkdirError(_not_a_workdir(workdir))
    not_ours = f"{path} is not a config written by 'nowcast-jax train'"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        raise WorkdirError(f"{not_ours} ({err}): {GIVE_A_WORKDIR}, or remove the file") from None
    if not isinstance(data, dict) or "task" not in data:
        raise WorkdirError(f"{not_ours} (it names no task): {GIVE_A_WORKDIR}, or remove the file")
    return config_lib.from_dict(data)


def _check_restorable(workdir: Path, stored) -> None:
    missing = [k for k in RESTORE_KEYS if k not in stored]
    if missing:
        raise WorkdirError(f"{workdir / 'config.json'} is not a config written by 'nowcast-jax train' (it lacks "
                           f"{', '.join(missing)}): {GIVE_A_WORKDIR}, or remove the file")


def _no_checkpoint(workdir: Path) -> str:
    return (f"no checkpoint in {workdir / 'checkpoints'}: the training in {workdir} stopped (or is running) "
            f"before its first checkpoint; continue it with 'nowcast-jax train --workdir {workdir}' "
            "or wait for its first save (checkpoint.every_steps)")


def restore_params(config, workdir, task, step: int | None = None, train_config=None) -> tuple[int, Any]:
    """(step, params) of the best checkpoint (the latest when none was scored, or ``step``);
    the task's extras (e.g. its fitted preprocessing contract) are loaded from that checkpoint.
    The optimizer state is restored as ``train_config`` (default ``config.train``) shapes it:
    :func:`restore` passes the stored config's, so a ``train.*`` override cannot break a read."""
    from nowcast_jax.engine import loop
    from nowcast_jax.engine import state as state_lib

    if not (Path(workdir) / "checkpoints").is_dir():
        raise WorkdirError(_no_checkpoint(Path(workdir)))
    mesh = state_lib.make_mesh()
    tx, _ = state_lib.optimizer_from_config(train_config if train_config is not None else config.train)
    manager = loop.open_checkpoints(config, Path(workdir), read_only=True)  # a trainer may be writing
    try:
        if manager.latest_step() is None:
            raise WorkdirError(_no_checkpoint(Path(workdir)))
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
    _check_restorable(Path(workdir), stored)
    config = config_lib.apply_overrides(config_lib.copy_config(stored), list(overrides))
    task = make_task(config)
    step, params = restore_params(config, workdir, task, step, train_config=stored.train)
    return RestoredRun(config, task, step, params)
