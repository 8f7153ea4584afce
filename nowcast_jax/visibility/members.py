"""Other trained runs an evaluation combines with the model, restored through the engine.

* ``eval.ensemble_workdirs``: a seed ensemble (value heads and classifier probabilities
  averaged with the model's); ``eval.value_workdirs``: runs whose mean value head replaces
  the model's; ``eval.mlp_workdir``: the MLP compared with (:mod:`nowcast_jax.visibility.evaluate`).
* :class:`MemberRuns` restores each workdir once with
  ``nowcast_jax.engine.workdir.restore(path, make_task)``.
* A member may have other features, history or model, never other windows: its split windows
  (stations, end times, targets, last visibility), horizons, step and visibility cap must be
  the model's (:func:`check_member`), and a classifier member must forecast the same event
  (:func:`check_classifier_member`). Otherwise a ``ValueError`` says which.
"""

from __future__ import annotations

import numpy as np

from nowcast_jax.visibility.preprocess import parse_names
from nowcast_jax.visibility.forecast import forecast_windows
from nowcast_jax.visibility.windows import SPLITS


def member_workdirs(eval_cfg, key: str) -> tuple[str, ...]:
    """The workdirs listed in ``eval.<key>`` (a tuple, or the string an override gives)."""
    value = eval_cfg.get(key, ()) or ()
    if isinstance(value, str):
        value = parse_names(value) if value.strip() else ()
        value = (value,) if isinstance(value, str) else value
    return tuple(str(d) for d in value if str(d))


class MemberRuns:
    """Restored visibility runs by workdir (each restored once); ``runs`` may be given, e.g.
    runs built in memory, as ``{name: RestoredRun}``."""

    def __init__(self, runs: dict | None = None):
        self.runs = dict(runs or {})

    def get(self, workdir: str):
        """The :class:`~nowcast_jax.engine.workdir.RestoredRun` of ``workdir`` (best checkpoint)."""
        if workdir not in self.runs:
            from nowcast_jax.engine import workdir as workdir_lib
            from nowcast_jax.visibility.task import make_task

            task_name = workdir_lib.stored_config(workdir).task
            if task_name != "visibility":
                raise ValueError(f"{workdir} holds a {task_name!r} run, not a visibility run")
            self.runs[workdir] = workdir_lib.restore(workdir, make_task)
        return self.runs[workdir]


def window_mismatch(task, member) -> str:
    """'' when ``member`` (a task) forecasts ``task``'s windows; else what differs."""
    if tuple(member.horizons_hours) != tuple(task.horizons_hours):
        return f"horizons {list(member.horizons_hours)} h vs {list(task.horizons_hours)} h"
    mine, theirs = task.contract, member.contract
    if theirs.step != mine.step:
        return f"grid step {theirs.step} vs {mine.step}"
    if float(theirs.visibility_cap_m) != float(mine.visibility_cap_m):
        return f"visibility cap {theirs.visibility_cap_m} m vs {mine.visibility_cap_m} m"
    for split in SPLITS:
        a, b = member.split(split), task.split(split)
        if len(a) != len(b):
            return f"{len(a)} {split} windows vs {len(b)}"
        for field in ("station", "times", "y", "start_vis"):
            if not np.array_equal(getattr(a, field), getattr(b, field)):
                return f"other {split} windows ({field} differs)"
    return ""


def check_member(task, member, label: str) -> None:
    """Raise ``ValueError`` unless ``member`` (a task) forecasts exactly ``task``'s windows."""
    why = window_mismatch(task, member)
    if why:
        raise ValueError(f"{label} forecasts other windows or horizons than this model: {why} (members must "
                         f"share the data, split and horizons; features may differ)")


def check_classifier_member(task, member, label: str) -> None:
    """Raise ``ValueError`` unless ``member`` has a classifier head for ``task``'s event."""
    if member.aux_weight <= 0:
        raise ValueError(f"{label} has no classifier head: every eval.ensemble_workdirs member needs one "
                         f"(loss.aux_weight > 0) when the classifier decides the event")
    if member.threshold_m != task.threshold_m:
        raise ValueError(f"{label} classifies visibility < {member.threshold_m} m, this model "
                         f"< {task.threshold_m} m (loss.threshold_m must agree)")


def member_forecasts(run, key: str, split: str, members: MemberRuns) -> list[dict]:
    """``forecast_windows`` of every run of ``run.config.eval.<key>`` (``ensemble_workdirs``
    or ``value_workdirs``) on its own inputs of ``split`` (checked to be ``run``'s windows)."""
    out = []
    classifier = str(run.config.eval.event_source) == "classifier"
    for workdir in member_workdirs(run.config.eval, key):
        member = members.get(workdir)
        check_member(run.task, member.task, f"eval.{key}: {workdir}")
        if key == "ensemble_workdirs" and classifier:
            check_classifier_member(run.task, member.task, f"eval.{key}: {workdir}")
        out.append(forecast_windows(member.task.apply_jit, member.task.contract, member.params,
                                    member.task.split(split).x))
    return out
