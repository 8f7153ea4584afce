"""Evidence: ConvLSTM vs FC-LSTM on Moving MNIST at an equal wall-clock training budget.

    JAX_PLATFORMS=cpu python experiments/moving_mnist.py --minutes 5 --out /tmp/mm_evidence

Trains ``configs/precip_moving_mnist.py:cpu`` (ConvLSTM) and ``:fclstm`` (FC-LSTM) for the
same number of wall-clock minutes each (compilation excluded), one after the other, with the
engine's jitted train step (same data stream, seed, optimizer), then scores both on the
same fixed test set (test digits only): cross-entropy per 10-frame sequence (the paper's
Table 1 number) and MSE per lead time, next to persistence. Writes ``results.json`` and a
Markdown table to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nowcast_jax.engine import config as config_lib  # noqa: E402
from nowcast_jax.engine import state as engine  # noqa: E402
from nowcast_jax.precip import evaluate as precip_evaluate  # noqa: E402
from nowcast_jax.precip import task as precip  # noqa: E402


def train_for(task, config, seconds: float, log_every: int = 25):
    """Train ``task`` with the engine's step for ``seconds`` of wall clock (after compiling).

    Returns ``(params, steps, seconds_used, last_loss)``.
    """
    mesh = engine.make_mesh(jax.devices()[:1])
    tx, schedule = engine.optimizer_from_config(config.train)
    state = engine.create_state(task, tx, int(config.seed), mesh)
    step_fn = engine.make_train_step(task, tx, schedule, int(config.seed), mesh)
    bs, seed = int(config.train.batch_size), int(config.seed)
    state, m = step_fn(state, engine.shard_batch(task.train_batch(0, bs, seed), mesh))  # compile
    jax.block_until_ready(m["loss"])
    start, step = time.time(), 1
    while time.time() - start < seconds:
        state, m = step_fn(state, engine.shard_batch(task.train_batch(step, bs, seed), mesh))
        step += 1
        if step % log_every == 0:
            print(f"  step {step} loss {float(m['loss']):.4f} ({time.time() - start:.0f}s)", flush=True)
    jax.block_until_ready(m["loss"])
    return state.params, step, time.time() - start, float(m["loss"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=5.0, help="training budget per model")
    p.add_argument("--test-sequences", type=int, default=256)
    p.add_argument("--variants", default="cpu,fclstm")
    p.add_argument("--out", type=Path, default=Path("/tmp/precip_moving_mnist_evidence"))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    for variant in args.variants.split(","):
        config = config_lib.load_config(str(REPO / "configs" / f"precip_moving_mnist.py:{variant}"))
        config.data.test_sequences = args.test_sequences
        config.eval.ood = False
        task = precip.make_task(config)
        n_params = sum(x.size for x in jax.tree.leaves(task.init_params(jax.random.key(0))))
        print(f"{variant}: {config.model.cell} hidden={tuple(config.model.hidden)} params={n_params}", flush=True)
        params, steps, used, loss = train_for(task, config, 60 * args.minutes)
        scores = precip_evaluate.score_moving_mnist(task, params, "test", out_dir=args.out / variant)
        results[variant] = {"cell": config.model.cell, "hidden": list(config.model.hidden), "params": int(n_params),
                            "steps": steps, "train_seconds": used, "last_train_loss": loss,
                            "batch_size": int(config.train.batch_size), **scores}
        print(json.dumps({k: v for k, v in results[variant].items() if k != "persistence"}, default=float), flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=float))
    print(markdown(results))
    return 0


def markdown(results: dict) -> str:
    """Table: model, params, steps, CE per sequence, MSE at leads 1/5/10."""
    rows = ["| model | params | steps (batch) | train s | CE / sequence | MSE lead 1 | lead 5 | lead 10 |",
            "|---|---|---|---|---|---|---|---|"]
    for variant, r in results.items():
        m = r["model"]
        rows.append(f"| {r['cell']} {tuple(r['hidden'])} ({variant}) | {r['params']:,} | {r['steps']} ({r['batch_size']}) | "
                    f"{r['train_seconds']:.0f} | {m['bce_per_sequence']:.0f} | {m['mse'][0]:.4f} | {m['mse'][4]:.4f} | "
                    f"{m['mse'][9]:.4f} |")
    pers = next(iter(results.values()))["persistence"]
    rows.append(f"| persistence | - | - | - | {pers['bce_per_sequence']:.0f} | {pers['mse'][0]:.4f} | "
                f"{pers['mse'][4]:.4f} | {pers['mse'][9]:.4f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
