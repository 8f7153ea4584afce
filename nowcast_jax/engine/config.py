"""Experiment configs: ``configs/NAME.py[:VARIANT]`` files, typed overrides, JSON round trip.

A config file is a Python module with ``get_config(variant=None)`` (or ``get_config()`` when
it has no variants) returning an ``ml_collections.ConfigDict``. Variants import the base
config and override keys; the file's folder is put on ``sys.path`` while it loads, so
``from precip_radar import get_config as base`` works from a sibling file.

Overrides are ``KEY=VALUE`` strings (the CLI's ``--config.KEY=VALUE`` with the prefix
removed). The key must exist and the value must parse to the existing value's type; both
errors name the key and are raised before anything trains.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import inspect
import json
import sys
from pathlib import Path
from typing import Any, Iterable

import ml_collections
from ml_collections import config_dict

ConfigDict = ml_collections.ConfigDict
_TUPLE_TAG = "__tuple__"


class ConfigError(ValueError):
    """A config file, key or value is wrong; the message names it."""


# --------------------------------------------------------------------------------- loading
def _split_spec(spec: str) -> tuple[Path, str | None]:
    """``"configs/a.py:tiny"`` -> ``(Path("configs/a.py"), "tiny")``."""
    path, sep, variant = str(spec).rpartition(":")
    if not sep or not path.endswith(".py"):
        return Path(spec), None
    return Path(path), variant or None


def _import_file(path: Path):
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    name = f"_nowcast_config_{path.stem}_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent.resolve()))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent.resolve()))
    return module


def load_config(spec: str) -> ConfigDict:
    """Load ``path/to/NAME.py`` or ``path/to/NAME.py:VARIANT`` into a ConfigDict."""
    path, variant = _split_spec(spec)
    module = _import_file(path)
    get_config = getattr(module, "get_config", None)
    if get_config is None:
        raise ConfigError(f"{path} has no get_config()")
    takes_variant = len(inspect.signature(get_config).parameters) > 0
    if variant is not None and not takes_variant:
        raise ConfigError(f"{path}: get_config() takes no variant, but ':{variant}' was given")
    try:
        config = get_config(variant) if takes_variant else get_config()
    except (KeyError, ValueError) as err:
        raise ConfigError(f"{path}: variant {variant!r}: {err}") from err
    if not isinstance(config, ConfigDict):
        raise ConfigError(f"{path}: get_config() returned {type(config).__name__}, expected ConfigDict")
    return config


# --------------------------------------------------------------------------------- overrides
def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("true", "1", "yes", "on"):
        return True
    if low in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _parse_value(text: str, current: Any, expected_type: type | None = None):
    """Parse ``text`` to the type of ``current`` (or ``expected_type`` when current is None)."""
    kind = expected_type if current is None else type(current)
    if kind is None or kind is type(None):
        return _literal(text)
    if kind is bool:
        return _parse_bool(text)
    if kind is int:
        value = _literal(text)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"not an int: {text!r}")
        return value
    if kind is float:
        value = _literal(text)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"not a float: {text!r}")
        return float(value)
    if kind is str:
        return text
    if kind in (tuple, list):
        value = _literal(text)
        if not isinstance(value, (tuple, list)):
            value = (value,) if text.strip() else ()
        if current:  # check elements against the first current element's type
            elem = type(current[0])
            value = [_parse_value(repr(v) if not isinstance(v, str) else v, current[0]) for v in value] \
                if elem in (bool, int, float, str) else list(value)
        return kind(value)
    if kind in (dict, ConfigDict):
        value = _literal(text)
        if not isinstance(value, dict):
            raise ValueError(f"not a dict: {text!r}")
        return ConfigDict(value) if kind is ConfigDict else value
    raise ValueError(f"cannot parse a value of type {kind.__name__} from the command line")


def _all_keys(config: ConfigDict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in config.items():
        full = f"{prefix}{key}"
        keys.append(full)
        if isinstance(value, ConfigDict):
            keys.extend(_all_keys(value, full + "."))
    return keys


def _unknown_key(config: ConfigDict, key: str) -> ConfigError:
    close = difflib.get_close_matches(key, _all_keys(config), n=3, cutoff=0.75)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return ConfigError(f"unknown config key {key!r}{hint}")


def _field_type(parent: ConfigDict, leaf: str):
    """The declared type of a None-valued field (placeholders keep one), else None."""
    try:
        ref = parent.get_ref(leaf)
        return ref.get_type()
    except Exception:  # noqa: BLE001 - plain None without a declared type
        return None


def _apply_override(config: ConfigDict, key: str, text: str) -> None:
    """Set ``config.<key>`` from the string ``text``, checking that key and type exist."""
    parts = key.split(".")
    node = config
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node, ConfigDict) or part not in node:
            raise _unknown_key(config, ".".join(parts[: i + 1]))
        node = node[part]
    leaf = parts[-1]
    if not isinstance(node, ConfigDict) or leaf not in node:
        raise _unknown_key(config, key)
    current = node[leaf]
    try:
        value = _parse_value(text, current, _field_type(node, leaf) if current is None else None)
    except ValueError as err:
        kind = type(current).__name__ if current is not None else "value"
        raise ConfigError(f"config key {key!r} expects {kind} (current value {current!r}): {err}") from err
    with node.unlocked():
        try:
            node[leaf] = value
        except TypeError as err:
            raise ConfigError(f"config key {key!r}: {err}") from err


def _parse_override(item: str) -> tuple[str, str]:
    """``"--config.a.b=3"`` or ``"a.b=3"`` -> ``("a.b", "3")``."""
    text = item[len("--config."):] if item.startswith("--config.") else item
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} is not of the form --config.KEY=VALUE")
    return key, value


def apply_overrides(config: ConfigDict, overrides: Iterable[str] | dict | None) -> ConfigDict:
    """Return a copy of ``config`` with ``KEY=VALUE`` overrides (or a {key: text} dict) applied."""
    out = copy_config(config)
    items = overrides.items() if isinstance(overrides, dict) else (_parse_override(o) for o in overrides or ())
    for key, value in items:
        _apply_override(out, key, value if isinstance(value, str) else repr(value))
    return out


def copy_config(config: ConfigDict) -> ConfigDict:
    """A deep, independent copy (field references resolved)."""
    return from_json(to_json(config))


# --------------------------------------------------------------------------------- JSON
def _encode(value, key: str = ""):
    if isinstance(value, (ConfigDict, dict)):
        return {str(k): _encode(v, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
    if isinstance(value, tuple):
        return {_TUPLE_TAG: [_encode(v, key) for v in value]}
    if isinstance(value, list):
        return [_encode(v, key) for v in value]
    if isinstance(value, config_dict.FieldReference):
        return _encode(value.get(), key)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy scalar
        return value.item()
    raise ConfigError(f"config key {key!r} holds a {type(value).__name__}, which cannot be stored as JSON")


def _decode(value):
    if isinstance(value, dict):
        if set(value) == {_TUPLE_TAG}:
            return tuple(_decode(v) for v in value[_TUPLE_TAG])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def to_dict(config: ConfigDict) -> dict:
    """JSON-able dict of the resolved config (tuples tagged so they come back as tuples)."""
    return _encode(config)


def from_dict(data: dict) -> ConfigDict:
    """Inverse of :func:`to_dict`."""
    return ConfigDict(_decode(data))


def to_json(config: ConfigDict, indent: int | None = 2) -> str:
    return json.dumps(to_dict(config), indent=indent, sort_keys=True)


def from_json(text: str) -> ConfigDict:
    return from_dict(json.loads(text))


def diff(a: ConfigDict, b: ConfigDict) -> list[str]:
    """Keys whose values differ between two configs (``"train.steps: 10 -> 20"``)."""
    fa, fb = _flatten(to_dict(a)), _flatten(to_dict(b))
    return [f"{k}: {fa.get(k, '<absent>')!r} -> {fb.get(k, '<absent>')!r}"
            for k in sorted(set(fa) | set(fb)) if fa.get(k, "<absent>") != fb.get(k, "<absent>")]


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and _TUPLE_TAG not in v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
