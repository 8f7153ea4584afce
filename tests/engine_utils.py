"""Helpers shared by the engine tests (toy task, CLI subprocesses, checkpoint reading)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
TOY = str(TESTS / "configs" / "toy.py")

# One persistent XLA compilation cache for all CLI subprocesses of a test session: the toy
# computations are compiled once instead of once per process.
_CACHE = Path(tempfile.gettempdir()) / f"nowcast_jax_test_xla_cache_{os.getuid()}"


def cli_env(**extra) -> dict:
    env = dict(os.environ)
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
               JAX_COMPILATION_CACHE_DIR=str(_CACHE), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    env.pop("XLA_FLAGS", None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def cli_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "nowcast_jax.cli", *map(str, args)]


def run_cli(*args, env=None, timeout=120) -> subprocess.CompletedProcess:
    """Run ``nowcast-jax ARGS`` in a new process; returns the completed process."""
    return subprocess.run(cli_cmd(*args), cwd=REPO, env=env or cli_env(), capture_output=True,
                          text=True, timeout=timeout)


def start_cli(*args, env=None) -> subprocess.Popen:
    return subprocess.Popen(cli_cmd(*args), cwd=REPO, env=env or cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def train_log(workdir) -> list[dict]:
    """Train records of ``workdir/metrics.jsonl`` in file order."""
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("kind") == "train":
            out.append(rec)
    return out


def toy_config(variant=None, **overrides):
    from nowcast_jax.engine import config as config_lib

    return config_lib.apply_overrides(config_lib.load_config(TOY + (f":{variant}" if variant else "")),
                                      {k: str(v) for k, v in overrides.items()})


def restore_state(workdir, step=None, config=None, mesh=None):
    """Restore a toy checkpoint of ``workdir`` in this process (on one device by default)."""
    import jax

    from nowcast_jax import applications
    from nowcast_jax.engine import checkpoint
    from nowcast_jax.engine import workdir as workdir_lib
    from nowcast_jax.engine import state as train

    config = config or workdir_lib.stored_config(Path(workdir))
    task = applications.make_task(config)
    mesh = mesh or train.make_mesh(jax.devices()[:1])
    tx, _ = train.optimizer_from_config(config.train)
    with checkpoint.CheckpointManager(Path(workdir) / "checkpoints", async_save=False) as manager:
        return manager.restore(train.abstract_state(task, tx, config.seed, mesh), step)
