"""Diagnostics and small mechanisms of the PPO stage (rlhf/stages/ppo.py): gradient norms, the split of the
advantages into the parts that come from the score, the KL penalty and the value baseline, and the value head's
zero start."""

from __future__ import annotations

import torch

from rlhf.losses import gae, last_token_index, masked_var


def grad_norm(params: list[torch.nn.Parameter]) -> float:
    """The 2-norm of the gradients of `params` taken together (those with no gradient count 0), as
    torch.nn.utils.clip_grad_norm_ measures it before clipping."""
    norms = [p.grad.detach().float().norm(2) for p in params if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms), 2)) if norms else 0.0


def advantage_parts(
    scores: torch.Tensor,
    kl: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GAE's advantages [B, R] split into three parts that sum to them (GAE is linear in the rewards and the values):
    the score part (GAE of the rewards that are the score [B] at the last real token and 0 elsewhere, values 0), the
    KL part (GAE of the per-token rewards -beta*kl, values 0) and the value part (GAE of zero rewards with the
    `values`: the baseline's own sum of lambda-weighted differences)."""
    keep = mask.bool()
    rows = torch.arange(scores.shape[0], device=kl.device)
    score_rewards = torch.zeros_like(kl)
    score_rewards[rows, last_token_index(keep)] = scores.to(kl.dtype)
    zeros = torch.zeros_like(kl)
    a_score, _ = gae(score_rewards, zeros, keep, gamma, lam)
    a_kl, _ = gae(-beta * kl, zeros, keep, gamma, lam)
    a_value, _ = gae(zeros, values.to(kl.dtype), keep, gamma, lam)
    return a_score, a_kl, a_value


def advantage_variance_shares(
    scores: torch.Tensor,
    kl: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
    gamma: float,
    lam: float,
) -> dict[str, float]:
    """How much of the advantages' spread comes from the score, the KL penalty and the value baseline: for each part
    of `advantage_parts` (before any reward or advantage whitening), its variance over the real response tokens
    (population variance) divided by the sum of the three parts' variances, so the three shares sum to 1 (nan when
    all three are constant). The parts are correlated, so the sum is not the advantages' own variance: a share says
    how large a part is, not how much of Var[A] it explains alone."""
    keep = mask.bool()
    parts = advantage_parts(scores.double(), kl.double(), values.double(), keep, beta, gamma, lam)
    variances = [float(masked_var(p, keep, unbiased=False)) for p in parts]
    total = sum(variances)
    names = ("adv_share_score", "adv_share_kl", "adv_share_value")
    return {n: (v / total if total > 0 else float("nan")) for n, v in zip(names, variances)}


def zero_head(head: torch.nn.Module) -> None:
    """Set a scalar head's weight and bias to 0 (lm-human-preferences' value head start): every value is then 0,
    while the trunk below it keeps its weights."""
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()
