"""bench/quickstart_profile.py's reading of py-spy's raw stacks: each sample goes to the stage on its stack and to
the innermost kind of step, a model's forward pass only when no other kind is on the stack."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location(
    "quickstart_profile", Path(__file__).resolve().parents[1] / "bench" / "quickstart_profile.py"
)
profile = importlib.util.module_from_spec(spec)
spec.loader.exec_module(profile)

TOP = "<module> (rlhf/cli.py:10);run_stage (rlhf/pipeline.py:57)"
FORWARD = "forward (transformers/models/llama/modeling_llama.py:164);forward (torch/nn/modules/linear.py:134)"


@pytest.mark.parametrize(
    ("stack", "expected"),
    [
        (
            f"{TOP};collect (rlhf/stages/collect.py:80);sample_tokens (rlhf/models/sampling.py:90);{FORWARD}",
            ("collect", "sampling"),
        ),
        (f"{TOP};train_sft (rlhf/stages/sft.py:128);{FORWARD}", ("sft", "forward")),
        (
            f"{TOP};train_ppo (rlhf/stages/ppo.py:300);backward (torch/_tensor.py:623);"
            "backward (torch/autograd/__init__.py:395)",
            ("ppo", "backward"),
        ),
        (f"{TOP};train_reward (rlhf/stages/reward.py:280);json_dumps (rlhf/run.py:12)", ("reward", "other")),
        ("<module> (rlhf/cli.py:10);main (rlhf/cli.py:30)", (None, "other")),
    ],
)
def test_classify(stack, expected):
    assert profile.classify(stack) == expected


def test_tally_adds_counts_per_stage_and_kind():
    raw = "\n".join(
        [
            f"{TOP};collect (rlhf/stages/collect.py:80);sample_tokens (rlhf/models/sampling.py:90) 30",
            f"{TOP};collect (rlhf/stages/collect.py:80);sample_tokens (rlhf/models/sampling.py:91) 12",
            f"{TOP};run_bon (rlhf/stages/bon.py:30);raw_scores (rlhf/models/roles.py:370) 5",
            "<module> (rlhf/cli.py:10) 7",
        ]
    )
    assert profile.tally(raw) == {("collect", "sampling"): 42, ("bon", "reward/value scores"): 5}
