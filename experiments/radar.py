"""Evidence: ConvLSTM vs persistence vs optical flow on an unseen radar event.

    JAX_PLATFORMS=cpu python experiments/radar.py --workdir /tmp/radar_cpu --max-minutes 18

Trains ``configs/precip_radar.py:cpu`` with the engine's loop (``nowcast_jax.engine.loop.train``,
the same as ``nowcast-jax train``; checkpoints in ``--workdir``, resumable) on the MeteoSwiss
events 2015-05-15 and 2016-07-11 of the shared data, stopping cleanly (SIGTERM -> checkpoint)
after ``--max-minutes`` if ``train.steps`` is not reached, then scores the final parameters on
every window of the unseen event 2017-01-31 (full 2 km frames, 320x352) next to persistence
and pysteps Lucas-Kanade extrapolation, on the same pixels. Writes ``WORKDIR/eval/metrics.json``,
``WORKDIR/eval/precip_radar_test.png`` and prints Markdown tables (CSI at 0.5 and 2 mm/h by lead).
Extra ``KEY=VALUE`` arguments override config keys (e.g. ``model.residual=False``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nowcast_jax.engine import config as config_lib  # noqa: E402
from nowcast_jax.engine import loop  # noqa: E402
from nowcast_jax.precip import evaluate as precip_evaluate  # noqa: E402
from nowcast_jax.precip import task as precip  # noqa: E402

FORECASTERS = ("model", "persistence", "optical_flow")


def table(results: dict, score: str) -> str:
    """Markdown: one row per forecaster, one column per lead (minutes), plus mean of leads 1-5."""
    k = len(results["model"][score])
    step = results.get("timestep_minutes", 5)
    head = "| forecaster | " + " | ".join(f"+{(i + 1) * step:g} min" for i in range(k)) + " | mean 1-5 |"
    rows = [head, "|---" * (k + 2) + "|"]
    for name in FORECASTERS:
        v = np.asarray(results[name][score], float)
        rows.append(f"| {name} | " + " | ".join(f"{x:.3f}" for x in v) + f" | {np.nanmean(v[:5]):.3f} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, default=Path("/tmp/precip_radar_cpu"))
    p.add_argument("--variant", default="cpu")
    p.add_argument("--max-minutes", type=float, default=18.0, help="wall-clock cap on training")
    p.add_argument("overrides", nargs="*", help="config KEY=VALUE overrides")
    args = p.parse_args(argv)
    config = config_lib.apply_overrides(
        config_lib.load_config(str(REPO / "configs" / f"precip_radar.py:{args.variant}")), args.overrides)
    task = precip.make_task(config)
    print(json.dumps(task.dataset.stats), flush=True)
    timer = threading.Timer(60 * args.max_minutes, lambda: os.kill(os.getpid(), signal.SIGTERM))
    timer.daemon = True
    t0 = time.time()
    timer.start()
    result = loop.train(config, args.workdir, task)
    timer.cancel()
    train_s = time.time() - t0
    print(f"trained {result.step} steps in {train_s:.0f}s ({result.reason})", flush=True)
    t1 = time.time()
    out = args.workdir / "eval"
    scores = precip_evaluate.score_radar(task, result.state.params, "test", out_dir=out)
    scores.update(steps=result.step, train_seconds=train_s, eval_seconds=time.time() - t1,
                  timestep_minutes=float(config.data.timestep_minutes))
    (out / "metrics.json").write_text(json.dumps(scores, indent=2, default=float))
    for score in ("csi_0.5", "csi_2.0", "pod_0.5", "far_0.5", "corr"):
        print(f"\n{score} on {scores['windows']} test windows\n{table(scores, score)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
