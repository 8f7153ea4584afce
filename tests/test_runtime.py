"""nowcast_jax.runtime: the host-allocator setting that `import nowcast_jax` applies."""

import os
import subprocess
import sys

import pytest

# malloc, touch and free a 64 MiB block five times (glibc directly: numpy asks for huge pages); report the minor page faults of the
# last four rounds. With glibc's defaults each round maps fresh pages (~16k faults); with
# freed memory kept in the process the later rounds reuse already-touched pages.
PROBE = """
import ctypes, ctypes.util, resource, nowcast_jax
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def rounds(n):
    for _ in range(n):
        p = libc.malloc(64 * 2**20); ctypes.memset(p, 1, 64 * 2**20); libc.free(p)
rounds(1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rounds(4)
print(nowcast_jax.RUNTIME_SETTINGS["host_allocator"], resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _probe(setting: str) -> tuple[bool, int]:
    env = {**os.environ, "NOWCAST_JAX_HOST_ALLOCATOR": setting}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    return applied == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the allocator setting is glibc/Linux only")
def test_import_keeps_freed_memory_and_opt_out_restores_default():
    applied, tuned_faults = _probe("tuned")
    if not applied:
        pytest.skip("this libc has no usable mallopt (not glibc)")
    skipped, default_faults = _probe("default")
    assert not skipped
    pages = 4 * 64 * 2**20 // 4096
    assert default_faults > pages // 2, default_faults  # glibc default: fresh pages every round
    assert tuned_faults < pages // 20, tuned_faults  # tuned: pages reused


def test_unknown_setting_is_refused():
    env = {**os.environ, "NOWCAST_JAX_HOST_ALLOCATOR": "fast"}
    out = subprocess.run([sys.executable, "-c", "import nowcast_jax"], env=env, capture_output=True, text=True)
    assert out.returncode != 0
    assert "NOWCAST_JAX_HOST_ALLOCATOR must be 'tuned' or 'default'" in out.stderr
