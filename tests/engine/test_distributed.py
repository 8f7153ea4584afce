"""Several hosts from plain environment variables: a real 2-process CPU run on the loopback
address (gloo collectives) equals a 1-process run, and its checkpoint restores in one process."""

from __future__ import annotations

import socket
import subprocess
import time

import numpy as np
import pytest

from nowcast_jax.engine import distributed
from tests.engine_utils import TOY, cli_cmd, cli_env, restore_state, run_cli, train_log

RUN = ("--config.train.steps=6", "--config.checkpoint.every_steps=3", "--config.eval.every_steps=3")


def test_settings_from_plain_variables():
    env = {"NOWCAST_JAX_DISTRIBUTED": "1", "JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234",
           "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3", "NOWCAST_JAX_DISTRIBUTED_TIMEOUT": "20"}
    assert distributed.settings(env) == {"coordinator_address": "10.0.0.1:1234", "num_processes": 4,
                                         "process_id": 3, "initialization_timeout": 20}
    assert distributed.settings({"NOWCAST_JAX_DISTRIBUTED": "1"}) == {"initialization_timeout": 300}  # detection
    assert distributed.settings({**env, "NOWCAST_JAX_DISTRIBUTED": "0"}) is None


@pytest.mark.parametrize("change, message", [
    ({"JAX_PROCESS_ID": None}, "JAX_PROCESS_ID not: give all three"),
    ({"JAX_NUM_PROCESSES": "two"}, "JAX_NUM_PROCESSES='two' must be a whole number"),
    ({"JAX_PROCESS_ID": "2"}, "JAX_PROCESS_ID=2 must be < JAX_NUM_PROCESSES=2"),
    ({"NOWCAST_JAX_DISTRIBUTED_TIMEOUT": "0"}, "NOWCAST_JAX_DISTRIBUTED_TIMEOUT=0 must be >= 1"),
])
def test_bad_variables_are_named(change, message):
    env = {"NOWCAST_JAX_DISTRIBUTED": "1", "JAX_COORDINATOR_ADDRESS": "127.0.0.1:1", "JAX_NUM_PROCESSES": "2",
           "JAX_PROCESS_ID": "1"}
    env = {k: v for k, v in {**env, **change}.items() if v is not None}
    with pytest.raises(ValueError, match=message):
        distributed.settings(env)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(port: int, pid: int, timeout: int = 60) -> dict:
    return cli_env(NOWCAST_JAX_DISTRIBUTED="1", JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                   JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(pid), NOWCAST_JAX_DISTRIBUTED_TIMEOUT=str(timeout))


def test_two_processes_train_like_one_and_restore_in_one(tmp_path):
    port, workdir = _free_port(), tmp_path / "two"
    procs = [subprocess.Popen(cli_cmd("train", "--config", TOY, "--workdir", workdir, *RUN), env=_env(port, pid),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for pid in (0, 1)]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    one = run_cli("train", "--config", TOY, "--workdir", tmp_path / "one", *RUN)
    assert one.returncode == 0, one.stderr
    two_log, one_log = train_log(workdir), train_log(tmp_path / "one")
    assert [r["step"] for r in two_log] == list(range(1, 7))  # process 0 alone wrote the log
    np.testing.assert_allclose([r["loss"] for r in two_log], [r["loss"] for r in one_log], rtol=1e-5)
    restored = restore_state(workdir)  # written by two processes, read by one
    assert restored.step == 6


def test_a_peer_without_its_coordinator_stops_with_one_line(tmp_path):
    proc = run_cli("train", "--config", TOY, "--workdir", tmp_path / "wd", env=_env(_free_port(), 1, timeout=2))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert "process 1 of 2" in proc.stderr and "nothing answers there after 2 s" in proc.stderr
    assert not (tmp_path / "wd").exists()


def test_a_lone_coordinator_stops_with_one_line_at_its_timeout(tmp_path):
    """Process 0 whose peer never registers: the watchdog's line and exit 2 at the timeout,
    not XLA's DEADLINE_EXCEEDED abort (a C++ stack trace, exit 134) seconds later."""
    port = _free_port()
    started = time.monotonic()
    proc = run_cli("train", "--config", TOY, "--workdir", tmp_path / "wd", env=_env(port, 0, timeout=2))
    elapsed = time.monotonic() - started
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.splitlines()[-1]
    assert last == (f"error: process 0 of 2, coordinator 127.0.0.1:{port}: not every process joined within 2 s "
                    f"(expected 2 processes); start every process (JAX_PROCESS_ID 0 to 1) with "
                    f"JAX_COORDINATOR_ADDRESS=127.0.0.1:{port} and JAX_NUM_PROCESSES=2, check that each reaches "
                    f"127.0.0.1:{port} (host, port, firewall), or raise NOWCAST_JAX_DISTRIBUTED_TIMEOUT")
    assert proc.stderr.count("error:") == 1
    for abort in ("DEADLINE_EXCEEDED", "Check failure", "Traceback"):
        assert abort not in proc.stderr
    assert elapsed < 2 + distributed.XLA_GRACE_S  # the watchdog, not XLA's later deadline
    assert not (tmp_path / "wd").exists()


def test_a_locked_workdir_stops_every_process_of_a_second_run(tmp_path):
    """Process 0 finds the lock held (here by this test); the other process learns it from
    process 0 and stops too, instead of waiting at the checkpoint directory's barrier."""
    from nowcast_jax.engine import lock as lock_lib

    port, workdir = _free_port(), tmp_path / "held"
    workdir.mkdir()
    with lock_lib.writer_lock(workdir, say=lambda m: None):
        procs = [subprocess.Popen(cli_cmd("train", "--config", TOY, "--workdir", workdir, *RUN), env=_env(port, pid),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for pid in (0, 1)]
        errs = [p.communicate(timeout=180)[1] for p in procs]
    assert [p.returncode for p in procs] == [2, 2], errs
    assert "is being trained by pid" in errs[0] and "process 0 found its lock" in errs[1]
    assert not (workdir / "checkpoints").exists()
