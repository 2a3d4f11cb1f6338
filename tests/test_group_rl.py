"""The RLOO and GRPO stages (rlhf/stages/group_rl.py) on a tiny random model: a run's SFT, comparisons and reward
model are made once, and each test trains on a copy of that run directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhf.config_loading import load_config
from rlhf.models.loading import open_backbone, sft_model_path
from rlhf.models.roles import LanguageModelRole
from rlhf.models.sampling import StopRule, sample_episodes
from rlhf.pipeline import run_pipeline, run_stage
from rlhf.processes import Processes
from rlhf.run import RunDir
from rlhf.stages import group_rl
from rlhf.stages.group_rl import train_grpo, train_rloo

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"
TRAIN = {"rloo": train_rloo, "grpo": train_grpo}
# 2 prompts x 4 samples, minibatches of 4 rows: 2 steps an epoch. A stop string that most of the tiny model's random
# tokens hold, so that responses stop at different lengths and the scores of a group differ (without stops every
# score would be the missing-stop penalty and every advantage 0).
GROUP = [
    "iterations=2",
    "prompts_per_batch=2",
    "samples_per_prompt=4",
    "minibatch_size=4",
    "learning_rate=0.01",
    "checkpoint_every=1",
]
OVERRIDES = [
    "task.stop_strings=[e]",
    "collect.n_prompts=6",
    "policy.methods=[grpo]",
    *(f"{stage}.{o}" for stage in ("rloo", "grpo") for o in GROUP),
    "grpo.epochs=2",
]


def config(tiny_model_dir, *more: str):
    return load_config(SMOKE, [f"model.name_or_path={tiny_model_dir}", *OVERRIDES, *more])


@pytest.fixture(scope="module")
def prepared(tiny_model_dir, tmp_path_factory) -> Path:
    """A run directory whose sft, collect and reward stages have finished."""
    run = RunDir(tmp_path_factory.mktemp("group-rl") / "run")
    cfg = config(tiny_model_dir)
    run.save_config(cfg)
    for stage in ("sft", "collect", "reward"):
        run_stage(run, cfg, stage)
    return run.root


def copy_of(prepared: Path, tmp_path: Path) -> RunDir:
    return RunDir(shutil.copytree(prepared, tmp_path / "run"))


def rows_of(run: RunDir, stage: str) -> list[dict]:
    return [json.loads(line) for line in (run.root / stage / "metrics.jsonl").read_text().splitlines()]


@torch.no_grad()
def sft_and_trained_logprobs(cfg, run: RunDir, folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The log-probs the SFT policy and the model in `folder` (opened as evaluate.py opens it) give the same
    responses, sampled from the SFT policy."""
    sft, trained = (
        LanguageModelRole(open_backbone(cfg, path), None, cfg.task.temperature)
        for path in (sft_model_path(run, cfg), str(folder))
    )
    torch.manual_seed(0)
    stop = StopRule(sft.backbone.tokenizer, ["e"], 2)
    episodes, _ = sample_episodes(sft, ["A quiet film about", "The acting was"], 8, stop)
    return sft.logprobs(episodes), trained.logprobs(episodes)


@pytest.mark.parametrize("stage", ["rloo", "grpo"])
def test_trains_logs_and_saves_a_policy_the_evaluation_opens(stage, prepared, tiny_model_dir, tmp_path):
    run, cfg = copy_of(prepared, tmp_path), config(tiny_model_dir)
    info = TRAIN[stage](run, cfg)
    assert info["iterations"] == 2 and info["episodes"] == 16
    done = run.done_info(stage)
    assert done["iterations"] == 2 and done["episodes"] == 16
    assert not (run.root / stage / "checkpoint.pt").exists()

    rows = rows_of(run, stage)
    assert [r["iteration"] for r in rows] == [1, 2] and [r["episodes"] for r in rows] == [8, 16]
    keys = {"rm_score", "score", "kl", "loss", "grad_norm", "entropy", "response_length", "no_stop_count", "lr"}
    keys |= {"first_minibatch_max_log_ratio", "gold_reward", "flat_groups"}
    keys |= {"clipfrac", "ratio_mean", "k3_kl"} if stage == "grpo" else set()  # RLOO, one epoch: no ratio
    assert all(keys <= set(r) for r in rows), [keys - set(r) for r in rows]
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # iteration 1 samples the SFT policy itself
    assert all(r["first_minibatch_max_log_ratio"] == 0.0 for r in rows)
    assert rows[0]["flat_groups"] < 2 and rows[0]["grad_norm"] > 0  # some group's scores differ: a gradient
    assert rows[1]["kl"] != 0.0  # iteration 2 samples the updated policy
    assert rows[1]["lr"] == 0.0  # the linear anneal ends at 0 after the last update
    samples = [json.loads(line) for line in (run.root / stage / "samples.jsonl").read_text().splitlines()]
    assert [s["iteration"] for s in samples] == [1] * 4 + [2] * 4  # the first group of each iteration
    assert len({s["prompt"] for s in samples if s["iteration"] == 1}) == 1  # prompt-major: one prompt's group

    # model/ is the policy's adapter on the SFT model; it opens as evaluate.py opens it, and it moved
    folder = run.root / stage / "model"
    lora_b = [t for k, t in load_file(folder / "adapter_model.safetensors").items() if "lora_B" in k]
    assert lora_b and any(t.abs().max() > 0 for t in lora_b)  # LoRA B starts at 0
    sft, trained = sft_and_trained_logprobs(cfg, run, folder)
    assert not torch.allclose(trained, sft, atol=1e-4)


def test_an_interrupted_run_resumes_where_it_stopped_and_ends_as_an_uninterrupted_one(
    prepared, tiny_model_dir, tmp_path, monkeypatch
):
    cfg = config(tiny_model_dir, "rloo.epochs=2")  # RLOO's ratio-clipped form, shuffled second epoch
    whole = copy_of(prepared, tmp_path / "whole")
    train_rloo(whole, cfg)

    run = copy_of(prepared, tmp_path / "interrupted")
    calls, score = [], group_rl.score

    def failing_score(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed in iteration 2")
        return score(*args, **kwargs)

    monkeypatch.setattr(group_rl, "score", failing_score)
    with pytest.raises(RuntimeError, match="killed"):
        train_rloo(run, cfg)
    assert (run.root / "rloo" / "checkpoint.pt").exists() and not run.is_done("rloo")
    assert [r["iteration"] for r in rows_of(run, "rloo")] == [1]
    monkeypatch.setattr(group_rl, "score", score)
    train_rloo(run, cfg)

    rows, expected = rows_of(run, "rloo"), rows_of(whole, "rloo")
    assert [r["iteration"] for r in rows] == [1, 2]  # only iteration 2 was added
    assert rows[1] == pytest.approx(expected[1], rel=1e-6, abs=1e-7)  # iteration 2 as the uninterrupted run's
    assert "clipfrac" in rows[0] and "k3_kl" in rows[0]
    mine, theirs = (load_file(r.root / "rloo" / "model" / "adapter_model.safetensors") for r in (run, whole))
    assert mine.keys() == theirs.keys() and all(torch.allclose(mine[k], theirs[k], atol=1e-6) for k in mine)


def test_gold_reward_needs_no_reward_model(prepared, tiny_model_dir, tmp_path):
    run = copy_of(prepared, tmp_path)
    shutil.rmtree(run.root / "reward")  # the gold scorer trains the policy: no reward model is opened
    cfg = config(tiny_model_dir, "task.gold=vader", "grpo.reward_source=gold", "grpo.iterations=1")
    assert train_grpo(run, cfg)["reward_source"] == "gold"
    (row,) = rows_of(run, "grpo")
    assert row["rm_score"] == pytest.approx(row["gold_reward"], abs=1e-6)  # the scores trained on are the gold's
    with pytest.raises(FileNotFoundError, match="reward"):  # while the reward model's source needs one
        train_rloo(run, config(tiny_model_dir, "task.gold=vader"))


def test_settings_out_of_range_and_several_processes_are_refused(prepared, tiny_model_dir, tmp_path):
    run = copy_of(prepared, tmp_path)
    with pytest.raises(ValueError, match="samples_per_prompt"):
        train_rloo(run, config(tiny_model_dir, "rloo.samples_per_prompt=1"))
    launched = RunDir(run.root, Processes(rank=0, world_size=2))
    with pytest.raises(ValueError, match="grpo runs in one process"):
        train_grpo(launched, config(tiny_model_dir))


@pytest.mark.slow  # bon, eval and report too
def test_the_pipeline_runs_the_methods_the_config_names(prepared, tiny_model_dir, tmp_path):
    run, cfg = copy_of(prepared, tmp_path), config(tiny_model_dir)  # policy.methods: [grpo]
    summary = run_pipeline(run, cfg)
    assert run.is_done("grpo") and not (run.root / "ppo").exists() and not (run.root / "rloo").exists()
    assert "grpo" in summary["policies"] and "ppo" not in summary["policies"]
    assert set(summary["stage_seconds"]) >= {"grpo", "bon", "eval"}
