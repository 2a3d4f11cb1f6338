"""The checks a config field's value gets beyond its type when a config loads (rlhf/config_loading.py FIELD_CHECKS), and
the error every config problem raises."""

from __future__ import annotations

import re

from rlhf.config_methods import POLICY_METHODS


class ConfigError(ValueError):
    pass


DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def check_device(value: str, where: str) -> str:
    """`value` if it names a device model.device accepts, else a ConfigError naming `where`."""
    if not DEVICE_PATTERN.fullmatch(value):
        raise ConfigError(f"{where}: expected auto, cpu, cuda, cuda:N or mps, got {value!r}")
    return value


def check_gold(value: str, where: str) -> str:
    """`value` if it names a gold scorer: empty, vader, lm or python:MODULE:FUNCTION."""
    if value in ("", "vader", "lm") or re.fullmatch(r"python:[\w.]+:\w+", value):
        return value
    raise ConfigError(f"{where}: expected vader, lm or python:MODULE:FUNCTION (or empty), got {value!r}")


TRL_FIELDS = ("prompt", "completion", "chosen", "rejected", "messages")


def check_columns(value: dict[str, str], where: str) -> dict[str, str]:
    """`value` if it maps TRL field names to column names."""
    unknown = sorted(set(value) - set(TRL_FIELDS))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; expected some of {', '.join(TRL_FIELDS)}")
    return value


def check_target_modules(value: list[str], where: str) -> list[str]:
    if not value or ("all-linear" in value and len(value) > 1):
        raise ConfigError(f"{where}: expected module names or all-linear alone, got {value!r}")
    return value


def check_positive(value: int, where: str) -> int:
    if value < 1:
        raise ConfigError(f"{where}: expected an integer >= 1, got {value!r}")
    return value


def check_methods(value: list[str], where: str) -> list[str]:
    unknown = [m for m in value if m not in POLICY_METHODS]
    if unknown or len(set(value)) != len(value):
        raise ConfigError(f"{where}: expected distinct names among {', '.join(POLICY_METHODS)}, got {value!r}")
    return value
