"""Issue 15, first evidence step: the two issue-5 recipes re-scored UNCHANGED on every shared station file.

    nice -n 19 .venv/bin/python experiments/visibility_stations.py --workdir /work/vis_stations
    nice -n 19 .venv/bin/python experiments/visibility_stations.py --list          # split + fog hours only
    nice -n 19 .venv/bin/python experiments/visibility_stations.py --stations sea15 --quick --workdir /tmp/q
    ... --recipes paper --stations sbgr,rksi,pnw14,sea15    # train the paper LSTM (and the MLP) first
    ... --score-only                                           # score whatever is trained, train nothing

Protocol (declared here before anything was scored; nothing below is tuned on a test block):

* Files: the five files of ``../shared/data/stations`` (:data:`FILES`), each read with the
  exact ``data.*`` overrides of its ``nowcast-jax train`` line in docs/visibility.md ("Each
  shared station file", "The KMA files", "Many stations"), parsed from that file at run
  time (only ``data.path`` is made absolute). One model per file: a file with two stations
  (pnwflights14: SEA and PDX) trains one model on both, as its documented ``:pooled`` line
  does.
* Split: chronological per station, ``data.split_per_station=True`` and
  ``data.fractions=(0.7, 0.1, 0.2)`` (``configs/visibility.py:pooled``), so the test block is
  the last 20 % of each station's own time range (train, val, test in time order, no purge
  gap: the recipes' ``data.gap_steps=0``). Added to every run of every file.
* Recipes, exactly as declared in issue 5 (``experiments/visibility.py`` :data:`RUNS`, with
  the issue-5 config: 3000 steps, batch 64, cosine lr 1e-3, best checkpoint by validation
  loss):
  - ``paper``: the paper LSTM ``lstm8`` (configs/visibility.py default, 8 factors, plain MSE;
    seed 0), event = value < 1000 m.
  - ``ensemble``: ``fog16_ens3_v8``: event from the mean classifier probability of the three
    ``fog2`` runs ``fog16``, ``fog16_seed1``, ``fog16_seed2`` (16 features), cut calibrated on
    the file's training windows to frequency bias 1 per horizon; value = mean of the three
    plain paper LSTMs ``lstm8``, ``lstm8_seed1``, ``lstm8_seed2``.
  - baseline ``mlp8`` (the ``mlp`` variant, the BP network) for the gains vs the MLP;
    persistence (last observed visibility) and climatology from
    ``nowcast_jax.visibility.evaluate``.
  A feature a station does not report is dropped by the documented reader rule (SBGR: no
  precipitation, so 7 of the 8 factors and 15 of fog16's 16) -- that is the recipe as the
  package applies it to such a file, not a change.
* Scores on each station's test block (``nowcast_jax.visibility.scores.score_all``, all
  forecasters on the windows every one of them forecasts): per station and pooled over all
  scored stations (their test windows concatenated): RMSE and MAE gain vs persistence and vs
  the MLP at +1/+3/+6 h, written as **gain = 100 (1 - model / reference) %, positive =
  model better** (the negative of ``station_scores``' ``rmse_change``); CSI, POD, FAR below
  1000 m for the model and persistence; the RMSE gain vs persistence on hazy starts (start
  below the cap); fog hours in each test block (distinct grid hours < 1000 m that are a
  target of a test window) and fog events per horizon; a day-block bootstrap
  (``station_scores.day_block_bootstrap``: blocks = station and UTC day, 1000 resamples,
  5-95 % intervals) of the model-vs-persistence CSI difference and of the RMSE gain.
* The issue's aim, checked as stated: at every station with >= 100 fog hours in its test
  block, CSI (< 1000 m) >= persistence's at +3 h and +6 h and RMSE gain vs persistence > 0 at
  every horizon; pooled RMSE gain >= +5 / +15 / +25 % at +1 / +3 / +6 h.
* ``--max-seconds`` caps each training run's wall clock (the engine's signal stop: it saves
  and stops; the best checkpoint so far is scored). A run stopped short of 3000 steps is NOT
  the recipe: its steps are reported and the results marked partial. Re-running continues
  a stopped run from its last checkpoint.

Writes ``WORKDIR/runs/<file>/<run>`` (engine workdirs), ``WORKDIR/results.json`` and
``WORKDIR/results.md`` (the tables, also printed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402

import visibility as V  # noqa: E402  (experiments/visibility.py: the issue-5 run definitions)
from nowcast_jax import metrics  # noqa: E402
from nowcast_jax.engine import config as config_lib  # noqa: E402
from nowcast_jax.engine import loop  # noqa: E402
from nowcast_jax.visibility import evaluate as ev  # noqa: E402
from nowcast_jax.visibility import scores, station_scores  # noqa: E402
from nowcast_jax.visibility import task as vis  # noqa: E402
from nowcast_jax.visibility.dataset import StationWindows  # noqa: E402
from nowcast_jax.visibility.members import MemberRuns  # noqa: E402
from nowcast_jax.visibility.windows import block_boundaries  # noqa: E402

DATA_DIR = REPO.parent / "shared" / "data" / "stations"
FILES = {   # tag -> file of ../shared/data/stations (docs/visibility.md has one train line each)
    "sbgr": "SBGR_83075099999_2009-2019_ncei_global_hourly.csv",
    "rksi": "RKSI_Incheon_113_2023-2026Q1_kma_amos_hourly.csv",
    "cheongju": "Cheongju_131_2021-2023_kma_asos_hourly.csv",
    "pnw14": "pnwflights14_SEA_PDX_2014_weather.csv",
    "sea15": "seaflights15_SEA_2015_weather.csv",
}
SPLIT = ["data.split_per_station=True", "data.fractions=(0.7, 0.1, 0.2)"]
FIRST_STEP_FRACTIONS = (0.7, 0.1, 0.2)
#: fold -> data.fractions of its runs. Fold "R" (declared in docs/visibility.md before it was
#: trained): train on the first 50 % of each station's range, validate on the next 10 %, and
#: score only test windows whose every target lies before the first step's test start (80 %),
#: i.e. the 60-80 % block, which no forecaster had been scored on.
FOLDS = {"": FIRST_STEP_FRACTIONS, "R": (0.5, 0.1, 0.4)}
MLP = "mlp8"
PAPER = "lstm8"
VALUE_RUNS = ("lstm8", "lstm8_seed1", "lstm8_seed2")
VALUE16_RUNS = ("lstm16", "lstm16_seed1", "lstm16_seed2")
FOG_RUNS = ("fog16", "fog16_seed1", "fog16_seed2")
#: recipe -> (its runs, in training order; the run whose config holds the recipe's eval keys)
RECIPES = {"paper": ((MLP, PAPER), PAPER),
           "ensemble": (VALUE_RUNS + FOG_RUNS, "fog16"),
           "ensemble_v16": (VALUE16_RUNS + FOG_RUNS, "fog16")}
#: recipe -> the experiments/visibility.py run whose eval keys define it
RECIPE_EVAL = {"paper": PAPER, "ensemble": "fog16_ens3_v8", "ensemble_v16": "fog16_ens3_v16"}
RECIPE_NAMES = {"paper": "paper LSTM (lstm8)", "ensemble": "fog ensemble (fog16_ens3_v8)",
                "ensemble_v16": "candidate: fog ensemble with 16-feature value LSTMs (fog16_ens3_v16)"}
THRESHOLD = 1000.0
HORIZONS = (1, 3, 6)
AIM_FOG_HOURS = 100
AIM_POOLED = (5.0, 15.0, 25.0)
QUICK = ["train.steps=20", "checkpoint.every_steps=10", "eval.every_steps=10", "eval.batches=2",
         "train.log_every_steps=10"]


# ------------------------------------------------------------------------------ configs
def doc_data_overrides(filename: str, path: Path) -> list[str]:
    """The ``data.*`` overrides of docs/visibility.md's ``nowcast-jax train`` line for
    ``filename``, with ``data.path`` set to ``path`` (the variant of the line, if any, only
    sets the split, which :data:`SPLIT` sets for every file anyway)."""
    text = (REPO / "docs" / "visibility.md").read_text(encoding="utf-8")
    (block,) = [b for b in re.findall(r"```bash\n(.*?)```", text, re.S) if filename in b]
    (train,) = [c for c in block.replace("\\\n", " ").splitlines() if c.startswith("nowcast-jax train ")]
    tokens = shlex.split(train)
    spec = tokens[tokens.index("--config") + 1]
    if ":" in spec and spec.split(":")[1] not in ("pooled",):
        raise SystemExit(f"{filename}: docs line uses variant {spec!r}; this script expects none or :pooled")
    over = [t[len("--config."):] for t in tokens if t.startswith("--config.")]
    if not all(o.startswith("data.") for o in over):
        raise SystemExit(f"{filename}: docs line overrides more than data.*: {over}")
    return [f"data.path={path}" if o.startswith("data.path=") else o for o in over]


def run_config(run: str, tag: str, data_dir: Path, quick: bool, fold: str = ""):
    split = SPLIT[:-1] + [f"data.fractions={FOLDS[fold]}"]
    extra = doc_data_overrides(FILES[tag], data_dir / FILES[tag]) + split + (QUICK if quick else [])
    return V.run_config(run, extra)


def run_dir(workdir: Path, tag: str, run: str) -> Path:
    return workdir / "runs" / tag / run


# ------------------------------------------------------------------------------ training
class WallClockCap:
    """SIGTERM to this process after ``seconds`` (the engine's loop then saves and stops);
    cancelled when the block ends."""

    def __init__(self, seconds: float):
        self.seconds, self.lock, self.active, self.fired = seconds, threading.Lock(), False, False

    def _fire(self):
        with self.lock:
            if self.active:
                self.fired = True
                os.kill(os.getpid(), signal.SIGTERM)

    def __enter__(self):
        self.active = True
        self.timer = threading.Timer(self.seconds, self._fire) if self.seconds > 0 else None
        if self.timer:
            self.timer.daemon = True
            self.timer.start()
        return self

    def __exit__(self, *exc):
        with self.lock:
            self.active = False
        if self.timer:
            self.timer.cancel()


def train_run(workdir: Path, tag: str, run: str, data_dir: Path, quick: bool, max_seconds: float,
              fold: str = "") -> dict:
    config = run_config(run, tag, data_dir, quick, fold)
    wd = run_dir(workdir, tag, run)
    t0 = time.time()
    task = vis.make_task(config)
    t_data = time.time() - t0
    with WallClockCap(max_seconds) as cap:
        result = loop.train(config, wd, task)
    info = {"file": tag, "run": run, "steps_target": int(config.train.steps), "step": int(result.step),
            "reason": result.reason, "capped": cap.fired, "data_s": round(t_data, 1),
            "train_s": round(time.time() - t0 - t_data, 1), "best_step": result.best_checkpoint}
    if result.reason != "already_done":   # a finished run met again (the ensemble's lstm8) keeps its entry
        with (workdir / "train_log.jsonl").open("a") as f:
            f.write(json.dumps(metrics.json_safe(info)) + "\n")
    print(f"== {tag}/{run}: step {info['step']}/{info['steps_target']} ({result.reason}"
          f"{', capped' if cap.fired else ''}) in {info['train_s']:.0f} s (+{t_data:.0f} s data)", flush=True)
    return info


def run_state(workdir: Path, tag: str, run: str) -> dict | None:
    """``{"step", "steps_target"}`` of a trained run from its metrics log (None if untrained)."""
    wd = run_dir(workdir, tag, run)
    if not (wd / "config.json").exists():
        return None
    cfg = json.loads((wd / "config.json").read_text())
    step = 0
    if (wd / "metrics.jsonl").exists():
        for line in (wd / "metrics.jsonl").read_text().splitlines():
            try:
                step = max(step, int(json.loads(line).get("step", 0)))
            except (ValueError, json.JSONDecodeError):
                pass
    return {"step": step, "steps_target": int(cfg["train"]["steps"])}


# ------------------------------------------------------------------------------ forecasts
def recipe_run(workdir: Path, tag: str, recipe: str, data_dir: Path, quick: bool, members: MemberRuns):
    """The restored run of ``recipe`` at ``tag`` with the recipe's eval keys (MLP included)."""
    base = RECIPES[recipe][1]
    run = members.get(str(run_dir(workdir, tag, base)))
    runs = workdir / "runs" / tag
    name = RECIPE_EVAL[recipe]
    eval_cfg = config_lib.copy_config(V.run_config(name, [], runs=runs).eval)
    eval_cfg.mlp_workdir = str(runs / MLP) if (runs / MLP / "config.json").exists() else ""
    config = config_lib.copy_config(run.config)
    config.eval = eval_cfg
    return dataclasses.replace(run, config=config)


def first_step_test_start(st: dict) -> np.datetime64:
    """A station's test start under the first step's split (:data:`FIRST_STEP_FRACTIONS`)."""
    rng = (np.datetime64(st["first"], "s"), np.datetime64(st["last"], "s"))
    return block_boundaries(rng, "1h", FIRST_STEP_FRACTIONS, ())[1]


def unscored_block(w, sel, st: dict, horizons) -> tuple[np.ndarray, int, str]:
    """Fold windows of one station (``sel``) whose every target is before the first step's
    test start; and the fog hours of that block (distinct target hours < 1000 m), its end."""
    end = first_step_test_start(st)
    last_target = w.times + np.timedelta64(max(horizons), "h")
    keep = sel & (last_target <= end)
    hours = [w.times[keep] + np.timedelta64(h, "h") for h in horizons]
    fog = np.unique(np.concatenate([t[w.y[keep, j] < THRESHOLD] for j, t in enumerate(hours)]))
    return keep, int(len(fog)), str(end)


def station_forecasts(run, members: MemberRuns, tag: str, fold: str = "") -> list[dict]:
    """Per station of ``run``'s test split: its windows (no inputs), forecasts, hazy starts,
    fog hours of the test block and the split's dates. In a fold, only the block before the
    first step's test start (:func:`unscored_block`)."""
    task = run.task
    w = task.split("test")
    fc = {"model": ev.model_forecast(run, "test", members)}
    fc.update({k: {"value": v, "event": None} for k, v in ev.baseline_forecasts(task, "test").items()})
    mlp = ev.mlp_forecast(run, "test", members)
    if mlp is not None:
        fc["mlp"] = mlp
    hazy = task.data.hazy("test")
    per = task.data.report.get("per_station", {})
    out = []
    for station in sorted(set(w.station.tolist())):
        sel = w.station == station
        st = per.get(station, {})
        fog_hours, block_end = int(st.get("fog_hours", {}).get("test", -1)), st.get("last")
        if fold:
            sel, fog_hours, block_end = unscored_block(w, sel, st, task.contract.horizon_steps)
        label = f"{tag}:{station}"
        sub = StationWindows(np.zeros((int(sel.sum()), 0, 0), np.float32), w.y[sel], w.start_vis[sel],
                             w.times[sel], np.full(int(sel.sum()), label))
        out.append({"station": label, "windows": sub, "hazy": hazy[sel],
                    "fc": {k: {"value": f["value"][sel], "event": None if f["event"] is None else f["event"][sel]}
                           for k, f in fc.items()},
                    "fog_hours_test": fog_hours, "test_start": st.get("test_start"), "last": block_end,
                    "cap_m": float(task.contract.visibility_cap_m), "features": list(task.features),
                    "cut": None if "cut" not in fc["model"] else np.asarray(fc["model"]["cut"]).tolist()})
    return out


def concat(parts: list[dict]) -> dict:
    w = [p["windows"] for p in parts]
    win = StationWindows(np.zeros((sum(len(x) for x in w), 0, 0), np.float32), np.concatenate([x.y for x in w]),
                         np.concatenate([x.start_vis for x in w]), np.concatenate([x.times for x in w]),
                         np.concatenate([x.station for x in w]))
    names = set.intersection(*[set(p["fc"]) for p in parts])
    fc = {}
    for k in names:
        ev_ = [p["fc"][k]["event"] for p in parts]
        fc[k] = {"value": np.concatenate([p["fc"][k]["value"] for p in parts]),
                 "event": None if any(e is None for e in ev_) else np.concatenate(ev_)}
    return {"windows": win, "hazy": np.concatenate([p["hazy"] for p in parts]), "fc": fc}


def score(part: dict) -> dict:
    kw = dict(thresholds=(THRESHOLD,), event_threshold=THRESHOLD, max_lag=6, step="1h")
    res = scores.score_all(part["fc"], part["windows"], hazy=part["hazy"], **kw)
    res["bootstrap"] = station_scores.bootstrap_vs_persistence(part["fc"], part["windows"], (THRESHOLD,), THRESHOLD)
    return summarize(res)


def _gain(model, ref) -> list:
    m, r = np.asarray(model, float), np.asarray(ref, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (100.0 * (1.0 - m / r)).tolist()


def summarize(res: dict) -> dict:
    """The table's numbers (gains positive = model better)."""
    t = scores.thr_name(THRESHOLD)
    out = {"windows": res["windows"], "forecasters": {}}
    for f in ("model", "persistence", "climatology", "mlp"):
        if f in res:
            r = res[f]
            out["forecasters"][f] = {k: r[k] for k in ("rmse", "mae")} | {
                k: r[f"{k}_{t}"] for k in ("csi", "pod", "far", "hits", "misses", "false_alarms")}
    p = res["persistence"]
    out["fog_events"] = [int(h + m) for h, m in zip(p[f"hits_{t}"], p[f"misses_{t}"])]
    for ref in ("persistence", "mlp"):
        if ref in res:
            out[f"gain_vs_{ref}"] = {k: _gain(res["model"][k], res[ref][k]) for k in ("rmse", "mae")}
    out["hazy_rmse_gain_vs_persistence"] = _gain(res["model/hazy"]["rmse"], res["persistence/hazy"]["rmse"])
    b = res["bootstrap"]
    out["bootstrap"] = {"days": b["days"], "resamples": b["resamples"],
                        "rmse_gain": [-v for v in b["rmse_change"]],
                        "rmse_gain_q05": [-v for v in b["rmse_change_q95"]],
                        "rmse_gain_q95": [-v for v in b["rmse_change_q05"]],
                        "csi_diff": b[f"csi_diff_{t}"], "csi_diff_q05": b[f"csi_diff_{t}_q05"],
                        "csi_diff_q95": b[f"csi_diff_{t}_q95"], "p_not_better": b[f"p_not_better_{t}"]}
    return out


def aim_station(s: dict) -> dict:
    m, p = s["forecasters"]["model"], s["forecasters"]["persistence"]
    csi_ok = [bool(np.nan_to_num(m["csi"][j], nan=-1) >= np.nan_to_num(p["csi"][j], nan=-1)) for j in (1, 2)]
    rmse_ok = [bool(g > 0) for g in s["gain_vs_persistence"]["rmse"]]
    return {"csi_ge_persistence_3h_6h": csi_ok, "rmse_gain_gt0": rmse_ok, "met": all(csi_ok) and all(rmse_ok)}


# ------------------------------------------------------------------------------ tables
def _f(v, fmt="{:+.1f}"):
    return "n/a" if v is None or not np.isfinite(v) else fmt.format(v)


def _iv(b, key, j, fmt):
    return f"{_f(b[key][j], fmt)} [{_f(b[key + '_q05'][j], fmt)}, {_f(b[key + '_q95'][j], fmt)}]"


def tables(out: dict) -> str:
    lines = []
    for recipe, r in out["recipes"].items():
        rows = [(k, s) for k, s in r["stations"].items()] + ([("pooled", r["pooled"])] if r.get("pooled") else [])
        if not rows:
            continue
        lines += [f"### {RECIPE_NAMES[recipe]}{' (PARTIAL: ' + r['partial'] + ')' if r.get('partial') else ''}", "",
                  "Gains: 100 (1 - model/reference) %, positive = model better. CSI/POD/FAR < 1000 m. "
                  "Bootstrap: station-day blocks, 5-95 %.", "",
                  "| station | fog h (test) | h | windows | events | RMSE gain vs pers [5-95] | MAE gain vs pers "
                  "| RMSE gain vs MLP | MAE gain vs MLP | hazy RMSE gain vs pers | CSI/POD/FAR model "
                  "| CSI/POD/FAR pers | CSI diff [5-95] |", "|" + "---|" * 13]
        for name, s in rows:
            fm, fp = s["forecasters"]["model"], s["forecasters"]["persistence"]
            b = s["bootstrap"]
            for j, h in enumerate(HORIZONS):
                gm = s.get("gain_vs_mlp", {})
                cells = [name, str(s.get("fog_hours_test", "")), f"+{h}", str(fm["n"][j]) if "n" in fm else
                         str(s["windows"]["n"]), str(s["fog_events"][j]),
                         _iv(b, "rmse_gain", j, "{:+.1f}"), _f(s["gain_vs_persistence"]["mae"][j]),
                         _f(gm["rmse"][j]) if gm else "n/a", _f(gm["mae"][j]) if gm else "n/a",
                         _f(s["hazy_rmse_gain_vs_persistence"][j]),
                         "/".join(_f(fm[k][j], "{:.3f}") for k in ("csi", "pod", "far")),
                         "/".join(_f(fp[k][j], "{:.3f}") for k in ("csi", "pod", "far")),
                         _iv(b, "csi_diff", j, "{:+.3f}")]
                lines.append("| " + " | ".join(cells) + " |")
        lines += ["", "Aim (stations with >= 100 fog hours in the test block: CSI >= persistence at +3/+6 h and "
                  "RMSE gain > 0 at every horizon; pooled RMSE gain >= +5/+15/+25 %):", ""]
        for name, a in r["aim"]["stations"].items():
            lines.append(f"- {name}: CSI >= persistence +3/+6 h {a['csi_ge_persistence_3h_6h']}, RMSE gain > 0 "
                         f"+1/+3/+6 h {a['rmse_gain_gt0']} -> {'met' if a['met'] else 'NOT met'}")
        if r["aim"].get("pooled") is not None:
            pa = r["aim"]["pooled"]
            lines.append(f"- pooled RMSE gain {['%+.1f' % v for v in pa['rmse_gain']]} vs >= +5/+15/+25: "
                         f"{pa['ok']} -> {'met' if pa['met'] else 'NOT met'}")
        lines.append("")
    lines += ["### Runs", "", "| file | run | step / target | train s | capped |", "|---|---|---|---|---|"]
    for key, st in out["runs"].items():
        tag, run = key.split("/")
        lines.append(f"| {tag} | {run} | {st['step']}/{st['steps_target']} | {st.get('train_s', '')} | "
                     f"{st.get('capped', '')} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ main
def evaluate_all(workdir: Path, tags: list[str], data_dir: Path, quick: bool, fold: str = "",
                 recipes=tuple(RECIPES)) -> dict:
    members = MemberRuns()
    runs = {}
    train_log = {}
    if (workdir / "train_log.jsonl").exists():
        for line in (workdir / "train_log.jsonl").read_text().splitlines():
            i = json.loads(line)
            train_log[f"{i['file']}/{i['run']}"] = i
    for tag in tags:
        for run in (MLP,) + VALUE_RUNS + VALUE16_RUNS + FOG_RUNS:
            st = run_state(workdir, tag, run)
            if st is not None:
                runs[f"{tag}/{run}"] = st | {k: train_log.get(f"{tag}/{run}", {}).get(k) for k in ("train_s", "capped")}
    out = {"protocol": "see experiments/visibility_stations.py docstring", "quick": quick, "runs": runs,
           "fold": fold, "fractions": list(FOLDS[fold]), "recipes": {}}
    for recipe in recipes:
        needed = RECIPES[recipe][0]
        parts, partial = [], []
        rr = {"stations": {}, "pooled": None, "aim": {"stations": {}, "pooled": None}, "skipped": []}
        for tag in tags:
            need = [n for n in needed if n != MLP]
            states = [runs.get(f"{tag}/{n}") for n in need]
            if any(s is None for s in states):
                rr["skipped"].append(tag)
                continue
            short = [f"{tag}/{n} {s['step']}/{s['steps_target']}" for n, s in zip(need, states)
                     if s["step"] < s["steps_target"]]
            partial += short
            run = recipe_run(workdir, tag, recipe, data_dir, quick, members)
            for part in station_forecasts(run, members, tag, fold):
                s = score(part)
                s.update({k: part[k] for k in ("fog_hours_test", "test_start", "last", "cap_m", "features", "cut")})
                rr["stations"][part["station"]] = s
                parts.append(part)
                if part["fog_hours_test"] >= AIM_FOG_HOURS:
                    rr["aim"]["stations"][part["station"]] = aim_station(s)
        if parts:
            rr["pooled"] = score(concat(parts)) | {"stations": [p["station"] for p in parts],
                                                   "fog_hours_test": sum(p["fog_hours_test"] for p in parts)}
            g = rr["pooled"]["gain_vs_persistence"]["rmse"]
            ok = [bool(v >= a) for v, a in zip(g, AIM_POOLED)]
            rr["aim"]["pooled"] = {"rmse_gain": g, "ok": ok, "met": all(ok)}
        if rr["skipped"]:
            partial.append("not scored (runs missing): " + ", ".join(rr["skipped"]))
        rr["partial"] = "; ".join(partial) + ("; --quick" if quick else "")
        if quick and not partial:
            rr["partial"] = "--quick"
        out["recipes"][recipe] = rr
    return out


def list_splits(tags: list[str], data_dir: Path, fold: str = "") -> None:
    for tag in tags:
        config = run_config(PAPER, tag, data_dir, False, fold)
        t0 = time.time()
        task = vis.make_task(config)
        for st, s in task.data.report.get("per_station", {}).items():
            print(f"{tag}:{st}: {s['first']} .. {s['last']}, test from {s['test_start']}, windows {s['windows']}, "
                  f"fog hours {s['fog_hours']} ({time.time() - t0:.0f} s)", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, default=REPO / "experiments" / "out" / "vis_stations")
    p.add_argument("--stations", default=",".join(FILES), help=f"comma-separated files: {', '.join(FILES)}")
    p.add_argument("--recipes", default="paper,ensemble", help="recipes to train and score (paper: mlp8 + lstm8; "
                   "ensemble: lstm8 seeds 0-2 + fog16 seeds 0-2; ensemble_v16: lstm16 seeds 0-2 + fog16 seeds "
                   "0-2), in this order, all stations of one recipe first; paper is always scored")
    p.add_argument("--quick", action="store_true", help="20 steps per run (smoke test; not the recipe)")
    p.add_argument("--max-seconds", type=float, default=0.0, help="wall-clock cap per training run (0: none)")
    p.add_argument("--score-only", action="store_true", help="train nothing; score the runs that exist")
    p.add_argument("--train-only", action="store_true", help="train, do not score")
    p.add_argument("--list", action="store_true", help="print each station's split and fog hours; nothing else")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR)
    p.add_argument("--fold", default="", choices=sorted(FOLDS), help="'' = the first step's split; R = the "
                   "rolling-origin fold of the 'then improve' step (train 0-50 %%, scored 60-80 %%)")
    args = p.parse_args(argv)
    tags = [t for t in args.stations.split(",") if t]
    unknown = [t for t in tags if t not in FILES]
    if unknown:
        raise SystemExit(f"unknown stations {unknown} (known: {', '.join(FILES)})")
    if args.list:
        list_splits(tags, args.data_dir, args.fold)
        return 0
    args.workdir.mkdir(parents=True, exist_ok=True)
    if not args.score_only:
        for recipe in [r for r in args.recipes.split(",") if r]:
            for tag in tags:
                for run in RECIPES[recipe][0]:
                    train_run(args.workdir, tag, run, args.data_dir, args.quick, args.max_seconds, args.fold)
    if args.train_only:
        return 0
    recipes = [r for r in RECIPES if r in args.recipes.split(",") or r == "paper"]
    out = evaluate_all(args.workdir, tags, args.data_dir, args.quick, args.fold, recipes)
    out["command"] = " ".join(sys.argv)
    (args.workdir / "results.json").write_text(json.dumps(metrics.json_safe(out), indent=2))
    text = tables(out)
    (args.workdir / "results.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
