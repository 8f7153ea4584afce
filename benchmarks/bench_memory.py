"""Peak memory of the ConvLSTM training step at 20 -> 20, with and without remat.

Two measures, each in a FRESH subprocess per configuration:

* XLA's compiled memory analysis (``jax.jit(...).lower(...).compile().memory_analysis()``):
  ``temp`` is the scratch XLA allocates for the step (activations saved for the backward
  pass live here); ``peak`` = arguments + outputs + temp - aliased. This is exact for the
  compiled program and independent of the allocator and of other processes: the primary
  number.
* Peak resident set size of the process (``ru_maxrss``) before and after one step: the
  increase over the post-compile RSS is what executing the step added. RSS also holds the
  Python interpreter, the XLA compiler and freed-but-cached pages, so it is coarser.

    benchmarks/.venv/bin/python benchmarks/bench_memory.py [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import json, resource, sys
import jax
import jax.numpy as jnp
from nowcast_jax import models
t, remat, batch = int(sys.argv[1]), sys.argv[2] == "1", int(sys.argv[3])
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux: KiB)
m = models.encoder_forecaster(1, 4, (64, 64), remat=remat)
p = m.init(jax.random.key(0), (64, 64, 1))
x = jnp.zeros((batch, t, 64, 64, 1)); y = jnp.zeros((batch, t, 64, 64, 1))
f = jax.jit(jax.value_and_grad(lambda p, x, y: jnp.mean((m.apply(p, x, t) - y) ** 2)))
compiled = f.lower(p, x, y).compile()
ma = compiled.memory_analysis()
rss_compiled = rss()
jax.block_until_ready(compiled(p, x, y))
rss_run = rss()
peak = ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes - ma.alias_size_in_bytes
print(json.dumps({"temp": ma.temp_size_in_bytes, "args": ma.argument_size_in_bytes, "out": ma.output_size_in_bytes,
                  "peak": peak, "rss_compiled": rss_compiled, "rss_run": rss_run}))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    import _common

    res = {}
    for remat in (False, True):
        out = subprocess.run([sys.executable, "-c", CHILD, str(args.steps), "1" if remat else "0", str(args.batch)],
                             capture_output=True, text=True)
        if out.returncode:
            sys.stderr.write(out.stderr)
            raise SystemExit("child failed")
        res[remat] = json.loads(out.stdout.strip().splitlines()[-1])
        _common.log(f"  remat={remat}: {res[remat]}")
    print(_common.header(f"Peak memory of one training step (value_and_grad), {args.steps} -> {args.steps}, batch {args.batch}",
                         {"measures": "XLA compiled memory_analysis (exact buffer assignment; primary) and peak RSS of a "
                                      "fresh subprocess (coarse: includes interpreter and compiler)"}))
    mib = 2 ** 20
    rows = []
    for remat in (False, True):
        r = res[remat]
        rows.append([f"remat={remat}", r["temp"] / mib, r["peak"] / mib, r["rss_compiled"], r["rss_run"],
                     r["rss_run"] - r["rss_compiled"]])
    print(_common.table(["config", "XLA temp MiB", "XLA peak (args+out+temp) MiB", "RSS after compile MiB",
                         "RSS after step MiB", "RSS added by the step MiB"], rows))
    a, b = res[False], res[True]
    print(f"remat cuts XLA temp by {100 * (1 - b['temp'] / a['temp']):.1f} %, the XLA peak by "
          f"{100 * (1 - b['peak'] / a['peak']):.1f} %, and the RSS added by the step by "
          f"{100 * (1 - (b['rss_run'] - b['rss_compiled']) / max(a['rss_run'] - a['rss_compiled'], 1e-9)):.1f} %.\n")


if __name__ == "__main__":
    main()
