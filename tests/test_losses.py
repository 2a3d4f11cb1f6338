"""Tests for rlhf.losses: every equation checked against numbers worked out by hand.
Handy constants: softplus(-d) = -log sigmoid(d) = log(1 + e^-d):
d=1 -> 0.3132617, d=2 -> 0.1269280, d=3 -> 0.0485874, d=0 -> log 2 = 0.6931472."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.losses import (
    AdaptiveKLController,
    FixedKLController,
    apply_missing_stop_penalty,
    best_of_k_loss,
    bias_for_zero_reference,
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    explained_variance,
    gae,
    gain_bias_for_unit_normal,
    kl_penalized_rewards,
    logprobs_from_logits,
    masked_mean,
    masked_var,
    masked_whiten,
    pairwise_accuracy,
    pairwise_loss,
    ranking_loss,
    reward_head_init_std,
)

LOG2 = 0.6931472
SP1, SP2, SP3 = 0.3132617, 0.1269280, 0.0485874


def close(actual: torch.Tensor | float, expected: float, tol: float = 1e-5) -> bool:
    value = float(actual.detach()) if isinstance(actual, torch.Tensor) else float(actual)
    return abs(value - expected) < tol


# ---------------------------------------------------------------------------------- token helpers


def test_logprobs_and_entropy_from_logits() -> None:
    # logits [0, log 3] -> softmax [1/4, 3/4] ; logits [0, 0] -> softmax [1/2, 1/2]
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0]]])
    labels = torch.tensor([[1, 0]])
    # log 3/4 = -0.2876821 ; log 1/2 = -0.6931472
    logprobs = logprobs_from_logits(logits, labels)
    assert logprobs.shape == (1, 2)
    assert close(logprobs[0, 0], -0.2876821) and close(logprobs[0, 1], -LOG2)
    assert close(logprobs_from_logits(logits, torch.tensor([[0, 1]]))[0, 0], -1.3862944)  # log 1/4
    # H = -(1/4 log 1/4 + 3/4 log 3/4) = 0.25*1.3862944 + 0.75*0.2876821 = 0.3465736 + 0.2157616 = 0.5623352
    entropy = entropy_from_logits(logits)
    assert close(entropy[0, 0], 0.5623352) and close(entropy[0, 1], LOG2)


def test_masked_mean_and_var_ignore_padding() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.float32)
    # real values 1, 2, 4 -> mean 7/3 = 2.3333333
    assert close(masked_mean(x, mask), 7 / 3)
    # per row: (1+2)/2 = 1.5 ; 4/1 = 4
    assert torch.allclose(masked_mean(x, mask, dim=1), torch.tensor([1.5, 4.0]))
    # deviations from 7/3: -4/3, -1/3, 5/3 -> squares 16/9 + 1/9 + 25/9 = 42/9; unbiased /2 = 7/3, biased /3 = 14/9
    assert close(masked_var(x, mask), 7 / 3)
    assert close(masked_var(x, mask, unbiased=False), 14 / 9)
    with pytest.raises(ValueError, match="mask"):
        masked_mean(x, torch.zeros_like(x))
    with pytest.raises(ValueError, match="mask"):
        masked_var(x, torch.tensor([[1, 0, 0], [0, 0, 0]]))
    with pytest.raises(ValueError, match="0 and 1"):
        masked_mean(x, torch.full_like(x, 0.5))


def test_masked_whiten_uses_only_real_tokens() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0], [5.0, 7.0, -50.0, 99.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    # real values 1,2,3,5,7: mean 18/5 = 3.6; deviations -2.6,-1.6,-0.6,1.4,3.4
    # squares 6.76+2.56+0.36+1.96+11.56 = 23.2; unbiased var 23.2/4 = 5.8; std sqrt(5.8) = 2.4083189
    # whitened = dev/2.4083189 = -1.0795912, -0.6643638, -0.2491364, 0.5813184, 1.4117732 ; padding -> 0
    expected = torch.tensor([[-1.0795912, -0.6643638, -0.2491364, 0.0], [0.5813184, 1.4117732, 0.0, 0.0]])
    whitened = masked_whiten(x, mask)
    assert torch.allclose(whitened, expected, atol=1e-5)
    # changing padded values (even to inf) must not change anything
    x_other_padding = x.clone()
    x_other_padding[0, 3], x_other_padding[1, 2], x_other_padding[1, 3] = float("inf"), -1e6, float("nan")
    assert torch.allclose(masked_whiten(x_other_padding, mask), expected, atol=1e-5)
    # shift_mean=False adds the mean 3.6 back on real tokens
    kept_mean = masked_whiten(x, mask, shift_mean=False)
    assert close(kept_mean[0, 0], -1.0795912 + 3.6) and kept_mean[0, 3] == 0.0


# ---------------------------------------------------------------------------------- reward-model losses


def test_pairwise_loss() -> None:
    # pairs: r_w - r_l = 1 -> 0.3132617 ; 0 -> 0.6931472 ; mean = 1.0064089/2 = 0.5032044
    loss = pairwise_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]))
    assert close(loss, 0.5032044)
    # logsigmoid keeps large gaps finite: -log sigmoid(-200) = 200 (approximately, + e^-200)
    assert close(pairwise_loss(torch.tensor([-100.0]), torch.tensor([100.0])), 200.0, tol=1e-3)


def test_best_of_4_loss() -> None:
    # element 1: rewards 1,2,3,4, best = 3 -> -log(e^4/(e^1+e^2+e^3+e^4)) = log(1 + e^-1 + e^-2 + e^-3)
    #   = log(1 + 0.3678794 + 0.1353353 + 0.0497871) = log(1.5530018) = 0.4401897
    # element 2: all rewards 0, best = 0 -> log 4 = 1.3862944 ; mean = 1.8264841/2 = 0.9132420
    rewards = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]])
    assert close(best_of_k_loss(rewards, torch.tensor([3, 0])), 0.9132420)
    with pytest.raises(ValueError, match="best"):
        best_of_k_loss(rewards, torch.tensor([4, 0]))


def test_ranking_loss_k4_no_ties_is_mean_over_6_pairs() -> None:
    # best to worst rewards 3,2,1,0; the 6 pairs have gaps 1,2,3,1,2,1
    # sum = 3*0.3132617 + 2*0.1269280 + 0.0485874 = 1.2422285 ; /6 = 0.2070381
    # slots are shuffled so the order of the pairs comes from the ranks, not the positions
    rewards = torch.tensor([[1.0, 3.0, 0.0, 2.0]])
    ranks = torch.tensor([[2, 0, 3, 1]])
    assert close(ranking_loss(rewards, ranks), 0.2070381)
    # adding a prompt whose 4 rewards are equal (each pair log 2): batch mean = (0.2070381 + 0.6931472)/2 = 0.4500927
    two = ranking_loss(torch.cat([rewards, torch.zeros(1, 4)]), torch.cat([ranks, torch.tensor([[0, 1, 2, 3]])]))
    assert close(two, 0.4500927)


def test_ranking_loss_skips_ties() -> None:
    # rewards 3,2,1,0 with ranks 0,1,1,2: the (1,2) pair is a tie and is skipped; 5 ordered pairs remain
    # gaps (0,1)=1 (0,2)=2 (0,3)=3 (1,3)=2 (2,3)=1 -> 2*0.3132617 + 2*0.1269280 + 0.0485874 = 0.9289668 ; /5 = 0.1857934
    loss = ranking_loss(torch.tensor([[3.0, 2.0, 1.0, 0.0]]), torch.tensor([[0, 1, 1, 2]]))
    assert close(loss, 0.1857934)
    with pytest.raises(ValueError, match="no pair"):
        ranking_loss(torch.tensor([[3.0, 2.0]]), torch.tensor([[1, 1]]))


def test_ranking_loss_variable_k_with_valid() -> None:
    # prompt 0 has K=4 (slot 4 absent, holding junk that would dominate if used): 0.2070381 as above
    # prompt 1 has K=5, all rewards equal: C(5,2) = 10 pairs of log 2 -> 0.6931472 ; mean = 0.4500927
    rewards = torch.tensor([[3.0, 2.0, 1.0, 0.0, 100.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    ranks = torch.tensor([[0, 1, 2, 3, 0], [0, 1, 2, 3, 4]])
    valid = torch.tensor([[True, True, True, True, False], [True] * 5])
    assert close(ranking_loss(rewards, ranks, valid), 0.4500927)
    assert not close(ranking_loss(rewards, ranks), 0.4500927)  # the junk slot matters without `valid`


def test_pairwise_accuracy_counts_ties_half() -> None:
    # 1>0 win, 2=2 tie (0.5), 3<5 loss, 4>1 win -> 2.5/4 = 0.625
    assert pairwise_accuracy(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([0.0, 2.0, 5.0, 1.0])) == 0.625


# ---------------------------------------------------------------------------------- normalisation helpers


def test_reward_head_init_std() -> None:
    assert reward_head_init_std(3) == 0.5  # 1/sqrt(3+1)
    assert close(reward_head_init_std(767), 1 / 27.7128129)  # sqrt(768) = 27.7128129
    with pytest.raises(ValueError):
        reward_head_init_std(0)


def test_gain_bias_for_unit_normal() -> None:
    # scores 2,4,6,8: mean 5; deviations -3,-1,1,3 -> squares 9,1,1,9, mean 5 -> std sqrt(5) = 2.2360680
    # gain = 1/2.2360680 = 0.4472136 ; bias = -5/2.2360680 = -2.2360680
    scores = torch.tensor([2.0, 4.0, 6.0, 8.0])
    gain, bias = gain_bias_for_unit_normal(scores)
    assert close(gain, 0.4472136) and close(bias, -2.2360680)
    normalised = gain * scores + bias  # -1.3416408, -0.4472136, 0.4472136, 1.3416408
    assert close(normalised.mean(), 0.0) and close(normalised.std(correction=0), 1.0)
    with pytest.raises(ValueError, match="spread"):
        gain_bias_for_unit_normal(torch.ones(3))


def test_bias_for_zero_reference() -> None:
    # reference scores 1, 2, 6 -> mean 3 -> bias -3
    assert close(bias_for_zero_reference(torch.tensor([1.0, 2.0, 6.0])), -3.0)


def test_apply_missing_stop_penalty() -> None:
    scores = torch.tensor([0.5, 2.0, -0.3])
    has_stop = torch.tensor([True, False, False])
    assert torch.equal(apply_missing_stop_penalty(scores, has_stop), torch.tensor([0.5, -1.0, -1.0]))
    assert torch.equal(apply_missing_stop_penalty(scores, has_stop, penalty=-2.5), torch.tensor([0.5, -2.5, -2.5]))
    with pytest.raises(ValueError, match="bool"):
        apply_missing_stop_penalty(scores, torch.tensor([1, 0, 0]))


# ---------------------------------------------------------------------------------- PPO rewards and GAE


def test_kl_penalized_rewards_score_at_last_real_token() -> None:
    logprobs = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -3.0, -3.0]])
    ref_logprobs = torch.tensor([[-1.5, -1.0, -0.5], [-2.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.float32)
    scores = torch.tensor([2.0, 5.0])
    # kl row 0: -1-(-1.5)=0.5, -2-(-1)=-1, 0 ; row 1: -1-(-2)=1, padding 0, 0
    # rewards = -0.1*kl: row 0 -0.05, 0.1, 0 (+2 at t=2) ; row 1: -0.1 (+5 at t=0) = 4.9, 0, 0
    rewards, kl = kl_penalized_rewards(scores, logprobs, ref_logprobs, mask, beta=0.1)
    assert torch.allclose(kl, torch.tensor([[0.5, -1.0, 0.0], [1.0, 0.0, 0.0]]))
    assert torch.allclose(rewards, torch.tensor([[-0.05, 0.1, 2.0], [4.9, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="no real token"):
        kl_penalized_rewards(scores, logprobs, ref_logprobs, torch.tensor([[1, 1, 1], [0, 0, 0]]), beta=0.1)


def test_gae_three_tokens_by_hand() -> None:
    # gamma=1, lam=0.95; rewards 0,0,1 ; values 0.5,0.4,0.2 ; 4th position is padding with junk
    # t=2: delta = 1 + 0 - 0.2 = 0.8 (value after the last token is 0) ; A2 = 0.8
    # t=1: delta = 0 + 0.2 - 0.4 = -0.2 ; A1 = -0.2 + 0.95*0.8 = 0.56
    # t=0: delta = 0 + 0.4 - 0.5 = -0.1 ; A0 = -0.1 + 0.95*0.56 = 0.432
    # returns = A + V = 0.932, 0.96, 1.0 ; padding 0
    rewards = torch.tensor([[0.0, 0.0, 1.0, 7.0]])
    values = torch.tensor([[0.5, 0.4, 0.2, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    assert torch.allclose(advantages, torch.tensor([[0.432, 0.56, 0.8, 0.0]]), atol=1e-6)
    assert torch.allclose(returns, torch.tensor([[0.932, 0.96, 1.0, 0.0]]), atol=1e-6)


def _gae_double_loop(rewards: list[float], values: list[float], length: int, gamma: float, lam: float) -> list[float]:
    """A_t = sum_l (gamma*lam)^l delta_{t+l}, delta_k = r_k + gamma*V_{k+1} - V_k, V_length = 0."""
    advantages = [0.0] * len(rewards)
    for t in range(length):
        for k in range(t, length):
            next_value = values[k + 1] if k + 1 < length else 0.0
            delta = rewards[k] + gamma * next_value - values[k]
            advantages[t] += (gamma * lam) ** (k - t) * delta
    return advantages


def test_gae_matches_python_double_loop_on_random_masked_data() -> None:
    generator = torch.Generator().manual_seed(0)
    lengths = [1, 7, 4, 0, 5]
    batch, steps, gamma, lam = len(lengths), 7, 0.9, 0.8
    rewards = torch.randn(batch, steps, generator=generator)
    values = torch.randn(batch, steps, generator=generator)
    mask = torch.tensor([[1.0] * n + [0.0] * (steps - n) for n in lengths])
    advantages, returns = gae(rewards, values, mask, gamma=gamma, lam=lam)
    for row, length in enumerate(lengths):
        expected = _gae_double_loop(rewards[row].tolist(), values[row].tolist(), length, gamma, lam)
        assert torch.allclose(advantages[row], torch.tensor(expected), atol=1e-5)
        expected_returns = [
            a + v if t < length else 0.0 for t, (a, v) in enumerate(zip(expected, values[row].tolist()))
        ]
        assert torch.allclose(returns[row], torch.tensor(expected_returns), atol=1e-5)
    with pytest.raises(ValueError, match="then padding"):
        gae(rewards[:1, :3], values[:1, :3], torch.tensor([[1, 0, 1]]))


# ---------------------------------------------------------------------------------- PPO losses


def test_policy_loss_with_ratio_one_is_minus_mean_advantage() -> None:
    logprobs = torch.tensor([[-1.0, -2.0, -0.3], [-0.7, -5.0, -5.0]])
    advantages = torch.tensor([[1.0, -2.0, 3.0], [0.5, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    # ratio = 1 everywhere -> loss = -(1 - 2 + 3 + 0.5)/4 = -0.625 ; nothing clipped
    loss, stats = clipped_policy_loss(logprobs, logprobs.clone(), advantages, mask)
    assert close(loss, -0.625)
    assert stats == {"clipfrac": 0.0, "approx_kl": 0.0, "ratio_mean": 1.0, "ratio_max": 1.0}


def test_policy_loss_clipped_case_by_hand() -> None:
    # four real tokens (eps = 0.2) and one padded token with a huge ratio that must be ignored:
    #   ratio 1.5, A= 1: -1.5 vs clipped -1.2 -> max -1.2 (clipped)
    #   ratio 0.5, A= 1: -0.5 vs clipped -0.8 -> max -0.5
    #   ratio 0.5, A=-1:  0.5 vs clipped  0.8 -> max  0.8 (clipped)
    #   ratio 1.1, A=-2:  2.2 vs clipped  2.2 -> 2.2 (equal, not counted as clipped)
    # loss = (-1.2 - 0.5 + 0.8 + 2.2)/4 = 1.3/4 = 0.325 ; clipfrac 2/4 ; ratio_mean 3.6/4 = 0.9 ; ratio_max 1.5
    # approx_kl = 0.5 * (ln1.5^2 + 2 ln0.5^2 + ln1.1^2)/4 = 0.5 * (0.1644019 + 0.9609060 + 0.0090840)/4 = 0.1417990
    old_logprobs = torch.full((1, 5), -1.0)
    ratios = torch.tensor([[1.5, 0.5, 0.5, 1.1, 50.0]])
    logprobs = (old_logprobs + ratios.log()).requires_grad_(True)
    advantages = torch.tensor([[1.0, 1.0, -1.0, -2.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])
    loss, stats = clipped_policy_loss(logprobs, old_logprobs, advantages, mask, clip_range=0.2)
    assert close(loss, 0.325)
    assert close(stats["clipfrac"], 0.5) and close(stats["ratio_mean"], 0.9) and close(stats["ratio_max"], 1.5)
    assert close(stats["approx_kl"], 0.1417990)
    # gradient d loss / d logprob = -A * ratio / 4 on unclipped tokens, 0 on clipped and padded ones:
    # token 2: -1*0.5/4 = -0.125 ; token 4: 2*1.1/4 = 0.55
    loss.backward()
    assert torch.allclose(logprobs.grad, torch.tensor([[0.0, -0.125, 0.0, 0.55, 0.0]]), atol=1e-6)


def test_value_loss_clipped_case_by_hand() -> None:
    # eps = 0.2, old values 1.0 -> clipped values lie in [0.8, 1.2]; 4th token is padding
    #   v=1.5, R=2: (1.5-2)^2 = 0.25 vs (1.2-2)^2 = 0.64 -> 0.64 (clipped term larger)
    #   v=0.9, R=0: 0.81 vs 0.81 (inside the range) -> 0.81
    #   v=1.5, R=1: 0.25 vs (1.2-1)^2 = 0.04 -> 0.25
    # loss = 0.5 * (0.64 + 0.81 + 0.25)/3 = 0.5 * 0.5666667 = 0.2833333 ; value_clipfrac = 1/3
    values = torch.tensor([[1.5, 0.9, 1.5, 42.0]])
    old_values = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    returns = torch.tensor([[2.0, 0.0, 1.0, -42.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, stats = clipped_value_loss(values, old_values, returns, mask, clip_range=0.2)
    assert close(loss, 0.2833333)
    assert close(stats["value_clipfrac"], 1 / 3)


def test_explained_variance() -> None:
    # returns 1,2,4 (mean 7/3): var = (16/9 + 1/9 + 25/9)/3 = 42/27 ; residuals 0,0,1 (mean 1/3): var = (1/9+1/9+4/9)/3 = 6/27
    # EV = 1 - 6/42 = 6/7 = 0.8571429 (padding ignored)
    values = torch.tensor([[1.0, 2.0, 3.0, 50.0]])
    returns = torch.tensor([[1.0, 2.0, 4.0, -50.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    assert close(explained_variance(values, returns, mask), 0.8571429)
    assert close(explained_variance(returns, returns, mask), 1.0)


# ---------------------------------------------------------------------------------- KL controllers


def test_fixed_kl_controller() -> None:
    controller = FixedKLController(0.05)
    controller.update(100.0, 512)
    assert controller.beta == 0.05
    restored = FixedKLController(1.0)
    restored.load_state_dict(controller.state_dict())
    assert restored.beta == 0.05


def test_adaptive_kl_controller_three_updates_by_hand() -> None:
    # beta 0.1, target 6, K_beta 0.1
    # KL=12: e = (12-6)/6 = 1 -> clipped 0.2 ; beta = 0.1 * (1 + 0.1*0.2) = 0.102
    # KL=6.6: e = 0.6/6 = 0.1 ; beta = 0.102 * 1.01 = 0.10302
    # KL=0: e = -1 -> clipped -0.2 ; beta = 0.10302 * 0.98 = 0.1009596
    controller = AdaptiveKLController(init_beta=0.1, target_kl=6.0, k_beta=0.1)
    expected = [0.102, 0.10302, 0.1009596]
    for kl, beta in zip([12.0, 6.6, 0.0], expected):
        controller.update(kl, n_steps=512)
        assert close(controller.beta, beta, tol=1e-9)


def test_adaptive_kl_controller_with_horizon_and_resume() -> None:
    # horizon 10000: K_beta = n_steps/10000
    # KL=12, n=512: e = 0.2 ; beta = 0.1 * (1 + 0.0512*0.2) = 0.1 * 1.01024 = 0.101024
    # KL=3, n=512: e = -0.5 -> -0.2 ; beta = 0.101024 * (1 - 0.01024) = 0.101024 * 0.98976 = 0.09998951424
    # KL=6.3, n=1000: e = 0.05, K = 0.1 ; beta = 0.09998951424 * 1.005 = 0.1004894618112
    controller = AdaptiveKLController(init_beta=0.1, target_kl=6.0, k_beta=0.1, horizon=10000)
    controller.update(12.0, 512)
    assert close(controller.beta, 0.101024, tol=1e-12)
    saved = controller.state_dict()
    controller.update(3.0, 512)
    assert close(controller.beta, 0.09998951424, tol=1e-12)
    controller.update(6.3, 1000)
    assert close(controller.beta, 0.1004894618112, tol=1e-12)
    # a resumed controller (built with other settings) continues the same sequence
    resumed = AdaptiveKLController(init_beta=1.0, target_kl=1.0)
    resumed.load_state_dict(saved)
    resumed.update(3.0, 512)
    resumed.update(6.3, 1000)
    assert resumed.beta == controller.beta and resumed.horizon == 10000
    with pytest.raises(ValueError, match="kl"):
        controller.update(float("nan"), 512)
