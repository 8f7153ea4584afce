"""Export a trained forecaster as a ``jax.export`` artifact plus a JSON sidecar.

The exported function must take and return RAW units (mm/h frames, physical station
features): normalisation, rain transforms and output links are baked into it, so the
artifact is usable without this package (see :mod:`nowcast_jax.artifact`)::

    from nowcast_jax.engine import export
    specs = [export.batch_spec((5, 64, 64, 1), "float32")]       # [b, J, H, W, C], b symbolic
    export.export_forecaster(fn, specs, {"units": "mm/h", "time_step_minutes": 5}, "f.jaxexport")
    # writes f.jaxexport (serialized jax.export.Exported) and f.jaxexport.json (sidecar)

Applications opt in with a hook ``export_spec(task, params) -> (fn, input_specs, sidecar)``;
see :func:`export_task` and ``nowcast-jax export``.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import numpy as np

from nowcast_jax.artifact import FORMAT, sidecar_path

DEFAULT_PLATFORMS = ("cpu",)
KNOWN_PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


class ExportError(ValueError):
    """The forecaster cannot be exported as asked (bad spec, platform, or missing export_spec)."""


def batch_specs(*shapes_and_dtypes: tuple[Sequence[int], Any], batch: str = "b") -> list[jax.ShapeDtypeStruct]:
    """Input specs with ONE shared symbolic batch dimension prepended to each shape.

    ``batch_specs(((5, 64, 64, 1), "float32"), ((5,), "float32"))`` ->
    ``[ShapeDtypeStruct([b, 5, 64, 64, 1]), ShapeDtypeStruct([b, 5])]``.
    """
    scope = jax.export.SymbolicScope()
    out = []
    for shape, dtype in shapes_and_dtypes:
        dims = ", ".join([batch, *(str(int(d)) for d in shape)])
        out.append(jax.ShapeDtypeStruct(jax.export.symbolic_shape(dims, scope=scope), np.dtype(dtype)))
    return out


def batch_spec(shape: Sequence[int], dtype: Any = "float32", batch: str = "b") -> jax.ShapeDtypeStruct:
    """One input spec ``[b, *shape]`` with a symbolic batch ``b`` (see :func:`batch_specs`)."""
    return batch_specs((shape, dtype), batch=batch)[0]


def _shape_json(shape) -> list:
    """Static dims as ints, symbolic ones as their name (``"b"``)."""
    out = []
    for d in shape:
        try:
            out.append(int(d))
        except Exception:  # noqa: BLE001 - a symbolic dimension
            out.append(str(d))
    return out


def _check_platforms(platforms: Sequence[str]) -> tuple[str, ...]:
    platforms = tuple(str(p).lower() for p in ([platforms] if isinstance(platforms, str) else platforms))
    bad = [p for p in platforms if p not in KNOWN_PLATFORMS]
    if not platforms or bad:
        raise ExportError(f"platforms must be a non-empty subset of {KNOWN_PLATFORMS}; got {platforms}")
    return platforms


def export_forecaster(fn: Callable[..., Any], input_specs: Sequence[jax.ShapeDtypeStruct], sidecar: dict,
                      out_path: str | Path, *, platforms: Sequence[str] = DEFAULT_PLATFORMS) -> Path:
    """Export ``fn(*inputs)`` and write ``out_path`` plus ``out_path + ".json"``.

    Args:
      fn: raw units in, raw units out; closes over the parameters (they become constants of
        the artifact). E.g. ``x [b, J, H, W, 1] mm/h -> [b, K, H, W, 1] mm/h``.
      input_specs: one ``jax.ShapeDtypeStruct`` per positional input, the batch dimension
        symbolic (build them with :func:`batch_specs`). A single spec may be given bare.
      sidecar: JSON-able metadata stored with the artifact (``units``, ``time_step_minutes``,
        ``normalisation``, ``task``, ...). ``sidecar["inputs"]`` / ``["outputs"]`` may be
        lists of dicts (``name``, ``units``, ...) merged into the recorded specs by position.
      out_path: the artifact file (conventionally ``*.jaxexport``).
      platforms: lowering platforms, e.g. ``("cpu", "cuda")``; the artifact runs on each.

    Returns the artifact path. The sidecar gets ``format``, ``inputs`` / ``outputs`` (shape
    with ``"b"`` for the batch, dtype), ``platforms``, ``jax_version`` and ``created``.
    """
    exported, meta = build(fn, input_specs, sidecar, platforms=platforms)
    text = json.dumps(meta, indent=2, sort_keys=True)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    tmp.write_bytes(exported.serialize())
    tmp.replace(out_path)
    sidecar_path(out_path).write_text(text + "\n", encoding="utf-8")
    return out_path


def build(fn: Callable[..., Any], input_specs: Sequence[jax.ShapeDtypeStruct], sidecar: dict, *,
          platforms: Sequence[str] = DEFAULT_PLATFORMS) -> tuple[jax.export.Exported, dict]:
    """``(exported, full sidecar)`` without writing files (``nowcast-jax predict --workdir``
    runs ``exported.call`` directly). Arguments as in :func:`export_forecaster`."""
    platforms = _check_platforms(platforms)
    if isinstance(input_specs, jax.ShapeDtypeStruct):
        input_specs = [input_specs]
    input_specs = list(input_specs)
    if not input_specs or not all(isinstance(s, jax.ShapeDtypeStruct) for s in input_specs):
        raise ExportError("input_specs must be jax.ShapeDtypeStruct(s); build them with export.batch_specs(...)")
    try:
        exported = jax.export.export(jax.jit(fn), platforms=platforms)(*input_specs)
    except Exception as err:  # noqa: BLE001 - re-raised with the spec for context
        shapes = [(_shape_json(s.shape), str(s.dtype)) for s in input_specs]
        raise ExportError(f"could not export the forecaster for inputs {shapes} on {platforms}: {err}") from err

    def records(avals, extra, prefix):
        extra = list(extra or [])
        if len(extra) > len(avals):
            raise ExportError(f"sidecar lists {len(extra)} {prefix}s but the function has {len(avals)}")
        out = []
        for i, aval in enumerate(avals):
            rec = {"name": f"{prefix}{i}" if len(avals) > 1 else prefix}
            rec.update(extra[i] if i < len(extra) else {})
            rec.update(shape=_shape_json(aval.shape), dtype=str(np.dtype(aval.dtype)))
            out.append(rec)
        return out

    meta = dict(sidecar)
    meta.update(format=FORMAT,
                inputs=records(exported.in_avals, sidecar.get("inputs"), "input"),
                outputs=records(exported.out_avals, sidecar.get("outputs"), "output"),
                platforms=list(platforms), jax_version=jax.__version__,
                created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    try:
        meta = json.loads(json.dumps(meta))
    except (TypeError, ValueError) as err:
        raise ExportError(f"sidecar is not JSON-able: {err}") from err
    return exported, meta


def export_task(export_spec: Callable, task, params, out_path: str | Path, *,
                platforms: Sequence[str] = DEFAULT_PLATFORMS, task_name: str = "", extra: dict | None = None) -> Path:
    """Export ``task``'s forecaster as its application describes it.

    ``export_spec(task, params) -> (fn, input_specs, sidecar)`` is the application's hook
    (e.g. ``nowcast_jax.visibility.serve.export_spec``): ``fn`` maps RAW-unit inputs (batch
    symbolic) to RAW-unit outputs with the fitted preprocessing baked in; the sidecar is
    JSON-able and should hold ``"kind"``, ``"units"``, ``"time_step_minutes"``, the fitted
    contract, and per-input ``"inputs": [{"name", "units"}]``. ``task_name`` and ``extra``
    (e.g. the checkpoint step and workdir) are added to the sidecar.
    """
    fn, input_specs, sidecar = forecaster_spec(export_spec, task, params, task_name, extra)
    return export_forecaster(fn, input_specs, sidecar, out_path, platforms=platforms)


def forecaster_spec(export_spec: Callable, task, params, task_name: str = "",
                    extra: dict | None = None) -> tuple[Callable[..., Any], list, dict]:
    """``export_spec(task, params)`` with ``"task"`` (``task_name``) and ``extra`` added to the sidecar."""
    fn, input_specs, sidecar = export_spec(task, params)
    sidecar = {"task": task_name or type(task).__name__, **dict(sidecar), **dict(extra or {})}
    return fn, input_specs, sidecar
