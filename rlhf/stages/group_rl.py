"""RLOO and GRPO: critic-free policy optimisers on K samples per prompt (issue 19 §2), the loop of PPO
(rlhf/stages/ppo.py) without a value network. Each iteration samples K responses for each of P prompts, and each
response's baseline is its own prompt's other responses:

- RLOO (Ahmadian et al. 2024 §3): per-sequence reward r - beta * KL(pi || pi_ref) summed over the response, advantage
  the reward minus the mean of the K-1 others, REINFORCE loss on the response's summed log-prob;
- GRPO (Shao et al. 2024 §4.1, eq. 3): advantage the score standardised in its group, PPO's clipped ratio per token
  and the k3 KL estimate to the SFT policy in the loss (not in the reward).

Writes RUN_DIR/<rloo|grpo>/{metrics.jsonl,samples.jsonl,model/}: model/ as ppo/model (the policy's adapter on the
SFT model, or with full fine-tuning a plain HF model folder), so the evaluation stage opens it the same way."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from tqdm import tqdm
from transformers import get_linear_schedule_with_warmup

from rlhf.config import RunConfig
from rlhf.config_methods import GroupRLConfig
from rlhf.losses import apply_missing_stop_penalty, masked_mean
from rlhf.models.roles import Episodes, LanguageModelRole
from rlhf.models.saving import ON_SFT, save_policy
from rlhf.policy_losses import (
    grpo_advantages,
    grpo_loss,
    rloo_advantages,
    rloo_policy_loss,
    sequence_kl_penalized_reward,
)
from rlhf.run import MetricsLog, RunDir, keep_logged_rows, seed_everything
from rlhf.stages.optim import load_trainable_state, optimizer_step, trainable_parameters, trainable_state
from rlhf.stages.ppo import chunks
from rlhf.stages.ppo_parts import grad_norm
from rlhf.stages.rollout import Scores, open_policy_roles, prompt_batch, rollout, score, write_samples
from rlhf.tasks import prompt_source, task_and_stop_rule

log = logging.getLogger("rlhf")
METHODS = ("rloo", "grpo")


def check_inputs(stage: str, gc: GroupRLConfig, task) -> None:
    """Reject a reward source the stage cannot train on, and settings out of range."""
    if gc.samples_per_prompt < 2:
        raise ValueError(
            f"{stage}.samples_per_prompt: expected >= 2 (the baseline is the others), got {gc.samples_per_prompt}"
        )
    for name in ("iterations", "prompts_per_batch", "epochs", "minibatch_size", "checkpoint_every"):
        if getattr(gc, name) < 1:
            raise ValueError(f"{stage}.{name}: expected >= 1, got {getattr(gc, name)}")
    if gc.warmup_updates < 0 or gc.beta < 0 or not gc.max_grad_norm > 0 or not gc.clip_range > 0:
        raise ValueError(
            f"{stage}: expected warmup_updates >= 0, beta >= 0, max_grad_norm > 0, clip_range > 0; got "
            f"{gc.warmup_updates}, {gc.beta}, {gc.max_grad_norm}, {gc.clip_range}"
        )
    if gc.reward_source not in ("rm", "gold"):
        raise ValueError(f"{stage}.reward_source: expected rm or gold, got {gc.reward_source!r}")
    if gc.reward_source == "gold" and task.gold_scorer is None:
        raise ValueError(f"{stage}.reward_source=gold: task '{task.name}' has no gold scorer")


def group_prompts(prompts: list[str], iteration: int, gc: GroupRLConfig, seed: int) -> list[str]:
    """The P prompts of iteration `iteration` (0-based, PPO's seeded order), each repeated K times in a row:
    rows p*K .. p*K+K-1 are prompt p's group."""
    K = gc.samples_per_prompt
    return [p for p in prompt_batch(prompts, iteration, gc.prompts_per_batch, seed) for _ in range(K)]


def total_updates(gc: GroupRLConfig) -> int:
    minibatches = math.ceil(gc.prompts_per_batch * gc.samples_per_prompt / gc.minibatch_size)
    return gc.iterations * gc.epochs * math.ceil(minibatches / gc.gradient_accumulation_steps)


def optimizer_and_schedule(params: list[torch.nn.Parameter], gc: GroupRLConfig):
    """AdamW (eps 1e-5, no weight decay), warmed up linearly over warmup_updates steps and annealed linearly to 0
    over all of the stage's updates."""
    optimizer = torch.optim.AdamW(params, lr=gc.learning_rate, eps=1e-5, weight_decay=0.0)
    return optimizer, get_linear_schedule_with_warmup(optimizer, gc.warmup_updates, total_updates(gc))


@dataclass
class GroupBatch:
    """What the update reads: log-probs [B, R] of the policy before the update and of the reference, the summed
    per-token log-ratio to the reference [B] (PPO's `kl`), the reward each advantage was computed from [B]
    (RLOO: the KL-penalised sequence reward; GRPO: the score) and the advantages [B]."""

    old_logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    kl: torch.Tensor
    rewards: torch.Tensor
    advantages: torch.Tensor


@torch.no_grad()
def logprobs_in_minibatches(role: LanguageModelRole, episodes: Episodes, minibatch_size: int) -> torch.Tensor:
    """Log-probs [B, R] computed in the minibatches of the first epoch (in order), so that its ratio is exactly 1."""
    return torch.cat([role.logprobs(episodes.select(s)) for s in chunks(len(episodes.has_stop), minibatch_size)])


def group_advantages(
    stage: str, scores: torch.Tensor, old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask, gc: GroupRLConfig
) -> GroupBatch:
    """RLOO: sequence rewards r - beta * sum_t log(pi/pi_ref) (Ahmadian §3), leave-one-out advantages over each
    prompt's K rows. GRPO: the scores standardised in their group (Shao §4.1.2; the KL enters the loss)."""
    P, K = gc.prompts_per_batch, gc.samples_per_prompt
    beta = gc.beta if stage == "rloo" else 0.0
    rewards, kl = sequence_kl_penalized_reward(scores, old_logprobs, ref_logprobs, mask, beta)
    advantages = rloo_advantages if stage == "rloo" else grpo_advantages
    return GroupBatch(old_logprobs, ref_logprobs, kl, rewards, advantages(rewards.view(P, K)).flatten())


def minibatch_loss(
    stage: str, logprobs: torch.Tensor, gb: GroupBatch, idx: slice | torch.Tensor, mask, gc: GroupRLConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of the minibatch `idx`. RLOO with one epoch: REINFORCE on the summed log-prob (the paper's, on-policy);
    with more epochs the samples are off-policy after the first step, so the ratio-clipped form: grpo_loss with
    beta 0 (the KL is in RLOO's reward already), whose per-token mean weighs each response by 1/|y|. GRPO: grpo_loss
    with the k3 KL to the reference."""
    old, ref, adv, m = gb.old_logprobs[idx], gb.ref_logprobs[idx], gb.advantages[idx], mask[idx]
    if stage == "rloo" and gc.epochs == 1:
        return rloo_policy_loss(logprobs, adv, m), {}
    beta = gc.beta if stage == "grpo" else 0.0
    loss, stats = grpo_loss(logprobs, old, ref, adv, m, gc.clip_range, beta)
    stats["k3_kl"] = stats.pop("kl")  # mean per-token k3; the row's `kl` is PPO's summed log-ratio
    return loss, stats


def update(
    stage: str,
    policy: LanguageModelRole,
    params: list[torch.nn.Parameter],
    episodes: Episodes,
    gb: GroupBatch,
    optimizer,
    scheduler,
    gc: GroupRLConfig,
) -> dict[str, list[float]]:
    """`epochs` passes over the batch in minibatches of minibatch_size rows (the first in order, later ones
    shuffled), one optimiser step per gradient_accumulation_steps minibatches (and at the end of each epoch), the
    gradient norm clipped to max_grad_norm. Returns each statistic's values over the minibatches (grad_norm: over
    the steps, before clipping)."""
    mask, n = episodes.response_mask, len(episodes.has_stop)
    minibatches, accumulate = chunks(n, gc.minibatch_size), gc.gradient_accumulation_steps
    stats: dict[str, list[float]] = {}
    for epoch in range(gc.epochs):
        perm = torch.arange(n) if epoch == 0 else torch.randperm(n)
        for k, s in enumerate(minibatches):
            idx = perm[s]
            logprobs, entropy = policy.logprobs(episodes.select(idx), with_entropy=True)
            if epoch == 0 and k == 0:  # nothing has changed yet: the ratio must be exactly 1
                gap = (logprobs - gb.old_logprobs[idx]).abs().max().item()
                assert gap < 1e-4, f"{stage}: ratio is not 1 on the first minibatch (max |log ratio| = {gap})"
                stats["first_minibatch_max_log_ratio"] = [gap]
            loss, measured = minibatch_loss(stage, logprobs, gb, idx, mask, gc)
            measured |= {"loss": loss.item(), "entropy": masked_mean(entropy.detach(), mask[idx]).item()}
            for key, value in measured.items():
                stats.setdefault(key, []).append(value)
            (loss / accumulate if accumulate > 1 else loss).backward()
            if (k + 1) % accumulate == 0 or k + 1 == len(minibatches):
                stats.setdefault("grad_norm", []).append(grad_norm(params))
                optimizer_step(None, params, optimizer, scheduler, gc.max_grad_norm)
    return stats


def log_row(iteration: int, episodes: Episodes, scores: Scores, gb: GroupBatch, stats: dict, gc, lr: float) -> dict:
    """The metrics of one iteration (1-based `iteration`), as metrics.jsonl logs them."""
    mask, has_stop, K = episodes.response_mask, episodes.has_stop, gc.samples_per_prompt
    groups = scores.penalised.view(-1, K)
    row = {
        "iteration": iteration,
        "episodes": iteration * len(has_stop),
        "rm_score": scores.reward.mean().item(),
        "score": scores.penalised.mean().item(),
        "kl": gb.kl.mean().item(),
        "reward": gb.rewards.mean().item(),
        "group_score_std": groups.std(dim=1).mean().item(),
        "flat_groups": int((groups == groups[:, :1]).all(dim=1).sum()),  # groups whose advantages are all 0
        "response_length": mask.sum(-1).float().mean().item(),
        "no_stop_count": int((~has_stop).sum()),
        "lr": lr,
        **{k: sum(v) / len(v) for k, v in stats.items()},
    }
    if scores.gold is not None:  # the simulated task's gold reward (trained on only when reward_source=gold)
        gold = torch.tensor(scores.gold, dtype=torch.float32)
        row["gold_reward"] = gold.mean().item()
        row["gold_score"] = apply_missing_stop_penalty(gold, has_stop.cpu(), gc.missing_stop_penalty).mean().item()
    return row


def train_group_rl(run: RunDir, cfg: RunConfig, stage: str) -> dict:
    """RLOO or GRPO (`stage`), one iteration at a time as train_ppo: prompts, rollout, score, log-probs,
    advantages, update, log; resumes from its checkpoint."""
    assert stage in METHODS, stage
    gc: GroupRLConfig = getattr(cfg, stage)
    if run.processes.parallel:
        raise ValueError(f"{stage} runs in one process; start it without a launcher (accelerate launch with 1 process)")
    seed_everything(cfg.seed + 3)  # PPO's seed: the same prompt order and sampling draws from the same SFT policy
    # the roles: policy (adapter "policy" or a copy), reference (SFT), reward model unless the gold scorer trains it
    roles = open_policy_roles(run, cfg, with_reward=gc.reward_source == "rm")
    policy, reference, reward = roles.policy, roles.reference, roles.reward
    params = trainable_parameters(policy.backbone, policy.adapter)
    task, response_length, stop_rule = task_and_stop_rule(cfg, roles.base.tokenizer)
    check_inputs(stage, gc, task)
    prompts = [p.text for p in task.load_prompts("train", n=None, source=prompt_source(cfg), seed=cfg.seed + 3)]
    gold_scorer = task.gold_scorer if gc.reward_source == "gold" or gc.log_gold_reward else None

    optimizer, scheduler = optimizer_and_schedule(params, gc)
    ckpt = run.load_checkpoint(stage)
    if ckpt is not None:
        load_trainable_state(policy.backbone, policy.adapter, ckpt["policy"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
    start = ckpt["iteration"] if ckpt else 0
    metrics = MetricsLog(run, stage, resume_step=start if ckpt else None, step_key="iteration")
    if run.writer:  # samples of iterations past the checkpoint were logged by an interrupted run: drop them
        keep_logged_rows(run.stage(stage) / "samples.jsonl", "iteration", start if ckpt else None)

    bar = tqdm(total=gc.iterations, initial=start, desc=stage, leave=False, disable=not run.writer)
    for iteration in range(start, gc.iterations):
        # 1. P prompts in PPO's seeded order (so resume continues it), each repeated K times, prompt-major
        batch_prompts = group_prompts(prompts, iteration, gc, cfg.seed)
        # 2. one response per row from the current policy
        batch = rollout(policy, reference, reward, batch_prompts, response_length, stop_rule)
        episodes = batch.episodes
        # 3. score with the reward model (or the gold scorer); no stop, a fixed penalty instead (Ziegler §3.1.2)
        scores = score(batch, reward, gold_scorer, gc.missing_stop_penalty)
        # 4. log-probs of the policy before the update ("old") and of the reference, no gradients
        old_logprobs = logprobs_in_minibatches(policy, episodes, gc.minibatch_size)
        ref_logprobs = logprobs_in_minibatches(reference, episodes, gc.minibatch_size)
        # 5. advantages from each prompt's group: RLOO leave-one-out of KL-penalised rewards, GRPO standardised scores
        gb = group_advantages(stage, scores.penalised, old_logprobs, ref_logprobs, episodes.response_mask, gc)
        # 6. epochs over minibatches: RLOO's REINFORCE loss (clipped when epochs > 1), GRPO's clipped loss + k3 KL
        stats = update(stage, policy, params, episodes, gb, optimizer, scheduler, gc)

        # 7. log, samples (the first group or four rows), checkpoint
        row = log_row(iteration + 1, episodes, scores, gb, stats, gc, scheduler.get_last_lr()[0])
        metrics.write(row)
        if run.writer:
            samples = (batch.prompts, batch.texts, scores.penalised.tolist())
            write_samples(run.stage(stage) / "samples.jsonl", iteration + 1, *samples, n=max(4, gc.samples_per_prompt))
        i, length = row["iteration"], row["response_length"]
        log.info("%s %d/%d score %.3f kl %.2f len %.1f", stage, i, gc.iterations, row["score"], row["kl"], length)
        bar.update(1)
        if (iteration + 1) % gc.checkpoint_every == 0 and iteration + 1 < gc.iterations:
            state = {
                "policy": trainable_state(policy.backbone, policy.adapter),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "iteration": iteration + 1,
            }
            run.save_checkpoint(stage, state)
    bar.close()
    metrics.close()

    # 8. save the policy as PPO does (its adapter on the SFT model, or the full model)
    episodes_total = gc.iterations * gc.prompts_per_batch * gc.samples_per_prompt
    info = {"iterations": gc.iterations, "episodes": episodes_total, "reward_source": gc.reward_source}
    if run.writer:
        save_policy(policy.backbone, policy.adapter, run.stage(stage) / "model", ON_SFT)
        run.mark_done(stage, info)
        (run.stage(stage) / "checkpoint.pt").unlink(missing_ok=True)
    return info


def train_rloo(run: RunDir, cfg: RunConfig) -> dict:
    return train_group_rl(run, cfg, "rloo")


def train_grpo(run: RunDir, cfg: RunConfig) -> dict:
    return train_group_rl(run, cfg, "grpo")
