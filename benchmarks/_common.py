"""Shared helpers for the benchmark scripts: timing in rounds, machine/version info, tables.

Every script measures its contenders in ONE process, interleaved round by round (each
round runs every contender once), after a warm-up call that also compiles; it reports the
median of the timed runs and ratios against a reference row. Interleaving spreads the noise
of a shared machine evenly across the contenders.
"""

from __future__ import annotations

import datetime
import importlib
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from typing import Callable

os.environ.setdefault("KERAS_BACKEND", "jax")  # Keras 3 peers run on JAX
os.environ.setdefault("KERAS_HOME", os.path.join(os.path.dirname(os.path.abspath(__file__)), ".venv", "keras"))

# Benchmarks time our steps the way the CLI runs them: with the host-allocator setting the CLI
# makes for its own process (nowcast_jax/runtime.py; NOWCAST_JAX_HOST_ALLOCATOR=default opts out).
# It must run before the first JAX computation, so every script imports this module first.
from nowcast_jax.engine import runtime as _runtime  # noqa: E402  (stdlib only: does not import jax)

HOST_ALLOCATOR_TUNED = _runtime.tune_host_allocator()


def _load_average() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def _now() -> str:
    return datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


# Taken when a script starts (every script imports this module first), before any timing:
# the header printed at the end reports these, and the load average at the end beside them.
START_LOAD, START_DATE = _load_average(), _now()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def mem_gib() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def versions(mods=("jax", "jaxlib", "flax", "keras", "torch", "numpy")) -> dict[str, str]:
    out = {}
    for name in mods:
        try:
            out[name] = importlib.import_module(name).__version__
        except Exception:  # peer not installed
            out[name] = "-"
    return out


def header(title: str, extra: dict | None = None) -> str:
    """A markdown preamble: machine, versions, date, the command, XLA flags."""
    import jax

    v = versions()
    dev = jax.devices()[0]
    lines = [
        f"### {title}",
        "",
        f"- machine: {cpu_name()}, {os.cpu_count()} cores, {mem_gib():.0f} GiB; JAX device: {dev.platform} ({dev.device_kind})",
        f"- load average (1/5/15 min) at start: {START_LOAD}; at the end: {_load_average()}",
        "- versions: python " + platform.python_version() + ", " + ", ".join(f"{k} {x}" for k, x in v.items()),
        f"- XLA_FLAGS: `{os.environ.get('XLA_FLAGS', '')}`",
        f"- started: {START_DATE}; ended: {_now()}",
        f"- command: `{command_line()}`",
    ]
    for k, x in (extra or {}).items():
        lines.append(f"- {k}: {x}")
    return "\n".join(lines) + "\n"


def command_line() -> str:
    script = os.path.relpath(os.path.abspath(sys.argv[0]), os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return " ".join(["benchmarks/.venv/bin/python", script, *map(shlex.quote, sys.argv[1:])])


def time_rounds(contenders: dict[str, Callable[[], object]], runs: int, warmup: int = 1,
                runs_for: dict[str, int] | None = None, log=print) -> dict[str, dict]:
    """Time each zero-argument blocking callable; interleaved rounds.

    ``runs_for`` lowers the number of timed runs of some contenders (very slow peers);
    the table shows the count used. Returns ``{name: {"median", "min", "max", "n", "first"}}``
    where ``first`` is the first (compiling) call.
    """
    runs_for = runs_for or {}
    times: dict[str, list[float]] = {k: [] for k in contenders}
    first: dict[str, float] = {}
    for name, fn in contenders.items():
        for w in range(warmup):
            t0 = time.perf_counter()
            fn()
            if w == 0:
                first[name] = time.perf_counter() - t0
        if warmup:
            log(f"  warmed up {name} (first call {first[name]:.2f} s)")
    for r in range(runs):
        for name, fn in contenders.items():
            if len(times[name]) >= runs_for.get(name, runs):
                continue
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
        log(f"  round {r + 1}/{runs}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in times.items() if v))
    return {k: {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v), "first": first.get(k)}
            for k, v in times.items()}


def table(headers: list[str], rows: list[list]) -> str:
    def fmt(x):
        if isinstance(x, float):
            return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"
        return str(x)

    cells = [[fmt(x) for x in r] for r in rows]
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in cells]
    return "\n".join(out) + "\n"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def git_rev() -> str:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        return subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except Exception:
        return "?"
