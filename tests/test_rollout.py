"""A batch of experience for PPO, piece by piece: the seeded prompt order, scoring with the missing-stop penalty,
what the sampling loop keeps for which role, the Andon cord before online collection, and the logged row."""

from __future__ import annotations

import pytest
import torch

from rlhf.models.provision import load_causal_lm, load_tokenizer
from rlhf.models.roles import Backbone, Episodes, LanguageModelRole, ScalarRole
from rlhf.models.sampling import PrefixReuse, prefix_reuse
from rlhf.stages.ppo import Advantages, before_iteration, log_row
from rlhf.stages.rollout import Rollout, Scores, prompt_batch, score


def backbone_with(tiny_model_dir, top_layers: int, *adapters: str) -> Backbone:
    tok = load_tokenizer(str(tiny_model_dir))
    bb = Backbone(
        load_causal_lm(str(tiny_model_dir), tok),
        tok,
        lora_r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj"],
        top_layers=top_layers,
    )
    for name in adapters:
        bb.add_adapter(name)
    return bb


def test_prompt_batches_walk_a_seeded_permutation_pass_by_pass():
    prompts = [f"p{i}" for i in range(10)]
    first, second, third = (prompt_batch(prompts, it, 4, seed=0) for it in range(3))
    assert len(set(first + second)) == 8  # no prompt twice within a pass
    assert set(first + second + third[:2]) == set(prompts)  # the third batch finishes the pass, then wraps
    assert prompt_batch(prompts, 1, 4, seed=0) == second  # a resumed run draws the same batch
    assert prompt_batch(prompts, 0, 10, seed=0) != prompt_batch(prompts, 0, 10, seed=1)


def fake_rollout(has_stop: list[bool]) -> Rollout:
    B = len(has_stop)
    episodes = Episodes(
        torch.ones(B, 2, dtype=torch.long),
        torch.ones(B, 2, dtype=torch.long),
        torch.ones(B, 3, dtype=torch.long),
        torch.ones(B, 3),
        torch.tensor(has_stop),
    )
    return Rollout([f"p{i}" for i in range(B)], [f"r{i}" for i in range(B)], episodes)


class FixedReward:
    """A stand-in reward model: fixed scores, and a record of what it was asked."""

    def __init__(self, scores: list[float]):
        self.scores, self.calls = torch.tensor(scores), []

    def score(self, prompts, responses, episodes=None):
        self.calls.append((prompts, responses, episodes))
        return self.scores


def test_score_uses_the_reward_model_or_gold_and_penalises_a_missing_stop():
    batch = fake_rollout([True, False, True])
    rm = FixedReward([0.5, 2.0, -0.25])
    by_rm = score(batch, rm, None, missing_stop_penalty=-1.5)
    assert by_rm.reward.tolist() == [0.5, 2.0, -0.25] and by_rm.penalised.tolist() == [0.5, -1.5, -0.25]
    assert by_rm.gold is None and rm.calls == [(batch.prompts, batch.texts, batch.episodes)]  # the episodes go along
    gold = lambda prompts, texts: [float(len(t)) + 0.5 for t in texts]  # noqa: E731
    by_gold = score(batch, None, gold, missing_stop_penalty=-1.0)
    assert by_gold.reward.tolist() == [2.5, 2.5, 2.5] and by_gold.penalised.tolist() == [2.5, -1.0, 2.5]
    logged = score(batch, rm, gold, missing_stop_penalty=-1.0)  # the gold reward logged beside the RM's
    assert logged.gold == [2.5, 2.5, 2.5] and logged.reward.tolist() == [0.5, 2.0, -0.25]
    with pytest.raises(AssertionError):
        score(batch, None, None, missing_stop_penalty=-1.0)


def test_prefix_reuse_is_decided_from_the_roles(tiny_model_dir):
    bb = backbone_with(tiny_model_dir, 1, "policy", "reward")
    policy, reference, rm = (
        LanguageModelRole(bb, "policy", 0.7),
        LanguageModelRole(bb, None, 0.7),
        ScalarRole(bb, "reward"),
    )
    assert prefix_reuse(policy, reference, rm) == PrefixReuse(keep_prefix=True, score_from_sampling=True)  # PPO
    assert prefix_reuse(policy, reference, None) == PrefixReuse(
        keep_prefix=True, score_from_sampling=False
    )  # gold reward
    assert prefix_reuse(reference, reference, rm) == PrefixReuse(
        keep_prefix=False, score_from_sampling=True
    )  # its own reference
    assert prefix_reuse(policy) == PrefixReuse()
    other = backbone_with(tiny_model_dir, 1, "reward")  # the same bottom layers on another copy
    assert prefix_reuse(policy, reward=ScalarRole(other, "reward")).score_from_sampling
    with torch.no_grad():
        other.causal_lm().model.layers[0].mlp.up_proj.weight[0, 0] += 1e-3
    assert not prefix_reuse(policy, reward=ScalarRole(other, "reward")).score_from_sampling
    everywhere = backbone_with(tiny_model_dir, 0, "policy", "reward")  # adapters on every layer: nothing to share
    assert (
        prefix_reuse(
            LanguageModelRole(everywhere, "policy", 0.7),
            LanguageModelRole(everywhere, None, 0.7),
            ScalarRole(everywhere, "reward"),
        )
        == PrefixReuse()
    )


class RecordingOnline:
    def __init__(self):
        self.calls = []

    def before_iteration(self, iteration, should_stop):
        self.calls.append(iteration)
        return {"labels_required": 3}, should_stop()


def test_the_andon_cord_is_checked_before_online_collection_pushes_anything():
    online = RecordingOnline()
    assert before_iteration(4, online, lambda: "responses look broken") == ({}, "responses look broken")
    assert online.calls == []  # stopped before any query was pushed
    assert before_iteration(4, online, lambda: None) == ({"labels_required": 3}, None)
    assert online.calls == [4]
    assert before_iteration(4, None, lambda: None) == ({}, None)
    assert before_iteration(4, None, lambda: "stop") == ({}, "stop")


def test_log_row_keeps_every_metric_in_order():
    batch = fake_rollout([True, False])
    scores = Scores(torch.tensor([1.0, 3.0]), torch.tensor([1.0, -1.0]), gold=[0.5, 1.5])
    kl = torch.tensor([[0.1, 0.2, 0.0], [0.3, 0.0, 0.0]])
    values, returns = torch.zeros(2, 3), torch.tensor([[1.0, 2.0, 0.0], [0.5, 0.0, 0.0]])
    adv = Advantages(torch.zeros(2, 3), values, kl, torch.zeros(2, 3), returns)
    stats = {
        "first_minibatch_max_log_ratio": [0.0],
        "ratio_max": [1.0, 1.25],
        "clipfrac": [0.0, 0.5],
        "entropy": [2.0, 3.0],
    }
    mask, has_stop = batch.episodes.response_mask, batch.episodes.has_stop
    row = log_row(
        7,
        mask,
        has_stop,
        scores,
        adv,
        stats,
        beta=0.5,
        lr=1e-3,
        missing_stop_penalty=-2.0,
        online_row={"labels_required": 9},
    )
    assert list(row) == [
        "iteration",
        "rm_score",
        "score",
        "non_score_reward",
        "kl",
        "beta",
        "response_length",
        "no_stop_count",
        "explained_variance",
        "lr",
        "clipfrac",
        "entropy",
        "ratio_max",
        "first_minibatch_max_log_ratio",
        "labels_required",
        "gold_reward",
        "gold_score",
    ]
    assert row["iteration"] == 7 and row["rm_score"] == 2.0 and row["score"] == 0.0 and row["no_stop_count"] == 1
    assert row["kl"] == pytest.approx(0.3) and row["non_score_reward"] == pytest.approx(-0.15)
    assert row["ratio_max"] == 1.25 and row["clipfrac"] == 0.25 and row["entropy"] == 2.5
    assert row["gold_reward"] == 1.0 and row["gold_score"] == pytest.approx((0.5 - 2.0) / 2)
