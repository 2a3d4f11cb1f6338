"""The DPO stage on a tiny model: pair expansion, sequence log-probs, the stage's outputs and first-step invariant,
learning a fixed preference (DPO and IPO, LoRA and full fine-tuning), resume, and `policy.methods: [dpo]`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import rlhf.stages.dpo as dpo_stage
from rlhf.config_loading import load_config
from rlhf.data.io import write_jsonl
from rlhf.data.records import Comparison
from rlhf.models.loading import open_backbone, sft_model_path
from rlhf.models.roles import LanguageModelRole
from rlhf.run import RunDir
from rlhf.stages.dpo import (
    PreferencePair,
    batched_pair_logprobs,
    implicit_reward_accuracy,
    preference_pairs,
    train_dpo,
)
from rlhf.stages.sft import response_logprob_sums, response_nll, train_sft

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"
THREADS = ["model.threads=1"]  # a tiny model trains ~25x faster on one thread than on all of a busy machine's


def fixed_preference(n: int) -> list[Comparison]:
    """n pairwise comparisons that always prefer " it was great" (shown first or second)."""
    return [
        Comparison(
            prompt=f"Film {i}:",
            responses=[" it was great", " it was dull"][:: 1 - 2 * (i % 2)],
            kind="pairwise",
            best=i % 2,
        )
        for i in range(n)
    ]


def mixed_kinds() -> list[Comparison]:
    """Pairwise, best-of-3, a ranking with a tie (5 ordered pairs) and a pairwise tie by text: 1 + 2 + 5 pairs."""
    return [
        *fixed_preference(1),
        Comparison(prompt="Film B:", responses=[" so good", " fine", " bad"], kind="best_of_k", best=0),
        Comparison(prompt="Film C:", responses=[" w", " x", " y", " z"], kind="ranking", ranks=[1, 0, 1, 2]),
        Comparison(prompt="Film D:", responses=[" same", " same"], kind="pairwise", best=0),
    ]


def dpo_run(root: Path, tiny_model_dir, train: list[Comparison], heldout: list[Comparison], *overrides, sft=False):
    """A run directory with the sft stage (trained on the smoke config's demonstrations, or skipped) and a collect
    stage holding `train` and `heldout`."""
    cfg = load_config(SMOKE, [f"model.name_or_path={tiny_model_dir}", *THREADS, *overrides])
    run = RunDir(root)
    run.save_config(cfg)
    if sft:
        train_sft(run, cfg)
    else:
        run.mark_done("sft", {"trained": False})
    write_jsonl(run.stage("collect") / "comparisons.jsonl", train)
    write_jsonl(run.stage("collect") / "heldout.jsonl", heldout)
    run.mark_done("collect", {"n_train": len(train), "n_heldout": len(heldout)})
    return run, cfg


def metrics_rows(run: RunDir) -> list[dict]:
    return [json.loads(line) for line in (run.root / "dpo" / "metrics.jsonl").read_text().splitlines()]


def test_preference_pairs_expand_each_kind_and_drop_ties():
    pairs, ties = preference_pairs(mixed_kinds())
    P = PreferencePair
    assert pairs == [
        P("Film 0:", " it was great", " it was dull"),
        P("Film B:", " so good", " fine"),
        P("Film B:", " so good", " bad"),
        # ranks [1, 0, 1, 2]: x beats w, y, z; w and y (tied, no pair) beat z
        P("Film C:", " w", " z"),
        P("Film C:", " x", " w"),
        P("Film C:", " x", " y"),
        P("Film C:", " x", " z"),
        P("Film C:", " y", " z"),
    ]
    assert ties == 1  # " same" vs " same"


def test_response_logprob_sums_are_the_token_sums_of_response_nll(tiny_model_dir):
    cfg = load_config(SMOKE, [f"model.name_or_path={tiny_model_dir}", *THREADS])
    backbone = open_backbone(cfg, str(tiny_model_dir))
    prompts, responses = ["Film A:", "A longer film, B:"], [" good.", " bad and long"]
    with torch.no_grad():
        sums = response_logprob_sums(backbone, None, prompts, responses)
        nll = response_nll(backbone, None, prompts, responses)
        alone = torch.cat([response_logprob_sums(backbone, None, [p], [r]) for p, r in zip(prompts, responses)])
        # by hand for the first row: the response's tokens and the EOS after them, each predicted from the one before
        tok = backbone.tokenizer
        q, a = tok(prompts[0]).input_ids, tok(responses[0], add_special_tokens=False).input_ids + [tok.eos_token_id]
        logits = backbone.causal_lm()(torch.tensor([q + a])).logits[0].float()
        by_hand = F.log_softmax(logits[len(q) - 1 : -1], -1).gather(1, torch.tensor(a)[:, None]).sum()
    n_tokens = sum(len(tok(r, add_special_tokens=False).input_ids) + 1 for r in responses)
    assert sums.shape == (2,) and (sums < 0).all()
    assert torch.allclose(-sums.sum() / n_tokens, nll, atol=1e-5)
    assert torch.allclose(sums, alone, atol=1e-4)  # left padding does not change a row's log-prob
    assert torch.allclose(sums[0], by_hand, atol=1e-4)


def test_kept_prefixes_give_the_full_passes_log_probs_and_stop_at_their_cap(tiny_model_dir):
    overrides = [f"model.name_or_path={tiny_model_dir}", *THREADS]
    policy, reference = dpo_stage.dpo_roles(
        load_config(SMOKE, [*overrides, "model.lora_top_layers=1"]), str(tiny_model_dir)
    )
    assert policy.backbone.shares_frozen_prefix
    torch.manual_seed(0)
    with torch.no_grad():
        for p in policy.backbone.adapter_parameters("policy"):
            p.normal_(0, 0.3)  # an adapter that moves the top layer, so that policy and reference differ
    pairs, _ = preference_pairs(mixed_kinds())
    batches = [[3, 0, 5], [1, 2, 4, 6, 7]]
    kept = dpo_stage.PairPrefixes(policy.backbone, pairs)
    full = {}
    for name, role in (("reference", reference), ("policy", policy)):  # the first pass keeps them, later ones read
        full[name] = batched_pair_logprobs(role, pairs, batches)
        for _ in range(2):
            with_kept = batched_pair_logprobs(role, pairs, batches, kept)
            assert all(torch.equal(a, b) for a, b in zip(with_kept, full[name]))  # the same layout: the same bits
        assert len(kept.kept) == len(pairs) and kept.bytes > 0
        one_batch = batched_pair_logprobs(role, pairs, [list(range(len(pairs)))], kept)  # another padding
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(one_batch, full[name]))
    assert not torch.allclose(full["policy"][0], full["reference"][0], atol=1e-3)
    capped = dpo_stage.PairPrefixes(policy.backbone, pairs, max_bytes=kept.bytes // 2)  # room for about half
    assert all(torch.equal(a, b) for a, b in zip(batched_pair_logprobs(policy, pairs, batches, capped), full["policy"]))
    assert 1 <= len(capped.kept) < len(pairs) and capped.bytes <= capped.max_bytes
    assert all(torch.equal(a, b) for a, b in zip(batched_pair_logprobs(policy, pairs, batches, capped), full["policy"]))
    assert dpo_stage.PairPrefixes(policy.backbone, pairs, max_bytes=0).of([0, 1]) is None  # 0: off
    whole, _ = dpo_stage.dpo_roles(load_config(SMOKE, [*overrides, "model.lora_r=0"]), str(tiny_model_dir))
    assert dpo_stage.PairPrefixes(whole.backbone, pairs).of([0, 1]) is None  # full fine-tuning: no frozen prefix


def test_the_stage_with_kept_bottom_layers_trains_exactly_as_without(tiny_model_dir, tmp_path):
    runs = {}
    for gib in ("0", "2"):
        overrides = ("dpo.batch_size=3", "model.lora_top_layers=1", f"dpo.kept_prefix_gib={gib}")
        run, cfg = dpo_run(tmp_path / gib, tiny_model_dir, mixed_kinds(), fixed_preference(3), *overrides)
        runs[gib] = (train_dpo(run, cfg), metrics_rows(run))
    assert runs["0"] == runs["2"]  # every step's loss and statistics, and both accuracies, to the last bit


def test_dpo_stage_outputs_and_first_step_invariant(tiny_model_dir, tmp_path):
    heldout = fixed_preference(3)
    overrides = ("dpo.batch_size=4", "dpo.epochs=2", "model.lora_top_layers=1")  # with kept bottom-layer outputs
    run, cfg = dpo_run(tmp_path / "run", tiny_model_dir, mixed_kinds(), heldout, *overrides, sft=True)
    info = train_dpo(run, cfg)

    done = run.done_info("dpo")
    assert {"pairs", "steps", "train_accuracy", "heldout_accuracy", "heldout_pairs", "dropped_ties"} <= set(done)
    assert (done["pairs"], done["dropped_ties"], done["steps"], done["heldout_pairs"]) == (8, 1, 4, 3)
    rows = metrics_rows(run)
    assert [(r["step"], r["epoch"]) for r in rows] == [(1, 1), (2, 1), (3, 2), (4, 2)]
    for key in ("loss", "reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward", "lr"):
        assert all(key in r for r in rows), key
    # the policy starts as the reference: the first step's log-ratios are exactly 0
    first = rows[0]
    assert first["first_step_max_log_ratio"] == 0.0
    assert first["reward_margin"] == 0.0 and first["chosen_reward"] == 0.0 and first["reward_accuracy"] == 0.0
    assert first["loss"] == pytest.approx(0.6931472, abs=1e-6)  # -log sigmoid(0)
    assert rows[-1]["reward_margin"] != 0.0  # and then it moved
    assert not (run.root / "dpo" / "checkpoint.pt").exists()

    # RUN_DIR/dpo/model is an adapter on the SFT model and loads as evaluate.py opens it; its implicit rewards
    # against the SFT model reproduce the accuracies the stage measured
    assert (run.root / "dpo" / "model" / "adapter_config.json").exists()
    policy = LanguageModelRole(open_backbone(cfg, str(run.root / "dpo" / "model")), None, 1.0)
    reference = LanguageModelRole(open_backbone(cfg, sft_model_path(run, cfg)), None, 1.0)
    pairs, _ = preference_pairs(mixed_kinds())
    assert implicit_reward_accuracy(policy, reference, pairs, 4) == pytest.approx(info["train_accuracy"])
    # with the reference's log-probs given (the stage reuses those it computed before training) it does not run
    given = batched_pair_logprobs(reference, pairs, [list(range(len(pairs)))])
    assert implicit_reward_accuracy(policy, None, pairs, 4, given) == pytest.approx(info["train_accuracy"])
    heldout_pairs, _ = preference_pairs(heldout)
    assert implicit_reward_accuracy(policy, reference, heldout_pairs, 4) == pytest.approx(info["heldout_accuracy"])


@pytest.mark.parametrize(
    "overrides",
    [["dpo.loss=dpo", "dpo.beta=0.5"], ["dpo.loss=ipo", "model.lora_r=0"]],
    ids=["dpo-lora", "ipo-full"],
)
def test_training_learns_a_fixed_preference(tiny_model_dir, tmp_path, overrides):
    run, cfg = dpo_run(
        tmp_path / "run",
        tiny_model_dir,
        fixed_preference(4),
        [],
        "dpo.batch_size=4",
        "dpo.epochs=8",
        "dpo.learning_rate=0.01",
        *overrides,
    )
    info = train_dpo(run, cfg)
    rows = metrics_rows(run)
    assert rows[0]["reward_accuracy"] == 0.0 and rows[0]["reward_margin"] == 0.0
    assert rows[-1]["loss"] < 0.7 * rows[0]["loss"], [r["loss"] for r in rows]  # measured: 0.55 (dpo), 0.01 (ipo)
    assert rows[-1]["reward_margin"] > 0
    assert info["train_accuracy"] == 1.0 and info["heldout_pairs"] == 0
    weights = "model.safetensors" if "model.lora_r=0" in overrides else "adapter_model.safetensors"
    assert (run.root / "dpo" / "model" / weights).exists()


def test_gradient_accumulation_takes_the_same_steps_and_the_clip_applies(tiny_model_dir, tmp_path):
    """Each batch of 4 pairs in 2 micro-batches: the losses and statistics of one batch at once."""
    runs = []
    overrides = ("dpo.batch_size=4", "dpo.epochs=3", "dpo.learning_rate=0.01", "dpo.max_grad_norm=0.05")
    for parts in (1, 2):
        accumulate = f"dpo.gradient_accumulation_steps={parts}"
        run, cfg = dpo_run(tmp_path / f"parts{parts}", tiny_model_dir, mixed_kinds(), [], *overrides, accumulate)
        train_dpo(run, cfg)
        runs.append(metrics_rows(run))
    assert len(runs[0]) == len(runs[1]) == 6
    assert runs[1][0]["first_step_max_log_ratio"] < 1e-5
    for one, two in zip(*runs):
        for key in ("loss", "reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward"):
            assert two[key] == pytest.approx(one[key], abs=1e-5), key
    # dpo.max_grad_norm reaches the optimiser step: gradients clipped to a norm of 1e-9 (far under AdamW's eps of
    # 1e-5) barely move the policy
    run, cfg = dpo_run(
        tmp_path / "clipped", tiny_model_dir, mixed_kinds(), [], *overrides[:3], "dpo.max_grad_norm=1e-9"
    )
    train_dpo(run, cfg)
    assert abs(metrics_rows(run)[-1]["reward_margin"]) < 1e-3 * abs(runs[0][-1]["reward_margin"])


class Interrupted(Exception):
    pass


def test_resume_continues_from_the_checkpoint(tiny_model_dir, tmp_path, monkeypatch):
    overrides = ("dpo.batch_size=2", "dpo.epochs=3", "dpo.checkpoint_every=1", "dpo.learning_rate=0.02")
    whole, cfg = dpo_run(tmp_path / "whole", tiny_model_dir, fixed_preference(4), [], *overrides)
    train_dpo(whole, cfg)
    expected = metrics_rows(whole)
    assert len(expected) == 6

    run, cfg = dpo_run(tmp_path / "run", tiny_model_dir, fixed_preference(4), [], *overrides)
    step = dpo_stage.accumulated_step
    calls = []

    def stop_at_the_fourth_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise Interrupted
        return step(*args, **kwargs)

    monkeypatch.setattr(dpo_stage, "accumulated_step", stop_at_the_fourth_step)
    with pytest.raises(Interrupted):
        train_dpo(run, cfg)
    assert (run.root / "dpo" / "checkpoint.pt").exists() and not run.is_done("dpo")
    assert [r["step"] for r in metrics_rows(run)] == [1, 2, 3]

    calls.clear()
    train_dpo(run, cfg)
    assert len(calls) == 3  # steps 4..6 only: it continued, not restarted
    rows = metrics_rows(run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    for got, want in zip(rows, expected):  # the very steps the uninterrupted run took
        assert got["loss"] == pytest.approx(want["loss"], abs=1e-5) and got["lr"] == pytest.approx(want["lr"])
    assert not (run.root / "dpo" / "checkpoint.pt").exists()


@pytest.mark.slow
def test_policy_methods_dpo_runs_dpo_instead_of_ppo(tiny_model_dir, tmp_path):
    from test_pipeline import rlhf

    out = tmp_path / "run"
    rlhf(
        "run",
        "--config",
        str(SMOKE),
        "--out",
        str(out),
        f"model.name_or_path={tiny_model_dir}",
        *THREADS,
        "policy.methods=[dpo]",
    )
    assert (out / "dpo" / "done.json").exists() and not (out / "ppo").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["policies"]) == {"initial", "sft", "dpo", "bon"} and "dpo_vs_initial" in summary["winrates"]
