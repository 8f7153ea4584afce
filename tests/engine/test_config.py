"""Config files with variants, typed overrides, JSON round trip."""

from __future__ import annotations

import pytest

from nowcast_jax.engine import config as config_lib
from nowcast_jax.engine.defaults import default_engine_config
from tests.engine_utils import TOY


def test_load_base_and_variants():
    base = config_lib.load_config(TOY)
    assert base.train.steps == 20 and base.train.optimizer.name == "adam"
    assert config_lib.load_config(TOY + ":rmsprop").train.optimizer.name == "rmsprop"
    assert config_lib.load_config(TOY + ":long").train.steps == 1_000_000
    with pytest.raises(config_lib.ConfigError, match="variant 'nope'"):
        config_lib.load_config(TOY + ":nope")


def test_bad_files(tmp_path):
    with pytest.raises(config_lib.ConfigError, match="not found"):
        config_lib.load_config(str(tmp_path / "missing.py"))
    (tmp_path / "nofn.py").write_text("x = 1\n")
    with pytest.raises(config_lib.ConfigError, match="no get_config"):
        config_lib.load_config(str(tmp_path / "nofn.py"))
    (tmp_path / "novar.py").write_text("import ml_collections\ndef get_config():\n    return ml_collections.ConfigDict()\n")
    assert config_lib.load_config(str(tmp_path / "novar.py")) == config_lib.ConfigDict()
    with pytest.raises(config_lib.ConfigError, match="takes no variant"):
        config_lib.load_config(str(tmp_path / "novar.py") + ":tiny")


def test_variant_file_can_import_its_base(tmp_path):
    (tmp_path / "base_cfg.py").write_text(
        "import ml_collections\ndef get_config():\n    return ml_collections.ConfigDict({'a': 1, 'b': 'x'})\n")
    (tmp_path / "child.py").write_text(
        "from base_cfg import get_config as base\n"
        "def get_config(variant=None):\n    c = base()\n    c.a = {'tiny': 2}.get(variant, 3)\n    return c\n")
    assert config_lib.load_config(str(tmp_path / "child.py:tiny")).a == 2
    assert config_lib.load_config(str(tmp_path / "child.py")).a == 3


def test_overrides_parse_to_the_existing_type():
    c = config_lib.apply_overrides(config_lib.load_config(TOY), [
        "--config.train.steps=7", "train.learning_rate=3", "train.optimizer.name=rmsprop",
        "checkpoint.async_save=false", "model.hidden=(4, 5)", "data.nan_steps=[2]"])
    assert c.train.steps == 7 and isinstance(c.train.learning_rate, float) and c.train.learning_rate == 3.0
    assert c.train.optimizer.name == "rmsprop" and c.checkpoint.async_save is False
    assert c.model.hidden == (4, 5) and c.data.nan_steps == (2,)


@pytest.mark.parametrize("item, message", [
    ("train.stepz=3", "unknown config key 'train.stepz' (did you mean train.steps"),
    ("trian.steps=3", "unknown config key 'trian'"),
    ("train.steps.x=3", "unknown config key 'train.steps.x'"),
    ("train.steps=3.5", "config key 'train.steps' expects int"),
    ("train.steps=true", "config key 'train.steps' expects int"),
    ("checkpoint.async_save=maybe", "config key 'checkpoint.async_save' expects bool"),
    ("model.hidden=(4, 'x')", "config key 'model.hidden' expects tuple"),
    ("train.steps", "not of the form --config.KEY=VALUE"),
])
def test_override_errors_name_the_key(item, message):
    with pytest.raises(config_lib.ConfigError) as err:
        config_lib.apply_overrides(config_lib.load_config(TOY), [item])
    assert message in str(err.value)


def test_overrides_do_not_touch_the_original():
    base = config_lib.load_config(TOY)
    config_lib.apply_overrides(base, ["train.steps=3"])
    assert base.train.steps == 20


def test_json_round_trip_keeps_types():
    c = config_lib.load_config(TOY)
    back = config_lib.from_json(config_lib.to_json(c))
    assert back == c and isinstance(back.model.hidden, tuple)
    assert config_lib.diff(c, back) == []
    c2 = config_lib.apply_overrides(c, ["train.steps=5"])
    assert config_lib.diff(c, c2) == ["train.steps: 20 -> 5"]


def test_unserialisable_value_is_named():
    c = default_engine_config()
    c.model = config_lib.ConfigDict({"act": object()})
    with pytest.raises(config_lib.ConfigError, match="model.act"):
        config_lib.to_json(c)


def test_engine_defaults_have_the_documented_keys():
    c = default_engine_config()
    for key in ["seed", "train.steps", "train.batch_size", "train.learning_rate", "train.optimizer.name",
                "train.schedule.name", "train.grad_clip_norm", "train.weight_decay",
                "train.max_consecutive_skips", "train.log_every_steps", "checkpoint.every_steps",
                "checkpoint.max_to_keep", "checkpoint.best_metric", "checkpoint.best_mode",
                "eval.every_steps", "eval.batches"]:
        node = c
        for part in key.split("."):
            node = node[part]
