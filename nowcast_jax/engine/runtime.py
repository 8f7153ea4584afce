"""An opt-in process setting for speed: the host allocator (nothing here runs at import).

Host allocator (Linux/glibc only). XLA:CPU allocates each call's large temporary buffers
with ``malloc``; glibc serves big requests with fresh ``mmap`` pages and unmaps them on
``free``, so every training step first-touches its working set again. Measured on the
issue-6 ConvLSTM training step (2 cores): ~218 000 minor page faults and 0.5 s of system
time per step, 1.31 s/step; with the settings below, ~0 faults and 1.04 s/step (see
docs/benchmarks.md). :func:`tune_host_allocator` therefore asks glibc to keep freed memory
in the process (one arena, no mmap for large blocks, no trimming). The cost: the process's
resident memory stays at its high-water mark instead of shrinking after a peak.

It changes the allocator of the whole process, so ``import nowcast_jax`` does NOT apply
it: a library must not retune the allocator of the program (or notebook) that imports it.
The ``nowcast-jax`` CLI calls :func:`tune_host_allocator` for its own process, before JAX
computes anything; a script or notebook that wants the same opts in with::

    import nowcast_jax.engine.runtime
    nowcast_jax.engine.runtime.tune_host_allocator()   # first thing, before any JAX computation

It only affects allocations made after it runs, and the arena limit only threads that have
not allocated yet, so call it early. ``NOWCAST_JAX_HOST_ALLOCATOR=default`` makes the call
(and so the CLI) change nothing; ``tuned`` (the default) applies the setting; any other
value is a ``ValueError`` from the call. Standard library only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

ENV = "NOWCAST_JAX_HOST_ALLOCATOR"
CHOICES = ("tuned", "default")
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8  # glibc <malloc.h>
_KEEP = 2 ** 31 - 1  # bytes: the largest value mallopt takes (an int)
_applied: bool | None = None  # None: mallopt never attempted in this process


def requested_setting() -> str:
    """``NOWCAST_JAX_HOST_ALLOCATOR`` (``tuned`` when unset); ValueError for another value."""
    raw = os.environ.get(ENV)
    wanted = "tuned" if raw is None else raw.strip().lower()
    if wanted not in CHOICES:
        raise ValueError(f"{ENV} must be 'tuned' or 'default' (or unset, meaning 'tuned'); got {raw!r}")
    return wanted


def tune_host_allocator() -> bool:
    """Keep freed host memory in the process (glibc ``mallopt``); True when applied.

    Process-wide and not undoable; call it once, early (see the module docstring). Reads
    ``NOWCAST_JAX_HOST_ALLOCATOR``: ``default`` changes nothing and returns False; a value
    other than ``tuned``/``default`` raises ValueError (before anything is changed).
    Returns False (and changes nothing) off Linux, without glibc's ``mallopt``, or when
    glibc refuses a setting. Once a call has tried ``mallopt``, later calls return its result.
    """
    global _applied
    wanted = requested_setting()
    if _applied is not None:
        return _applied
    if wanted == "default":
        return False
    _applied = False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = ((_M_TRIM_THRESHOLD, _KEEP), (_M_MMAP_THRESHOLD, _KEEP), (_M_ARENA_MAX, 1))
    results = [mallopt(option, value) == 1 for option, value in settings]  # all of them, no short-circuit
    _applied = all(results)
    return _applied
