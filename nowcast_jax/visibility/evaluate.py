"""Evaluation of a restored visibility run: the model vs persistence, climatology and an MLP.

The CLI's hooks: :func:`evaluate` (``nowcast-jax evaluate``) and :func:`format_report`.
What is compared is chosen by ``config.eval`` (see ``docs/visibility.md``):

* the model: its value head, averaged with the runs of ``eval.ensemble_workdirs``, or the
  mean value of ``eval.value_workdirs`` (:mod:`nowcast_jax.visibility.members`); the event
  by ``eval.event_source``: ``"value"`` (value below the threshold) or ``"classifier"``
  (the auxiliary head's probability, ensemble-averaged, above the cut of
  :func:`nowcast_jax.visibility.events.classifier_cut`, reported as
  ``results["model"]["classifier_prob"]``);
* persistence (last observed visibility) and climatology (training mean per station and
  UTC hour of the valid time);
* ``eval.mlp_workdir``: that MLP (same horizons and step, else an error; with other
  features or history its windows are matched by station and time, and all forecasters are
  then scored on the windows every one of them forecasts, counted in ``results["windows"]``).

Scores: :mod:`nowcast_jax.visibility.scores`; per station (``results["per_station"]``, when
the split holds several stations) and the day-block bootstrap of the model vs persistence
(``results["bootstrap"]``, and per station): :mod:`nowcast_jax.visibility.station_scores`;
figures: :mod:`nowcast_jax.visibility.plots`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nowcast_jax.visibility import plots
from nowcast_jax.visibility import scores, station_scores
from nowcast_jax.visibility.events import classifier_cut, decide_events
from nowcast_jax.visibility.members import MemberRuns, member_forecasts
from nowcast_jax.visibility.forecast import forecast_windows


def evaluate(restored, split: str = "test", out_dir=None, members: MemberRuns | None = None) -> dict:
    """Scores of the model and the baselines on ``split``; see
    :func:`nowcast_jax.visibility.scores.score_all` for the layout. With ``out_dir`` (or
    ``eval.plot_dir``) also writes the PNG plots and ``report_<split>.md``. ``members``
    caches the other runs ``config.eval`` names (restored on first use)."""
    members = members if members is not None else MemberRuns()
    task, ec = restored.task, restored.config.eval
    w = task.split(split)
    fc = {"model": model_forecast(restored, split, members)}
    fc.update({k: {"value": v, "event": None} for k, v in baseline_forecasts(task, split).items()})
    mlp = mlp_forecast(restored, split, members)
    if mlp is not None:
        fc["mlp"] = mlp
    kw = dict(thresholds=tuple(float(t) for t in ec.thresholds_m), event_threshold=task.threshold_m,
              max_lag=int(ec.max_lag), step=task.contract.step)
    results = scores.score_all(fc, w, hazy=task.data.hazy(split), **kw)
    results["bootstrap"] = station_scores.bootstrap_vs_persistence(fc, w, kw["thresholds"], task.threshold_m)
    if len(set(w.station.tolist())) > 1:
        results["per_station"] = station_scores.per_station(fc, w, hazy=task.data.hazy(split), **kw)
    if "cut" in fc["model"]:
        results["model"]["classifier_prob"] = np.asarray(fc["model"]["cut"], np.float64).tolist()
    out_dir = out_dir or (str(ec.get("plot_dir", "") or "") or None)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        plots.plot_event(fc, w, task.horizons_hours, task.contract.step, out / f"event_{split}.png")
        plots.plot_lag_correlation(results, task.horizons_hours, out / f"lag_correlation_{split}.png")
        (out / f"report_{split}.md").write_text(format_report(results, restored) + "\n")
    return results


def format_report(results: dict, restored) -> str:
    """Paper-style markdown tables (Tables 1-2) of :func:`evaluate`'s results, then the
    per-station and pooled table with the day-block bootstrap intervals."""
    text = scores.score_tables(results, restored.task.horizons_hours)
    if "bootstrap" not in results:   # results of an older evaluate
        return text
    return text + "\n" + station_scores.station_table(results, restored.task.horizons_hours,
                                                      restored.task.threshold_m)


# ------------------------------------------------------------------------------ forecasters
def baseline_forecasts(task, split: str) -> dict:
    """``{"persistence": [N, H], "climatology": [N, H]}`` in metres."""
    w = task.split(split)
    h = len(task.horizons_hours)
    clim = scores.diurnal_climatology(task.split("train"))
    return {"persistence": np.repeat(w.start_vis[:, None].astype(np.float64), h, axis=1),
            "climatology": scores.diurnal_climatology_forecast(clim, w, task.horizons_hours)}


def event_prob(run, split: str, members: MemberRuns) -> np.ndarray:
    """``[N, H]`` below-threshold probability of ``split``: the run's classifier, averaged
    with those of ``eval.ensemble_workdirs`` (a seed ensemble) when set."""
    probs = [forecast_windows(run.task.apply_jit, run.task.contract, run.params, run.task.split(split).x)["prob"]]
    probs += [m["prob"] for m in member_forecasts(run, "ensemble_workdirs", split, members)]
    if any(p is None for p in probs):
        raise ValueError("every eval.ensemble_workdirs member needs the classifier head (loss.aux_weight > 0)")
    return np.mean(probs, axis=0)


def model_cut(run, members: MemberRuns) -> np.ndarray:
    """The run's classifier cut (:func:`~nowcast_jax.visibility.events.classifier_cut`),
    calibrated on its ensemble's training probabilities when ``eval.classifier_prob <= 0``."""
    train = run.task.split("train")
    return classifier_cut(run.config.eval, lambda: event_prob(run, "train", members), train.y,
                          train.start_vis, run.task.threshold_m)


def model_forecast(run, split: str, members: MemberRuns | None = None) -> dict:
    """The run's forecast of ``split``: ``value [N, H]`` m and ``event [N, H]`` bool (below
    ``loss.threshold_m``) when the classifier decides the event, else None (and ``cut``).

    ``value``: the model's value head averaged with those of ``eval.ensemble_workdirs``; or,
    when ``eval.value_workdirs`` is set, the mean of those runs' value heads alone (e.g.
    plain-MSE LSTMs, so the classifier's aux loss cannot cost RMSE)."""
    members = members if members is not None else MemberRuns()
    task, w = run.task, run.task.split(split)
    values = [m["value"] for m in member_forecasts(run, "value_workdirs", split, members)]
    if not values:
        values = [forecast_windows(task.apply_jit, task.contract, run.params, w.x)["value"]]
        values += [m["value"] for m in member_forecasts(run, "ensemble_workdirs", split, members)]
    value = np.mean(values, axis=0)
    if str(run.config.eval.event_source) != "classifier":
        return {"value": value, "event": None}
    cut = model_cut(run, members)
    prob = event_prob(run, split, members)
    return {"value": value, "event": decide_events(prob, w.start_vis, cut, task.threshold_m), "cut": cut}


def mlp_forecast(run, split: str, members: MemberRuns) -> dict | None:
    """The MLP of ``eval.mlp_workdir`` on ``run``'s ``split`` windows, or None."""
    workdir = str(run.config.eval.get("mlp_workdir", "") or "")
    if not workdir:
        return None
    mlp = members.get(workdir)
    task, other = run.task, mlp.task
    if tuple(other.horizons_hours) != tuple(task.horizons_hours) or other.contract.step != task.contract.step:
        raise ValueError(f"eval.mlp_workdir {workdir} forecasts horizons {list(other.horizons_hours)} h on "
                         f"a {other.contract.step} grid, this model {list(task.horizons_hours)} h on a "
                         f"{task.contract.step} grid; the MLP can only be compared on the same horizons and step")
    mine = task.split(split)
    if other.features == task.features and other.history == task.history:
        # the same inputs: this run's raw windows, scaled by the MLP's own contract
        x = other.contract.model_inputs(task.contract.scaler.inverse_transform(mine.x))
        fc = forecast_windows(other.apply_jit, other.contract, mlp.params, x)
        event = None
        if str(mlp.config.eval.event_source) == "classifier":
            event = decide_events(fc["prob"], mine.start_vis, model_cut(mlp, members), other.threshold_m)
        return {"value": fc["value"], "event": event}
    # other inputs (e.g. 6 vs 8 factors): the MLP's own windows, matched by (station, time);
    # windows it lacks are NaN, and score_all then scores every forecaster on the shared rest
    fc = model_forecast(mlp, split, members)
    theirs = other.split(split)
    return scores.align_forecast(fc, theirs.station, theirs.times, mine.station, mine.times)
