"""The host-allocator setting of nowcast_jax/engine/runtime.py (what the CLI applies to its process).

The setting is process-wide, so it cannot be compared inside one process: each
configuration runs in a FRESH subprocess that calls ``nowcast_jax.engine.runtime.tune_host_allocator()``
before any JAX work, with ``NOWCAST_JAX_HOST_ALLOCATOR=tuned`` (applied) or ``default`` (the
call changes nothing), the two alternating over ``--reps`` rounds. Each subprocess times the
ConvLSTM training step of bench_convlstm (10 -> 10, batch 8) for both convolution paths
after two warm-up calls and reports the median step time, the minor page faults and the
system CPU time per step.

    benchmarks/.venv/bin/python benchmarks/bench_allocator.py [--runs 5] [--reps 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402

CHILD = r"""
import json, resource, statistics, sys, time
import nowcast_jax.engine.runtime
applied = nowcast_jax.engine.runtime.tune_host_allocator()  # first, before JAX; NOWCAST_JAX_HOST_ALLOCATOR=default: no-op
import jax, jax.numpy as jnp
sys.path.insert(0, sys.argv[2])
import peers_convlstm as peers
from nowcast_jax import models
runs, out = int(sys.argv[1]), {"applied": applied}
x = jnp.asarray(peers.fake_frames(8, 10, 0)); y = jnp.asarray(peers.fake_frames(8, 10, 1))
for impl in ("auto", "direct"):
    m = models.encoder_forecaster(1, 4, (64, 64), kernel_x=5, kernel_h=5, conv_impl=impl)
    p = m.init(jax.random.key(0), (64, 64, 1))
    f = jax.jit(jax.value_and_grad(lambda p: jnp.mean((m.apply(p, x, 10) - y) ** 2)))
    for _ in range(2):
        jax.block_until_ready(f(p))
    r0, times = resource.getrusage(resource.RUSAGE_SELF), []
    for _ in range(runs):
        t = time.perf_counter(); jax.block_until_ready(f(p)); times.append(time.perf_counter() - t)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    out[impl] = {"s": statistics.median(times), "faults": (r1.ru_minflt - r0.ru_minflt) / runs,
                 "sys": (r1.ru_stime - r0.ru_stime) / runs}
print(json.dumps(out))
"""


def child(setting: str, runs: int) -> dict:
    env = {**os.environ, "NOWCAST_JAX_HOST_ALLOCATOR": setting}
    here = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run([sys.executable, "-c", CHILD, str(runs), here], env=env, capture_output=True,
                          text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    results = {"tuned": [], "default": []}
    for rep in range(args.reps):
        for setting in results:
            results[setting].append(child(setting, args.runs))
            _common.log(f"rep {rep + 1}: {setting}: {results[setting][-1]}")
    rows = []
    for impl in ("auto", "direct"):
        best = {s: min(r[impl]["s"] for r in results[s]) for s in results}
        for s in results:
            r = min(results[s], key=lambda r: r[impl]["s"])[impl]
            every = ", ".join(f"{x[impl]['s']:.2f}" for x in results[s])
            faults = ", ".join(f"{x[impl]['faults']:.0f}" for x in results[s])
            rows.append([f"conv_impl={impl}", s, best[s], every, faults, r["sys"], best[s] / best["tuned"]])
    print(_common.header("Host allocator: training step with and without nowcast_jax.engine.runtime's setting",
                         {"timing": f"fresh subprocess per setting, alternating, {args.reps} reps; per rep the "
                                    f"median of {args.runs} steps after 2 warm-ups; the best rep is shown",
                          "applied": str({s: results[s][0]["applied"] for s in results})}))
    print(_common.table(["path", "NOWCAST_JAX_HOST_ALLOCATOR", "best s/step", "s/step per rep",
                         "minor faults/step per rep", "system s/step (best rep)", "t / t(tuned), best reps"], rows))


if __name__ == "__main__":
    main()
