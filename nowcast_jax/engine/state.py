"""Task-agnostic training engine: state, optimizer, jitted steps, data-parallel sharding.

The engine knows only the :class:`Task` protocol (see ``docs/architecture.md``); the loop
that drives it (resume, checkpoints, signals, logging) is in :mod:`nowcast_jax.engine.loop`.

Data parallelism. :func:`make_mesh` builds a 1-D ``Mesh`` over all devices with axis
``"batch"``; batches are placed with ``NamedSharding(mesh, P("batch"))`` (leading axis
split across devices) and the train state with ``NamedSharding(mesh, P())`` (replicated).
XLA inserts the gradient all-reduce. The global batch size must be divisible by the number
of devices.

Multi-host (several machines, e.g. a TPU pod slice or multi-node GPUs): call
``jax.distributed.initialize()`` (arguments from the cluster environment, or explicit
``coordinator_address``, ``num_processes``, ``process_id``) in every process *before any
other JAX call*, then run the same command in every process. ``jax.devices()`` then lists
the devices of all hosts, the mesh spans them, and :func:`shard_batch` builds each global
batch with ``jax.make_array_from_callback``, which materialises only this process's shards.
Every process calls ``task.train_batch(step, batch_size, seed)``, a pure function of
``(seed, step)``, so all hosts agree on the global batch without communication. Orbax
coordinates multi-host checkpoint writes; give every process the same (shared) workdir.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Protocol

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from nowcast_jax.engine.defaults import EngineConfigError

PyTree = Any
Batch = dict[str, np.ndarray]
BATCH_AXIS = "batch"


class Task(Protocol):
    """What a task brings to the engine (pinned in docs/architecture.md)."""


    def init_params(self, key) -> PyTree: ...
    def loss_fn(self, params, batch, key) -> tuple[jax.Array, dict]: ...
    def train_batch(self, step: int, batch_size: int, seed: int) -> Batch: ...
    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]: ...
    def state_extras(self) -> dict: ...  # JSON-able, saved with every checkpoint (e.g. a fitted contract)
    def load_extras(self, extras: dict) -> None: ...


# ------------------------------------------------------------------------------ optimizer
def make_schedule(learning_rate: float, steps: int, name: str = "constant",
                  warmup_steps: int = 0, alpha: float = 0.0) -> optax.Schedule:
    """Learning rate as a function of the step: constant or cosine, optional linear warmup."""
    decay_steps = max(int(steps) - int(warmup_steps), 1)
    if name == "constant":
        main = optax.constant_schedule(learning_rate)
    elif name == "cosine":
        main = optax.cosine_decay_schedule(learning_rate, decay_steps, alpha=alpha)
    else:
        raise EngineConfigError(f"train.schedule.name must be 'constant' or 'cosine', got {name!r}")
    if warmup_steps <= 0:
        return main
    warm = optax.linear_schedule(0.0, learning_rate, int(warmup_steps))
    return optax.join_schedules([warm, main], [int(warmup_steps)])


def _decay_mask(params):
    return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def make_optimizer(name: str, schedule: optax.Schedule, *, b1=0.9, b2=0.999, eps=1e-8,
                   decay=0.9, momentum=0.0, centered=False, grad_clip_norm=0.0,
                   weight_decay=0.0) -> optax.GradientTransformation:
    """Clip (global norm) -> adam | rmsprop scaling -> decoupled weight decay -> -lr.

    The ConvLSTM paper: ``make_optimizer("rmsprop", 1e-3, decay=0.9)``.
    """
    parts = []
    if grad_clip_norm and grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(grad_clip_norm))
    if name == "adam":
        parts.append(optax.scale_by_adam(b1=b1, b2=b2, eps=eps))
    elif name == "rmsprop":
        parts.append(optax.scale_by_rms(decay=decay, eps=eps) if not centered
                     else optax.scale_by_stddev(decay=decay, eps=eps))
        if momentum:
            parts.append(optax.trace(decay=momentum))
    else:
        raise EngineConfigError(f"train.optimizer.name must be 'adam' or 'rmsprop', got {name!r}")
    if weight_decay and weight_decay > 0:
        parts.append(optax.add_decayed_weights(weight_decay, mask=_decay_mask))
    parts.append(optax.scale_by_learning_rate(schedule))
    return optax.chain(*parts)


def optimizer_from_config(train_cfg) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Build (optimizer, schedule) from the ``train`` section of a config."""
    s = train_cfg.schedule
    schedule = make_schedule(train_cfg.learning_rate, train_cfg.steps, s.name, s.warmup_steps, s.alpha)
    o = dict(train_cfg.optimizer)
    name = o.pop("name")
    tx = make_optimizer(name, schedule, **o, grad_clip_norm=train_cfg.grad_clip_norm,
                        weight_decay=train_cfg.weight_decay)
    return tx, schedule


# ------------------------------------------------------------------------------ state
@flax.struct.dataclass
class TrainState:
    """Everything that changes during training (a pytree; checkpointed as a whole).

    step: int32 scalar, updates attempted so far (= index of the next batch).
    params: the task's parameter pytree. opt_state: optax state.
    skipped_total / consecutive_skips: int32 scalars of the non-finite guard.
    """

    step: jax.Array
    params: PyTree
    opt_state: Any
    skipped_total: jax.Array
    consecutive_skips: jax.Array


def _base_key(seed: int) -> tuple[jax.Array, jax.Array]:
    """(init key, per-step base key) derived from the seed."""
    init_key, step_key = jax.random.split(jax.random.key(seed))
    return init_key, step_key


def _init_state(task: Task, tx: optax.GradientTransformation, seed: int) -> TrainState:
    """Fresh state (not jitted, not placed; see :func:`create_state`)."""
    params = task.init_params(_base_key(seed)[0])
    zero = jnp.zeros((), jnp.int32)
    return TrainState(step=zero, params=params, opt_state=tx.init(params),
                      skipped_total=zero, consecutive_skips=zero)


def create_state(task: Task, tx, seed: int, mesh: Mesh) -> TrainState:
    """Fresh state, created under jit directly with the replicated sharding."""
    return jax.jit(lambda: _init_state(task, tx, seed), out_shardings=replicated(mesh))()


def abstract_state(task: Task, tx, seed: int, mesh: Mesh) -> TrainState:
    """Shapes, dtypes and (replicated) shardings of the state, without computing it."""
    shapes = jax.eval_shape(lambda: _init_state(task, tx, seed))
    sharding = replicated(mesh)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


# ------------------------------------------------------------------------------ sharding
def make_mesh(devices=None) -> Mesh:
    """1-D mesh with axis ``"batch"`` over ``devices`` (default: all devices)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (BATCH_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def _batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXIS))


def shard_batch(batch: Batch, mesh: Mesh) -> dict[str, jax.Array]:
    """Place a dict of numpy arrays ``[B, ...]``: split over ``"batch"`` when B divides
    evenly across the mesh, else replicated (e.g. a short last eval batch)."""
    n = mesh.devices.size

    def put(x):
        x = np.asarray(x)
        sharding = _batch_sharding(mesh) if x.ndim and x.shape[0] % n == 0 else replicated(mesh)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return {k: put(v) for k, v in batch.items()}


# ------------------------------------------------------------------------------ steps
def _guarded_update(state: TrainState, grads, loss, tx) -> tuple[TrainState, dict]:
    """Apply the update only if loss and grad norm are finite (else keep params/opt state)."""
    grad_norm = optax.tree.norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, new_opt = tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)  # noqa: E731
    skipped = (~ok).astype(jnp.int32)
    new_state = TrainState(
        step=state.step + 1, params=keep(new_params, state.params), opt_state=keep(new_opt, state.opt_state),
        skipped_total=state.skipped_total + skipped,
        consecutive_skips=jnp.where(ok, 0, state.consecutive_skips + 1).astype(jnp.int32))
    return new_state, {"grad_norm": grad_norm, "skipped": skipped}


def make_train_step(task: Task, tx, schedule, seed: int, mesh: Mesh) -> Callable:
    """Jitted ``train_step(state, batch) -> (state, metrics)``; ``state`` is donated.

    The step's key is ``fold_in(step_base_key(seed), state.step)``. Metrics (scalars):
    loss, grad_norm, lr, skipped (0/1 this step), skipped_total, consecutive_skips and the
    task's aux metrics.
    """
    step_base = _base_key(seed)[1]

    def train_step(state: TrainState, batch):
        key = jax.random.fold_in(step_base, state.step)
        (loss, aux), grads = jax.value_and_grad(task.loss_fn, has_aux=True)(state.params, batch, key)
        new_state, guard = _guarded_update(state, grads, loss, tx)
        metrics = {"loss": loss, "lr": schedule(state.step), **guard,
                   "skipped_total": new_state.skipped_total,
                   "consecutive_skips": new_state.consecutive_skips, **aux}
        return new_state, metrics

    rep = replicated(mesh)
    return jax.jit(train_step, donate_argnums=0, out_shardings=(rep, rep))


def make_eval_step(task: Task, seed: int, mesh: Mesh) -> Callable:
    """Jitted ``eval_step(params, batch) -> {"loss", **aux}`` with a fixed key."""
    key = jax.random.fold_in(_base_key(seed)[1], 2**31 - 1)

    def eval_step(params, batch):
        loss, aux = task.loss_fn(params, batch, key)
        return {"loss": loss, **aux}

    return jax.jit(eval_step, out_shardings=replicated(mesh))


def evaluate_loss(eval_step, params, task: Task, mesh: Mesh, split: str, batch_size: int,
                  max_batches: int) -> dict[str, float]:
    """Mean of ``eval_step`` metrics over up to ``max_batches`` (<= 0: all) batches,
    weighted by batch size."""
    totals: dict[str, float] = {}
    count = 0
    for i, batch in enumerate(task.eval_batches(split, batch_size)):
        if 0 < max_batches <= i:
            break
        n = int(len(next(iter(batch.values()))))
        out = jax.device_get(eval_step(params, shard_batch(batch, mesh)))
        for k, v in out.items():
            totals[k] = totals.get(k, 0.0) + float(v) * n
        count += n
    return {k: v / count for k, v in totals.items()} if count else {}
