"""Tests for the critic-free and offline policy losses in rlhf.losses (RLOO, GRPO, DPO, IPO): every
equation checked against numbers worked out by hand, plus gradient directions and input errors.
Handy constants: softplus(x) = log(1 + e^x): softplus(-1) = 0.3132617, softplus(2) = 2.1269280,
softplus(-0.5) = 0.4740770, softplus(1) = 1.3132617; sigmoid(-1) = 0.2689414, sigmoid(2) = 0.8807971;
e - 2 = 0.7182818, 1 - log 2 = 0.3068528, 1 - e^-1 = 0.6321206."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.losses import clipped_policy_loss
from rlhf.policy_losses import (
    dpo_loss,
    grpo_advantages,
    grpo_kl,
    grpo_loss,
    ipo_loss,
    rloo_advantages,
    rloo_policy_loss,
    sequence_kl_penalized_reward,
)


def close(actual: torch.Tensor | float, expected: float, tol: float = 1e-5) -> bool:
    value = float(actual.detach()) if isinstance(actual, torch.Tensor) else float(actual)
    return abs(value - expected) < tol


# two responses of lengths 2 and 3; the padded position holds -inf, which must never enter a sum
LOGPROBS = torch.tensor([[-1.0, -2.0, float("-inf")], [-0.5, -0.5, -0.5]])
MASK = torch.tensor([[1, 1, 0], [1, 1, 1]])


# ---------------------------------------------------------------------------------- RLOO


def test_sequence_kl_penalized_reward() -> None:
    ref = torch.tensor([[-1.5, -1.0, 0.0], [-1.0, -1.0, -0.25]])
    # kl row 0 = (-1 + 1.5) + (-2 + 1) = -0.5 ; row 1 = 0.5 + 0.5 - 0.25 = 0.75 (padding skipped)
    # beta 0.1: rewards = 1 - 0.1*(-0.5) = 1.05 ; 0.5 - 0.1*0.75 = 0.425
    rewards, kl = sequence_kl_penalized_reward(torch.tensor([1.0, 0.5]), LOGPROBS, ref, MASK, beta=0.1)
    assert torch.allclose(kl, torch.tensor([-0.5, 0.75]))
    assert torch.allclose(rewards, torch.tensor([1.05, 0.425]))
    assert rewards.dtype == torch.float32
    # beta 0: the scores themselves
    rewards, _ = sequence_kl_penalized_reward(torch.tensor([1.0, 0.5]), LOGPROBS, ref, MASK, beta=0.0)
    assert torch.allclose(rewards, torch.tensor([1.0, 0.5]))
    with pytest.raises(ValueError, match="beta"):
        sequence_kl_penalized_reward(torch.tensor([1.0, 0.5]), LOGPROBS, ref, MASK, beta=-0.1)
    with pytest.raises(ValueError, match="scores"):
        sequence_kl_penalized_reward(torch.tensor([1.0]), LOGPROBS, ref, MASK, beta=0.1)
    with pytest.raises(ValueError, match="no real token"):
        sequence_kl_penalized_reward(torch.tensor([1.0, 0.5]), LOGPROBS, ref, torch.tensor([[1, 1, 0], [0, 0, 0]]), 0.1)


def test_rloo_advantages_leave_one_out() -> None:
    # K=3, rewards 1,2,3: baselines (2+3)/2 = 2.5, (1+3)/2 = 2, (1+2)/2 = 1.5 -> -1.5, 0, 1.5
    # rewards 0,0,4: baselines 2, 2, 0 -> -2, -2, 4
    advantages = rloo_advantages(torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 4.0]]))
    assert torch.allclose(advantages, torch.tensor([[-1.5, 0.0, 1.5], [-2.0, -2.0, 4.0]]))
    # K=2: each baseline is the other reward: 1,5 -> -4, 4
    assert torch.allclose(rloo_advantages(torch.tensor([[1.0, 5.0]])), torch.tensor([[-4.0, 4.0]]))
    with pytest.raises(ValueError, match="K >= 2"):
        rloo_advantages(torch.tensor([[1.0], [2.0]]))
    with pytest.raises(ValueError, match="2-d"):
        rloo_advantages(torch.tensor([1.0, 2.0, 3.0]))


def test_rloo_policy_loss_sums_tokens_and_averages_sequences() -> None:
    logprobs = LOGPROBS.clone().requires_grad_(True)
    advantages = torch.tensor([2.0, -1.0], requires_grad=True)
    # sequence log-probs: -1 - 2 = -3 ; -1.5. loss = -(2*(-3) + (-1)*(-1.5)) / 2 = -(-6 + 1.5)/2 = 2.25
    loss = rloo_policy_loss(logprobs, advantages, MASK)
    assert close(loss, 2.25)
    loss.backward()
    # d loss / d logp_t = -A_i / B on real tokens: -2/2 = -1 (descent raises them), +1/2 = 0.5; padding 0
    assert torch.allclose(logprobs.grad, torch.tensor([[-1.0, -1.0, 0.0], [0.5, 0.5, 0.5]]))
    assert advantages.grad is None  # advantages are constants
    with pytest.raises(ValueError, match="advantages"):
        rloo_policy_loss(LOGPROBS, torch.zeros(2, 3), MASK)
    with pytest.raises(ValueError, match="mask"):
        rloo_policy_loss(LOGPROBS, torch.zeros(2), MASK[:, :2])
    with pytest.raises(ValueError, match="no real token"):
        rloo_policy_loss(LOGPROBS, torch.zeros(2), torch.tensor([[0, 0, 0], [1, 1, 1]]))


# ---------------------------------------------------------------------------------- GRPO


def test_grpo_advantages_use_unbiased_group_std() -> None:
    # rewards 1,2,3: mean 2, unbiased var (1+0+1)/2 = 1 -> (r-2)/(1+1e-4) = -0.9999000, 0, 0.9999000
    advantages = grpo_advantages(torch.tensor([[1.0, 2.0, 3.0]]), eps=1e-4)
    assert torch.allclose(advantages, torch.tensor([[-0.9999000, 0.0, 0.9999000]]))
    # rewards 0,0,4,4: mean 2, unbiased var 4*4/3 = 16/3, std 2.3094011 -> +-2/2.3094011 = +-0.8660254
    # (the biased std, 2, would give +-1)
    advantages = grpo_advantages(torch.tensor([[0.0, 0.0, 4.0, 4.0]]), eps=1e-8)
    assert torch.allclose(advantages, torch.tensor([[-0.8660254, -0.8660254, 0.8660254, 0.8660254]]))
    # equal rewards: std 0, eps keeps it finite -> all 0
    assert torch.equal(grpo_advantages(torch.tensor([[5.0, 5.0, 5.0]])), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="G >= 2"):
        grpo_advantages(torch.tensor([[1.0]]))
    with pytest.raises(ValueError, match="eps"):
        grpo_advantages(torch.tensor([[1.0, 2.0]]), eps=0.0)


def test_grpo_kl_k3_estimator() -> None:
    # d = ref - logp: d=0 -> 0 ; d=1 -> e - 1 - 1 = 0.7182818 ; d=-1 -> e^-1 + 1 - 1 = 0.3678794 ;
    # d=log 2 -> 2 - log 2 - 1 = 0.3068528
    logprobs = torch.tensor([[0.0, 0.0, 1.0, -math.log(2.0)]])
    ref = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    assert torch.allclose(grpo_kl(logprobs, ref), torch.tensor([[0.0, 0.7182818, 0.3678794, 0.3068528]]))
    with pytest.raises(ValueError, match="ref_logprobs"):
        grpo_kl(logprobs, ref[:, :2])


def _grpo_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    # row 0 (A = 1, 2 tokens): ratios 1.5, 1 ; ref - logp = 0, log 2
    # row 1 (A = -2, 1 real token): ratio 0.5 ; ref - logp = 1 ; position 1 is padding
    logprobs = torch.tensor([[-1.0, -2.0], [-1.0, 7.0]])
    old = torch.tensor([[-1.0 - math.log(1.5), -2.0], [-1.0 + math.log(2.0), 0.0]])
    ref = torch.tensor([[-1.0, -2.0 + math.log(2.0)], [0.0, 99.0]])
    return logprobs, old, ref, torch.tensor([1.0, -2.0]), torch.tensor([[1, 1], [1, 0]])


def test_grpo_loss_per_sequence_token_mean() -> None:
    logprobs, old, ref, advantages, mask = _grpo_inputs()
    # row 0, t0: max(-1*1.5, -1*1.2) = -1.2 (clipped), k3 0 ; t1: -1, k3 0.3068528 -> -1 + 0.0306853 = -0.9693147
    #   sequence mean (-1.2 - 0.9693147)/2 = -1.0846574
    # row 1, t0: max(2*0.5, 2*0.8) = 1.6 (clipped), k3 0.7182818 -> 1.6 + 0.0718282 = 1.6718282
    # loss = (-1.0846574 + 1.6718282)/2 = 0.2935854 (a flat token mean would be -0.1658397)
    loss, stats = grpo_loss(logprobs, old, ref, advantages, mask, clip_range=0.2, beta=0.1)
    assert close(loss, 0.2935854)
    # clipfrac: row 0 (1 + 0)/2 = 0.5, row 1 1 -> 0.75 ; kl: (0 + 0.3068528)/2 = 0.1534264 and 0.7182818 -> 0.4358541
    # ratio_mean: (1.5 + 1)/2 = 1.25 and 0.5 -> 0.875
    assert close(stats["clipfrac"], 0.75) and close(stats["kl"], 0.4358541) and close(stats["ratio_mean"], 0.875)
    # beta 0: only the surrogate: (-1.1 + 1.6)/2 = 0.25
    assert close(grpo_loss(logprobs, old, ref, advantages, mask, clip_range=0.2, beta=0.0)[0], 0.25)


def test_grpo_loss_gradient_directions() -> None:
    logprobs, _, ref, advantages, mask = _grpo_inputs()
    # ratio 1 everywhere (old = current), beta 0: d loss / d logp_t = -A_i / (|o_i| B)
    # row 0: -1/(2*2) = -0.25 (descent raises the good answer) ; row 1: 2/(1*2) = 1 ; padding 0
    # (row 1's padding has ref - logp = 92: exp(92) overflows float32, so it must not reach k3 or its gradient is nan)
    current = logprobs.clone().requires_grad_(True)
    grpo_loss(current, logprobs, ref, advantages, mask, beta=0.0)[0].backward()
    assert torch.allclose(current.grad, torch.tensor([[-0.25, -0.25], [1.0, 0.0]]))
    # A = 0, beta 1, one token with logp - ref = 1: d k3 / d logp = 1 - e^(ref - logp) = 1 - e^-1 = 0.6321206 > 0
    # (descent pulls logp back down to ref); with logp - ref = -1: 1 - e = -1.7182818 < 0
    current = torch.tensor([[1.0], [-1.0]], requires_grad=True)
    loss, _ = grpo_loss(current, current.detach(), torch.zeros(2, 1), torch.zeros(2), torch.ones(2, 1), beta=1.0)
    loss.backward()
    assert torch.allclose(current.grad, torch.tensor([[0.6321206 / 2], [-1.7182818 / 2]]))


def test_grpo_loss_matches_ppo_clip_for_equal_lengths_and_beta_0() -> None:
    # all sequences the same length: per-sequence then per-batch mean = flat token mean
    logprobs = torch.tensor([[-1.0, -0.2, -3.0], [-0.4, -2.0, -1.0]])
    old = torch.tensor([[-1.5, -0.2, -2.0], [-0.4, -1.0, -1.3]])
    advantages = torch.tensor([0.7, -1.3])
    mask = torch.ones(2, 3)
    grpo, _ = grpo_loss(logprobs, old, logprobs, advantages, mask, clip_range=0.2, beta=0.0)
    ppo, _ = clipped_policy_loss(logprobs, old, advantages.unsqueeze(1).expand(2, 3), mask, clip_range=0.2)
    assert close(grpo, float(ppo))


def test_grpo_loss_input_errors() -> None:
    logprobs, old, ref, advantages, mask = _grpo_inputs()
    with pytest.raises(ValueError, match="advantages"):
        grpo_loss(logprobs, old, ref, advantages.unsqueeze(1).expand(2, 2), mask)
    with pytest.raises(ValueError, match="old_logprobs"):
        grpo_loss(logprobs, old[:1], ref, advantages, mask)
    with pytest.raises(ValueError, match="0 and 1"):
        grpo_loss(logprobs, old, ref, advantages, mask * 0.5)
    with pytest.raises(ValueError, match="beta"):
        grpo_loss(logprobs, old, ref, advantages, mask, beta=-1.0)
    with pytest.raises(ValueError, match="clip_range"):
        grpo_loss(logprobs, old, ref, advantages, mask, clip_range=0.0)


# ---------------------------------------------------------------------------------- DPO and IPO

# two pairs; log-ratios log(pi/ref): chosen 0.5, -1 ; rejected -0.5, 1 ; h = chosen - rejected = 1, -2
POLICY_CHOSEN = torch.tensor([-1.0, -3.0])
POLICY_REJECTED = torch.tensor([-2.0, -1.0])
REF = torch.tensor([-1.5, -2.0])


def test_dpo_loss_and_stats() -> None:
    # beta 1: mean(softplus(-1), softplus(2)) = (0.3132617 + 2.1269280)/2 = 1.2200948
    loss, stats = dpo_loss(POLICY_CHOSEN, POLICY_REJECTED, REF, REF, beta=1.0)
    assert close(loss, 1.2200948)
    # implicit rewards beta*log-ratio: chosen 0.5, -1 ; rejected -0.5, 1 -> accuracy 1/2, margin (1 - 2)/2 = -0.5
    assert close(stats["reward_accuracy"], 0.5) and close(stats["reward_margin"], -0.5)
    assert close(stats["chosen_reward"], -0.25) and close(stats["rejected_reward"], 0.25)
    # beta 0.5: mean(softplus(-0.5), softplus(1)) = (0.4740770 + 1.3132617)/2 = 0.8936693 ; rewards halve
    loss, stats = dpo_loss(POLICY_CHOSEN, POLICY_REJECTED, REF, REF, beta=0.5)
    assert close(loss, 0.8936693) and close(stats["reward_margin"], -0.25) and close(stats["chosen_reward"], -0.125)
    # policy = reference: log 2 whatever beta
    assert close(dpo_loss(REF, REF, REF, REF, beta=3.0)[0], math.log(2.0))
    # logsigmoid keeps a huge wrong margin finite: -log sigmoid(-1000) = 1000
    assert close(dpo_loss(torch.tensor([-1000.0]), torch.zeros(1), torch.zeros(1), torch.zeros(1), 1.0)[0], 1000.0)


def test_dpo_loss_gradient_directions() -> None:
    chosen = POLICY_CHOSEN.clone().requires_grad_(True)
    rejected = POLICY_REJECTED.clone().requires_grad_(True)
    ref = REF.clone().requires_grad_(True)
    dpo_loss(chosen, rejected, ref, ref, beta=1.0)[0].backward()
    # d loss / d chosen = -beta sigmoid(-beta h) / B: -0.2689414/2 = -0.1344707 ; -0.8807971/2 = -0.4403986
    assert torch.allclose(chosen.grad, torch.tensor([-0.1344707, -0.4403986]))
    assert torch.allclose(rejected.grad, -chosen.grad)
    assert ref.grad is None  # the reference is a constant
    # raising the chosen log-prob lowers the loss
    base = float(dpo_loss(POLICY_CHOSEN, POLICY_REJECTED, REF, REF, beta=1.0)[0])
    assert float(dpo_loss(POLICY_CHOSEN + 0.1, POLICY_REJECTED, REF, REF, beta=1.0)[0]) < base


def test_ipo_loss_and_gradient() -> None:
    # tau 0.5: target 1/(2*0.5) = 1 ; (1 - 1)^2 = 0, (-2 - 1)^2 = 9 -> 4.5
    loss, stats = ipo_loss(POLICY_CHOSEN, POLICY_REJECTED, REF, REF, tau=0.5)
    assert close(loss, 4.5)
    assert close(stats["reward_accuracy"], 0.5) and close(stats["reward_margin"], -0.5)
    # tau 0.25: target 2 ; (1 - 2)^2 = 1, (-2 - 2)^2 = 16 -> 8.5
    assert close(ipo_loss(POLICY_CHOSEN, POLICY_REJECTED, REF, REF, tau=0.25)[0], 8.5)
    # tau large: target ~ 0, loss ~ mean h^2 = (1 + 4)/2 = 2.5
    assert close(ipo_loss(POLICY_CHOSEN, POLICY_REJECTED, REF, REF, tau=1e6)[0], 2.5)
    # d loss / d chosen = 2 (h - target) / B: pair 0 at the target -> 0 ; pair 1: 2*(-3)/2 = -3
    chosen = POLICY_CHOSEN.clone().requires_grad_(True)
    ipo_loss(chosen, POLICY_REJECTED, REF, REF, tau=0.5)[0].backward()
    assert torch.allclose(chosen.grad, torch.tensor([0.0, -3.0]))
    # unlike DPO, IPO pulls a margin past its target back: h = 3 > 1 gives d loss / d chosen = 2*2 = 4 > 0
    chosen = torch.tensor([2.0], requires_grad=True)
    ipo_loss(chosen, torch.tensor([-1.0]), torch.zeros(1), torch.zeros(1), tau=0.5)[0].backward()
    assert torch.allclose(chosen.grad, torch.tensor([4.0]))


def test_preference_losses_input_errors() -> None:
    for loss_fn in (dpo_loss, ipo_loss):
        with pytest.raises(ValueError, match="policy_rejected_logps"):
            loss_fn(POLICY_CHOSEN, POLICY_REJECTED[:1], REF, REF, 0.1)
        with pytest.raises(ValueError, match="ref_chosen_logps"):
            loss_fn(POLICY_CHOSEN, POLICY_REJECTED, REF.unsqueeze(1), REF, 0.1)
        with pytest.raises(ValueError, match="1-d"):
            loss_fn(POLICY_CHOSEN.unsqueeze(1), POLICY_REJECTED, REF, REF, 0.1)
        with pytest.raises(ValueError, match="at least one pair"):
            loss_fn(torch.zeros(0), torch.zeros(0), torch.zeros(0), torch.zeros(0), 0.1)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(POLICY_CHOSEN, POLICY_REJECTED, REF, REF, beta=0.0)
    with pytest.raises(ValueError, match="tau"):
        ipo_loss(POLICY_CHOSEN, POLICY_REJECTED, REF, REF, tau=-1.0)
