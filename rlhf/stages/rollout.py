"""One batch of experience for a policy optimiser: prompts in a seeded order, one response each sampled from the
current policy, and the scores the policy is trained on, from the reward model or the gold scorer, with a fixed
penalty for a response that never stopped; and the roles that take part (policy, reference, reward model). PPO
(rlhf/stages/ppo.py), RLOO and GRPO (rlhf/stages/group_rl.py) gather their batches here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from rlhf.config import RunConfig
from rlhf.losses import apply_missing_stop_penalty, masked_whiten
from rlhf.models.loading import load_reward_model, open_backbone, sft_model_path
from rlhf.models.roles import Backbone, Episodes, LanguageModelRole, ScalarRole
from rlhf.models.sampling import StopRule, prefix_reuse, sample_episodes, uniform_draws
from rlhf.processes import Processes
from rlhf.run import RunDir, append_jsonl


@dataclass
class PolicyRoles:
    """The roles of an on-policy optimiser: the policy (trained), the reference (the SFT policy, frozen) and the
    reward model (None when the policy is trained on the gold scorer). `base` is the SFT model they were opened
    from: with LoRA the one backbone all of them share, with full fine-tuning the reward model's copy (or the
    reference's when there is no reward model)."""

    base: Backbone
    policy: LanguageModelRole
    reference: LanguageModelRole
    reward: ScalarRole | None


def open_policy_roles(run: RunDir, cfg: RunConfig, with_reward: bool) -> PolicyRoles:
    """With LoRA one frozen SFT base: the reward model is its adapter "reward" (loaded first), the policy a new
    adapter "policy" that starts equal to SFT (LoRA B = 0), the reference the base with adapters off. With full
    fine-tuning separate copies: the reward model on the base, the policy and the reference each a copy of SFT (the
    reference is the base itself when there is no reward model)."""
    sft_path, T = sft_model_path(run, cfg), cfg.task.temperature
    base = open_backbone(cfg, sft_path)
    if base.is_lora:
        reward = load_reward_model(run, base, "reward") if with_reward else None
        base.add_adapter("policy", cfg.model.policy_lora_r, cfg.model.policy_lora_top_layers)
        return PolicyRoles(base, LanguageModelRole(base, "policy", T), LanguageModelRole(base, None, T), reward)
    reward = load_reward_model(run, base) if with_reward else None
    policy = LanguageModelRole(open_backbone(cfg, sft_path), None, T)
    reference = LanguageModelRole(base if reward is None else open_backbone(cfg, sft_path), None, T)
    return PolicyRoles(base, policy, reference, reward)


def prompt_batch(prompts: list[str], iteration: int, batch_size: int, seed: int) -> list[str]:
    """The prompts of iteration `iteration` (0-based): consecutive slices of a seeded permutation of `prompts`, a new
    permutation for each pass over them, so that a resumed run samples the prompts the uninterrupted run would."""
    generator = torch.Generator().manual_seed(seed * 7919 + iteration * batch_size // len(prompts))
    order = torch.randperm(len(prompts), generator=generator)
    first = iteration * batch_size % len(prompts)
    return [prompts[order[(first + j) % len(prompts)]] for j in range(batch_size)]


@dataclass(frozen=True)
class BatchRows:
    """A batch of `size` rows shared out among the run's processes, strided (rlhf/processes.py): this process
    holds the global rows `mine`, at local positions 0, 1, ... Every statistic of the whole batch (advantage
    whitening, the KL that adapts beta, the logged means) is taken over the gathered rows, so W processes compute
    what one process computes; with one process every method is the identity."""

    size: int
    processes: Processes = Processes()

    @property
    def mine(self) -> list[int]:
        return self.processes.rows(self.size)

    def shard(self, items: list) -> list:
        assert len(items) == self.size, (len(items), self.size)
        return self.processes.shard(items)

    def uniforms(self, response_length: int) -> torch.Tensor:
        """This process's rows of the uniform draws one process would make for the whole batch."""
        return uniform_draws(self.size, response_length)[self.mine]

    def local(self, rows: torch.Tensor) -> list[int]:
        """The local positions of this process's rows among the global `rows`, in their order."""
        W, r = self.processes.world_size, self.processes.rank
        return [i // W for i in rows.tolist() if i % W == r]

    def gather(self, local: torch.Tensor) -> torch.Tensor:
        """The whole batch's rows of a tensor of which this process holds its rows, on this tensor's device."""
        return self.processes.tensor_in_order(local, self.size).to(local.device) if self.processes.parallel else local

    def gather_list(self, local: list) -> list:
        return self.processes.in_order(local, self.size)

    def first_epoch_minibatches(self, minibatch_size: int) -> list[list[int]]:
        """The local positions of this process's rows of each minibatch of the first PPO epoch (taken in order),
        consecutive blocks of the local rows; empty ones left out."""
        blocks = [
            self.local(torch.arange(i, min(i + minibatch_size, self.size))) for i in range(0, self.size, minibatch_size)
        ]
        return [b for b in blocks if b]

    def whiten(self, x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
        """`masked_whiten` over the whole batch; this process's rows of the result."""
        if not self.processes.parallel:
            return masked_whiten(x, mask, shift_mean)
        return masked_whiten(self.gather(x), self.gather(mask), shift_mean)[self.mine]

    def combine_stats(self, per_minibatch: list[tuple[float, dict[str, float]]]) -> dict[str, list[float]]:
        """Each minibatch's statistics over the whole minibatch, from every process's (token share, its statistics
        on its rows): token-weighted sums of masked means, and the largest of the maxima. With one process the
        share is 1 and these are the statistics themselves."""
        everyone = self.processes.in_order([per_minibatch], self.processes.world_size)  # one list per process
        stats: dict[str, list[float]] = {}
        for parts in zip(*everyone):
            keys = [k for share, part in parts for k in part]
            for key in dict.fromkeys(keys):
                values = [(share, part[key]) for share, part in parts if key in part]
                if key in ("ratio_max", "first_minibatch_max_log_ratio"):
                    stats.setdefault(key, []).append(max(v for _, v in values))
                elif key in ("ptx_nll", "policy_grad_norm", "value_grad_norm"):  # the same on every process
                    stats.setdefault(key, []).append(values[0][1])
                else:
                    stats.setdefault(key, []).append(sum(share * v for share, v in values))
        return stats


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
    uniforms: torch.Tensor | None = None,
) -> Rollout:
    """One response of `policy` per prompt (picked by `uniforms`, default `uniform_draws`). The sampling loop keeps
    the frozen bottom layers' output for the reference (and the value network on its backbone) and the reward
    model's input for `reward`, the reward model that will score the batch (None when the gold scorer does), when
    they compute the same bottom layers."""
    reuse = prefix_reuse(policy, reference, reward)
    episodes, texts = sample_episodes(policy, prompts, response_length, stop_rule, uniforms, reuse=reuse)
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


def write_samples(path, iteration: int, prompts: list[str], texts: list[str], scores: list[float], n: int = 4) -> None:
    """The first `n` (prompt, response, score) of a batch, appended to RUN_DIR/<stage>/samples.jsonl."""
    rows = [
        {"iteration": iteration, "prompt": p, "response": t, "score": sc} for p, t, sc in zip(prompts, texts, scores)
    ]
    append_jsonl(path, rows[:n])
