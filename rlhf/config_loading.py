"""Loading configs: YAML files and `section.field=value` overrides into the typed dataclasses of rlhf/config.py,
each value converted to its field's type and checked (Literal choices, FIELD_CHECKS), every error naming the file,
line and field; and back to plain dicts, and the help text `rlhf config-help` prints.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing
from pathlib import Path
from typing import Literal

import yaml

from rlhf.config import ModelConfig, PPOConfig, RewardConfig, RunConfig, SFTConfig, TaskConfig
from rlhf.config_checks import (
    ConfigError,
    check_columns,
    check_device,
    check_gold,
    check_methods,
    check_positive,
    check_target_modules,
)
from rlhf.config_methods import DPOConfig, GroupRLConfig, PolicyConfig

# fields whose values are checked beyond their type when the config loads
FIELD_CHECKS = {
    (ModelConfig, "device"): check_device,
    (TaskConfig, "gold"): check_gold,
    (TaskConfig, "columns"): check_columns,
    (ModelConfig, "lora_target_modules"): check_target_modules,
    (SFTConfig, "gradient_accumulation_steps"): check_positive,
    (RewardConfig, "gradient_accumulation_steps"): check_positive,
    (PPOConfig, "gradient_accumulation_steps"): check_positive,
    (GroupRLConfig, "gradient_accumulation_steps"): check_positive,
    (DPOConfig, "gradient_accumulation_steps"): check_positive,
    (PolicyConfig, "methods"): check_methods,
}


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass, read from its source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = str(nxt.value.value)
    return docs


def choices_of(tp) -> tuple | None:
    """The allowed values of a `Literal[...]` type; None for any other type."""
    return typing.get_args(tp) if typing.get_origin(tp) is Literal else None


def _convert(value, tp, where: str):
    """`value` (from YAML or an override) as type `tp`; `where` ("FILE: section.field") prefixes every error."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if any(type(value) is type(choice) and value == choice for choice in choices):
            return value
        raise ConfigError(f"{where}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
    if origin is list:
        if isinstance(value, str):  # a single item may be written without brackets (`lora_target_modules: all-linear`)
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_convert(v, item, where) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        key_type, value_type = typing.get_args(tp)
        return {_convert(k, key_type, where): _convert(v, value_type, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
        try:
            converted = tp(value)
        except (TypeError, ValueError, OverflowError):  # OverflowError: int(.inf), float(10**400)
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}") from None
        if tp is int and isinstance(value, float) and value != int(value):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return converted
    if tp is str:
        if isinstance(value, (list, dict)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{where}: unsupported type {tp}")


def _apply(obj, values: dict, source: str, prefix: str = "") -> None:
    """Set the fields of dataclass `obj` from `values`, converted to their types. `source` (a YAML path, an
    override, "config") and `prefix` (the dotted path down to `obj`) name the value in errors."""
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in values.items():
        if key not in names:
            section = f" {prefix.rstrip('.')}:" if prefix else ""
            raise ConfigError(f"{source}:{section} unknown field '{key}' (known: {', '.join(sorted(names))})")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {prefix}{key}: expected a mapping of {tp.__name__} fields")
            _apply(getattr(obj, key), value, source, f"{prefix}{key}.")
        else:
            value = _convert(value, tp, f"{source}: {prefix}{key}")
            if typing.get_origin(tp) is dict and source.startswith("override"):  # `task.columns.prompt=x` adds one key
                value = {**getattr(obj, key), **value}
            check = FIELD_CHECKS.get((type(obj), key))
            setattr(obj, key, check(value, f"{source}: {prefix}{key}") if check else value)


def _parse_yaml(text: str, source: str, with_line: bool = True):
    """`yaml.safe_load(text)`; bad YAML raises a ConfigError naming `source` and, `with_line`, the line YAML gives."""
    try:
        return yaml.safe_load(text)
    except RecursionError:
        raise ConfigError(f"{source}: not valid YAML: nested too deeply") from None
    except yaml.reader.ReaderError as e:  # a character YAML does not allow (NUL, most control characters)
        line, detail = text[: e.position].count("\n") + 1, f"character {e.character!r} is not allowed"
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        detail = " ".join(part for part in (e.context, e.problem) if part)
    except yaml.YAMLError as e:
        line, detail = None, str(e)
    where = f"{source}:{line}" if with_line and line else source
    raise ConfigError(f"{where}: not valid YAML: {detail}")


def _read_yaml(path: Path):
    """The YAML document in the file `path`; bad UTF-8 or YAML raises a ConfigError naming the file and line."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: expected UTF-8 text: {e.reason} at byte {e.start}") from None
    return _parse_yaml(text, str(path))


def load_config(path: str | Path | None = None, overrides: list[str] = (), cls: type = RunConfig):
    """Defaults, then the YAML file, then `section.field=value` overrides (values parsed as YAML). `cls` is the
    config dataclass (RunConfig, or an experiment's config, which may nest a RunConfig)."""
    cfg = cls()
    if path:
        path = Path(path)
        data = _read_yaml(path) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        _apply(cfg, data, str(path))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected section.field=value")
        key, raw = item.split("=", 1)
        nested: dict = {}
        cur = nested
        parts = key.strip().split(".")
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        cur[parts[-1]] = _parse_yaml(raw, f"override '{item}'", with_line=False) if raw != "" else ""
        _apply(cfg, nested, f"override '{item}'")
    return cfg


def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def config_from_dict(data: dict, source: str = "config") -> RunConfig:
    """A RunConfig from a saved config's mapping (a run's config.yaml); `source` names it in errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    cfg = RunConfig()
    _apply(cfg, data, source)
    return cfg


def describe_config(cls: type = RunConfig, prefix: str = "") -> list[str]:
    """Lines `section.field = default` (and a Literal field's allowed values) with the help, for `rlhf config-help`."""
    lines = []
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    default = cls()
    for f in dataclasses.fields(cls):
        value = getattr(default, f.name)
        if dataclasses.is_dataclass(value):
            lines.append(f"\n[{prefix}{f.name}] {docs.get(f.name, '')}")
            lines += describe_config(type(value), f"{prefix}{f.name}.")
        else:
            choices = choices_of(hints[f.name])
            allowed = f"  (one of {', '.join(map(repr, choices))})" if choices else ""
            lines.append(f"  {prefix}{f.name} = {value!r}{allowed}\n      {docs.get(f.name, '')}")
    return lines
