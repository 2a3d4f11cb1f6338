"""The papers' equations as pure torch functions: reward-model losses, reward normalisation,
KL-penalised rewards, GAE, whitening, PPO clipped losses and the KL coefficient controllers.
No model code and no I/O; masks are [B, T] with 1 (or True) on real response tokens."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------
# input checks


def _require_shape(tensor: torch.Tensor, shape: tuple[int, ...], name: str) -> None:
    if tuple(tensor.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(tensor.shape)}")


def _require_ndim(tensor: torch.Tensor, ndim: int, name: str) -> None:
    if tensor.dim() != ndim:
        raise ValueError(f"{name}: expected a {ndim}-d tensor, got shape {tuple(tensor.shape)}")


def _bool_mask(mask: torch.Tensor, like: torch.Tensor, name: str = "mask") -> torch.Tensor:
    """Check `mask` has the shape of `like` and only 0/1 values; return it as bool."""
    _require_shape(mask, tuple(like.shape), name)
    if mask.dtype == torch.bool:
        return mask
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"{name}: expected only 0 and 1 values")
    return mask != 0


def _require_prefix_mask(mask: torch.Tensor, name: str = "mask") -> None:
    """Real tokens must occupy positions 0..len-1 of each row, padding after them."""
    if mask.shape[-1] > 1 and bool((mask[:, 1:] & ~mask[:, :-1]).any()):
        raise ValueError(f"{name}: expected each row to be real tokens then padding (1...1 0...0)")


# ---------------------------------------------------------------------------------------------
# token-level helpers


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[label] per position: [B,T,V], [B,T] -> [B,T]."""
    _require_ndim(logits, 3, "logits")
    _require_shape(labels, tuple(logits.shape[:2]), "labels")
    log_probs = F.log_softmax(logits.float(), dim=-1)
    return torch.gather(log_probs, 2, labels.long().unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) per position: [B,T,V] -> [B,T]."""
    _require_ndim(logits, 3, "logits")
    log_probs = F.log_softmax(logits.float(), dim=-1)
    return -(log_probs.exp() * log_probs).sum(dim=-1)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over positions where mask is 1 (padded values never enter the sum)."""
    keep = _bool_mask(mask, x)
    zeros = torch.zeros_like(x)
    count = keep.sum() if dim is None else keep.sum(dim=dim)
    if bool((count == 0).any()):
        raise ValueError(f"mask: expected at least one real token{'' if dim is None else f' along dim {dim}'}")
    total = torch.where(keep, x, zeros).sum() if dim is None else torch.where(keep, x, zeros).sum(dim=dim)
    return total / count.to(x.dtype)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of x over masked positions; unbiased divides by n-1 (Bessel)."""
    keep = _bool_mask(mask, x)
    count = int(keep.sum())
    if count < (2 if unbiased else 1):
        raise ValueError(f"mask: expected at least {2 if unbiased else 1} real tokens for the variance, got {count}")
    mean = masked_mean(x, keep)
    variance = masked_mean((torch.where(keep, x, mean) - mean) ** 2, keep)
    return variance * count / (count - 1) if unbiased else variance


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) over masked positions (unbiased var); padded outputs are 0.
    With shift_mean=False the mean is added back (only the scale changes)."""
    keep = _bool_mask(mask, x)
    mean = masked_mean(x, keep)
    variance = masked_var(x, keep, unbiased=True)
    whitened = (x - mean) * torch.rsqrt(variance + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(keep, whitened, torch.zeros_like(whitened))


# ---------------------------------------------------------------------------------------------
# reward-model losses and metrics


def pairwise_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Mean over comparisons of -log sigmoid(r_w - r_l)."""
    _require_ndim(r_chosen, 1, "r_chosen")
    _require_shape(r_rejected, tuple(r_chosen.shape), "r_rejected")
    # Stiennon et al. 2020, eq. 1
    return -F.logsigmoid(r_chosen - r_rejected).mean()


def best_of_k_loss(rewards: torch.Tensor, best: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy over the K rewards of each example, target = the labeler's pick."""
    _require_ndim(rewards, 2, "rewards")
    _require_shape(best, (rewards.shape[0],), "best")
    if bool(((best < 0) | (best >= rewards.shape[1])).any()):
        raise ValueError(f"best: expected indices in [0, {rewards.shape[1]}), got {best.tolist()}")
    # Ziegler et al. 2019, eq. 1
    return F.cross_entropy(rewards.float(), best.long())


def ranking_loss(rewards: torch.Tensor, ranks: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Per prompt: mean over ordered pairs (rank_i < rank_j, lower = better, ties skipped) of
    -log sigmoid(r_i - r_j); then mean over prompts. `valid` masks absent slots when K varies."""
    _require_ndim(rewards, 2, "rewards")
    _require_shape(ranks, tuple(rewards.shape), "ranks")
    keep = torch.ones_like(rewards, dtype=torch.bool) if valid is None else _bool_mask(valid, rewards, "valid")
    # better[b, i, j]: response i is ranked strictly above response j, both present
    better = (ranks.unsqueeze(2) < ranks.unsqueeze(1)) & keep.unsqueeze(2) & keep.unsqueeze(1)
    pair_count = better.sum(dim=(1, 2))
    if bool((pair_count == 0).any()):
        empty = torch.nonzero(pair_count == 0).flatten().tolist()
        raise ValueError(f"ranks: batch elements {empty} have no pair with different ranks")
    pair_loss = -F.logsigmoid(rewards.unsqueeze(2) - rewards.unsqueeze(1))
    # Ouyang et al. 2022 (InstructGPT), eq. 1: 1/C(K,2) * sum over pairs, pairs of a prompt kept together
    per_prompt = torch.where(better, pair_loss, torch.zeros_like(pair_loss)).sum(dim=(1, 2)) / pair_count
    return per_prompt.mean()


def pairwise_accuracy(r_better: torch.Tensor, r_worse: torch.Tensor) -> float:
    """Share of comparisons where the preferred response scores higher; equal scores count 0.5."""
    _require_ndim(r_better, 1, "r_better")
    _require_shape(r_worse, tuple(r_better.shape), "r_worse")
    if r_better.numel() == 0:
        raise ValueError("r_better: expected at least one comparison")
    wins = (r_better > r_worse).float() + 0.5 * (r_better == r_worse).float()
    return float(wins.mean())


# ---------------------------------------------------------------------------------------------
# reward-model head init and normalisation


def reward_head_init_std(hidden_size: int) -> float:
    """Std of the reward head's weights."""
    if hidden_size < 1:
        raise ValueError(f"hidden_size: expected a positive int, got {hidden_size}")
    # Stiennon et al. 2020 / Ziegler et al. 2019 (reward head init): N(0, 1/sqrt(d_model + 1))
    return 1.0 / math.sqrt(hidden_size + 1)


def gain_bias_for_unit_normal(scores: torch.Tensor) -> tuple[float, float]:
    """(gain, bias) so that gain*score + bias has mean 0 and (population) std 1 over `scores`."""
    _require_ndim(scores, 1, "scores")
    mean = float(scores.double().mean())
    std = float(scores.double().std(correction=0))
    if not std > 0:
        raise ValueError(f"scores: expected samples with non-zero spread, got std {std}")
    # Ziegler et al. 2019 §2.2: normalise r so samples of rho have mean 0 and variance 1
    return 1.0 / std, -mean / std


def bias_for_zero_reference(scores: torch.Tensor) -> float:
    """Bias that makes the reference summaries' scores average 0."""
    _require_ndim(scores, 1, "scores")
    if scores.numel() == 0:
        raise ValueError("scores: expected at least one reference score")
    # Stiennon et al. 2020 §3.4: reward normalised so reference summaries score 0
    return -float(scores.double().mean())


def apply_missing_stop_penalty(scores: torch.Tensor, has_stop: torch.Tensor, penalty: float = -1.0) -> torch.Tensor:
    """Replace the RM score of responses without the stop token by the fixed penalty."""
    _require_ndim(scores, 1, "scores")
    _require_shape(has_stop, tuple(scores.shape), "has_stop")
    if has_stop.dtype != torch.bool:
        raise ValueError(f"has_stop: expected a bool tensor, got {has_stop.dtype}")
    # Ziegler et al. 2019 §3.1.2: samples without the stop get a reward of -1
    return torch.where(has_stop.to(scores.device), scores, torch.full_like(scores, penalty))


# ---------------------------------------------------------------------------------------------
# PPO: rewards, advantages, losses


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token in each row of a [B,T] mask; asserts every row has one."""
    keep = mask if mask.dtype == torch.bool else mask != 0
    positions = torch.arange(keep.shape[1], device=keep.device).expand_as(keep)
    last = torch.where(keep, positions, torch.full_like(positions, -1)).max(dim=1).values
    if bool((last < 0).any()):
        empty = torch.nonzero(last < 0).flatten().tolist()
        raise ValueError(f"mask: rows {empty} have no real token")
    return last


def kl_penalized_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards -beta*kl_t with the RM score added at the last real token; returns (rewards, kl)."""
    _require_ndim(logprobs, 2, "logprobs")
    _require_shape(ref_logprobs, tuple(logprobs.shape), "ref_logprobs")
    _require_shape(scores, (logprobs.shape[0],), "scores")
    keep = _bool_mask(mask, logprobs)
    last = last_token_index(keep)
    kl = torch.where(keep, logprobs - ref_logprobs, torch.zeros_like(logprobs))
    # Ziegler et al. 2019 eq. 2 / Stiennon et al. 2020 eq. 2: R = r(x,y) - beta * log(pi/rho), per token
    rewards = -beta * kl
    rewards[torch.arange(rewards.shape[0], device=rewards.device), last] += scores.to(rewards.dtype)
    return rewards, kl


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens, computed backwards; the value
    after the last real token is 0. Padded positions get 0. Computed without gradient."""
    _require_ndim(rewards, 2, "rewards")
    _require_shape(values, tuple(rewards.shape), "values")
    keep = _bool_mask(mask, rewards)
    _require_prefix_mask(keep)
    with torch.no_grad():
        zeros = torch.zeros_like(rewards)
        rewards, values = torch.where(keep, rewards.detach(), zeros), torch.where(keep, values.detach(), zeros)
        batch, length = rewards.shape
        advantages = torch.zeros_like(rewards)
        next_value = torch.zeros(batch, dtype=rewards.dtype, device=rewards.device)
        next_advantage = torch.zeros_like(next_value)
        for t in reversed(range(length)):
            # Schulman et al. 2016 eq. 16: delta_t = r_t + gamma V(s_{t+1}) - V(s_t); A_t = delta_t + gamma lam A_{t+1}
            delta = rewards[:, t] + gamma * next_value - values[:, t]
            advantages[:, t] = torch.where(keep[:, t], delta + gamma * lam * next_advantage, zeros[:, t])
            next_value, next_advantage = values[:, t], advantages[:, t]
        returns = torch.where(keep, advantages + values, zeros)
    return advantages, returns


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float = 0.2,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO-clip policy loss (masked token mean) and stats: clipfrac, approx_kl, ratio_mean, ratio_max."""
    _require_ndim(logprobs, 2, "logprobs")
    _require_shape(old_logprobs, tuple(logprobs.shape), "old_logprobs")
    _require_shape(advantages, tuple(logprobs.shape), "advantages")
    keep = _bool_mask(mask, logprobs)
    log_ratio = torch.where(keep, logprobs - old_logprobs, torch.zeros_like(logprobs))
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    # Schulman et al. 2017 eq. 7: L = -E[min(ratio A, clip(ratio, 1-eps, 1+eps) A)]
    loss = masked_mean(torch.maximum(unclipped, clipped), keep)
    with torch.no_grad():
        stats = {
            "clipfrac": float(masked_mean((clipped > unclipped).float(), keep)),
            "approx_kl": float(masked_mean(0.5 * log_ratio**2, keep)),
            "ratio_mean": float(masked_mean(ratio, keep)),
            "ratio_max": float(ratio[keep].max()),
        }
    return loss, stats


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float = 0.2,
) -> tuple[torch.Tensor, dict[str, float]]:
    """0.5 * masked mean of max((v-R)^2, (clip(v, old-eps, old+eps)-R)^2); stats: value_clipfrac."""
    _require_ndim(values, 2, "values")
    _require_shape(old_values, tuple(values.shape), "old_values")
    _require_shape(returns, tuple(values.shape), "returns")
    keep = _bool_mask(mask, values)
    values_clipped = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    unclipped_error = (values - returns) ** 2
    clipped_error = (values_clipped - returns) ** 2
    # PPO value clipping as in OpenAI lm-human-preferences (Ziegler et al. 2019 code)
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), keep)
    with torch.no_grad():
        stats = {"value_clipfrac": float(masked_mean((clipped_error > unclipped_error).float(), keep))}
    return loss, stats


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var[returns - values] / Var[returns] over real tokens; nan when returns are constant."""
    _require_shape(returns, tuple(values.shape), "returns")
    keep = _bool_mask(mask, values)
    with torch.no_grad():
        returns_var = float(masked_var(returns.double(), keep, unbiased=False))
        residual_var = float(masked_var((returns - values).double(), keep, unbiased=False))
    return float("nan") if returns_var == 0.0 else 1.0 - residual_var / returns_var


# ---------------------------------------------------------------------------------------------
# KL coefficient controllers


def _require_finite_kl(kl: float, n_steps: int) -> None:
    if not math.isfinite(kl):
        raise ValueError(f"kl: expected a finite number, got {kl}")
    if n_steps < 0:
        raise ValueError(f"n_steps: expected a non-negative int, got {n_steps}")


class FixedKLController:
    """A constant beta."""

    def __init__(self, beta: float) -> None:
        if beta < 0:
            raise ValueError(f"beta: expected >= 0, got {beta}")
        self.beta = float(beta)

    def update(self, kl: float, n_steps: int) -> None:
        _require_finite_kl(kl, n_steps)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "fixed", "beta": self.beta}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "fixed":
            raise ValueError(f"kind: expected 'fixed', got {state.get('kind')!r}")
        self.beta = float(state["beta"])


class AdaptiveKLController:
    """Beta that moves the batch KL towards a target; K_beta = n_steps/horizon when horizon is given."""

    def __init__(self, init_beta: float, target_kl: float, k_beta: float = 0.1, horizon: int | None = None) -> None:
        if init_beta < 0:
            raise ValueError(f"init_beta: expected >= 0, got {init_beta}")
        if not target_kl > 0:
            raise ValueError(f"target_kl: expected > 0, got {target_kl}")
        if horizon is not None and horizon <= 0:
            raise ValueError(f"horizon: expected a positive int or None, got {horizon}")
        self.beta = float(init_beta)
        self.init_beta = float(init_beta)
        self.target_kl = float(target_kl)
        self.k_beta = float(k_beta)
        self.horizon = horizon

    def update(self, kl: float, n_steps: int) -> None:
        _require_finite_kl(kl, n_steps)
        # Ziegler et al. 2019 §2.2: e_t = clip((KL - KL_target)/KL_target, -0.2, 0.2); beta <- beta (1 + K_beta e_t)
        error = min(max((kl - self.target_kl) / self.target_kl, -0.2), 0.2)
        gain = self.k_beta if self.horizon is None else n_steps / self.horizon
        self.beta *= 1.0 + gain * error

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": "adaptive",
            "beta": self.beta,
            "init_beta": self.init_beta,
            "target_kl": self.target_kl,
            "k_beta": self.k_beta,
            "horizon": self.horizon,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "adaptive":
            raise ValueError(f"kind: expected 'adaptive', got {state.get('kind')!r}")
        missing = {"beta", "init_beta", "target_kl", "k_beta", "horizon"} - set(state)
        if missing:
            raise ValueError(f"state: missing fields {sorted(missing)}")
        self.beta = float(state["beta"])
        self.init_beta = float(state["init_beta"])
        self.target_kl = float(state["target_kl"])
        self.k_beta = float(state["k_beta"])
        self.horizon = None if state["horizon"] is None else int(state["horizon"])
