"""Training loop vs the bare jitted step: what the loop (batches, metrics, logging) costs.

Radar ``cpu`` recipe (configs/precip_radar.py:cpu: MeteoSwiss events, 64x64 crops at 2 km,
2 x 32 ConvLSTM, batch 8, 5 -> 10) in one process. Contenders, interleaved round by round:

* ``bare step``: ``make_train_step`` called back to back on batches built and placed
  beforehand (the ceiling: nothing but the step);
* ``loop, prefetch N``: ``engine.loop.train`` (batches built by ``task.train_batch`` while
  the step runs, ``train.prefetch_batches=N``; N = 0 builds each in the loop's thread).

Each loop run trains ``--steps`` steps in a fresh workdir with no periodic evaluation or
checkpoint (one save at the end, not timed); its throughput is taken from ``metrics.jsonl``
between the first and the last logged step (the first step compiles). Batch building alone
(``task.train_batch`` + placement, no step) is reported beside.

    benchmarks/.venv/bin/python benchmarks/bench_loop.py [--runs 5] [--steps 40]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402
import jax  # noqa: E402

from nowcast_jax import applications  # noqa: E402
from nowcast_jax.engine import config as config_lib  # noqa: E402
from nowcast_jax.engine import loop  # noqa: E402
from nowcast_jax.engine import state as state_lib  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def recipe(steps: int, prefetch: int, cache_dir: str):
    config = config_lib.load_config(str(REPO / "configs" / "precip_radar.py") + ":cpu")
    return config_lib.apply_overrides(config, {
        "train.steps": str(steps), "train.log_every_steps": "1", "checkpoint.every_steps": "0",
        "checkpoint.async_save": "False", "eval.every_steps": "0", "train.prefetch_batches": str(prefetch),
        "data.cache_dir": cache_dir})


def loop_rate(config, task, root: Path, run: int) -> float:
    """Steps per second of one ``loop.train`` call, from its own log (compile step excluded)."""
    workdir = root / f"loop_p{config.train.prefetch_batches}_{run}"
    loop.train(config, workdir, task)
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    first, last = records[1], records[-1]  # records[0] is step 1, which includes the compile
    return (last["step"] - first["step"]) / (last["time"] - first["time"])


def bare_rate(config, task, batches: list) -> float:
    """Steps per second of the jitted step alone over pre-placed ``batches``."""
    mesh = state_lib.make_mesh()
    tx, schedule = state_lib.optimizer_from_config(config.train)
    step = state_lib.make_train_step(task, tx, schedule, int(config.seed), mesh)
    state = state_lib.create_state(task, tx, int(config.seed), mesh)
    state, metrics = step(state, batches[0])  # compile
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for batch in batches[1:]:
        state, metrics = step(state, batch)
        jax.device_get(metrics)  # the loop also fetches every step's metrics
    return (len(batches) - 1) / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "nowcast_jax_bench_radar_cache"))
    args = ap.parse_args()
    with contextlib.redirect_stdout(sys.stderr):  # pysteps prints a banner on import; stdout is for the table
        build_ms, rates = measure(args)
    ceiling = statistics.median(rates["bare step"])
    print(_common.header(f"Training loop vs bare step, radar cpu recipe, {args.steps} steps per run",
                         {"timing": "interleaved rounds, one run of each contender per round; steps/s from the "
                                    "loop's own metrics.jsonl (first step excluded); share = median / median(bare step)",
                          "batch building alone": f"{build_ms:.1f} ms per batch (task.train_batch + placement, main thread)"}))
    rows = [[name, statistics.median(r), f"{min(r):.3g}-{max(r):.3g}", len(r), statistics.median(r) / ceiling]
            for name, r in rates.items()]
    print(_common.table(["contender", "median steps/s", "min-max steps/s", "n", "share of bare step"], rows))


def measure(args) -> tuple[float, dict[str, list[float]]]:
    """Batch building time (ms per batch) and steps/s per contender, one list entry per round."""
    configs = {f"loop, prefetch {n}": recipe(args.steps, n, args.cache_dir) for n in (2, 0)}
    base = configs["loop, prefetch 2"]
    t0 = time.perf_counter()
    task = applications.make_task(base)
    _common.log(f"task ready in {time.perf_counter() - t0:.0f} s (decoding, or the cache {args.cache_dir})")
    mesh = state_lib.make_mesh()
    bs, seed = int(base.train.batch_size), int(base.seed)
    t0 = time.perf_counter()
    batches = [state_lib.shard_batch(task.train_batch(i, bs, seed), mesh) for i in range(args.steps)]
    build_ms = 1e3 * (time.perf_counter() - t0) / args.steps
    rates: dict[str, list[float]] = {"bare step": [], **{k: [] for k in configs}}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            rates["bare step"].append(bare_rate(base, task, batches))
            for name, config in configs.items():
                rates[name].append(loop_rate(config, task, Path(tmp), run))
            _common.log(f"  round {run + 1}/{args.runs}: " + ", ".join(f"{k} {v[-1]:.2f}/s" for k, v in rates.items()))
    return build_ms, rates


if __name__ == "__main__":
    main()
