"""Process settings the package applies for speed, and how to turn them off.

Host allocator (Linux/glibc only). XLA:CPU allocates each call's large temporary buffers
with ``malloc``; glibc serves big requests with fresh ``mmap`` pages and unmaps them on
``free``, so every training step first-touches its working set again. Measured on the
issue-6 ConvLSTM training step (2 cores): ~218 000 minor page faults and 0.5 s of system
time per step, 1.31 s/step; with the settings below, ~0 faults and 1.04 s/step (see
docs/benchmarks.md). :func:`tune_host_allocator` therefore asks glibc to keep freed memory
in the process (one arena, no mmap for large blocks, no trimming). The cost: the process's
resident memory stays at its high-water mark instead of shrinking after a peak.

``import nowcast_jax`` applies it unless ``NOWCAST_JAX_HOST_ALLOCATOR=default`` is set. It
only affects allocations made after it runs, and the arena limit only threads that have
not allocated yet, so it works best when ``nowcast_jax`` is imported before the first JAX
computation (the CLI does so).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

ENV = "NOWCAST_JAX_HOST_ALLOCATOR"
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8  # glibc <malloc.h>
_KEEP = 2 ** 31 - 1  # bytes: the largest value mallopt takes (an int)
_applied: bool | None = None


def tune_host_allocator() -> bool:
    """Keep freed host memory in the process (glibc ``mallopt``); True when applied.

    Returns False (and changes nothing) off Linux, without glibc's ``mallopt``, or when
    glibc refuses a setting.
    """
    global _applied
    if _applied is not None:
        return _applied
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


def apply_defaults() -> dict[str, bool]:
    """What ``import nowcast_jax`` runs; returns which settings were applied."""
    wanted = os.environ.get(ENV, "tuned").strip().lower()
    if wanted not in ("tuned", "default"):
        raise ValueError(f"{ENV} must be 'tuned' or 'default'; got {wanted!r}")
    return {"host_allocator": tune_host_allocator() if wanted == "tuned" else False}
