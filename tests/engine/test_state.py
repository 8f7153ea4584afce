"""Engine: optimizer and schedules, jitted step, non-finite guard, in-process loop."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nowcast_jax.engine import loop
from nowcast_jax.engine import state as engine
from nowcast_jax.engine.defaults import EngineConfigError
from tests.engine_utils import toy_config
from tests.toy_task import make_task


@pytest.fixture(scope="module")
def mesh():
    return engine.make_mesh(jax.devices()[:1])


def _setup(config, mesh):
    task = make_task(config)
    tx, schedule = engine.optimizer_from_config(config.train)
    state = engine.create_state(task, tx, config.seed, mesh)
    return task, tx, schedule, state


def test_schedules():
    const = engine.make_schedule(0.1, 100)
    assert float(const(0)) == pytest.approx(0.1) and float(const(99)) == pytest.approx(0.1)
    cos = engine.make_schedule(0.1, 110, "cosine", warmup_steps=10, alpha=0.1)
    assert float(cos(0)) == 0.0 and float(cos(5)) == pytest.approx(0.05)
    assert float(cos(10)) == pytest.approx(0.1) and float(cos(110)) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="train.schedule.name"):
        engine.make_schedule(0.1, 10, "linear")


def test_rmsprop_is_the_papers_optax_rmsprop():
    params = {"w": jnp.arange(6.0).reshape(2, 3)}
    grads = {"w": jnp.linspace(-1, 1, 6).reshape(2, 3)}
    ours = engine.make_optimizer("rmsprop", engine.make_schedule(1e-3, 10), decay=0.9)
    ref = optax.rmsprop(1e-3, decay=0.9, eps=1e-8)
    s1, s2 = ours.init(params), ref.init(params)
    for _ in range(3):
        u1, s1 = ours.update(grads, s1, params)
        u2, s2 = ref.update(grads, s2, params)
        np.testing.assert_allclose(u1["w"], u2["w"], rtol=1e-6)
    with pytest.raises(ValueError, match="train.optimizer.name"):
        engine.make_optimizer("sgd", engine.make_schedule(1e-3, 10))


def test_clipping_and_weight_decay():
    params = {"w": jnp.ones((2, 2)), "b": jnp.ones((2,))}
    grads = {"w": jnp.full((2, 2), 100.0), "b": jnp.zeros((2,))}
    tx = engine.make_optimizer("adam", engine.make_schedule(1.0, 10), grad_clip_norm=1.0, weight_decay=0.5)
    updates, _ = tx.update(grads, tx.init(params), params)
    # b has zero grad: only decay could move it, and decay skips 1-D params
    np.testing.assert_array_equal(updates["b"], 0.0)
    # adam's first step is ~ -lr*sign(g); decoupled decay adds -lr*0.5*w
    np.testing.assert_allclose(updates["w"], -1.5, rtol=1e-4)


def test_train_step_is_deterministic_and_uses_per_step_keys(mesh):
    config = toy_config()
    task, tx, schedule, _ = _setup(config, mesh)
    step = engine.make_train_step(task, tx, schedule, config.seed, mesh)
    batch = engine.shard_batch(task.train_batch(0, 8, 0), mesh)
    losses = []
    for _ in range(2):
        state = engine.create_state(task, tx, config.seed, mesh)
        state, m = step(state, batch)
        state, m2 = step(state, batch)  # same batch, next step's key: different dropout
        losses.append((float(m["loss"]), float(m2["loss"])))
    assert losses[0] == losses[1] and losses[0][0] != losses[0][1]


def test_nan_batch_skips_the_update(mesh):
    config = toy_config(**{"data.nan_steps": "(1,)"})
    task, tx, schedule, state = _setup(config, mesh)
    step = engine.make_train_step(task, tx, schedule, config.seed, mesh)
    state, m0 = step(state, engine.shard_batch(task.train_batch(0, 8, 0), mesh))
    before = jax.tree.map(np.asarray, (state.params, state.opt_state))
    state, m1 = step(state, engine.shard_batch(task.train_batch(1, 8, 0), mesh))
    assert int(m0["skipped"]) == 0 and int(m1["skipped"]) == 1 and not np.isfinite(float(m1["loss"]))
    assert int(state.skipped_total) == 1 and int(state.consecutive_skips) == 1 and int(state.step) == 2
    after = jax.tree.map(np.asarray, (state.params, state.opt_state))
    jax.tree.map(np.testing.assert_array_equal, before, after)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))
    state, m2 = step(state, engine.shard_batch(task.train_batch(2, 8, 0), mesh))
    assert int(m2["skipped"]) == 0 and int(state.consecutive_skips) == 0 and int(state.skipped_total) == 1


def test_eval_loss_handles_a_short_last_batch(mesh):
    config = toy_config(**{"model.dropout": "0.0"})
    task, tx, _, state = _setup(config, mesh)
    eval_step = engine.make_eval_step(task, config.seed, mesh)
    out = engine.evaluate_loss(eval_step, state.params, task, mesh, "val", 8, 0)  # 8 + 8 + 4 rows
    pred = np.asarray(task.apply(state.params, next(task.eval_batches("val", 20))["x"]))
    want = float(np.mean((pred - next(task.eval_batches("val", 20))["y"]) ** 2))
    assert out["loss"] == pytest.approx(want, rel=1e-5)


def test_loop_resume_in_process_and_log(tmp_path, mesh):
    config = toy_config(**{"train.steps": "7", "checkpoint.every_steps": "3", "eval.every_steps": "3"})
    result = loop.train(config, tmp_path, make_task(config), mesh=mesh)
    assert (result.step, result.reason, result.latest_checkpoint) == (7, "done", 7)
    records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, 8))
    assert [r["step"] for r in records if r["kind"] == "eval"] == [3, 6, 7]
    assert json.loads((tmp_path / "config.json").read_text())["train"]["steps"] == 7
    again = loop.train(config, tmp_path, make_task(config), mesh=mesh)
    assert again.reason == "already_done"
    # normalisation comes back from the checkpoint, not from the new task instance
    task = make_task(config)
    task.norm = {"mean": [0.0] * 4, "std": [1.0] * 4}
    longer = toy_config(**{"train.steps": "9", "checkpoint.every_steps": "3", "eval.every_steps": "3"})
    loop.train(longer, tmp_path, task, mesh=mesh)
    assert task.norm == make_task(config).norm
    steps = [json.loads(l)["step"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 9


def test_consecutive_non_finite_steps_stop_the_run(tmp_path, mesh):
    config = toy_config(**{"data.nan_steps": "(5, 6, 7, 8, 9)", "train.max_consecutive_skips": "3"})
    with pytest.raises(loop.NonFiniteError) as err:
        loop.train(config, tmp_path, make_task(config), mesh=mesh)
    message = str(err.value)
    assert "stopping at step 8" in message and "last good checkpoint: step 5" in message
    assert "non-finite" in message


def test_progress_bar_only_on_a_tty():
    import io

    class Tty(io.StringIO):
        def isatty(self):
            return True

    quiet, tty = io.StringIO(), Tty()
    for stream in (quiet, tty):
        bar = loop.Progress(0, 10, stream)
        bar.update(10, 0.5)
        bar.close()
    assert quiet.getvalue() == ""
    assert "step 10/10" in tty.getvalue() and "loss 0.5" in tty.getvalue() and "ETA" in tty.getvalue()


def test_tensorboard_events_are_written(tmp_path):
    log = loop.MetricsLog(tmp_path, 0, tensorboard=True)
    log.write(1, "train", {"loss": 0.5})
    log.close()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_extending_a_decaying_schedule_is_announced(tmp_path, mesh, capsys):
    config = toy_config(**{"train.steps": "4", "train.schedule.name": "cosine", "checkpoint.every_steps": "4",
                           "eval.every_steps": "0"})
    loop.train(config, tmp_path, make_task(config), mesh=mesh)
    capsys.readouterr()
    longer = toy_config(**{"train.steps": "6", "train.schedule.name": "cosine", "checkpoint.every_steps": "4",
                           "eval.every_steps": "0"})
    loop.train(longer, tmp_path, make_task(longer), mesh=mesh)
    assert "train.steps changed from 4 to 6" in capsys.readouterr().err


def test_empty_eval_split_fails_before_training(tmp_path, mesh):
    config = toy_config(**{"data.eval_size": "0", "eval.every_steps": "3"})
    with pytest.raises(EngineConfigError, match="eval.split='val' is empty"):
        loop.train(config, tmp_path, make_task(config), mesh=mesh)
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def test_prefetched_batches_train_the_same_run_as_batches_built_in_the_loop(tmp_path, mesh):
    """``train.prefetch_batches`` builds batches ahead in a thread: the same parameters, bit
    for bit, as building each one when its step starts; an error in a batch still stops the run."""
    finals = {}
    for depth in (0, 3):
        config = toy_config(**{"train.steps": "6", "checkpoint.every_steps": "0", "eval.every_steps": "0",
                               "train.prefetch_batches": str(depth)})
        result = loop.train(config, tmp_path / f"d{depth}", make_task(config), mesh=mesh)
        finals[depth] = jax.tree.leaves(jax.device_get(result.state.params))
    for a, b in zip(finals[0], finals[3]):
        np.testing.assert_array_equal(a, b)
    task = make_task(config)
    task.train_batch = lambda step, bs, seed: (_ for _ in ()).throw(KeyError(f"no window at batch {step}"))
    with pytest.raises(KeyError, match="no window at batch 0"):
        loop.train(config, tmp_path / "broken", task, mesh=mesh)
