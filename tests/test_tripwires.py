"""Tripwires (rlhf/stages/tripwires.py): the pure checks on hand-made values, the CLI's message, and each training
stage on a tiny model stopped by a NaN (or a KL or entropy tripwire) with the checkpoint it saved before the fault
left on disk, untouched and finite."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
from pathlib import Path

import pytest
import torch
from test_dpo import dpo_run, fixed_preference

import rlhf.cli as cli
import rlhf.stages.dpo as dpo_stage
import rlhf.stages.group_rl as group_rl
import rlhf.stages.ppo as ppo_stage
import rlhf.stages.reward as reward_stage
import rlhf.stages.sft as sft_stage
from rlhf.config import RunConfig
from rlhf.config_loading import load_config
from rlhf.config_methods import TripwireConfig
from rlhf.pipeline import run_stage
from rlhf.run import RunDir
from rlhf.stages.rollout import Scores
from rlhf.stages.tripwires import (
    TripwireFired,
    check_entropy,
    check_finite,
    check_finite_state,
    check_kl,
    first_non_finite,
    roll_back,
    save_checked_checkpoint,
)

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"
OVERRIDES = [
    "model.threads=1",
    "task.stop_strings=[e]",
    "collect.n_prompts=6",
    "ppo.iterations=3",
    "ppo.batch_size=4",
    "ppo.minibatch_size=4",
    "ppo.ppo_epochs=1",
    *(
        f"{stage}.{o}"
        for stage in ("rloo", "grpo")
        for o in (
            "iterations=3",
            "prompts_per_batch=2",
            "samples_per_prompt=2",
            "minibatch_size=4",
            "learning_rate=0.05",
        )
    ),
]

# ------------------------------------------------------------------------------------------- the checks alone


def test_first_non_finite_finds_nan_and_inf_in_tensors_and_numbers():
    assert first_non_finite(torch.tensor([1.0, -2.0, 0.0])) is None
    assert math.isnan(first_non_finite(torch.tensor([[1.0, float("nan")], [3.0, 4.0]])))
    assert first_non_finite(torch.tensor([1.0, float("-inf")])) == float("-inf")
    assert first_non_finite(2.5) is None and first_non_finite(float("inf")) == float("inf")
    assert first_non_finite(torch.tensor([1, 2])) is None  # integer tensors are always finite


def test_check_finite_names_stage_value_and_step():
    check_finite("ppo", "reward", 3, torch.tensor([0.5, 1.0]))  # finite: nothing happens
    with pytest.raises(TripwireFired) as info:
        check_finite("ppo", "reward", 3, torch.tensor([0.5, float("nan")]))
    e = info.value
    assert (e.stage, e.tripwire, e.step) == ("ppo", "non_finite", 3) and math.isnan(e.value)
    assert "ppo: tripwire 'non_finite' fired at iteration 3: reward is not finite = nan" in str(e)
    with pytest.raises(TripwireFired, match="sft: tripwire 'non_finite' fired at step 7: loss is not finite = inf"):
        check_finite("sft", "loss", 7, torch.tensor(float("inf")))


def test_kl_ceiling_is_off_by_default_and_fires_above_it():
    default = TripwireConfig()
    assert default.kl_ceiling == 0.0 and default.entropy_floor == 0.0 and RunConfig().tripwires == default
    check_kl("grpo", 1, 1e6, default)  # off: any KL passes
    check_kl("grpo", 1, 5.0, TripwireConfig(kl_ceiling=5.0))  # at the ceiling: passes
    with pytest.raises(TripwireFired) as info:
        check_kl("grpo", 4, 5.5, TripwireConfig(kl_ceiling=5.0))
    assert (info.value.tripwire, info.value.step, info.value.value) == ("kl_ceiling", 4, 5.5)
    assert "KL to the reference above 5.0 = 5.5" in str(info.value)
    with pytest.raises(TripwireFired, match="non_finite"):  # a NaN KL is never "under the ceiling"
        check_kl("grpo", 4, float("nan"), TripwireConfig(kl_ceiling=5.0))


def test_entropy_floor_is_off_by_default_and_fires_below_it():
    check_entropy("ppo", 2, 0.0, TripwireConfig())  # off: even zero entropy passes
    check_entropy("ppo", 2, 0.1, TripwireConfig(entropy_floor=0.1))
    with pytest.raises(TripwireFired) as info:
        check_entropy("ppo", 2, 0.05, TripwireConfig(entropy_floor=0.1))
    assert (info.value.tripwire, info.value.step, info.value.value) == ("entropy_floor", 2, 0.05)
    with pytest.raises(TripwireFired, match="non_finite"):
        check_entropy("ppo", 2, float("nan"), TripwireConfig(entropy_floor=0.1))


def test_config_fields_load_from_overrides():
    cfg = load_config(SMOKE, ["tripwires.kl_ceiling=20", "tripwires.entropy_floor=0.01"])
    assert (cfg.tripwires.kl_ceiling, cfg.tripwires.entropy_floor) == (20.0, 0.01)


def test_a_poisoned_state_is_named_and_never_saved(tmp_path):
    good = {"trainable": {"w": torch.ones(3)}, "optimizer": {"state": {0: {"exp_avg": torch.zeros(3)}}}, "step": 2}
    bad = {**good, "optimizer": {"state": {0: {"exp_avg": torch.tensor([0.0, float("inf"), 0.0]), "step": 5}}}}
    check_finite_state("sft", 2, good)
    with pytest.raises(TripwireFired, match=r"optimizer\.state\.0\.exp_avg is not finite = inf"):
        check_finite_state("sft", 2, bad)
    run = RunDir(tmp_path / "run")
    save_checked_checkpoint(run, "sft", 2, good)
    before = (run.root / "sft" / "checkpoint.pt").read_bytes()
    with pytest.raises(TripwireFired):
        save_checked_checkpoint(run, "sft", 3, bad)
    assert (run.root / "sft" / "checkpoint.pt").read_bytes() == before  # the good one stays
    assert sorted(p.name for p in (run.root / "sft").iterdir()) == ["checkpoint.pt"]


def test_the_cli_prints_the_tripwire_without_a_traceback_and_exits_4(tmp_path, capsys, monkeypatch):
    run = RunDir(tmp_path / "run")
    run.save_config(RunConfig())

    def fire(*args, **kwargs):
        raise TripwireFired("ppo", "kl_ceiling", 5, 31.5, "KL to the reference above 20.0")

    monkeypatch.setattr(cli, "run_stage", fire)
    monkeypatch.setattr(cli, "resolve_placement", lambda model: None)
    monkeypatch.setattr(logging.getLogger("rlhf"), "handlers", [])  # none left on an earlier test's stderr
    assert cli.main(["ppo", str(run.root)]) == 4
    err = capsys.readouterr().err
    assert "rlhf: stopped by a tripwire: ppo: tripwire 'kl_ceiling' fired at iteration 5" in err
    assert "31.5" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------- the stages


@pytest.fixture(scope="module")
def prepared(tiny_model_dir, tmp_path_factory) -> Path:
    """A run directory whose sft, collect and reward stages have finished."""
    run = RunDir(tmp_path_factory.mktemp("tripwires") / "run")
    cfg = load_config(SMOKE, [f"model.name_or_path={tiny_model_dir}", *OVERRIDES])
    run.save_config(cfg)
    for stage in ("sft", "collect", "reward"):
        run_stage(run, cfg, stage)
    return run.root


def copy_of(prepared: Path, tmp_path: Path, tiny_model_dir, *more: str):
    cfg = load_config(SMOKE, [f"model.name_or_path={tiny_model_dir}", *OVERRIDES, *more])
    return RunDir(shutil.copytree(prepared, tmp_path / "run")), cfg


def on_call(n: int, original, poison):
    """A stand-in for `original` whose n-th call returns poison(result) (and which copies the stage's checkpoint
    then, so the test can see it was not written again after the fault)."""
    calls, seen = [], {}

    def wrapped(*args, **kwargs):
        calls.append(1)
        result = original(*args, **kwargs)
        if len(calls) == n:
            seen["checkpoints"] = {p: p.read_bytes() for p in Path(wrapped.root).glob("*/checkpoint.pt")}
            return poison(result)
        return result

    wrapped.seen, wrapped.original = seen, original
    return wrapped


def assert_stopped_at_the_checkpoint_before(run: RunDir, stage: str, wrapped, step_key: str, step: int) -> dict:
    """The stage has not finished, its checkpoint is byte for byte the one on disk when the fault came, of step
    `step`, with finite weights, and its log holds no row of the faulty step."""
    path = run.root / stage / "checkpoint.pt"
    assert not run.is_done(stage) and path.read_bytes() == wrapped.seen["checkpoints"][path]
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    assert ckpt[step_key] == step
    check_finite_state(stage, step, {k: v for k, v in ckpt.items() if k != "rng"})  # raises on a NaN or inf
    rows = [json.loads(line) for line in (run.root / stage / "metrics.jsonl").read_text().splitlines()]
    assert max(r[step_key] for r in rows) == step
    return ckpt


def nan_like(scores: Scores) -> Scores:
    return Scores(scores.reward * float("nan"), scores.penalised * float("nan"), scores.gold)


def test_ppo_stops_on_a_nan_reward_at_iteration_2_with_the_checkpoint_of_iteration_1(
    prepared, tiny_model_dir, tmp_path, monkeypatch
):
    run, cfg = copy_of(prepared, tmp_path, tiny_model_dir)
    wrapped = on_call(2, ppo_stage.score, nan_like)
    wrapped.root = run.root
    monkeypatch.setattr(ppo_stage, "score", wrapped)
    with pytest.raises(TripwireFired) as info:
        ppo_stage.train_ppo(run, cfg)
    assert (info.value.stage, info.value.tripwire, info.value.step) == ("ppo", "non_finite", 2)
    assert "reward is not finite" in str(info.value) and math.isnan(info.value.value)
    assert_stopped_at_the_checkpoint_before(run, "ppo", wrapped, "iteration", 1)
    samples = [json.loads(line) for line in (run.root / "ppo" / "samples.jsonl").read_text().splitlines()]
    assert {s["iteration"] for s in samples} == {1}


def test_ppo_stops_on_a_nan_loss_before_its_backward_pass(prepared, tiny_model_dir, tmp_path, monkeypatch):
    run, cfg = copy_of(prepared, tmp_path, tiny_model_dir)
    wrapped = on_call(3, ppo_stage.clipped_policy_loss, lambda out: (out[0] * float("nan"), out[1]))
    wrapped.root = run.root  # one minibatch, one epoch: the third policy loss is iteration 3's
    monkeypatch.setattr(ppo_stage, "clipped_policy_loss", wrapped)
    with pytest.raises(TripwireFired, match=r"iteration 3: loss \(epoch 1, minibatch 1\) is not finite"):
        ppo_stage.train_ppo(run, cfg)
    assert_stopped_at_the_checkpoint_before(run, "ppo", wrapped, "iteration", 2)


@pytest.mark.parametrize("stage", ["grpo", "rloo"])
def test_group_rl_stops_on_a_nan_loss_at_iteration_2(stage, prepared, tiny_model_dir, tmp_path, monkeypatch):
    run, cfg = copy_of(prepared, tmp_path, tiny_model_dir)
    wrapped = on_call(2, group_rl.minibatch_loss, lambda out: (out[0] * float("nan"), out[1]))
    wrapped.root = run.root  # 4 rows in one minibatch: one loss per iteration
    monkeypatch.setattr(group_rl, "minibatch_loss", wrapped)
    with pytest.raises(TripwireFired, match=rf"{stage}: tripwire 'non_finite' fired at iteration 2: loss"):
        group_rl.train_group_rl(run, cfg, stage)
    assert_stopped_at_the_checkpoint_before(run, stage, wrapped, "iteration", 1)


def test_grpo_kl_ceiling_fires_when_the_policy_has_moved(prepared, tiny_model_dir, tmp_path):
    # iteration 1 samples the SFT policy itself (KL 0); iteration 2 the updated one, whose KL is above 1e-9. That
    # policy is the checkpoint of iteration 1, and no earlier one exists: the checkpoint goes, the stage restarts
    run, cfg = copy_of(prepared, tmp_path, tiny_model_dir, "tripwires.kl_ceiling=1e-9")
    with pytest.raises(TripwireFired) as info:
        group_rl.train_grpo(run, cfg)
    assert (info.value.tripwire, info.value.step) == ("kl_ceiling", 2) and info.value.value > 1e-9
    assert "(iteration 1) and no earlier one was kept, so it was removed" in str(info.value)
    assert not list((run.root / "grpo").glob("checkpoint*")) and not run.is_done("grpo")


def test_a_kl_tripwire_rolls_the_checkpoint_back_to_the_last_policy_that_passed(
    prepared, tiny_model_dir, tmp_path, monkeypatch
):
    run, cfg = copy_of(prepared, tmp_path, tiny_model_dir, "tripwires.kl_ceiling=50")
    # iteration 3 measures the policy that the checkpoint of iteration 2 holds: its KL made to exceed the ceiling
    wrapped = on_call(3, group_rl.group_advantages, lambda gb: dataclasses.replace(gb, kl=gb.kl + 100.0))
    wrapped.root = run.root
    monkeypatch.setattr(group_rl, "group_advantages", wrapped)
    with pytest.raises(TripwireFired) as info:
        group_rl.train_grpo(run, cfg)
    path = run.root / "grpo" / "checkpoint.pt"
    assert (info.value.tripwire, info.value.step) == ("kl_ceiling", 3) and info.value.value > 50
    assert f"{path}, which held the policy that tripped it (iteration 2), was rolled back to iteration 1" in str(
        info.value
    )
    assert torch.load(path, weights_only=False)["iteration"] == 1 and not path.with_name("checkpoint.prev.pt").exists()

    monkeypatch.setattr(group_rl, "group_advantages", wrapped.original)
    group_rl.train_grpo(run, cfg)  # resumes at iteration 2 and finishes
    rows = [json.loads(line) for line in (run.root / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2, 3] and run.is_done("grpo")
    assert not list((run.root / "grpo").glob("checkpoint*"))


def test_roll_back_leaves_an_older_checkpoint_alone(tmp_path):
    run = RunDir(tmp_path / "run")
    keep = TripwireConfig(kl_ceiling=1.0)
    for iteration in (1, 2):
        save_checked_checkpoint(run, "ppo", iteration, {"iteration": iteration}, keep)
    assert torch.load(run.root / "ppo" / "checkpoint.prev.pt", weights_only=False)["iteration"] == 1
    assert "holds iteration 2, from before the policy" in roll_back(run, "ppo", 4, "iteration")  # checkpoint_every 2
    assert torch.load(run.root / "ppo" / "checkpoint.pt", weights_only=False)["iteration"] == 2
    assert "rolled back to iteration 1" in roll_back(run, "ppo", 2, "iteration")
    assert torch.load(run.root / "ppo" / "checkpoint.pt", weights_only=False)["iteration"] == 1
    save_checked_checkpoint(run, "sft", 1, {"step": 1})
    save_checked_checkpoint(run, "sft", 2, {"step": 2})  # no KL or entropy tripwire: no previous one kept
    assert not (run.root / "sft" / "checkpoint.prev.pt").exists()


def test_entropy_floor_fires_at_iteration_1_and_leaves_no_checkpoint(prepared, tiny_model_dir, tmp_path):
    run, cfg = copy_of(prepared, tmp_path, tiny_model_dir, "tripwires.entropy_floor=1e6")
    with pytest.raises(TripwireFired) as info:
        ppo_stage.train_ppo(run, cfg)
    assert (info.value.tripwire, info.value.step) == ("entropy_floor", 1) and 0 < info.value.value < 1e6
    assert not (run.root / "ppo" / "checkpoint.pt").exists() and not run.is_done("ppo")
    assert not (run.root / "ppo" / "model").exists()


def test_sft_stops_on_a_nan_loss_at_step_2(prepared, tiny_model_dir, tmp_path, monkeypatch):
    run, cfg = copy_of(prepared, tmp_path, tiny_model_dir)
    (run.root / "sft" / "done.json").unlink()

    nll = sft_stage.response_nll
    calls = []

    def nan_on_the_second_training_step(*args, **kwargs):  # validation losses run without gradients
        loss = nll(*args, **kwargs)
        if torch.is_grad_enabled():
            calls.append(1)
            if len(calls) == 2:
                wrapped_sft.seen["checkpoints"] = {run.root / "sft" / "checkpoint.pt": checkpoint("sft")}
                return loss * float("nan")
        return loss

    def checkpoint(stage):
        return (run.root / stage / "checkpoint.pt").read_bytes()

    wrapped_sft = nan_on_the_second_training_step
    wrapped_sft.seen = {}
    monkeypatch.setattr(sft_stage, "response_nll", wrapped_sft)
    with pytest.raises(TripwireFired, match="sft: tripwire 'non_finite' fired at step 2: loss is not finite"):
        sft_stage.train_sft(run, cfg)
    assert_stopped_at_the_checkpoint_before(run, "sft", wrapped_sft, "step", 1)


def test_reward_stops_on_an_inf_loss_at_step_2(prepared, tiny_model_dir, tmp_path, monkeypatch):
    run, cfg = copy_of(prepared, tmp_path, tiny_model_dir)
    (run.root / "reward" / "done.json").unlink()
    wrapped = on_call(2, reward_stage.comparison_loss, lambda loss: loss * float("inf"))
    wrapped.root = run.root
    monkeypatch.setattr(reward_stage, "comparison_loss", wrapped)
    with pytest.raises(TripwireFired, match="reward: tripwire 'non_finite' fired at step 2: loss is not finite = inf"):
        reward_stage.train_reward(run, cfg)
    assert_stopped_at_the_checkpoint_before(run, "reward", wrapped, "step", 1)


def test_dpo_stops_on_a_nan_loss_at_step_2(tiny_model_dir, tmp_path, monkeypatch):
    overrides = ("dpo.batch_size=2", "dpo.epochs=2", "dpo.checkpoint_every=1")
    run, cfg = dpo_run(tmp_path / "run", tiny_model_dir, fixed_preference(4), [], *overrides)
    wrapped = on_call(2, dpo_stage.dpo_loss, lambda out: (out[0] * float("nan"), out[1]))
    wrapped.root = run.root
    monkeypatch.setattr(dpo_stage, "dpo_loss", wrapped)
    with pytest.raises(TripwireFired, match="dpo: tripwire 'non_finite' fired at step 2: loss is not finite"):
        dpo_stage.train_dpo(run, cfg)
    assert_stopped_at_the_checkpoint_before(run, "dpo", wrapped, "step", 1)


def test_dpo_kl_and_entropy_tripwires(tiny_model_dir, tmp_path):
    overrides = ("dpo.batch_size=2", "dpo.epochs=2", "dpo.learning_rate=0.05", "dpo.checkpoint_every=1")
    run, cfg = dpo_run(
        tmp_path / "kl", tiny_model_dir, fixed_preference(4), [], *overrides, "tripwires.kl_ceiling=1e-6"
    )
    with pytest.raises(TripwireFired) as info:  # step 1: policy = reference, drift 0; step 2 has moved
        dpo_stage.train_dpo(run, cfg)
    assert (info.value.tripwire, info.value.step) == ("kl_ceiling", 2) and info.value.value > 1e-6
    assert "(step 1) and no earlier one was kept, so it was removed" in str(info.value)
    assert not list((run.root / "dpo").glob("checkpoint*"))
    run, cfg = dpo_run(
        tmp_path / "ent", tiny_model_dir, fixed_preference(4), [], *overrides, "tripwires.entropy_floor=1e6"
    )
    with pytest.raises(TripwireFired) as info:
        dpo_stage.train_dpo(run, cfg)
    assert (info.value.tripwire, info.value.step) == ("entropy_floor", 1)
    assert 0 < info.value.value < math.log(50_000)  # a per-token entropy: at most log(vocabulary size)
    assert not (run.root / "dpo" / "checkpoint.pt").exists()
