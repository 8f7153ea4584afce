"""Which code a run's ``config.task`` names: the application's task factory, evaluator,
report and export hooks (the top floor, beside the CLI; imported lazily).

``config.task`` is a short name of :data:`APPLICATIONS` or ``"module.path:factory"`` for a
task of your own. An application package ``P`` provides::

    P.task.make_task(config) -> Task                        # the engine's narrow protocol
    P.evaluate.evaluate(run, split, out_dir=None) -> dict   # scores (JSON-able)
    P.evaluate.format_report(results, run) -> str           # what `nowcast-jax evaluate` prints
    P.serve.export_spec(task, params) -> (fn, input_specs, sidecar)

(``run``: :class:`nowcast_jax.engine.workdir.RestoredRun`). A ``"module.path:factory"`` task
may define ``evaluate``, ``format_report`` and ``export_spec`` in the same module; without an
``evaluate`` the CLI reports the engine's evaluation loss.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

from nowcast_jax.engine.config import ConfigError

APPLICATIONS = {"precip": "nowcast_jax.precip", "visibility": "nowcast_jax.visibility"}


@dataclasses.dataclass(frozen=True)
class Application:
    """The hooks of one ``config.task``, as ``"module:function"`` names (resolved on use)."""

    name: str
    make_task: str
    evaluate: str | None
    format_report: str | None
    export_spec: str | None

    def hook(self, which: str) -> Callable[..., Any] | None:
        """The hook function ``which`` (e.g. ``"evaluate"``), or None where there is none."""
        spec = getattr(self, which)
        if spec is None:
            return None
        module_name, _, attr = spec.partition(":")
        return getattr(_import(module_name, self.name), attr, None)


def _import(module_name: str, task_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and (module_name == err.name or module_name.startswith(err.name + ".")):  # it, not its imports
            raise ConfigError(f"config.task={task_name!r}: cannot import {module_name!r} ({err})") from err
        raise


def application(task_name: str) -> Application:
    """The hooks of ``config.task`` (a short name or ``"module.path:factory"``)."""
    package = APPLICATIONS.get(task_name)
    if package is not None:
        return Application(task_name, f"{package}.task:make_task", f"{package}.evaluate:evaluate",
                           f"{package}.evaluate:format_report", f"{package}.serve:export_spec")
    module_name, sep, factory = task_name.partition(":")
    if not sep or not module_name or not factory:
        raise ConfigError(f"config.task={task_name!r}: expected one of {sorted(APPLICATIONS)} or "
                          "'module.path:factory'")
    if not hasattr(_import(module_name, task_name), factory):
        raise ConfigError(f"config.task={task_name!r}: {module_name} has no {factory!r}")
    return Application(task_name, task_name, f"{module_name}:evaluate", f"{module_name}:format_report",
                       f"{module_name}:export_spec")


def make_task(config):
    """Build the task named by ``config.task``; a config without a key that task reads (a
    config of another application) is a :class:`ConfigError` naming the key."""
    factory = application(str(config.task)).hook("make_task")
    try:
        return factory(config)
    except AttributeError as err:
        if not isinstance(err.__context__, KeyError):  # ml_collections' "no such key": else a bug
            raise
        raise ConfigError(f"config.task={config.task!r} reads config key {err.__context__} that this config lacks: "
                          "is it a config of that application (configs/*.py)?") from None
