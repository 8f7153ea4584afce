"""Scaling of the station pipeline's last stage: the min-max input scaler and the target
transform, both fitted on the training split (numpy only; the target transform also takes
``jax.numpy`` as ``xp``). Both are frozen and JSON-able (``to_dict`` / ``from_dict``): they
are part of the fitted contract (:mod:`nowcast_jax.visibility.preprocess`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TARGET_TRANSFORMS = ("none", "log")


@dataclass(frozen=True, eq=False)
class MinMaxScaler:
    """Per-feature min-max scaling to [0, 1] on the data it was fitted on.

    Fit it on the training split only; other splits may then fall outside [0, 1].
    A constant feature (``max == min``) gets scale 1, so it maps to 0 without dividing by
    zero. ``min`` and ``max``: ``[F]`` float64, read-only.
    """

    features: tuple
    min: np.ndarray
    max: np.ndarray

    def __post_init__(self):
        for name in ("min", "max"):
            value = np.array(getattr(self, name), dtype=np.float64)
            value.setflags(write=False)
            object.__setattr__(self, name, value)
        object.__setattr__(self, "features", tuple(self.features))

    @classmethod
    def fit(cls, x: np.ndarray, features) -> "MinMaxScaler":
        """Fit on ``x [..., F]`` (NaN ignored; every feature needs one finite value)."""
        flat = np.asarray(x, dtype=np.float64).reshape(-1, np.shape(x)[-1])
        if flat.shape[1] != len(features):
            raise ValueError(f"x has {flat.shape[1]} features, names give {len(features)}")
        empty = [f for f, ok in zip(features, np.isfinite(flat).any(axis=0)) if not ok]
        if empty:
            raise ValueError(f"cannot fit the scaler: no finite training values for {empty}")
        return cls(tuple(features), np.nanmin(flat, axis=0), np.nanmax(flat, axis=0))

    @property
    def scale(self) -> np.ndarray:
        """``[F]`` ``max - min``, with 1 where that is 0."""
        span = self.max - self.min
        return np.where(span > 0, span, 1.0)

    def transform(self, x: np.ndarray) -> np.ndarray:
        """``x [..., F]`` physical -> scaled, float64."""
        return (np.asarray(x, np.float64) - self.min) / self.scale

    def inverse_transform(self, z: np.ndarray) -> np.ndarray:
        """``z [..., F]`` scaled -> physical, float64 (exact inverse of :meth:`transform`)."""
        return np.asarray(z, np.float64) * self.scale + self.min

    def to_dict(self) -> dict:
        """JSON-able form (stored with checkpoints)."""
        return {"kind": "minmax", "features": list(self.features),
                "min": [float(v) for v in self.min], "max": [float(v) for v in self.max]}

    @classmethod
    def from_dict(cls, d: dict) -> "MinMaxScaler":
        """Inverse of :meth:`to_dict`."""
        if d.get("kind", "minmax") != "minmax":
            raise ValueError(f"not a min-max scaler: kind={d.get('kind')!r}")
        return cls(tuple(d["features"]), np.asarray(d["min"], np.float64), np.asarray(d["max"], np.float64))


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
