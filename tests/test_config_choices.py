"""Choice fields (`Literal[...]`): a value outside the choices fails when the config loads, naming the file or override,
the field, the value and the choices, before anything is written."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from rlhf.cli import main
from rlhf.config import RunConfig
from rlhf.config_checks import ConfigError
from rlhf.config_loading import choices_of, config_from_dict, config_to_dict, load_config
from rlhf.data.records import COMPARISON_KINDS
from rlhf.experiments import (
    frontier,
    overoptimization,
    queries_needed,
    rlhf_vs_sft,
    rm_scaling,
    rouge_proxy,
    run_experiment,
)
from rlhf.judges.lm import ORDER_RULES
from rlhf.run import RunDir
from rlhf.tasks import TASK_NAMES

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"
NORMALIZE_TYPO = "reward.normalize: expected one of 'policy', 'reference', 'none', got 'polcy'"
EXPERIMENTS = (frontier, overoptimization, queries_needed, rlhf_vs_sft, rm_scaling, rouge_proxy)
EXPERIMENT_CONFIGS = [module.Config for module in EXPERIMENTS]


def choice_fields(cls: type, prefix: str = "") -> dict[str, tuple[tuple, object]]:
    """{dotted name: (choices, default)} of every Literal field of a config dataclass, nested ones included."""
    found, hints, default = {}, typing.get_type_hints(cls), cls()
    for f in dataclasses.fields(cls):
        value = getattr(default, f.name)
        if dataclasses.is_dataclass(value):
            found |= choice_fields(type(value), f"{prefix}{f.name}.")
        elif choices_of(hints[f.name]) is not None:
            found[f"{prefix}{f.name}"] = (choices_of(hints[f.name]), value)
    return found


def test_the_choice_fields():
    assert set(choice_fields(RunConfig)) == {
        "model.dtype",
        "task.name",
        "task.format",
        "task.chat_template",
        "collect.kind",
        "collect.labeler",
        "reward.normalize",
        "ppo.reward_source",
        "ppo.value_init",
        "online.source",
        "judge.kind",
        "judge.lm_order_rule",
        "rloo.reward_source",
        "grpo.reward_source",
        "dpo.loss",
    }


@pytest.mark.parametrize("cls", [RunConfig, *EXPERIMENT_CONFIGS], ids=lambda c: c.__module__)
def test_every_choice_default_is_one_of_its_choices(cls):
    fields = choice_fields(cls)
    assert fields  # RunConfig's, or the nested `run` of an experiment
    for name, (choices, default) in fields.items():
        assert default in choices, f"{cls.__name__}.{name}: default {default!r} not in {choices}"


def test_choices_match_what_the_code_accepts():
    fields = choice_fields(RunConfig)
    assert fields["collect.kind"][0] == COMPARISON_KINDS
    assert fields["task.name"][0] == TASK_NAMES
    assert fields["judge.lm_order_rule"][0] == ORDER_RULES


def test_every_choice_loads_from_an_override():
    for name, (choices, _) in choice_fields(RunConfig).items():
        section, key = name.split(".")
        for choice in choices:  # e.g. `none` and an empty value stay strings
            assert getattr(getattr(load_config(None, [f"{name}={choice}"]), section), key) == choice


def test_typo_in_a_yaml_file_fails_before_the_run_directory_is_made(tmp_path, capsys):
    path = tmp_path / "x.yaml"
    path.write_text("reward:\n  normalize: polcy\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: {NORMALIZE_TYPO}"
    assert main(["run", "--config", str(path), "--out", str(tmp_path / "out")]) == 2
    assert f"{path}: {NORMALIZE_TYPO}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["run", "init"])
def test_typo_in_an_override_fails_before_the_run_directory_is_made(tmp_path, capsys, command):
    assert main([command, "--config", str(SMOKE), "--out", str(tmp_path / "out"), "ppo.reward_source=gld"]) == 2
    expected = "override 'ppo.reward_source=gld': ppo.reward_source: expected one of 'rm', 'gold', got 'gld'"
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_typo_in_an_experiments_nested_run_config_fails_before_its_output_is_made(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ConfigError) as info:
        run_experiment("frontier", ROOT / "configs/experiments/frontier.yaml", out, ["run.collect.kind=pairwse"])
    assert str(info.value) == (
        "override 'run.collect.kind=pairwse': run.collect.kind: "
        "expected one of 'pairwise', 'best_of_k', 'ranking', got 'pairwse'"
    )
    path = tmp_path / "exp.yaml"
    path.write_text("pool_posts: 2\nrun:\n  judge:\n    lm_order_rule: logodd\n")
    with pytest.raises(ConfigError) as info:
        run_experiment("rouge_proxy", path, out, [])
    assert str(info.value) == f"{path}: run.judge.lm_order_rule: expected one of 'tie', 'logodds', got 'logodd'"
    assert not out.exists()


def test_typo_in_a_saved_config_fails_before_a_stage_writes(tmp_path, capsys):
    run = RunDir(tmp_path / "run")
    run.save_config(RunConfig())
    path = run.root / "config.yaml"
    path.write_text(path.read_text().replace("normalize: policy", "normalize: polcy"))
    with pytest.raises(ConfigError) as info:
        run.load_config()
    assert str(info.value) == f"{path}: {NORMALIZE_TYPO}"
    with pytest.raises(ConfigError, match=f"saved: {NORMALIZE_TYPO}"):
        config_from_dict({**config_to_dict(RunConfig()), "reward": {"normalize": "polcy"}}, "saved")
    assert main(["reward", str(run.root)]) == 2
    assert f"{path}: {NORMALIZE_TYPO}" in capsys.readouterr().err
    assert sorted(p.name for p in run.root.iterdir()) == ["config.yaml"]


def test_a_choice_must_be_one_of_the_strings_not_another_type():
    with pytest.raises(ConfigError, match=r"ppo.reward_source: expected one of 'rm', 'gold', got 1"):
        load_config(None, ["ppo.reward_source=1"])
    with pytest.raises(ConfigError, match=r"task.format: expected one of 'auto', .*, got None"):
        load_config(None, ["task.format=null"])
    with pytest.raises(ConfigError, match=r"task.gold: expected vader, lm or python:MODULE:FUNCTION \(or empty\)"):
        load_config(None, ["task.gold=null"])


def test_config_help_lists_the_choices(capsys):
    assert main(["config-help"]) == 0
    text = capsys.readouterr().out
    for name, (choices, default) in choice_fields(RunConfig).items():
        assert f"  {name} = {default!r}  (one of {', '.join(map(repr, choices))})\n" in text
    assert "reward.normalize = 'policy'  (one of 'policy', 'reference', 'none')" in text
    assert "ppo.iterations = 8\n" in text  # a field with no fixed choices shows its default alone
