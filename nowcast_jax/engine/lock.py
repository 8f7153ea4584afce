"""One writer per workdir: an advisory lock held by the process that trains in it.

``train`` holds ``WORKDIR/train.lock`` (``fcntl.flock``, exclusive, non-blocking) from
before it reads a checkpoint until its last save is written. A second trainer fails at once
with :class:`WorkdirLockedError`, naming the holder's host, pid and start time. The kernel
drops a flock when its process dies, even by SIGKILL, so a lock file left by a killed run
is stale by construction: the next trainer takes it over and says so. Readers (evaluate,
export, predict) take no lock and never touch the checkpoints (see the read-only checkpoint
manager in :mod:`nowcast_jax.engine.checkpoint`). The CLI takes the lock before the task
reads its data, so a second ``train`` refuses at once. On a file system without locks
(some NFS or FUSE mounts) the run goes on with a warning; on shared mounts whose locks are
local to a host, two hosts are not stopped from training one workdir.

In a multi-host run only process 0 takes the lock (and writes logs and configs); the
others write checkpoint shards through orbax's multi-process protocol.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import socket
from pathlib import Path
from typing import Callable, Iterator

LOCK_NAME = "train.lock"


class WorkdirLockedError(RuntimeError):
    """Another live process trains in this workdir."""


def _holder(text: str) -> str:
    try:
        info = json.loads(text)
        return f"pid {info['pid']} on host {info['host']}, started {info['started']}"
    except (ValueError, KeyError, TypeError):
        return "an unknown process"


@contextlib.contextmanager
def writer_lock(workdir, say: Callable[[str], None] = print) -> Iterator[Path]:
    """Hold the workdir's writer lock for the ``with`` block (yields the lock file's path)."""
    import fcntl  # POSIX only; the engine runs on Linux and macOS

    path = Path(workdir) / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
            raise WorkdirLockedError(
                f"{workdir} is being trained by {holder} (lock {path}): wait for that run to finish "
                "(or stop it), or give another --workdir") from None
        except OSError as err:
            if err.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
            say(f"cannot lock {path} ({err.strerror}: a file system without locks): a second trainer on this "
                "workdir would not be stopped")
            yield path
            return
        previous = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        if previous:
            say(f"took over the lock of a run that is gone ({_holder(previous)})")
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
            os.fsync(fd)
        except OSError as err:  # a full disk: name the file (a write to an fd names none)
            raise OSError(err.errno, err.strerror, str(path)) from None
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)  # released, also after an error: an empty file is a free lock
    finally:
        os.close(fd)  # closing releases the flock
