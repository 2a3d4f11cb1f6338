"""Configs (YAML, overrides, errors, help text) and the command line."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf.cli import STAGE_HELP, build_parser
from rlhf.config import RunConfig
from rlhf.config_checks import ConfigError
from rlhf.config_loading import field_docs, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_every_config_field_has_a_docstring():
    def walk(cls):
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            assert docs.get(f.name), f"{cls.__name__}.{f.name} has no docstring"
            default = getattr(cls(), f.name)
            if dataclasses.is_dataclass(default):
                walk(type(default))

    walk(RunConfig)


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("ppo:\n  iterations: 3\ntask:\n  temperature: 0.5\n")
    cfg = load_config(path, ["ppo.iterations=5", "model.lora_target_modules=[q_proj]", "ppo.adaptive_kl=false"])
    assert cfg.ppo.iterations == 5 and cfg.task.temperature == 0.5
    assert cfg.model.lora_target_modules == ["q_proj"] and cfg.ppo.adaptive_kl is False


@pytest.mark.parametrize(
    "text, message",
    [
        ("ppo:\n  iteratons: 3\n", "unknown field 'iteratons'"),
        ("ppo:\n  iterations: many\n", "ppo.iterations: expected int"),
        ("ppo: 3\n", "expected a mapping"),
        ("ppo: [\n", "not valid YAML"),
    ],
)
def test_bad_config_names_file_and_field(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_shipped_configs_load():
    for path in (ROOT / "configs").glob("*.yaml"):
        load_config(path)


def test_every_subcommand_has_help():
    parser = build_parser()
    for name in [*STAGE_HELP, "run", "init", "report", "provision", "config-help"]:
        with pytest.raises(SystemExit) as info:
            parser.parse_args([name, "--help"])
        assert info.value.code == 0


def test_stage_on_missing_run_directory_is_a_clear_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "rlhf.cli", "reward", str(tmp_path / "nope")], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "no config in this run directory" in proc.stderr
