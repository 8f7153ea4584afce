"""nowcast_jax.engine.runtime: the opt-in host-allocator setting (never applied by `import nowcast_jax`)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nowcast_jax.engine import runtime

REPO = Path(__file__).resolve().parents[2]
BAD = "fast"

# malloc, touch and free a 64 MiB block five times (glibc directly: numpy asks for huge
# pages); report the minor page faults of the last four rounds. With glibc's defaults each
# round maps fresh pages (~16k faults); with freed memory kept in the process the later
# rounds reuse already-touched pages. Measured once right after `import nowcast_jax` (must
# be glibc's defaults) and once after the explicit `tune_host_allocator()` call.
PROBE = """
import ctypes, ctypes.util, resource
import nowcast_jax, nowcast_jax.engine.runtime as runtime
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def faults():
    def rounds(n):
        for _ in range(n):
            p = libc.malloc(64 * 2**20); ctypes.memset(p, 1, 64 * 2**20); libc.free(p)
    rounds(1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    rounds(4)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
after_import = (runtime._applied, faults())
applied = runtime.tune_host_allocator()
print(after_import[0], after_import[1], applied, faults())
"""
PAGES = 4 * 64 * 2**20 // 4096


def _env(setting: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != runtime.ENV}
    if setting is not None:
        env[runtime.ENV] = setting
    return env


def _run(args: list[str], setting: str | None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, env=_env(setting), capture_output=True, text=True,
                          timeout=120, **kw)


def _probe(setting: str | None) -> tuple[str, int, bool, int]:
    out = _run(["-c", PROBE], setting, check=True)
    state, import_faults, applied, tuned_faults = out.stdout.split()
    return state, int(import_faults), applied == "True", int(tuned_faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the allocator setting is glibc/Linux only")
def test_import_changes_nothing_and_the_explicit_call_keeps_freed_memory():
    state, import_faults, applied, tuned_faults = _probe(None)  # unset means "tuned" for the call
    assert state == "None"  # import did not even try mallopt
    assert import_faults > PAGES // 2, import_faults  # glibc default after import: fresh pages every round
    if not applied:
        pytest.skip("this libc has no usable mallopt (not glibc)")
    assert tuned_faults < PAGES // 20, tuned_faults  # after tune_host_allocator(): pages reused


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the allocator setting is glibc/Linux only")
def test_opt_out_makes_the_call_change_nothing():
    state, import_faults, applied, default_faults = _probe("default")
    assert state == "None" and not applied
    assert import_faults > PAGES // 2, import_faults
    assert default_faults > PAGES // 2, default_faults


def test_bad_value_breaks_only_the_call():
    code = ("import sys; before = set(sys.modules)\n"
            "import nowcast_jax, nowcast_jax.engine.runtime as runtime\n"
            "print(sorted({m.split('.')[0] for m in set(sys.modules) - before} - set(sys.stdlib_module_names)))\n"
            "try:\n    runtime.tune_host_allocator()\nexcept ValueError as err:\n    print('ValueError:', err)\n"
            "print(runtime._applied)\n")
    out = _run(["-c", code], BAD)
    assert out.returncode == 0, out.stderr  # the import itself is fine
    lines = out.stdout.splitlines()
    assert lines[0] == "['nowcast_jax']"  # stdlib only
    assert lines[1].startswith("ValueError: NOWCAST_JAX_HOST_ALLOCATOR must be 'tuned' or 'default'"), lines
    assert repr(BAD) in lines[1]
    assert lines[2] == "None"  # refused before anything was changed


def test_bad_value_in_process_is_a_value_error(monkeypatch):
    monkeypatch.setenv(runtime.ENV, " Tuned-ish ")
    with pytest.raises(ValueError, match=r"NOWCAST_JAX_HOST_ALLOCATOR must be 'tuned' or 'default'"):
        runtime.tune_host_allocator()
    monkeypatch.setenv(runtime.ENV, " Default ")  # case and spaces are forgiven
    assert runtime.requested_setting() == "default"


def test_cli_reports_a_bad_value_as_one_error_line(tmp_path):
    out = _run(["-m", "nowcast_jax.cli", "train", "--workdir", str(tmp_path / "wd")], BAD)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert out.stderr.splitlines() == [
        f"error: NOWCAST_JAX_HOST_ALLOCATOR must be 'tuned' or 'default' (or unset, meaning 'tuned'); got {BAD!r}"]
    assert not (tmp_path / "wd").exists()  # refused before the subcommand ran


def test_cli_tunes_its_own_process(monkeypatch):
    from nowcast_jax import cli

    calls = []
    monkeypatch.setattr(runtime, "tune_host_allocator", lambda: calls.append(1) or False)
    monkeypatch.delenv("NOWCAST_JAX_DISTRIBUTED", raising=False)
    cli.configure_runtime()
    assert calls == [1]
