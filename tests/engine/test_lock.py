"""One writer per workdir: the advisory lock, and readers that leave a live trainer alone."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from nowcast_jax.engine import lock as lock_lib
from tests.engine_utils import TOY, restore_state, run_cli, start_cli, train_log


def test_second_holder_is_refused_with_the_holders_pid(tmp_path):
    with lock_lib.writer_lock(tmp_path, say=lambda m: None) as path:
        held = json.loads(path.read_text())
        assert held["pid"] == os.getpid()
        with pytest.raises(lock_lib.WorkdirLockedError, match=f"pid {os.getpid()} on host"):
            with lock_lib.writer_lock(tmp_path):
                pass
    assert path.read_text() == ""  # released: a clean exit leaves it free
    with lock_lib.writer_lock(tmp_path, say=lambda m: None):
        pass


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    # what a SIGKILLed trainer leaves: its holder record, but no flock (the kernel dropped it)
    (tmp_path / lock_lib.LOCK_NAME).write_text(json.dumps({"pid": 999999, "host": "gone", "started": "then"}))
    said = []
    with lock_lib.writer_lock(tmp_path, say=said.append) as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert said and "pid 999999 on host gone" in said[0]


def _wait_for(predicate, timeout=90.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_live_trainer_survives_readers_and_refuses_a_second_trainer(tmp_path):
    """Evaluate (twice) and export a run while it saves every step; a second train refuses at
    once; the first run ends cleanly with all its files its own."""
    args = ("train", "--config", TOY + ":long", "--workdir", tmp_path, "--config.checkpoint.every_steps=1",
            "--config.eval.every_steps=0", "--config.train.log_every_steps=1",
            "--config.task=tests.engine.test_export:make_exportable_toy")  # the toy with an export hook
    trainer = start_cli(*args)
    try:
        assert _wait_for(lambda: len(train_log(tmp_path)) >= 3), "the trainer did not start"
        second = run_cli(*args)
        assert second.returncode == 2, second.stderr
        assert f"is being trained by pid {trainer.pid}" in second.stderr
        assert second.stderr.count("\n") == 1  # one error line, no traceback
        readers = [("evaluate", "--workdir", tmp_path), ("export", "--workdir", tmp_path, "--out", tmp_path / "x.jaxexport"),
                   ("evaluate", "--workdir", tmp_path, "--split", "val")]
        for reader in readers:  # readers while the trainer writes a checkpoint per step
            proc = run_cli(*reader)
            assert proc.returncode == 0, proc.stderr
            assert trainer.poll() is None, trainer.stderr.read()
        assert not (Path(tmp_path) / "checkpoints_quarantine").exists()  # readers moved nothing
    finally:
        trainer.send_signal(signal.SIGTERM)
        out, err = trainer.communicate(timeout=120)
    assert trainer.returncode == 0, err
    steps = [r["step"] for r in train_log(tmp_path)]
    assert steps == list(range(1, len(steps) + 1))  # one writer: every step once, in order
    last = restore_state(tmp_path).step
    assert last == steps[-1]
    assert (Path(tmp_path) / lock_lib.LOCK_NAME).read_text() == ""
