"""Data parallelism on 8 CPU devices (in a subprocess): sharded == single-device step, and a
checkpoint written on 8 devices restores on 1.

The worker half of this file runs as ``python -m tests.test_multidevice OUTDIR`` with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import numpy as np

from tests.engine_utils import REPO, cli_env, restore_state, toy_config

STEPS = 4


def worker(outdir: str) -> None:
    from nowcast_jax.engine import loop
    from nowcast_jax.engine import state as engine
    from tests.toy_task import make_task

    devices = jax.devices()
    assert len(devices) == 8, devices
    config = toy_config(**{"train.steps": "6", "checkpoint.every_steps": "3", "eval.every_steps": "3",
                           "train.batch_size": "16", "data.eval_size": "20"})
    task = make_task(config)
    tx, schedule = engine.optimizer_from_config(config.train)
    report = {}
    for name, mesh in {"one": engine.make_mesh(devices[:1]), "eight": engine.make_mesh(devices)}.items():
        state = engine.create_state(task, tx, config.seed, mesh)
        step = engine.make_train_step(task, tx, schedule, config.seed, mesh)
        losses = []
        for i in range(STEPS):
            batch = engine.shard_batch(task.train_batch(i, 16, config.seed), mesh)
            state, metrics = step(state, batch)
            losses.append(float(metrics["loss"]))
        report[name] = {"losses": losses, "batch_devices": len(batch["x"].sharding.device_set),
                        "batch_shard_rows": batch["x"].addressable_shards[0].data.shape[0],
                        "param_devices": len(jax.tree.leaves(state.params)[0].sharding.device_set)}
        np.savez(f"{outdir}/params_{name}.npz", *[np.asarray(x) for x in jax.tree.leaves(state.params)])
    result = loop.train(config, f"{outdir}/workdir", task)  # default mesh: all 8 devices
    report["loop_step"] = result.step
    np.savez(f"{outdir}/params_loop.npz", *[np.asarray(x) for x in jax.tree.leaves(result.state.params)])
    with open(f"{outdir}/report.json", "w") as f:
        json.dump(report, f)


def test_eight_devices_match_one_and_checkpoint_restores_on_one(tmp_path):
    env = cli_env(XLA_FLAGS="--xla_force_host_platform_device_count=8")
    proc = subprocess.run([sys.executable, "-m", "tests.engine.test_multidevice", str(tmp_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    one, eight = report["one"], report["eight"]
    assert (one["batch_devices"], eight["batch_devices"]) == (1, 8)
    assert (one["batch_shard_rows"], eight["batch_shard_rows"]) == (16, 2)  # split on the batch axis
    assert eight["param_devices"] == 8  # replicated
    np.testing.assert_allclose(one["losses"], eight["losses"], rtol=1e-5, atol=1e-5)
    p1, p8 = np.load(tmp_path / "params_one.npz"), np.load(tmp_path / "params_eight.npz")
    for k in p1.files:
        np.testing.assert_allclose(p1[k], p8[k], rtol=1e-5, atol=1e-5)

    # this (pytest) process restores the 8-device checkpoint on a single device
    restored = restore_state(tmp_path / "workdir", 6, mesh=None)
    assert restored.step == report["loop_step"] == 6
    leaves = jax.tree.leaves(restored.state.params)
    assert all(len(x.sharding.device_set) == 1 for x in leaves)
    saved = np.load(tmp_path / "params_loop.npz")
    for i, x in enumerate(leaves):
        np.testing.assert_array_equal(np.asarray(x), saved[f"arr_{i}"])


if __name__ == "__main__":
    worker(sys.argv[1])
