"""Typed configs from YAML and `key=value` overrides, with readable errors.

Every config is a dataclass. `build_config` checks unknown keys (with a "did you mean"),
types, and each dataclass's own `validate()` so a typo fails before any compute is spent.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from alignscope.errors import ConfigError, did_you_mean

T = TypeVar("T")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with the safe loader."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file '{path}' does not exist", "check the path passed to --config")
    if not path.is_file():
        raise ConfigError(f"config file '{path}' is not a file", "pass a YAML file to --config")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file '{path}' is not UTF-8 text (byte {e.start})", "save the YAML file as UTF-8") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file '{path}' is not valid YAML: {e}", "fix the YAML syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of keys to values, got {type(data).__name__}")
    return data


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Turn ['a.b=1', 'c=x'] into a nested dict; values are parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value", "write e.g. lr=1e-5 or train.beta=0.1")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override '{item}' has an empty key", "write e.g. lr=1e-5 or lora.r=16")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override '{item}': the value is not valid YAML ({getattr(e, 'problem', None) or e})",
                              "quote text values and close brackets, e.g. loss=[sigmoid,sft:0.2]") from None
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}' sets a sub-key of '{p}', which is already set to a value")
        node[parts[-1]] = value
    return out


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` wins key by key, recursing into mappings; an empty mapping (`map={}`) clears the key's."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and v and isinstance(out.get(k), dict) else v
    return out


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(
                f"'{where}' must be one of {list(args)}, got {value!r}" + did_you_mean(str(value), map(str, args))
            )
        return value
    if origin in (list, tuple):
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and origin is list:
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"'{where}' must be a list, got {value!r}")
        inner = args[0] if args else Any
        return [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"'{where}' must be a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, str) and hasattr(tp, "from_str"):
            return tp.from_str(value)
        if not isinstance(value, dict):
            raise ConfigError(f"'{where}' must be a mapping of options, got {value!r}")
        return build_config(tp, value, prefix=where + ".")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"'{where}' must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"'{where}' must be an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"'{where}' must be a number, got {value!r}")
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"'{where}' must be a number, got {value!r}") from None
        if not isinstance(value, (int, float)):
            raise ConfigError(f"'{where}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"'{where}' must be a string, got {value!r}")
        return str(value)
    return value


def build_config(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from a mapping: unknown keys, wrong types and invalid values raise ConfigError."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(
                f"unknown config key '{prefix}{key}'" + did_you_mean(key, fields),
                f"valid keys: {', '.join(sorted(fields))}",
            )
        kwargs[key] = _coerce(value, hints[key], prefix + key)
    try:
        obj = cls(**kwargs)
    except TypeError as e:
        missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        raise ConfigError(f"missing required config key(s) {[prefix + m for m in missing]}" if missing else str(e)) from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
