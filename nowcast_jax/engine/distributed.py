"""Several hosts: joining a multi-process JAX run from plain environment variables.

With ``NOWCAST_JAX_DISTRIBUTED=1`` the CLI calls :func:`initialize` before anything else
touches JAX. The run is described by JAX's own variable names, the same in every process
except the id::

    JAX_COORDINATOR_ADDRESS=host0:1234   # process 0's host and a free port
    JAX_NUM_PROCESSES=2
    JAX_PROCESS_ID=0                     # 0 .. N-1, one per process
    NOWCAST_JAX_DISTRIBUTED_TIMEOUT=300  # seconds to wait for every peer (optional)

Without the three JAX variables, JAX detects the cluster itself (SLURM, Open MPI, TPU pods).
On CPU hosts the collectives use gloo (``JAX_CPU_COLLECTIVES_IMPLEMENTATION`` overrides).
A process other than 0 first waits (up to the timeout) for process 0's coordinator port to
accept connections, and otherwise stops with a :class:`DistributedError` naming the
coordinator, its id and what to check. Every process then says on stderr how long it waits
for its peers. When one never registers, XLA would abort the process with
``DEADLINE_EXCEEDED`` (a C++ check failure no Python code can catch), so a watchdog thread
(:class:`_Watchdog`) ends it first, at the timeout: one ``error:`` line naming the process,
the coordinator, the number of processes expected, what to check and the variable to raise,
and exit code 2. XLA is given :data:`XLA_GRACE_S` more seconds than the watchdog, so its
abort never wins the race. Standard library until :func:`initialize` imports jax.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from typing import Mapping

ENABLE = "NOWCAST_JAX_DISTRIBUTED"
TIMEOUT = "NOWCAST_JAX_DISTRIBUTED_TIMEOUT"
RUN_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
XLA_GRACE_S = 10  # XLA's own deadline is this much later than the watchdog's


class DistributedError(RuntimeError):
    """This process could not join the multi-process run; the message says why."""


def _int(environ: Mapping[str, str], name: str, low: int) -> int:
    text = environ[name]
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} must be a whole number") from None
    if value < low:
        raise ValueError(f"{name}={value} must be >= {low}")
    return value


def settings(environ: Mapping[str, str] = os.environ) -> dict | None:
    """Keyword arguments of ``jax.distributed.initialize`` from ``environ``; None when
    ``NOWCAST_JAX_DISTRIBUTED`` is not ``1``. A ``ValueError`` names a bad or missing variable."""
    if environ.get(ENABLE, "") != "1":
        return None
    out = {"initialization_timeout": _int(environ, TIMEOUT, 1) if environ.get(TIMEOUT) else 300}
    given = [v for v in RUN_VARS if environ.get(v)]
    if given and len(given) < len(RUN_VARS):
        missing = [v for v in RUN_VARS if v not in given]
        raise ValueError(f"{', '.join(given)} set but {', '.join(missing)} not: give all three "
                         "(or none, to let JAX detect the cluster)")
    if given:
        n = _int(environ, "JAX_NUM_PROCESSES", 1)
        pid = _int(environ, "JAX_PROCESS_ID", 0)
        if pid >= n:
            raise ValueError(f"JAX_PROCESS_ID={pid} must be < JAX_NUM_PROCESSES={n}")
        out.update(coordinator_address=environ["JAX_COORDINATOR_ADDRESS"], num_processes=n, process_id=pid)
    return out


def wait_for_coordinator(address: str, timeout: float) -> bool:
    """True once ``host:port`` accepts a TCP connection, False after ``timeout`` seconds."""
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
                return True
        except (OSError, ValueError):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.25)


def _join_message(kwargs: dict) -> str:
    who = f"process {kwargs['process_id']} of {kwargs['num_processes']}" if "process_id" in kwargs else "this process"
    return f"{who}, coordinator {kwargs.get('coordinator_address', '(detected)')}"


def initialize(environ: Mapping[str, str] = os.environ) -> bool:
    """Join the run described by ``environ`` (see the module docstring); False when not asked."""
    kwargs = settings(environ)
    if kwargs is None:
        return False
    timeout = kwargs["initialization_timeout"]
    if kwargs.get("process_id", 0) > 0 and not wait_for_coordinator(kwargs["coordinator_address"], timeout):
        raise DistributedError(
            f"{_join_message(kwargs)}: nothing answers there after {timeout} s; start process 0 (JAX_PROCESS_ID=0) "
            f"on that host and port, check the address and the firewall, or raise {TIMEOUT}")
    print(f"[distributed] {_join_message(kwargs)}: waiting up to {timeout} s for every process ({TIMEOUT})",
          file=sys.stderr, flush=True)
    import jax

    jax.config.update("jax_cpu_collectives_implementation",
                      environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION", "gloo"))
    watchdog = _Watchdog(timeout, _missing_peer_message(kwargs)).start()
    try:
        jax.distributed.initialize(**{**kwargs, "initialization_timeout": timeout + XLA_GRACE_S})
    except Exception as err:  # noqa: BLE001 - whatever the transport says, the fix is the same
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise DistributedError(
            f"{_join_message(kwargs)}: could not join within {timeout} s ({first}); "
            f"start every process with the same JAX_COORDINATOR_ADDRESS and JAX_NUM_PROCESSES, a distinct "
            f"JAX_PROCESS_ID, and check that process 0 is reachable (or raise {TIMEOUT})") from None
    finally:
        watchdog.cancel()
    return True


def _missing_peer_message(kwargs: dict) -> str:
    """The one line for a run whose processes did not all register within the timeout."""
    timeout, address = kwargs["initialization_timeout"], kwargs.get("coordinator_address", "(detected)")
    if "num_processes" in kwargs:
        n = kwargs["num_processes"]
        expected = f"expected {n} processes"
        start = (f"start every process (JAX_PROCESS_ID 0 to {n - 1}) with JAX_COORDINATOR_ADDRESS={address} "
                 f"and JAX_NUM_PROCESSES={n}")
    else:
        expected, start = "expected the processes of the detected cluster", "start every process of the run"
    return (f"{_join_message(kwargs)}: not every process joined within {timeout} s ({expected}); {start}, "
            f"check that each reaches {address} (host, port, firewall), or raise {TIMEOUT}")


class _Watchdog:
    """Ends the process with ``message`` on stderr and exit code 2 unless cancelled within
    ``seconds``; cancelling and firing exclude each other (one of them wins)."""

    def __init__(self, seconds: float, message: str):
        self._message, self._lock, self._cancelled = message, threading.Lock(), False
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True  # never keeps a finished process alive

    def _fire(self) -> None:
        with self._lock:
            if self._cancelled:
                return
            sys.stdout.flush()
            print(f"error: {self._message}", file=sys.stderr, flush=True)
            os._exit(2)  # the main thread is blocked in XLA: only ending the process stops it

    def start(self) -> "_Watchdog":
        self._timer.start()
        return self

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
        self._timer.cancel()


def process_zero_says(value: bool) -> bool:
    """Process 0's ``value`` in every process of the run (itself in a single process)."""
    import jax

    if jax.process_count() == 1:
        return bool(value)
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.asarray(bool(value))))
