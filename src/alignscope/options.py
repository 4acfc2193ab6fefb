"""Typed options: YAML and `key=value` overrides become validated config dataclasses.

Every config field is declared with `opt(default, help, ...)`: its one-line description (shown by
`--help`) and its allowed range live beside it, and `Options.__post_init__` checks types' ranges
and the dataclass's own `validate()` however the config is built (from YAML, overrides or code),
so a typo or an out-of-range value fails before any compute is spent.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from alignscope.errors import ConfigError, closest, did_you_mean, edit_distance

T = TypeVar("T")


def opt(default: Any, help: str, *, ge: float | None = None, gt: float | None = None,
        le: float | None = None, lt: float | None = None) -> Any:
    """A config field with its description and allowed range; list and dict defaults are copied per instance."""
    meta = {"help": help, "bounds": (ge, gt, le, lt)}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _num(x: float) -> str:
    """A bound as written: whole numbers in full (2^32 is 4294967296, not 4.29497e+09), others in short form."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"


def range_text(f: dataclasses.Field) -> str:
    """'>= 0', '(0, 1]', ... for a field declared with bounds; '' when it has none."""
    ge, gt, le, lt = f.metadata.get("bounds", (None, None, None, None))
    low = f"[{_num(ge)}" if ge is not None else f"({_num(gt)}" if gt is not None else None
    high = f"{_num(le)}]" if le is not None else f"{_num(lt)})" if lt is not None else None
    if low and high:
        return f"in {low}, {high}"
    if low:
        return (">= " if ge is not None else "> ") + low[1:]
    if high:
        return ("<= " if le is not None else "< ") + high[:-1]
    return ""


def check_bounds(obj: Any, prefix: str = "") -> None:
    """Refuse NaN/inf and values outside each field's declared range (None passes where the type allows it)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        where = prefix + f.name
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"'{where}' must be a finite number, got {value}", f"give a number ({f.metadata.get('help', '')})")
        ge, gt, le, lt = f.metadata.get("bounds", (None, None, None, None))
        if (ge is not None and value < ge) or (gt is not None and value <= gt) or (le is not None and value > le) or (lt is not None and value >= lt):
            raise ConfigError(f"'{where}' must be {range_text(f)}, got {value}", f"choose a value {range_text(f)} ({f.metadata['help']})")


class Options:
    """Base of every config dataclass: checks bounds, then `validate()`, whenever an instance is made."""

    def __post_init__(self) -> None:
        check_bounds(self)
        self.validate()

    def validate(self) -> None:
        """Cross-field checks; the bounds of single fields are declared with `opt`."""


def options_help(cls: type, prefix: str = "") -> list[str]:
    """Two lines per option of config dataclass `cls`, nested configs' options as `parent.name`:
    name, type, default and range, then the description."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        bounds = range_text(f)
        lines.append(f"  {prefix}{f.name}: {_type_name(hints[f.name])} = {default!r}" + (f", {bounds}" if bounds else ""))
        lines.append(f"      {f.metadata.get('help', '')}")
        inner = [a for a in (typing.get_args(hints[f.name]) or (hints[f.name],)) if dataclasses.is_dataclass(a)]
        if inner and inner[0] is not cls and f.name != "loss":
            lines.extend(options_help(inner[0], prefix + f.name + "."))
    return lines


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return "|".join(map(str, typing.get_args(tp)))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None)) + " | null"
    if origin is list:
        return f"list[{_type_name(typing.get_args(tp)[0])}]"
    if origin is dict:
        return "mapping"
    return getattr(tp, "__name__", str(tp))


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
    _check_tree(data, path, "", set(), [0])
    return data


MAX_YAML_VALUES = 100_000  # aliases can make a small file expand exponentially ("billion laughs")


def _check_tree(node: Any, path: Path, where: str, open_nodes: set[int], count: list[int]) -> None:
    """Keys are text, and no alias makes a value contain itself (YAML allows both; a config cannot use either)."""
    count[0] += 1
    if count[0] > MAX_YAML_VALUES:
        raise ConfigError(f"config file '{path}' expands to more than {MAX_YAML_VALUES:,} values through YAML aliases",
                          "write the values out instead of nesting aliases")
    if not isinstance(node, (dict, list)):
        return
    if id(node) in open_nodes:
        raise ConfigError(f"config file '{path}': the value of '{where or 'the top level'}' contains itself through a YAML alias",
                          "replace the *alias with the value it should have")
    open_nodes.add(id(node))
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for k, v in items:
        if isinstance(node, dict) and not isinstance(k, str):
            raise ConfigError(f"config file '{path}': key {k!r} (a {type(k).__name__}) under '{where or 'the top level'}' is not a name",
                              "config keys are option names such as beta or lora.r; quote a key that must be text")
        _check_tree(v, path, f"{where}.{k}" if where else str(k), open_nodes, count)
    open_nodes.discard(id(node))


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


# Hugging Face / TRL argument names whose alignscope key is spelled otherwise (offered only where the key exists).
OTHER_NAMES = {"learning_rate": "lr", "per_device_train_batch_size": "batch_size", "train_batch_size": "batch_size",
               "gradient_accumulation_steps": "grad_accum", "num_train_epochs": "epochs", "max_seq_length": "max_length",
               "max_completion_length": "max_new_tokens", "num_generations": "samples_per_prompt",
               "max_prompt_len": "max_prompt_length", "max_len": "max_length", "random_seed": "seed"}


def _suggest(key: str, fields: Iterable[str]) -> str:
    """Did-you-mean for a config key: Hugging Face's name for it, else the nearest key by edit distance, unless that is
    more than one edit away and a key is a whole word of it (RL's 'steps' for 'max_steps', not 'eval_steps')."""
    fields = list(fields)
    if OTHER_NAMES.get(key) in fields:
        return f" (did you mean '{OTHER_NAMES[key]}'?)"
    near = closest(key, fields)
    words = [f for f in fields if (key.endswith("_" + f) and "_" not in key[: -len(f) - 1])
             or (key.startswith(f + "_") and "_" not in key[len(f) + 1:])]  # one word more: 'max' + 'steps
    if words and (near is None or edit_distance(key.lower(), near.lower()) > 1):
        near = max(words, key=len)
    return f" (did you mean '{near}'?)" if near else ""


def build_config(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from a mapping: unknown keys, wrong types and invalid values raise ConfigError."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"unknown config key '{prefix}{key}'" + _suggest(str(key), fields), f"valid keys: {', '.join(sorted(fields))}")
        kwargs[key] = _coerce(value, hints[key], prefix + key)
    try:
        obj = cls(**kwargs)
    except ConfigError as e:
        if not prefix:
            raise
        raise ConfigError(e.problem.replace("'", f"'{prefix}", 1), e.fix) from None
    except TypeError as e:
        missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        raise ConfigError(f"missing required config key(s) {[prefix + m for m in missing]}" if missing else str(e)) from None
    return obj


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
