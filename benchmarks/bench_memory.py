"""Peak memory (and time) of the ConvLSTM training step at 20 -> 20: default and direct paths, remat off and on.

Two measures, each in a FRESH subprocess per configuration:

* XLA's compiled memory analysis (``jax.jit(...).lower(...).compile().memory_analysis()``):
  ``temp`` is the scratch XLA allocates for the step (activations saved for the backward
  pass live here); ``peak`` = arguments + outputs + temp - aliased. This is exact for the
  compiled program and independent of the allocator and of other processes: the primary
  number.
* Peak resident set size of the process (``ru_maxrss``) before and after one step: the
  increase over the post-compile RSS is what executing the step added. RSS also holds the
  Python interpreter, the XLA compiler and freed-but-cached pages, so it is coarser.

Each child also times ``--timed`` steps after the first (median), so memory and speed of a
setting are read from the same process.

    benchmarks/.venv/bin/python benchmarks/bench_memory.py [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

MEMORY_SCHEDULER = "--xla_cpu_enable_concurrency_optimized_scheduler=false"

CHILD = r"""
import json, resource, sys
import jax
import jax.numpy as jnp
from nowcast_jax import models
import statistics, time
t, remat, batch, impl, timed = int(sys.argv[1]), sys.argv[2] == "1", int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux: KiB)
m = models.encoder_forecaster(1, 4, (64, 64), remat=remat, conv_impl=impl)
p = m.init(jax.random.key(0), (64, 64, 1))
x = jnp.zeros((batch, t, 64, 64, 1)); y = jnp.zeros((batch, t, 64, 64, 1))
f = jax.jit(jax.value_and_grad(lambda p, x, y: jnp.mean((m.apply(p, x, t) - y) ** 2)))
compiled = f.lower(p, x, y).compile()
ma = compiled.memory_analysis()
rss_compiled = rss()
jax.block_until_ready(compiled(p, x, y))
rss_run = rss()
times = []
for _ in range(timed):
    t0 = time.perf_counter(); jax.block_until_ready(compiled(p, x, y)); times.append(time.perf_counter() - t0)
peak = ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes - ma.alias_size_in_bytes
print(json.dumps({"temp": ma.temp_size_in_bytes, "args": ma.argument_size_in_bytes, "out": ma.output_size_in_bytes,
                  "peak": peak, "rss_compiled": rss_compiled, "rss_run": rss_run,
                  "step_s": statistics.median(times) if times else float("nan"), "n": len(times)}))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--timed", type=int, default=3, help="timed steps per setting (after the first)")
    args = ap.parse_args()
    import _common

    # (conv_impl, remat, extra XLA flag): the last row is XLA:CPU's memory-minimising scheduler
    # in place of its default concurrency-optimised one (a process-wide flag, so a child of its own).
    settings = [("auto", False, ""), ("auto", True, ""), ("direct", False, ""), ("direct", True, ""),
                ("auto", False, MEMORY_SCHEDULER)]
    res = {}
    for impl, remat, flag in settings:
        env = {**os.environ, "XLA_FLAGS": " ".join(f for f in (os.environ.get("XLA_FLAGS", ""), flag) if f)}
        out = subprocess.run([sys.executable, "-c", CHILD, str(args.steps), "1" if remat else "0", str(args.batch),
                              impl, str(args.timed)], capture_output=True, text=True, env=env)
        if out.returncode:
            sys.stderr.write(out.stderr)
            raise SystemExit("child failed")
        res[impl, remat, flag] = json.loads(out.stdout.strip().splitlines()[-1])
        _common.log(f"  conv_impl={impl} remat={remat} {flag}: {res[impl, remat, flag]}")
    print(_common.header(f"Peak memory of one training step (value_and_grad), {args.steps} -> {args.steps}, batch {args.batch}",
                         {"measures": "XLA compiled memory_analysis (exact buffer assignment; primary) and peak RSS of a "
                                      "fresh subprocess (coarse: includes interpreter and compiler); step time: median of "
                                      f"{args.timed} steps after the first, in the same child (one child per setting)"}))
    mib = 2 ** 20
    ref, direct = res["auto", False, ""], res["direct", False, ""]
    rows = []
    for impl, remat, flag in settings:
        r = res[impl, remat, flag]
        rows.append([f"conv_impl={impl}, remat={remat}" + (f", XLA_FLAGS={flag}" if flag else ""), r["temp"] / mib,
                     r["peak"] / mib, r["peak"] / direct["peak"], r["rss_run"] - r["rss_compiled"], r["step_s"], r["n"],
                     r["step_s"] / ref["step_s"]])
    print(_common.table(["config", "XLA temp MiB", "XLA peak MiB", "peak / direct's", "RSS added by the step MiB",
                         "step s (median)", "n", "t / t(default)"], rows))
    for impl in ("auto", "direct"):
        a, b = res[impl, False, ""], res[impl, True, ""]
        print(f"conv_impl={impl}: remat cuts the XLA peak by {100 * (1 - b['peak'] / a['peak']):.1f} % "
              f"at {b['step_s'] / a['step_s']:.2f}x the step time.\n")
    m = res["auto", False, MEMORY_SCHEDULER]
    print(f"conv_impl=auto with XLA_FLAGS={MEMORY_SCHEDULER}: XLA peak {m['peak'] / mib:.0f} MiB vs "
          f"{ref['peak'] / mib:.0f} MiB with the default scheduler ({100 * (1 - m['peak'] / ref['peak']):.1f} % less) "
          f"at {m['step_s'] / ref['step_s']:.2f}x the step time.\n")


if __name__ == "__main__":
    main()
