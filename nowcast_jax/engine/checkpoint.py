"""Checkpoints: the one module that imports orbax.

Layout of ``DIR`` (usually ``WORKDIR/checkpoints``)::

    DIR/<step>/state/...        params, optimizer state, step and counters (orbax PyTree)
    DIR/<step>/meta/...         JSON: resolved config, data cursor, task extras, metrics,
                                and a checksum of every array in ``state``
    DIR/<step>.orbax-checkpoint-tmp-*   a save in progress (removed on the next start)
    <DIR>_quarantine/<step>-<time>      steps that failed to restore (moved aside)

Retention. One orbax manager with an explicit preservation policy:
``AnyPreservationPolicy([LatestN(max_to_keep), BestN(best metric, n=1)])``. A step
survives if it is among the latest ``max_to_keep`` *or* is the best by the validation
metric, so keeping the best can never evict the latest (orbax issue 526, which affected the
old ``max_to_keep`` + ``best_fn`` options, where the best-N ranking replaced recency).
``best_step()`` is computed here from the stored metrics, not by orbax.

Crash safety. Orbax writes each step into a ``*.orbax-checkpoint-tmp-*`` directory and
renames it when complete, so a process SIGKILLed at any moment leaves either a complete
step or a tmp directory; tmp directories are deleted when the next *writer* opens the
directory (``cleanup_tmp_directories``), and the latest *complete* step is used. Readers
(``read_only=True``: evaluate, export, predict) never delete, move or write anything, so a
live trainer's in-progress save is safe from them (the trainer holds the workdir's lock,
:mod:`nowcast_jax.engine.lock`).

Corruption. ``restore`` checks the saved tree against the expected one (paths, shapes,
dtypes) before reading any array: a structural mismatch is a :class:`CheckpointMismatchError`
naming the differences (no fallback: an older step would not fit either). A step whose
files cannot be read, or whose arrays do not match the checksums stored at save time, is
moved to the quarantine folder with a warning and the previous step is tried; when none is
left, :class:`CheckpointCorruptError` is raised. A restore is never partial.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocp_policies

STATE = "state"
META = "meta"


class CheckpointError(RuntimeError):
    """Base class for checkpoint problems."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint's tree (paths, shapes, dtypes) differs from the expected one."""


class CheckpointCorruptError(CheckpointError):
    """No step in the directory could be restored completely."""


@dataclasses.dataclass
class RestoredCheckpoint:
    """What :meth:`CheckpointManager.restore` returns.

    ``state`` has the structure of the target given to restore; ``config``, ``cursor``,
    ``extras`` and ``metrics`` are the JSON items saved beside it.
    """

    step: int
    state: Any
    config: dict
    cursor: dict
    extras: dict
    metrics: dict


def _warn(message: str) -> None:
    print(f"[checkpoint] {message}", file=sys.stderr, flush=True)


def _keystr(path) -> str:
    return jax.tree_util.keystr(path, simple=True, separator="/")


def _tree_signature(tree) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{"params/dense/kernel": (shape, dtype), ...}`` for every array leaf of ``tree``."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {_keystr(p): (tuple(int(d) for d in np.shape(x)), str(np.dtype(x.dtype))) for p, x in flat}


def _host_copy(leaf) -> np.ndarray | None:
    """The full value of ``leaf`` on this host, or None when no process holds all of it."""
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        return np.asarray(leaf.addressable_data(0)) if leaf.is_fully_replicated else None
    return np.asarray(leaf)


def _tree_checksums(tree) -> dict[str, str] | None:
    """blake2b of each leaf's bytes; None when some leaf is sharded across processes."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        data = _host_copy(leaf)
        if data is None:
            return None
        out[_keystr(path)] = hashlib.blake2b(np.ascontiguousarray(data).tobytes(), digest_size=16).hexdigest()
    return out


def _describe_mismatch(saved: dict, expected: dict, limit: int = 8) -> str:
    lines = []
    for key in sorted(set(expected) - set(saved))[:limit]:
        lines.append(f"  missing in checkpoint: {key} {expected[key]}")
    for key in sorted(set(saved) - set(expected))[:limit]:
        lines.append(f"  unexpected in checkpoint: {key} {saved[key]}")
    for key in sorted(set(saved) & set(expected)):
        if saved[key] != expected[key] and len(lines) < 3 * limit:
            lines.append(f"  {key}: checkpoint {saved[key]} vs expected {expected[key]}")
    return "\n".join(lines)


def _metadata_signature(meta_tree) -> dict:
    """Signature of orbax's saved array metadata (leaves have .shape and .dtype)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(
        meta_tree, is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype")
    )
    return {_keystr(p): (tuple(int(d) for d in m.shape), str(np.dtype(m.dtype))) for p, m in flat}


class _DropMessage(logging.Filter):
    """Drops log records that start with ``prefix`` (an expected orbax notice)."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self.prefix)


class CheckpointManager:
    """Latest-N plus best-by-metric checkpoints of a train state and its JSON companions.

    Args:
      directory: where step folders live (created if missing).
      max_to_keep: how many of the most recent steps to keep (>= 1).
      best_metric: key in the ``metrics`` given to :meth:`save` that ranks steps; ``""``
        or None disables best-keeping (then ``best_step() == latest_step()``).
      best_mode: ``"min"`` or ``"max"``.
      async_save: write in a background thread (call :meth:`wait` / :meth:`close`).
      read_only: a reader (evaluate, export, predict) of a workdir a trainer may be writing:
        nothing on disk is created, cleaned up, deleted or moved (a step that cannot be read
        is skipped, not quarantined), and :meth:`save` refuses.
    """

    def __init__(self, directory, *, max_to_keep: int = 3, best_metric: str | None = None,
                 best_mode: str = "min", async_save: bool = True, read_only: bool = False):
        if max_to_keep < 1:
            raise CheckpointError(f"checkpoint.max_to_keep must be >= 1, got {max_to_keep}")
        if best_mode not in ("min", "max"):
            raise CheckpointError(f"checkpoint.best_mode must be 'min' or 'max', got {best_mode!r}")
        self.directory = Path(directory).absolute()
        self.quarantine = self.directory.parent / (self.directory.name + "_quarantine")
        self.best_metric = best_metric or None
        self.best_mode = best_mode
        self._max_to_keep = max_to_keep
        self._async = async_save
        self.read_only = read_only
        if read_only and not self.directory.is_dir():
            raise CheckpointError(f"no checkpoint in {self.directory}")
        self._manager = self._listed(self._open)

    # ----------------------------------------------------------------------------- setup
    def _listed(self, read_listing, attempts: int = 5):
        """``read_listing()``, read again when a step vanished while orbax listed it.

        Orbax lists the step folders, then reads each one's metadata and mtime; a live
        trainer's retention can delete a step in between. A reader lists
        again; a writer owns the folder, so there the error is real and raised at once.
        """
        for attempt in range(attempts if self.read_only else 1):
            try:
                return read_listing()
            except (FileNotFoundError, NotADirectoryError):  # what orbax raises for a vanished step
                if attempt == attempts - 1 or not self.read_only:
                    raise
                time.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    def _reload(self) -> None:
        self._listed(self._manager.reload)

    def _policy(self):
        policies = [ocp_policies.LatestN(n=self._max_to_keep)]
        if self.best_metric:
            policies.append(ocp_policies.BestN(
                get_metric_fn=lambda m: float(m[self.best_metric]),
                reverse=self.best_mode == "min", n=1,
                keep_checkpoints_without_metrics=False))
        return ocp_policies.AnyPreservationPolicy(policies)

    def _open(self) -> ocp.CheckpointManager:
        # best_fn is set only so that orbax writes the metrics into each step (it does so
        # when it "tracks best"); which steps survive is decided by preservation_policy.
        options = ocp.CheckpointManagerOptions(
            **({"save_interval_steps": 0} if self.read_only else {}),  # what orbax sets (and warns about)
            preservation_policy=self._policy(),
            best_fn=(lambda m: float(m[self.best_metric])) if self.best_metric else None,
            best_mode=self.best_mode,
            create=not self.read_only,
            cleanup_tmp_directories=not self.read_only,  # a reader must not delete a live save
            read_only=self.read_only,
            enable_async_checkpointing=self._async and not self.read_only,
        )
        quiet = _DropMessage("Given directory is read only")  # the reader asked for exactly that
        logging.getLogger("absl").addFilter(quiet)
        try:
            manager = ocp.CheckpointManager(
                self.directory, options=options, item_names=(STATE, META),
                item_handlers={STATE: ocp.StandardCheckpointHandler(), META: ocp.JsonCheckpointHandler()},
            )
        finally:
            logging.getLogger("absl").removeFilter(quiet)
        # Orbax deletes leftover tmp directories in a background thread; wait for it so
        # that nothing below (listing, restoring, quarantining) races with it.
        wait_cleanup = getattr(manager, "_maybe_await_cleanup_tmp_directory", None)
        if callable(wait_cleanup):
            wait_cleanup()
        return manager

    # ----------------------------------------------------------------------------- queries
    def all_steps(self) -> list[int]:
        """Complete steps on disk, ascending."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def metrics(self, step: int) -> dict:
        """The metrics saved with ``step`` (``{}`` when none)."""
        try:
            return dict(self._manager.metrics(step) or {})
        except Exception:  # noqa: BLE001 - unreadable metrics simply do not rank
            return {}

    def best_step(self) -> int | None:
        """Best step by ``best_metric`` among steps that carry it (ties: the later step);
        the latest step when best-keeping is off or no step has the metric."""
        if self.best_metric:
            scored = []
            for step in self.all_steps():
                value = self.metrics(step).get(self.best_metric)
                if value is not None and np.isfinite(float(value)):
                    scored.append((float(value) if self.best_mode == "max" else -float(value), step))
            if scored:
                return max(scored)[1]
        return self.latest_step()

    # ----------------------------------------------------------------------------- save
    def save(self, step: int, state, *, config: dict | None = None, cursor: dict | None = None,
             extras: dict | None = None, metrics: dict | None = None) -> bool:
        """Start saving ``state`` (a pytree of arrays) and the JSON items as ``step``.

        Returns False when ``step`` already exists. ``metrics`` (scalars) rank the step for
        best-keeping; the save is asynchronous unless ``async_save=False``.
        """
        if self.read_only:
            raise CheckpointError(f"{self.directory} was opened read-only (for evaluation), not for saving")
        if step in self._manager.all_steps():
            return False
        metrics = {k: float(v) for k, v in (metrics or {}).items()}
        ranked = self.best_metric in metrics and np.isfinite(metrics[self.best_metric])
        meta = {"config": config or {}, "cursor": cursor or {"step": int(step)},
                "extras": extras or {}, "metrics": metrics,
                "checksums": _tree_checksums(state), "saved_at": time.time()}
        json.dumps(meta)  # fail here, synchronously, if something is not JSON-able
        return self._manager.save(
            step, args=ocp.args.Composite(**{STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(meta)}),
            metrics=metrics if ranked else None, force=True)

    def wait(self) -> None:
        """Block until the pending asynchronous save (if any) is on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Wait for pending saves and deletions, then release the manager."""
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ----------------------------------------------------------------------------- restore
    def read_meta(self, step: int | None = None) -> dict:
        """JSON items of ``step`` (default latest) without touching the arrays."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        out = self._manager.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))
        return dict(out[META])

    def check_structure(self, step: int, target) -> None:
        """Raise :class:`CheckpointMismatchError` if ``step``'s tree differs from ``target``."""
        saved = _metadata_signature(self._manager.item_metadata(step)[STATE])
        expected = _tree_signature(target)
        if not saved and expected:  # no readable array metadata: a damaged step, not another model
            raise CheckpointCorruptError(f"step {step}: its array metadata is missing or unreadable")
        if saved != expected:
            raise CheckpointMismatchError(
                f"checkpoint step {step} in {self.directory} does not match the model/optimizer "
                f"built from the current config (did the config change?):\n"
                f"{_describe_mismatch(saved, expected)}")

    def _restore_step(self, step: int, target) -> RestoredCheckpoint:
        self.check_structure(step, target)
        out = self._manager.restore(step, args=ocp.args.Composite(**{
            STATE: ocp.args.StandardRestore(target), META: ocp.args.JsonRestore()}))
        meta, state = dict(out[META]), out[STATE]
        expected = meta.get("checksums")
        if expected is not None:
            got = _tree_checksums(state)
            if got is not None and got != expected:
                bad = sorted(k for k in expected if got.get(k) != expected[k])
                raise CheckpointCorruptError(f"step {step}: arrays differ from the checksums saved "
                                             f"with them: {bad[:5]}")
        return RestoredCheckpoint(step=step, state=state, config=meta.get("config", {}),
                        cursor=meta.get("cursor", {"step": step}), extras=meta.get("extras", {}),
                        metrics=meta.get("metrics", {}))

    def restore(self, target, step: int | None = None, *, fallback: bool = True) -> RestoredCheckpoint:
        """Restore ``step`` (default: the latest) into the structure of ``target``.

        ``target`` is a pytree of arrays or ``jax.ShapeDtypeStruct`` (with ``sharding`` to
        place the result). A step that cannot be read is quarantined and, when ``fallback``,
        the next older step is tried, with a warning; a structural mismatch raises at once.
        Read-only (a reader beside a live trainer): a step the trainer deleted meanwhile is
        skipped quietly, and the listing is read again (up to three times) before giving up.
        """
        for attempt in range(3 if self.read_only and step is None else 1):
            try:
                return self._restore_listed(target, step, fallback)
            except CheckpointCorruptError:
                if attempt == 2 or not (self.read_only and step is None):
                    raise
                self._reload()  # the trainer may have saved newer steps since the listing
        raise AssertionError("unreachable")

    def restore_best(self, target) -> RestoredCheckpoint:
        """Restore :meth:`best_step` (the latest when nothing is ranked). Read-only, a best step
        that a live trainer's retention removed meanwhile is looked up again (up to three times)."""
        for attempt in range(3 if self.read_only else 1):
            best = self.best_step()
            if best is None:
                raise CheckpointError(f"no checkpoint in {self.directory}")
            try:
                return self.restore(target, best)
            except CheckpointError:
                if attempt == 2 or not self.read_only or (self.directory / str(best)).exists():
                    raise
                self._reload()
        raise AssertionError("unreachable")

    def _restore_listed(self, target, step: int | None, fallback: bool) -> RestoredCheckpoint:
        steps = self.all_steps()
        if step is not None:
            if step not in steps:
                raise CheckpointError(f"step {step} not in {self.directory} (have {steps})")
            steps = [s for s in steps if s <= step]
        if not steps:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        failures = []
        for s in reversed(steps):
            try:
                return self._restore_step(s, target)
            except CheckpointMismatchError:
                raise
            except Exception as err:  # noqa: BLE001 - any read failure means "corrupt"
                if self.read_only and not (self.directory / str(s)).exists():
                    failures.append(f"step {s}: removed by the trainer while it was read")
                    continue  # retention at work, not damage
                failures.append(f"step {s}: {type(err).__name__}: {str(err).splitlines()[0][:300]}")
                where = "left it in place (read-only)" if self.read_only else f"moved it to {self._quarantine(s)}"
                if not fallback:
                    break
                _warn(f"could not restore step {s} ({failures[-1]}); {where}; falling back to the previous step")
        raise CheckpointCorruptError(f"no restorable checkpoint in {self.directory}:\n  " + "\n  ".join(failures))

    def _quarantine(self, step: int) -> Path:
        """Move a bad step out of the managed directory so it is never picked (or overwritten)."""
        self.quarantine.mkdir(parents=True, exist_ok=True)
        src = self.directory / str(step)
        dst = self.quarantine / f"{step}-{int(time.time() * 1000)}"
        if src.exists():
            shutil.move(str(src), str(dst))
        self._manager.reload()
        return dst
