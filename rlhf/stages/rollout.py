"""One batch of experience for a policy optimiser: prompts in a seeded order, one response each sampled from the
current policy, and the scores the policy is trained on, from the reward model or the gold scorer, with a fixed
penalty for a response that never stopped. PPO (rlhf/stages/ppo.py) gathers its batches here; another optimiser
of the same loop (RLOO, GRPO) would too."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from rlhf.losses import apply_missing_stop_penalty
from rlhf.models.roles import Episodes, LanguageModelRole, ScalarRole
from rlhf.models.sampling import StopRule, prefix_reuse, sample_episodes


def prompt_batch(prompts: list[str], iteration: int, batch_size: int, seed: int) -> list[str]:
    """The prompts of iteration `iteration` (0-based): consecutive slices of a seeded permutation of `prompts`, a new
    permutation for each pass over them, so that a resumed run samples the prompts the uninterrupted run would."""
    generator = torch.Generator().manual_seed(seed * 7919 + iteration * batch_size // len(prompts))
    order = torch.randperm(len(prompts), generator=generator)
    first = iteration * batch_size % len(prompts)
    return [prompts[order[(first + j) % len(prompts)]] for j in range(batch_size)]


@dataclass
class Rollout:
    """A batch of prompts with one response each: the texts, and the episodes (tokens, masks, log-probs of the
    sampling loop, and what it kept for the other roles)."""

    prompts: list[str]
    texts: list[str]
    episodes: Episodes


def rollout(
    policy: LanguageModelRole,
    reference: LanguageModelRole,
    reward: ScalarRole | None,
    prompts: list[str],
    response_length: int,
    stop_rule: StopRule,
) -> Rollout:
    """One response of `policy` per prompt. The sampling loop keeps the frozen bottom layers' output for the
    reference (and the value network on its backbone) and the reward model's input for `reward`, the reward model
    that will score the batch (None when the gold scorer does), when they compute the same bottom layers."""
    reuse = prefix_reuse(policy, reference, reward)
    episodes, texts = sample_episodes(policy, prompts, response_length, stop_rule, reuse=reuse)
    return Rollout(prompts, texts, episodes)


@dataclass
class Scores:
    """The scores of a rollout: `reward` [B] the reward model's normalised scores (the gold scores when the policy
    is trained on gold), `penalised` [B] the same with the missing-stop penalty, what the policy is trained on,
    and `gold` the gold scorer's scores when they were asked for, else None."""

    reward: torch.Tensor
    penalised: torch.Tensor
    gold: list[float] | None


@torch.no_grad()
def score(
    batch: Rollout,
    reward: ScalarRole | None,
    gold_scorer: Callable[[list[str], list[str]], list[float]] | None,
    missing_stop_penalty: float,
) -> Scores:
    """Score a rollout with the reward model `reward` (from the sampling loop's output when it was kept for it) or,
    when `reward` is None, with `gold_scorer`; `gold_scorer` also gives the gold scores when `reward` is not None.
    A response that never stopped scores `missing_stop_penalty` instead (Ziegler §3.1.2)."""
    assert reward is not None or gold_scorer is not None, "nothing to score with"
    gold = gold_scorer(batch.prompts, batch.texts) if gold_scorer is not None else None
    device = batch.episodes.has_stop.device
    scores = (
        torch.tensor(gold, device=device)
        if reward is None
        else reward.score(batch.prompts, batch.texts, batch.episodes)
    )
    return Scores(scores, apply_missing_stop_penalty(scores, batch.episodes.has_stop, missing_stop_penalty), gold)
