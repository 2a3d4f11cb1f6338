"""Diagnostics and small mechanisms of the PPO stage (rlhf/stages/ppo.py): gradient norms, the split of the
advantages into the parts that come from the score, the KL penalty and the value baseline, the value head's
zero start; the Andon cord, the input checks, minibatch slices and the per-iteration log line."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from rlhf.losses import gae, last_token_index, masked_var

if TYPE_CHECKING:
    from rlhf.stages.online import OnlineCollection

log = logging.getLogger("rlhf")


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


def chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def andon_cord_pulled(pc, run_dir=None) -> str | None:
    """The reason written in the stop file, if someone pulled the cord (Ziegler §4.4): ppo.stop_file, or
    RUN_DIR/ANDON when none is configured (the file the labeling app writes)."""
    path = pc.stop_file or (os.path.join(run_dir, "ANDON") if run_dir is not None else "")
    if path and os.path.exists(path):
        return open(path).read().strip() or "stop file present"
    return None


def before_iteration(
    iteration: int, online: OnlineCollection | None, andon: Callable[[], str | None]
) -> tuple[dict, str | None]:
    """(online collection's metrics, why PPO must stop before iteration `iteration` or None): the Andon cord; then,
    with online collection (Ziegler §2.3), its step, which pushes fresh queries, waits for l(n) labels (honouring
    the cord) and retrains the reward model at its points."""
    reason = andon()
    if reason is not None or online is None:
        return {}, reason
    return online.before_iteration(iteration, andon)


def check_inputs(pc, task) -> None:
    """Reject a reward source PPO cannot train on, and settings out of range."""
    if pc.stop_epochs_at_kl < 0 or pc.entropy_coef < 0 or pc.kl_budget < 0:
        raise ValueError(
            f"ppo.stop_epochs_at_kl, ppo.entropy_coef, ppo.kl_budget: expected >= 0 (0 = off), got "
            f"{pc.stop_epochs_at_kl}, {pc.entropy_coef}, {pc.kl_budget}"
        )
    if pc.kl_horizon < 0 or pc.warmup_updates < 0:
        raise ValueError(f"ppo.kl_horizon, ppo.warmup_updates: expected >= 0, got {pc.kl_horizon}, {pc.warmup_updates}")
    if not pc.max_grad_norm > 0:
        raise ValueError(f"ppo.max_grad_norm: expected > 0, got {pc.max_grad_norm}")
    if pc.reward_source not in ("rm", "gold"):
        raise ValueError(f"ppo.reward_source: expected rm or gold, got {pc.reward_source!r}")
    if pc.reward_source == "gold" and task.gold_scorer is None:
        raise ValueError(f"ppo.reward_source=gold: task '{task.name}' has no gold scorer")


def log_iteration(row: dict, iterations: int, beta: float) -> None:
    """One log line per iteration, and a warning when the policy looks collapsed."""
    i, length, entropy = row["iteration"], row["response_length"], row["entropy"]
    if length < 1.5 or entropy < 0.01:
        log.warning("PPO iteration %d: the policy may have collapsed (length %.2f, entropy %.3f)", i, length, entropy)
    log.info("ppo %d/%d rm %.3f kl %.2f beta %.3f len %.1f", i, iterations, row["rm_score"], row["kl"], beta, length)


def kl_overshoot(last_kls: list[float], pc) -> str | None:
    """A warning when the adaptive controller ended far above its target: the mean batch KL of the last (up to two)
    iterations over 1.5 * ppo.target_kl. The controller moves beta by at most 0.2 * k_beta per iteration (2 % at
    0.1; with kl_horizon, 0.2 * batch_size / kl_horizon), so over tens of iterations the learning rate, not beta,
    decides the KL (docs/algorithms/ppo.md)."""
    if not pc.adaptive_kl or not last_kls:
        return None
    kl = sum(last_kls[-2:]) / len(last_kls[-2:])
    if kl <= 1.5 * pc.target_kl:
        return None
    step = 0.2 * (pc.batch_size / pc.kl_horizon if pc.kl_horizon else pc.k_beta)
    return (
        f"PPO ended at a batch KL of {kl:.2f} nats, {kl / pc.target_kl:.1f}x ppo.target_kl {pc.target_kl:g}: the"
        f" adaptive beta moves at most {100 * step:.3g} % an iteration, too slowly to hold the target; for less KL"
        " lower ppo.learning_rate or raise ppo.init_beta"
    )


class KLBudget:
    """ppo.kl_budget: the policy's weights at the start of the last iteration whose batch KL stayed within the budget
    (a copy, taken before that iteration's update), restored when a later batch goes past it. Off (no copies) at 0."""

    def __init__(self, budget: float, policy_state: Callable[[], dict], load_policy_state: Callable[[dict], None]):
        self.budget, self.policy_state, self.load_policy_state = budget, policy_state, load_policy_state
        self.kept: tuple[int, float, dict] | None = None  # (1-based iteration, its batch KL, its sampling policy)

    def within(self, iteration: int, batch_kl: float) -> bool:
        """Whether the policy that sampled iteration `iteration`'s batch (KL `batch_kl`) is within the budget; if so
        it is kept, before its update."""
        if self.budget <= 0:
            return True
        if batch_kl > self.budget:
            return False
        self.kept = (iteration, batch_kl, self.policy_state())
        return True

    def restore(self, iteration: int, batch_kl: float) -> dict:
        """Go back to the kept policy (none kept, as in a run resumed past the budget: the current one stays)."""
        info = {"stopped_at_iteration": iteration, "batch_kl": batch_kl, "kl_budget": self.budget}
        kept_iteration, kept_kl, state = self.kept or (None, None, None)
        if state is not None:
            self.load_policy_state(state)
        log.warning(
            f"PPO: batch KL {batch_kl:.2f} > ppo.kl_budget {self.budget:g} at iteration {iteration}; "
            + (
                f"keeping the policy that sampled iteration {kept_iteration} (batch KL {kept_kl:.2f})"
                if state
                else "no earlier policy kept"
            )
        )
        return {**info, "kept_iteration": kept_iteration, "kept_batch_kl": kept_kl}


def resume(run, roles, optimizer, scheduler, kl_ctl) -> dict | None:
    """Load the stage's checkpoint, if any, into the trainable weights, optimiser, schedule and beta."""
    ckpt = run.load_checkpoint("ppo")
    if ckpt is not None:
        roles.load_trainable_state(ckpt["trainable"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        kl_ctl.load_state_dict(ckpt["kl_controller"])
    return ckpt


def checkpoint_state(roles, optimizer, scheduler, kl_ctl, iteration: int, online) -> dict:
    """What a PPO checkpoint holds: trainable weights, optimiser, schedule, beta, iteration, online state."""
    return {
        "trainable": roles.trainable_state(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "kl_controller": kl_ctl.state_dict(),
        "iteration": iteration,
        "online": online.state_dict() if online else None,
    }
