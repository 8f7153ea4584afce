"""Load and run an exported forecaster with nothing but ``jax`` and ``json``.

An artifact is two files written by :func:`nowcast_jax.engine.export.export_forecaster`::

    forecaster.jaxexport        serialized ``jax.export.Exported`` (StableHLO + weights)
    forecaster.jaxexport.json   the sidecar: input/output spec, units, time step, ...

Usage (no model code needed, not even this package: the module imports only the standard
library, numpy and jax, so it can be copied next to the artifact and used stand-alone)::

    from nowcast_jax.artifact import load_artifact
    forecast, sidecar = load_artifact("forecaster.jaxexport")
    y = forecast(x)          # x raw units, e.g. [b, J, H, W, 1] mm/h -> [b, K, H, W, 1] mm/h

Sidecar keys always present: ``format``, ``inputs`` and ``outputs`` (lists of
``{"name", "shape", "dtype", ...}`` with ``"b"`` for the symbolic batch dimension; inputs
may also carry ``units``), ``platforms``, ``jax_version``, ``created``. The exporter adds
whatever the task gave (``units``, ``time_step_minutes``, ``normalisation``, ...).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

FORMAT = "nowcast_jax.engine.export/1"
SIDECAR_SUFFIX = ".json"


class ServeError(ValueError):
    """New input data does not fit the forecaster's sidecar; the message says why and what fits."""


class ArtifactError(ValueError):
    """The artifact or its inputs do not fit; the message says what and how to fix it."""


def sidecar_path(path: str | Path) -> Path:
    """``forecaster.jaxexport`` -> ``forecaster.jaxexport.json``."""
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def read_sidecar(path: str | Path) -> dict:
    """The sidecar dict of the artifact at ``path`` (the artifact file or its ``.json``)."""
    path = Path(path)
    side = path if path.name.endswith(SIDECAR_SUFFIX) else sidecar_path(path)
    if not side.is_file():
        raise ArtifactError(f"sidecar {side} not found (it is written next to the artifact by 'nowcast-jax export')")
    data = json.loads(side.read_text(encoding="utf-8"))
    if data.get("format") != FORMAT:
        raise ArtifactError(f"{side}: format {data.get('format')!r} is not {FORMAT!r}")
    return data


def check_inputs(sidecar: dict, args) -> list[np.ndarray]:
    """Check positional inputs against the sidecar's spec; return them as numpy arrays.

    Every input must have the recorded rank, the recorded non-batch sizes, and one shared
    batch size ``b`` >= 1; dtypes are cast to the recorded dtype (float64 -> float32).
    """
    specs = sidecar["inputs"]
    if len(args) != len(specs):
        names = ", ".join(s.get("name", f"input{i}") for i, s in enumerate(specs))
        raise ArtifactError(f"the forecaster takes {len(specs)} input(s) ({names}); got {len(args)}")
    out, batch = [], None
    for i, (x, spec) in enumerate(zip(args, specs)):
        name = spec.get("name", f"input{i}")
        x = np.asarray(x)
        want = spec["shape"]
        if x.ndim != len(want):
            raise ArtifactError(f"{name}: expected rank {len(want)} {_fmt(want)}, got shape {tuple(x.shape)}")
        for axis, (got, exp) in enumerate(zip(x.shape, want)):
            if isinstance(exp, str):
                if batch is None:
                    batch = got
                elif got != batch:
                    raise ArtifactError(f"{name}: batch size {got} differs from the other inputs' {batch}")
            elif got != exp:
                units = f" ({spec['units']})" if spec.get("units") else ""
                raise ArtifactError(f"{name}{units}: expected shape {_fmt(want)}, got {tuple(x.shape)} "
                                    f"(axis {axis} is {got}, the model was exported for {exp})")
        if batch == 0:
            raise ArtifactError(f"{name}: empty batch")
        if not np.issubdtype(x.dtype, np.number) and x.dtype != np.bool_:
            raise ArtifactError(f"{name}: dtype {x.dtype} is not numeric")
        out.append(x.astype(spec["dtype"], copy=False))
    return out


def _fmt(shape) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def load_artifact(path: str | Path, *, check: bool = True) -> tuple[Callable[..., Any], dict]:
    """Load ``path`` (written by ``export_forecaster``) -> ``(forecast, sidecar)``.

    ``forecast(*inputs)`` takes raw-unit arrays shaped like ``sidecar["inputs"]`` (any batch
    size) and returns the raw-unit outputs (a jax array, or the exported pytree of them).
    With ``check=True`` inputs are validated first (clear errors instead of XLA shape
    errors). Raises :class:`ArtifactError` when the file is missing or unreadable, or when
    this machine's backend is not one of the exported platforms.
    """
    import jax  # imported here so that reading a sidecar needs no jax

    path = Path(path)
    if path.name.endswith(SIDECAR_SUFFIX):
        path = path.with_name(path.name[: -len(SIDECAR_SUFFIX)])
    if not path.is_file():
        raise ArtifactError(f"artifact {path} not found")
    sidecar = read_sidecar(path)
    try:
        exported = jax.export.deserialize(bytearray(path.read_bytes()))
    except ImportError as err:
        raise ArtifactError(f"loading {path} needs the 'flatbuffers' package (pip install flatbuffers): {err}") from err
    except Exception as err:  # noqa: BLE001 - wrong file / incompatible serialization version
        raise ArtifactError(f"cannot deserialize {path} (written with jax {sidecar.get('jax_version')}, "
                            f"this is jax {jax.__version__}): {err}") from err
    backend = jax.default_backend()
    platform = {"gpu": "cuda"}.get(backend, backend)
    platforms = tuple(p.lower() for p in exported.platforms)
    if platform not in platforms:
        raise ArtifactError(f"{path} was exported for {platforms} but this machine runs {platform!r}; "
                            f"re-export with --platforms {','.join(platforms + (platform,))}")

    def forecast(*inputs):
        if check:
            inputs = check_inputs(sidecar, inputs)
        return exported.call(*inputs)

    forecast.exported = exported  # for introspection (in_avals, out_avals, mlir_module())
    forecast.__doc__ = (f"Exported forecaster: inputs {[_fmt(s['shape']) for s in sidecar['inputs']]} -> "
                        f"outputs {[_fmt(s['shape']) for s in sidecar['outputs']]} (raw units).")
    return forecast, sidecar
