"""Evidence for issue 14: the extrapolation-conditioned ConvLSTM vs the paper's ConvLSTM, LK and persistence.

    JAX_PLATFORMS=cpu python experiments/radar_extrapolation.py --workdir /tmp/radar_extrap

Protocol (declared before scoring):

* Training: both models on the MeteoSwiss events 2015-05-15 and 2016-07-11 only
  (``configs/precip_radar_extrapolation.py:cpu`` and ``configs/precip_radar.py:cpu``, the same
  data, crops, loss and optimiser; each capped at ``--max-minutes`` of wall clock), with a
  checkpoint every ``--every`` steps, all kept.
* Two unseen test events from two sources: MeteoSwiss 2017-01-31 and FMI 2017-05-09 (dBZ,
  Z-R a = 223, b = 1.53, 2x downsampled like the training data). No training run reads them.
* Checkpoint selection, leave-one-event-out: for each test event the OTHER test event is the
  validation event; the candidates are every kept checkpoint (and, for the extrapolation
  model, its untrained parameters, which are exactly the extrapolation nowcast); the one
  with the highest validation score wins, where the score is the mean over leads 1-10 of
  CSI at 0.5, 2 and 5 mm/h (averaged over the three thresholds). The latest checkpoint
  (the last one the capped run wrote) is scored too.
* Baselines: persistence; pysteps LK + semi-Lagrangian on the full frame, cropped (the
  extrapolation the model corrects); and the same on the scored crop only (the evaluation's
  ``optical_flow``). Motion and extrapolation of every training window are prepared before
  the training clock starts (timed separately).
* Scores on every window of the test event, centred crop of (almost) the whole 2 km frame
  (MeteoSwiss 320 x 352 of 320 x 355, FMI 612 x 380 of 613 x 380), on the same
  pixels for every forecaster (target observed and last input observed): CSI, POD, FAR at
  0.5 / 2 / 5 mm/h, FSS at 2 mm/h over 8 km (4 px), MSE and MAE in mm/h, mean rain area
  (fraction >= 0.5 mm/h) and mean rain rate next to the observed ones.

Writes ``WORKDIR/results.json`` and prints Markdown tables. ``--skip-train`` re-scores.
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

import jax  # noqa: E402

from nowcast_jax import metrics  # noqa: E402
from nowcast_jax.engine import config as config_lib  # noqa: E402
from nowcast_jax.engine import loop, workdir as workdir_lib  # noqa: E402
from nowcast_jax.precip import evaluate as precip_evaluate  # noqa: E402
from nowcast_jax.precip import task as precip  # noqa: E402

RUNS = {"extrapolation": "configs/precip_radar_extrapolation.py:cpu", "convlstm": "configs/precip_radar.py:cpu"}
ARCHIVES = {
    "mch": dict(files="radar/mch/*/*.gif", fn_pattern="AQC%y%j%H%M?_00005.801", importer="mch_gif",
                importer_kwargs=dict(product="AQC", unit="mm", accutime=5.0), zr_a=0.0, zr_b=0.0),
    "fmi": dict(files="radar/fmi/20170509/*.pgm.gz", fn_pattern="%Y%m%d%H%M_fmi.radar.composite.lowest_FIN_SUOMI1",
                importer="fmi_pgm", importer_kwargs=dict(gzipped=True), zr_a=223.0, zr_b=1.53),
}
# The scored crop: the largest centred multiple of the 4x4 patch in the downsampled frame (at 2 km: MeteoSwiss
# 320 x 352 of 320 x 355, the recipe's; FMI 612 x 380 of 613 x 380), so that every forecaster, LK on the crop
# included, sees (almost) the whole domain.
NATIVE_GRIDS = {"mch": (640, 710), "fmi": (1226, 760)}
EVENTS = {"mch_20170131": ("mch", "20170131"), "fmi_20170509": ("fmi", "20170509")}
VALIDATES = {"mch_20170131": "fmi_20170509", "fmi_20170509": "mch_20170131"}  # test event -> its validation event
THRESHOLDS = (0.5, 2.0, 5.0)
# "extrapolation" is pysteps LK + semi-Lagrangian on the FULL frame, cropped (what the model corrects);
# "optical_flow" is the same method run on the scored crop only (nowcast_jax.baselines.optical_flow).
SUMMARY = [f"csi_{t}" for t in THRESHOLDS] + ["fss_2.0_4", "mse", "mae", "rain_area", "mean_rain"]
BASELINE_NAMES = {"extrapolation": "pysteps LK (full frame)", "optical_flow": "pysteps LK (on the crop)"}


def event_config(stored, event: str):
    """The stored run config reading one event of another (or the same) archive as its test split."""
    archive, event_id = EVENTS[event]
    config = config_lib.copy_config(stored)
    for key, value in ARCHIVES[archive].items():
        config.data[key] = value
    config.data.test_events = (event_id,)
    config.data.val_events = ()
    patch, down = int(config.model.patch_size), int(config.data.downsample)
    config.data.eval_crop_size = tuple(n // down // patch * patch for n in NATIVE_GRIDS[archive])
    config.eval.thresholds = THRESHOLDS
    config.eval.fss_scales = (4,)
    return config


def train(run: str, workdir: Path, max_minutes: float, every: int, variant: str) -> dict:
    config = config_lib.load_config(str(REPO / RUNS[run]).replace(":cpu", f":{variant}"))
    config.checkpoint.every_steps = every
    config.checkpoint.max_to_keep = 1000
    task = precip.make_task(config)
    t0 = time.time()
    if task.motion_method:  # motion and extrapolation of every training window, once (cached): data preparation
        for window in task.dataset.splits["train"]:
            task.dataset.window_motion(int(window))
    prep = time.time() - t0
    timer = threading.Timer(60 * max_minutes, lambda: os.kill(os.getpid(), signal.SIGTERM))
    timer.daemon = True
    t0 = time.time()
    timer.start()
    result = loop.train(config, workdir, task)
    timer.cancel()
    seconds = time.time() - t0
    print(f"[{run}] motion prepared in {prep:.0f}s; trained {result.step} steps in {seconds:.0f}s ({result.reason})",
          flush=True)
    info = {"steps": int(result.step), "prepare_seconds": prep, "train_seconds": seconds, "reason": str(result.reason)}
    (workdir / "run.json").write_text(json.dumps(info))
    return info


def candidates(run: str, workdir: Path) -> list[int]:
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    return ([0] if run == "extrapolation" else []) + [s for s in steps if s > 0]


def params_at(task, config, workdir: Path, step: int, stored):
    if step == 0:  # the untrained model (the extrapolation model's correction is exactly zero)
        return task.init_params(jax.random.PRNGKey(int(config.seed)))
    _, params = workdir_lib.restore_params(config, workdir, task, step, train_config=stored.train)
    return params


def selection_score(task, forecast, params) -> float:
    """Mean over leads and the three thresholds of the model's CSI on the task's test split
    (``forecast``: the jitted ``task.forecast_batch``)."""
    verifier = metrics.make_verifier(THRESHOLDS)
    acc = verifier.init(task.output_frames)
    for batch in task.eval_windows("test", 4):
        units = task.model_batch(batch)
        units = {k: units[k] for k in precip_evaluate.FORECAST_KEYS if k in units}
        pred = task.contract.from_model_units(np.asarray(forecast(params, units)))
        acc = verifier.update(acc, pred, batch["targets"], batch["target_mask"] & batch["input_mask"][:, -1:])
    return float(np.nanmean(verifier.compute(acc)["csi"]))


def summary(scores: dict) -> dict:
    """Means over leads 1-10 of the headline scores of one forecaster."""
    out = {}
    for name in SUMMARY + [f"{s}_{t}" for s in ("pod", "far") for t in THRESHOLDS]:
        if name in scores:
            out[name] = float(np.nanmean(np.asarray(scores[name], float)))
    return out


def table(rows: dict, names: list[str]) -> str:
    head = "| forecaster | " + " | ".join(names) + " |"
    lines = [head, "|---" * (len(names) + 1) + "|"]
    for forecaster, scores in rows.items():
        lines.append(f"| {forecaster} | " + " | ".join(f"{scores.get(n, float('nan')):.3f}" for n in names) + " |")
    return "\n".join(lines)


def lead_table(rows: dict, score: str) -> str:
    k = len(next(iter(rows.values()))[score])
    head = "| forecaster | " + " | ".join(f"+{5 * (i + 1)} min" for i in range(k)) + " | mean |"
    lines = [head, "|---" * (k + 2) + "|"]
    for forecaster, scores in rows.items():
        v = np.asarray(scores[score], float)
        lines.append(f"| {forecaster} | " + " | ".join(f"{x:.3f}" for x in v) + f" | {np.nanmean(v):.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, default=Path("/tmp/radar_extrapolation"))
    p.add_argument("--max-minutes", type=float, default=25.0, help="wall-clock cap on each training run")
    p.add_argument("--every", type=int, default=200, help="checkpoint every N steps (all kept: the candidates)")
    p.add_argument("--runs", default="extrapolation,convlstm")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--variant", default="cpu", help="config variant of both runs (tiny: a smoke test)")
    args = p.parse_args(argv)
    runs = [r for r in args.runs.split(",") if r]
    results = {"protocol": __doc__, "runs": {}, "events": {}}
    for run in runs:
        workdir = args.workdir / run
        if not args.skip_train:
            results["runs"][run] = train(run, workdir, args.max_minutes, args.every, args.variant)
        elif (workdir / "run.json").is_file():
            results["runs"][run] = json.loads((workdir / "run.json").read_text())
    for test_event, val_event in VALIDATES.items():
        rows, per_lead, chosen = {}, {}, {}
        for run in runs:
            workdir = args.workdir / run
            stored = workdir_lib.stored_config(workdir)
            val_config = event_config(stored, val_event)
            val_task = precip.make_task(val_config)
            t0 = time.time()
            forecast = jax.jit(val_task.forecast_batch)
            scored = {s: selection_score(val_task, forecast, params_at(val_task, val_config, workdir, s, stored))
                      for s in candidates(run, workdir)}
            best = max(scored, key=scored.get)
            latest = max(scored)
            chosen[run] = {"validation_event": val_event, "validation_scores": scored, "selected_step": best,
                           "latest_step": latest, "selection_seconds": time.time() - t0}
            print(f"[{run}] validation on {val_event}: {scored} -> step {best}", flush=True)
            test_config = event_config(stored, test_event)
            test_task = precip.make_task(test_config)
            name = "extrapolation_convlstm" if run == "extrapolation" else "convlstm_paper"
            for label, step in (("selected", best), ("latest", latest)):
                key = f"{name} ({label}, step {step})"
                if label == "latest" and step == best:
                    per_lead[key] = per_lead[f"{name} (selected, step {best})"]
                else:
                    params = params_at(test_task, test_config, workdir, step, stored)
                    out_dir = args.workdir / "eval" / test_event / f"{run}_{label}"
                    scores = precip_evaluate.score_radar(test_task, params, "test", out_dir=out_dir)
                    per_lead[key] = scores["model"]
                    for base in ("extrapolation", "optical_flow", "persistence", "observed"):
                        base_key = BASELINE_NAMES.get(base, base)
                        if base in scores and base_key not in per_lead:
                            per_lead[base_key] = scores[base]
                    results["events"].setdefault(test_event, {})["windows"] = scores["windows"]
                rows[key] = summary(per_lead[key])
        rows.update({k: summary(v) for k, v in per_lead.items() if k not in rows})
        results["events"].setdefault(test_event, {}).update(selection=chosen, summary=rows, per_lead=per_lead)
        print(f"\n### test event {test_event} (validation {val_event}), "
              f"{results['events'][test_event]['windows']} windows, means over leads 1-10\n")
        print(table(rows, SUMMARY))
        print("\nPOD / FAR\n")
        print(table(rows, [f"{s}_{t}" for t in THRESHOLDS for s in ("pod", "far")]))
        for score in ("csi_0.5", "csi_2.0", "csi_5.0", "fss_2.0_4", "mse", "mae"):
            print(f"\n{score} by lead\n")
            print(lead_table({k: v for k, v in per_lead.items() if score in v}, score))
    args.workdir.mkdir(parents=True, exist_ok=True)
    (args.workdir / "results.json").write_text(json.dumps(metrics.json_safe(results), indent=2))
    print(f"\nwrote {args.workdir / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
