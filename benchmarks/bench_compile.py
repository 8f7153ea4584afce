"""Compile time of the ConvLSTM training step for 10 -> 10, 20 -> 20, 40 -> 40.

Each measurement runs in a FRESH subprocess (no in-memory jit cache; the persistent
compilation cache is explicitly disabled), which times ``jax.jit(value_and_grad).lower``
and ``.compile()`` separately. The lengths are interleaved over ``--reps`` repetitions and
the median is reported; the ratio is against 10 -> 10. One ``lax.scan`` over time means
the compiled program does not grow with the sequence length.

    benchmarks/.venv/bin/python benchmarks/bench_compile.py [--reps 3] [--lengths 10,20,40]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import json, sys, time
import jax
jax.config.update("jax_enable_compilation_cache", False)
import jax.numpy as jnp
from nowcast_jax import models
t, remat, unroll = int(sys.argv[1]), sys.argv[2] == "1", int(sys.argv[3])
m = models.encoder_forecaster(1, 4, (64, 64), remat=remat, unroll=unroll)
p = m.init(jax.random.key(0), (64, 64, 1))
x = jnp.zeros((8, t, 64, 64, 1)); y = jnp.zeros((8, t, 64, 64, 1))
f = jax.jit(jax.value_and_grad(lambda p, x, y: jnp.mean((m.apply(p, x, t) - y) ** 2)))
t0 = time.perf_counter(); lowered = f.lower(p, x, y); t1 = time.perf_counter()
compiled = lowered.compile(); t2 = time.perf_counter()
hlo_ops = compiled.as_text().count("\n")
print(json.dumps({"lower": t1 - t0, "compile": t2 - t1, "hlo_lines": hlo_ops}))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--lengths", default="10,20,40")
    ap.add_argument("--remat", action="store_true")
    ap.add_argument("--unroll", type=int, default=1)
    args = ap.parse_args()
    import _common

    lengths = [int(s) for s in args.lengths.split(",")]
    res = {t: [] for t in lengths}
    env = dict(os.environ)
    for rep in range(args.reps):
        for t in lengths:
            out = subprocess.run([sys.executable, "-c", CHILD, str(t), "1" if args.remat else "0", str(args.unroll)],
                                 capture_output=True, text=True, env=env)
            if out.returncode:
                sys.stderr.write(out.stderr)
                raise SystemExit(f"child for T={t} failed")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            res[t].append(r)
            _common.log(f"  rep {rep + 1}: {t} -> {t}: lower {r['lower']:.2f} s, compile {r['compile']:.2f} s")
    print(_common.header("Compile time of the training step (value_and_grad), fresh subprocess per measurement",
                         {"model": f"encoder_forecaster 2x64 + 2x64, 5x5, batch 8, remat={args.remat}, unroll={args.unroll}",
                          "timing": f"median of {args.reps} fresh processes per length, lengths interleaved; "
                                    "ratio = (lower + compile) / that at the shortest length"}))
    base = None
    rows = []
    for t in lengths:
        lo = statistics.median(r["lower"] for r in res[t])
        co = statistics.median(r["compile"] for r in res[t])
        tot = statistics.median(r["lower"] + r["compile"] for r in res[t])
        base = base or tot
        rows.append([f"{t} -> {t}", lo, co, tot, res[t][0]["hlo_lines"], tot / base])
    print(_common.table(["sequence", "lower s", "compile s", "total s", "compiled HLO lines", "ratio vs first"], rows))


if __name__ == "__main__":
    main()
