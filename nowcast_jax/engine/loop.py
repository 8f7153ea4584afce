"""The training loop: resume, evaluate, checkpoint, log, stop cleanly on signals.

``train(config, workdir, task)`` runs ``config.train.steps`` updates of ``task`` in
``workdir``:

- ``workdir/checkpoints/`` (see :mod:`nowcast_jax.engine.checkpoint`): resumed automatically from
  the latest complete step; the task's extras (e.g. normalisation) are reloaded from it.
- ``workdir/config.json``: the resolved config of the latest start.
- ``workdir/metrics.jsonl``: one JSON object per logged step (``"kind": "train"`` or
  ``"eval"``). On resume, records after the restored step are dropped, so the log always
  describes exactly the run that the checkpoints continue.
- ``workdir/tensorboard/``: event files when ``train.tensorboard`` is true.

SIGTERM / SIGINT: the current step finishes, a checkpoint is written and awaited, and the
function returns normally (exit code 0 from the CLI). A second SIGINT interrupts at once.
After ``train.max_consecutive_skips`` consecutive non-finite updates it raises
:class:`NonFiniteError` naming the step and the last good checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np

from nowcast_jax.engine import checkpoint as ckpt_lib
from nowcast_jax.engine import config as config_lib
from nowcast_jax.engine import lock as lock_lib
from nowcast_jax.engine import prefetch as prefetch_lib
from nowcast_jax.engine import state as state_lib
from nowcast_jax.engine.defaults import EngineConfigError, check_engine_config


class NonFiniteError(RuntimeError):
    """Too many consecutive non-finite updates."""


@dataclasses.dataclass
class TrainResult:
    step: int                  # steps completed when the loop ended
    reason: str                # "done" | "signal" | "already_done"
    latest_checkpoint: int | None
    best_checkpoint: int | None
    state: state_lib.TrainState | None = None


def _say(message: str) -> None:
    lead = "\n" if sys.stderr.isatty() else ""  # do not write over a progress bar
    print(f"{lead}[train] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ signals
class _StopFlag:
    """Context manager: SIGTERM/SIGINT set ``requested`` instead of killing the process."""

    def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
        self.signals, self.requested, self.name, self._old = signals, False, None, {}

    def _handler(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested, self.name = True, signal.Signals(signum).name
        _say(f"received {self.name}: finishing the current step, then saving")

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old)


# ------------------------------------------------------------------------------ logging
class MetricsLog:
    """JSONL log (and optional TensorBoard) in ``workdir``; truncated to ``start_step``."""

    def __init__(self, workdir: Path, start_step: int, tensorboard: bool = False, enabled: bool = True):
        self.path = workdir / "metrics.jsonl"
        self._file, self._tb = None, None
        if not enabled:  # not process 0 of a multi-host run: process 0 writes the log
            return
        self._truncate(start_step)
        self._file = open(self.path, "a", encoding="utf-8")
        self._tb = _TensorBoard(workdir / "tensorboard") if tensorboard else None

    def _truncate(self, start_step: int) -> None:
        if not self.path.exists():
            return
        keep = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= start_step:
                    keep.append(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(k + "\n" for k in keep), encoding="utf-8")
        tmp.replace(self.path)

    def write(self, step: int, kind: str, values: dict) -> None:
        if self._file is None:
            return
        record = {"step": int(step), "kind": kind, "time": time.time(),
                  **{k: _py(v) for k, v in values.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            self._tb.scalars(step, {f"{kind}/{k}": v for k, v in values.items()})

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()


def _py(v):
    v = np.asarray(v)
    return v.item() if v.ndim == 0 else v.tolist()


class _TensorBoard:
    """Scalar summaries through the ``tensorboard`` package (no TensorFlow needed)."""

    def __init__(self, logdir: Path):
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        logdir.mkdir(parents=True, exist_ok=True)
        self._event, self._summary = event_pb2, summary_pb2
        self._writer = EventFileWriter(str(logdir))

    def scalars(self, step: int, values: dict) -> None:
        vals = [self._summary.Summary.Value(tag=k, simple_value=float(v))
                for k, v in values.items() if np.ndim(v) == 0]
        event = self._event.Event(wall_time=time.time(), step=int(step),
                                  summary=self._summary.Summary(value=vals))
        self._writer.add_event(event)

    def close(self) -> None:
        self._writer.close()


def _duration(seconds: float) -> str:
    """``93784.0`` -> ``"1d 02:03:04"``."""
    days, rest = divmod(int(seconds), 86400)
    text = f"{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}d {text}" if days else text


class Progress:
    """One-line progress bar on a TTY (step, loss, steps/s, ETA); silent otherwise."""

    def __init__(self, start: int, total: int, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start, self.total, self.t0, self._last = start, total, time.time(), 0.0

    def update(self, step: int, loss: float) -> None:
        now = time.time()
        if not self.enabled or (now - self._last < 0.2 and step < self.total):
            return
        if self._last == 0.0:  # first call: measure speed from here (compile time excluded)
            self.start, self.t0 = step, now
        self._last = now
        rate = (step - self.start) / max(now - self.t0, 1e-9)
        eta = _duration((self.total - step) / rate) if rate > 0 else "?"
        self.stream.write(f"\rstep {step}/{self.total}  loss {loss:.4g}  {rate:.2f} steps/s  ETA {eta}   ")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


# ------------------------------------------------------------------------------ the loop
def open_checkpoints(config, workdir: Path, *, read_only: bool = False) -> ckpt_lib.CheckpointManager:
    """The workdir's checkpoint manager, configured from ``config.checkpoint``; ``read_only``
    for readers, which must leave a live trainer's files alone."""
    c = config.checkpoint
    best = c.best_metric if config.eval.every_steps > 0 else ""
    return ckpt_lib.CheckpointManager(Path(workdir) / "checkpoints", max_to_keep=c.max_to_keep,
                                      best_metric=best, best_mode=c.best_mode,
                                      async_save=c.async_save, read_only=read_only)


def _start_state(config, task, tx, mesh, manager) -> tuple[state_lib.TrainState, int]:
    """Restore the latest checkpoint (reloading task extras) or create a fresh state."""
    if manager.latest_step() is None:
        _say("no checkpoint found: starting at step 0")
        return state_lib.create_state(task, tx, config.seed, mesh), 0
    target = state_lib.abstract_state(task, tx, config.seed, mesh)
    restored = manager.restore(target)
    task.load_extras(restored.extras)
    changed = [d for d in config_lib.diff(config_lib.from_dict(restored.config), config)
               if not d.startswith("train.steps:")] if restored.config else []
    if changed:
        _say("config differs from the checkpoint's: " + "; ".join(changed[:10]))
    _warn_schedule_change(restored.config, config)
    _say(f"resuming from step {restored.step} ({manager.directory})")
    return restored.state, int(restored.step)


def _warn_schedule_change(saved: dict | None, config) -> None:
    """A changed ``train.steps`` is how a run is extended; with a decaying schedule it also
    changes every learning rate after the resume point, so say so."""
    if not saved:
        return
    before = int(saved.get("train", {}).get("steps", config.train.steps))
    if before != int(config.train.steps) and config.train.schedule.name != "constant":
        _say(f"train.steps changed from {before} to {config.train.steps}: the {config.train.schedule.name} "
             "schedule now spans the new length, so learning rates from here on differ from the original run")


class _Runner:
    """State of one ``train`` call; methods are the loop's small steps."""

    def __init__(self, config, workdir: Path, task, manager, mesh):
        self.config, self.workdir, self.task, self.manager, self.mesh = config, workdir, task, manager, mesh
        self.tcfg = config.train
        self.last_train: dict = {}
        self.t_log, self.n_log = time.time(), 0

    def consume(self, step: int, device_metrics, log: MetricsLog, progress: Progress) -> None:
        """Fetch one step's metrics to the host: log, progress, non-finite stop."""
        m = {k: _py(v) for k, v in jax.device_get(device_metrics).items()}
        self.last_train = m
        self.n_log += 1
        every = max(int(self.tcfg.log_every_steps), 1)
        if step % every == 0 or step == self.tcfg.steps:
            now = time.time()
            log.write(step, "train", {**m, "steps_per_sec": self.n_log / max(now - self.t_log, 1e-9)})
            self.t_log, self.n_log = now, 0
        progress.update(step, m["loss"])
        limit = int(self.tcfg.max_consecutive_skips)
        if limit > 0 and m["consecutive_skips"] >= limit:
            self.manager.wait()
            last = self.manager.latest_step()
            where = f"step {last} in {self.manager.directory}" if last is not None else "none yet"
            raise NonFiniteError(
                f"stopping at step {step}: {limit} consecutive updates had a non-finite loss or "
                f"gradient norm and were skipped; last good checkpoint: {where}")

    def evaluate(self, state, eval_step, step: int, log: MetricsLog) -> dict:
        e = self.config.eval
        bs = e.batch_size or self.tcfg.batch_size
        out = state_lib.evaluate_loss(eval_step, state.params, self.task, self.mesh, e.split, bs, e.batches)
        log.write(step, "eval", out)
        return out

    def save(self, state, step: int, eval_metrics: dict) -> None:
        metrics = {**{f"train/{k}": v for k, v in self.last_train.items() if np.ndim(v) == 0},
                   **eval_metrics}
        self.manager.save(step, state, config=config_lib.to_dict(self.config),
                          cursor={"step": step, "seed": int(self.config.seed),
                                  "batch_size": int(self.tcfg.batch_size)},
                          extras=self.task.state_extras(), metrics=metrics)


def _check_best_metric(config, task, state) -> None:  # state may be abstract
    """Fail before training when periodic evaluation cannot work: ``checkpoint.best_metric``
    is not a metric of ``loss_fn``, or the ``eval.split`` yields no batch."""
    best = config.checkpoint.best_metric
    if config.eval.every_steps <= 0:
        return
    split = str(config.eval.get("split", "val"))
    try:
        first = next(iter(task.eval_batches(split, int(config.eval.get("batch_size", 0) or config.train.batch_size))),
                     None)
    except (ValueError, KeyError) as err:
        raise EngineConfigError(f"eval.split={split!r}: the task cannot evaluate it ({err}); "
                                       "set eval.every_steps=0 or give the task that split") from err
    if first is None:
        raise EngineConfigError(f"eval.split={split!r} is empty: set eval.every_steps=0 (no periodic "
                                       "evaluation, the latest checkpoint is used) or give that split data")
    if not best:
        return
    batch = task.train_batch(0, int(config.train.batch_size), int(config.seed))
    _, aux = jax.eval_shape(task.loss_fn, state.params, batch, jax.random.key(0))
    names = ["loss", *aux]
    if best not in names:
        raise EngineConfigError(f"checkpoint.best_metric={best!r} is not an eval metric of task "
                                f"{config.task!r} (have: {', '.join(names)})")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _due(step: int, every: int, total: int) -> bool:
    return step == total or (every > 0 and step % every == 0)


def train(config, workdir, task, *, mesh=None, stream=None, hold_lock: bool = True) -> TrainResult:
    """Train ``task`` for ``config.train.steps`` steps in ``workdir`` (resuming if possible).

    ``hold_lock``: take the workdir's writer lock (:mod:`nowcast_jax.engine.lock`) for the
    run; False when the caller holds it already (the CLI takes it before the task reads data).
    """
    check_engine_config(config)
    workdir = Path(workdir)
    mesh = mesh or state_lib.make_mesh()
    total, bs = int(config.train.steps), int(config.train.batch_size)
    if bs <= 0 or bs % mesh.devices.size:
        raise EngineConfigError(f"train.batch_size={bs} must be a positive multiple of the number of devices ({mesh.devices.size})")
    tx, schedule = state_lib.optimizer_from_config(config.train)
    _check_best_metric(config, task, state_lib.abstract_state(task, tx, config.seed, mesh))
    workdir.mkdir(parents=True, exist_ok=True)  # after the checks: a refused config makes no workdir
    lead = jax.process_index() == 0  # the one process that locks and writes logs and configs
    with lock_lib.writer_lock(workdir, _say) if lead and hold_lock else contextlib.nullcontext():
        manager = open_checkpoints(config, workdir)
        try:
            state, start = _start_state(config, task, tx, mesh, manager)
            if lead:
                _write_atomic(workdir / "config.json", config_lib.to_json(config))
            if start >= total:
                _say(f"checkpoint is at step {start} >= train.steps={total}: nothing to do")
                return TrainResult(start, "already_done", manager.latest_step(), manager.best_step(), state)
            return _run(config, workdir, task, manager, mesh, tx, schedule, state, start, stream)
        finally:
            manager.close()


def _run(config, workdir, task, manager, mesh, tx, schedule, state, start, stream) -> TrainResult:
    runner = _Runner(config, workdir, task, manager, mesh)
    total, bs, seed = int(config.train.steps), int(config.train.batch_size), int(config.seed)
    train_step = state_lib.make_train_step(task, tx, schedule, seed, mesh)
    eval_step = state_lib.make_eval_step(task, seed, mesh)
    log = MetricsLog(workdir, start, bool(config.train.tensorboard), enabled=jax.process_index() == 0)
    progress = Progress(start, total, stream)
    pending, reason, step = None, "done", start

    def make_batch(n: int):  # step n trains on batch n - 1 of the stream
        return state_lib.shard_batch(task.train_batch(n - 1, bs, seed), mesh)

    depth = int(config.train.get("prefetch_batches", 2))
    try:
        with _StopFlag() as stop, prefetch_lib.BatchPrefetcher(make_batch, start + 1, total, depth) as batches:
            for step in range(start + 1, total + 1):
                state, metrics = train_step(state, batches.get(step))
                if pending is not None:
                    runner.consume(*pending, log, progress)
                pending = (step, metrics)
                do_eval = config.eval.every_steps > 0 and _due(step, config.eval.every_steps, total)
                if do_eval or stop.requested or _due(step, config.checkpoint.every_steps, total):
                    runner.consume(*pending, log, progress)
                    pending = None
                    ev = runner.evaluate(state, eval_step, step, log) if do_eval and not stop.requested else {}
                    runner.save(state, step, ev)
                if stop.requested:
                    reason = "signal"
                    break
            if pending is not None:
                runner.consume(*pending, log, progress)
            manager.wait()  # still inside _StopFlag: a signal now cannot cut the last save
    finally:
        progress.close()
        log.close()
    _say(f"{'stopped' if reason == 'signal' else 'finished'} at step {step}; "
         f"latest checkpoint {manager.latest_step()}, best {manager.best_step()}")
    return TrainResult(step, reason, manager.latest_step(), manager.best_step(), state)
