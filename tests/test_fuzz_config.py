"""Property-based fuzzing (hypothesis) of config loading (issue 20 §2): whatever the YAML file, override or saved
mapping, loading returns a config whose every field has its declared type, or raises ConfigError naming the file
or the override."""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from typing import Any

import pytest
import yaml
from fuzz_helpers import FUZZ, JSON_VALUES, TEXT, written
from hypothesis import example, given
from hypothesis import strategies as st

from rlhf.config import RunConfig
from rlhf.config_checks import ConfigError
from rlhf.config_loading import config_from_dict, load_config


def config_keys(cls: type = RunConfig, prefix: str = "") -> list[str]:
    """Every dotted field name of a config dataclass, sections included."""
    keys = []
    for f in dataclasses.fields(cls):
        keys.append(prefix + f.name)
        default = getattr(cls(), f.name)
        if dataclasses.is_dataclass(default):
            keys += config_keys(type(default), f"{prefix}{f.name}.")
    return keys


def assert_typed(config: Any) -> None:
    """Every field of a loaded config holds a value of its declared type (a Literal's value one of its choices)."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value, tp = getattr(config, f.name), hints[f.name]
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if dataclasses.is_dataclass(value):
            assert_typed(value)
        elif origin is typing.Literal:
            assert value in args, (f.name, value)
        elif origin is list:
            assert isinstance(value, list) and all(type(item) is args[0] for item in value), (f.name, value)
        elif origin is dict:
            assert isinstance(value, dict) and all(type(k) is args[0] and type(v) is args[1] for k, v in value.items())
        else:
            assert type(value) is tp, (f.name, value)


CONFIG_KEYS = config_keys()
KEYS = st.sampled_from(CONFIG_KEYS) | st.sampled_from(CONFIG_KEYS).map(lambda k: k + "x") | TEXT
CONFIG_VALUES = (
    JSON_VALUES
    | st.sampled_from([float("inf"), float("-inf"), float("nan"), 10**400, -(10**400), "1e400", "yes", "cuda:x"])
    | st.sampled_from(["auto", "pairwise", "policy", "dpo", "all-linear", "vader"])
)


def nest(pairs: list[tuple[str, Any]]) -> dict:
    """{"a.b": 1} style pairs as nested mappings (a later pair wins where paths clash)."""
    root: dict = {}
    for key, value in pairs:
        parts = key.split(".")
        node = root
        for part in parts[:-1]:
            child = node.get(part)
            node[part] = child = child if isinstance(child, dict) else {}
            node = child
        node[parts[-1]] = value
    return root


YAML_SNIPPETS = st.sampled_from(
    [
        "ppo: [\n",
        "ppo:\n  iterations: 3\n iterations: 4\n",
        "a: !!python/object/apply:os.system [echo]\n",
        "[" * 2000 + "]" * 2000,
        "seed: 1\n---\nseed: 2\n",
        "? [a, b]\n: c\n",
        "seed: \x00\n",
        "seed: .inf\n",
        "ppo:\n  learning_rate: 1e999999\n",
        "task:\n  columns:\n    prompt: [a]\n",
        "\ufeffseed: 3\n",
        "seed: 3\r\nppo:\r\n  iterations: 2\r\n",
        "&a [*a]",
    ]
)


@st.composite
def yaml_files(draw) -> bytes:
    kind = draw(st.sampled_from(["mapping", "mapping", "mapping", "snippet", "text", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "text":
        return draw(TEXT).encode("utf-8", errors="surrogatepass")
    if kind == "snippet":
        return draw(YAML_SNIPPETS).encode("utf-8")
    data = nest(draw(st.lists(st.tuples(KEYS, CONFIG_VALUES), max_size=4)))
    text = yaml.safe_dump(data, allow_unicode=draw(st.booleans()))
    if draw(st.integers(0, 3)) == 0:
        text = text[: draw(st.integers(0, len(text)))]
    return text.encode("utf-8", errors="surrogatepass")


@FUZZ
@given(content=yaml_files())
@example(content=b"\x80")  # was UnicodeDecodeError
@example(content=("[" * 2000 + "]" * 2000).encode())  # was RecursionError
@example(content=b"seed: .inf\n")  # was OverflowError
def test_config_file_loads_or_names_the_file(content):
    with written(".yaml", content) as path:
        try:
            cfg = load_config(path)
        except ConfigError as error:
            assert re.match(re.escape(str(path)) + r"(:\d+)?: \S", str(error)), str(error)
        else:
            assert_typed(cfg)


OVERRIDE_VALUES = (
    TEXT
    | CONFIG_VALUES.map(lambda v: json.dumps(v, allow_nan=True))
    | st.sampled_from(["[", "{a: 1", "!!python/name:os.system", ".inf", "-.inf", ".nan", "1e400", "null", "~", "'"])
)
OVERRIDES = st.builds(lambda k, v: f"{k}={v}", KEYS, OVERRIDE_VALUES) | TEXT


@FUZZ
@given(items=st.lists(OVERRIDES, min_size=1, max_size=3))
@example(items=["seed=\x1f"])  # was yaml.reader.ReaderError
@example(items=["seed=["])  # was yaml.parser.ParserError
@example(items=["seed=!!python/name:os.system"])  # was yaml.constructor.ConstructorError
@example(items=["ppo.learning_rate=" + "9" * 400])  # was OverflowError
def test_overrides_apply_or_name_the_override(items):
    try:
        cfg = load_config(None, items)
    except ConfigError as error:
        assert any(str(error).startswith(f"override '{item}': ") for item in items), str(error)
    else:
        assert_typed(cfg)


@FUZZ
@given(data=st.lists(st.tuples(KEYS, CONFIG_VALUES), max_size=4).map(nest) | JSON_VALUES)
@example(data={"seed": float("inf")})  # was OverflowError
def test_saved_config_mapping_loads_or_names_its_source(data):
    try:
        cfg = config_from_dict(data, "saved")
    except ConfigError as error:
        assert str(error).startswith("saved: "), str(error)
    else:
        assert_typed(cfg)


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("seed: 1\nppo:\n  iterations: [3\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}:4: not valid YAML: while parsing a flow sequence")):
        load_config(path)


def test_a_list_or_mapping_is_not_a_string():
    with pytest.raises(
        ConfigError, match=r"override 'model.name_or_path=\[a, b\]': model.name_or_path: expected a string"
    ):
        load_config(None, ["model.name_or_path=[a, b]"])
    with pytest.raises(ConfigError, match=r"saved: task.columns.prompt: expected a string, got \{'a': 1\}"):
        config_from_dict({"task": {"columns": {"prompt": {"a": 1}}}}, "saved")
