"""Critic-free and offline policy losses beside PPO: RLOO, GRPO, DPO and IPO (issue 19 §2), one small pure
function per equation, in the style of rlhf/losses.py."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlhf.losses import _bool_mask, _require_ndim, _require_shape, kl_penalized_rewards, last_token_index, masked_mean

# ---------------------------------------------------------------------------------------------
# critic-free and offline policy losses: RLOO, GRPO, DPO, IPO


def sequence_kl_penalized_reward(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence reward r - beta * sum_t (logp_t - ref_t) over real tokens; returns (rewards [B], kl [B])."""
    if beta < 0:
        raise ValueError(f"beta: expected >= 0, got {beta}")
    # the per-token KL of PPO's penalty (shape and mask checks there), summed over each response
    _, kl = kl_penalized_rewards(scores, logprobs.float(), ref_logprobs.float(), mask, beta)
    kl = kl.sum(dim=1)
    # Ahmadian et al. 2024 (RLOO) §3: R(x, y) = r(x, y) - beta log(pi(y|x) / pi_ref(y|x)), one reward per sequence
    return scores.float() - beta * kl, kl


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """Leave-one-out advantages per prompt: [P, K] rewards -> [P, K], r_i minus the mean of the other K-1."""
    _require_ndim(rewards, 2, "rewards")
    group = rewards.shape[1]
    if group < 2:
        raise ValueError(f"rewards: expected K >= 2 samples per prompt for a leave-one-out baseline, got K={group}")
    rewards = rewards.float()
    baseline = (rewards.sum(dim=1, keepdim=True) - rewards) / (group - 1)
    # Ahmadian et al. 2024, RLOO estimator: A_i = R(y_i, x) - 1/(k-1) sum_{j != i} R(y_j, x)
    return rewards - baseline


def rloo_policy_loss(logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """REINFORCE loss -A_i * log pi(y_i|x) with log pi(y_i|x) the SUM of the response's token log-probs,
    then the MEAN over the B sequences (= the paper's 1/k per prompt, averaged over prompts). The
    advantages are treated as constants (detached)."""
    _require_ndim(logprobs, 2, "logprobs")
    _require_shape(advantages, (logprobs.shape[0],), "advantages")
    keep = _bool_mask(mask, logprobs)
    last_token_index(keep)
    sequence_logprob = torch.where(keep, logprobs.float(), torch.zeros_like(logprobs, dtype=torch.float32)).sum(dim=1)
    # Ahmadian et al. 2024, RLOO estimator: grad = 1/k sum_i A_i grad log pi(y_i|x)
    return -(advantages.detach().float() * sequence_logprob).mean()


def grpo_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Group-normalised advantages: [P, G] rewards -> [P, G], (r - group mean) / (group std + eps), with
    the UNBIASED (n-1) group std, as torch.std's default; a group of equal rewards gives 0."""
    _require_ndim(rewards, 2, "rewards")
    group = rewards.shape[1]
    if group < 2:
        raise ValueError(f"rewards: expected G >= 2 samples per prompt for a group std, got G={group}")
    if not eps > 0:
        raise ValueError(f"eps: expected > 0, got {eps}")
    rewards = rewards.float()
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True, correction=1)
    # Shao et al. 2024 (DeepSeekMath) §4.1.2: A_i = (r_i - mean(r)) / std(r); eps (not in the paper) guards std = 0
    return (rewards - mean) / (std + eps)


def grpo_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token unbiased KL estimate k3 >= 0 of KL(pi || pi_ref) at the sampled tokens: [B,T] -> [B,T]."""
    _require_ndim(logprobs, 2, "logprobs")
    _require_shape(ref_logprobs, tuple(logprobs.shape), "ref_logprobs")
    log_ratio = ref_logprobs.float() - logprobs.float()
    # Shao et al. 2024 (DeepSeekMath) eq. 4: D_KL = pi_ref/pi - log(pi_ref/pi) - 1
    return torch.exp(log_ratio) - log_ratio - 1.0


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float = 0.2,
    beta: float = 0.04,
) -> tuple[torch.Tensor, dict[str, float]]:
    """GRPO loss: per token -min(ratio A_i, clip(ratio) A_i) + beta * k3, with the sequence advantage A_i
    broadcast to its tokens; averaged over each sequence's real tokens (1/|o_i|), then over sequences.
    Stats: clipfrac, kl (mean k3 per sequence, averaged), ratio_mean (token means)."""
    _require_ndim(logprobs, 2, "logprobs")
    _require_shape(old_logprobs, tuple(logprobs.shape), "old_logprobs")
    _require_shape(ref_logprobs, tuple(logprobs.shape), "ref_logprobs")
    _require_shape(advantages, (logprobs.shape[0],), "advantages")
    if not clip_range > 0:
        raise ValueError(f"clip_range: expected > 0, got {clip_range}")
    if beta < 0:
        raise ValueError(f"beta: expected >= 0, got {beta}")
    keep = _bool_mask(mask, logprobs)
    last_token_index(keep)
    zeros = torch.zeros_like(logprobs, dtype=torch.float32)
    token_advantages = advantages.detach().float().unsqueeze(1).expand_as(zeros)
    ratio = torch.exp(torch.where(keep, logprobs.float() - old_logprobs.float(), zeros))
    unclipped = -token_advantages * ratio
    clipped = -token_advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    # padded positions enter k3 as (0, 0) -> exactly 0: a huge padded log-ratio cannot overflow exp into a nan gradient
    kl = grpo_kl(torch.where(keep, logprobs.float(), zeros), torch.where(keep, ref_logprobs.float(), zeros))
    per_token = torch.maximum(unclipped, clipped) + beta * kl
    # Shao et al. 2024 (DeepSeekMath) eq. 3: J = 1/G sum_i 1/|o_i| sum_t [min(ratio A, clip(ratio) A) - beta D_KL]
    loss = masked_mean(per_token, keep, dim=1).mean()
    with torch.no_grad():
        stats = {
            "clipfrac": float(masked_mean((clipped > unclipped).float(), keep, dim=1).mean()),
            "kl": float(masked_mean(kl, keep, dim=1).mean()),
            "ratio_mean": float(masked_mean(ratio, keep, dim=1).mean()),
        }
    return loss, stats


def _preference_log_ratios(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check four [B] sequence log-prob tensors; return (chosen log-ratio, rejected log-ratio) in float32."""
    _require_ndim(policy_chosen_logps, 1, "policy_chosen_logps")
    if policy_chosen_logps.numel() == 0:
        raise ValueError("policy_chosen_logps: expected at least one pair")
    shape = tuple(policy_chosen_logps.shape)
    _require_shape(policy_rejected_logps, shape, "policy_rejected_logps")
    _require_shape(ref_chosen_logps, shape, "ref_chosen_logps")
    _require_shape(ref_rejected_logps, shape, "ref_rejected_logps")
    chosen = policy_chosen_logps.float() - ref_chosen_logps.detach().float()
    rejected = policy_rejected_logps.float() - ref_rejected_logps.detach().float()
    return chosen, rejected


def _preference_stats(chosen: torch.Tensor, rejected: torch.Tensor, scale: float) -> dict[str, float]:
    with torch.no_grad():
        chosen_rewards, rejected_rewards = scale * chosen, scale * rejected
        return {
            "reward_accuracy": float((chosen_rewards > rejected_rewards).float().mean()),
            "reward_margin": float((chosen_rewards - rejected_rewards).mean()),
            "chosen_reward": float(chosen_rewards.mean()),
            "rejected_reward": float(rejected_rewards.mean()),
        }


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
) -> tuple[torch.Tensor, dict[str, float]]:
    """DPO loss over B pairs of sequence log-probs (sums over response tokens), mean over pairs.
    Stats use the implicit rewards beta * log(pi/pi_ref): reward_accuracy (share with chosen > rejected,
    ties count 0), reward_margin, chosen_reward, rejected_reward (means). The reference is detached."""
    if not beta > 0:
        raise ValueError(f"beta: expected > 0, got {beta}")
    chosen, rejected = _preference_log_ratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    # Rafailov et al. 2023 eq. 7: L = -E log sigmoid(beta log(pi(y_w)/ref(y_w)) - beta log(pi(y_l)/ref(y_l)))
    loss = -F.logsigmoid(beta * (chosen - rejected)).mean()
    return loss, _preference_stats(chosen, rejected, beta)


def ipo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    tau: float = 0.1,
) -> tuple[torch.Tensor, dict[str, float]]:
    """IPO loss over B pairs: mean of (h - 1/(2 tau))^2 with h = log(pi(y_w) ref(y_l) / (pi(y_l) ref(y_w))).
    Follows the paper: h is built from whatever sequence log-probs the caller passes (sums over tokens
    for the paper's form; TRL divides each sum by the response length first, which is the caller's
    choice here). Stats as dpo_loss, with implicit rewards log(pi/pi_ref) (unscaled)."""
    if not tau > 0:
        raise ValueError(f"tau: expected > 0, got {tau}")
    chosen, rejected = _preference_log_ratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    # Azar et al. 2023 (IPO) eq. 17: L = E[(h_pi(y_w, y_l, x) - tau^-1 / 2)^2]
    loss = ((chosen - rejected - 1.0 / (2.0 * tau)) ** 2).mean()
    return loss, _preference_stats(chosen, rejected, 1.0)
