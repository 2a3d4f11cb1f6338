"""Tests for rlhf.eval.frontier on a toy three-outcome distribution where pi* ∝ rho exp(r / beta) is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rlhf.eval.frontier import (
    fraction_of_optimum,
    frontier_over_prompts,
    optimal_reward_at_kl,
    tilted_policy_exact,
    tilted_policy_from_samples,
)
from rlhf.models.best_of_n import best_of_n_kl

RHO = np.array([0.5, 0.25, 0.25])
REWARDS = np.array([0.0, math.log(2.0), 0.0])


def test_tilted_policy_exact_by_hand() -> None:
    # beta = 1: pi* ∝ rho e^r = [0.5, 0.5, 0.25], Z = 1.25, pi* = [0.4, 0.4, 0.2]
    # E[r] = 0.4 log 2; KL = 0.4 log(0.8) + 0.4 log(1.6) + 0.2 log(0.8) = 0.6 log 0.8 + 0.4 log 1.6
    point = tilted_policy_exact(np.log(RHO), REWARDS, beta=1.0)
    assert point["gold_reward"] == pytest.approx(0.4 * math.log(2))
    assert point["kl"] == pytest.approx(0.6 * math.log(0.8) + 0.4 * math.log(1.6))
    # beta = 1/2: pi* ∝ rho e^{2r} = [0.5, 1, 0.25], Z = 1.75, pi* = [2/7, 4/7, 1/7]
    # E[r] = 4/7 log 2; KL = 3/7 log(4/7) + 4/7 log(16/7)
    point = tilted_policy_exact(np.log(RHO), REWARDS, beta=0.5)
    assert point["gold_reward"] == pytest.approx(4 / 7 * math.log(2))
    assert point["kl"] == pytest.approx(3 / 7 * math.log(4 / 7) + 4 / 7 * math.log(16 / 7))
    # beta -> infinity: pi* = rho, KL 0, reward E_rho[r] = 0.25 log 2
    point = tilted_policy_exact(np.log(RHO), REWARDS, beta=1e6)
    assert point["gold_reward"] == pytest.approx(0.25 * math.log(2), rel=1e-4)
    assert point["kl"] == pytest.approx(0.0, abs=1e-6)


def test_tilted_policy_exact_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="summing to 1"):
        tilted_policy_exact(np.log([0.5, 0.4]), [0.0, 1.0], beta=1.0)
    with pytest.raises(ValueError, match="beta"):
        tilted_policy_exact(np.log(RHO), REWARDS, beta=0.0)
    with pytest.raises(ValueError, match="equal lengths"):
        tilted_policy_exact(np.log(RHO), [0.0, 1.0], beta=1.0)


@pytest.mark.parametrize("beta", [2.0, 1.0, 0.5, 0.25])
def test_importance_sampling_estimate_matches_the_exact_optimum(beta: float) -> None:
    rng = np.random.default_rng(0)
    outcomes = rng.choice(3, size=200_000, p=RHO)
    estimate = tilted_policy_from_samples(REWARDS[outcomes], beta)
    exact = tilted_policy_exact(np.log(RHO), REWARDS, beta)
    assert estimate["gold_reward"] == pytest.approx(exact["gold_reward"], rel=0.01)
    assert estimate["kl"] == pytest.approx(exact["kl"], rel=0.03, abs=1e-3)
    assert 0 < estimate["effective_sample_size"] <= 200_000


def test_importance_sampling_from_another_proposal_uses_the_log_ratio() -> None:
    # samples from a uniform proposal q = 1/3 each, weighted by rho / q, estimate the same optimum
    rng = np.random.default_rng(2)
    outcomes = rng.integers(0, 3, size=200_000)
    log_ratio = np.log(RHO[outcomes]) - math.log(1 / 3)
    estimate = tilted_policy_from_samples(REWARDS[outcomes], 0.5, log_rho_over_proposal=log_ratio)
    exact = tilted_policy_exact(np.log(RHO), REWARDS, 0.5)
    assert estimate["gold_reward"] == pytest.approx(exact["gold_reward"], rel=0.01)
    assert estimate["kl"] == pytest.approx(exact["kl"], rel=0.03)
    # ignoring the proposal would estimate the tilt of the uniform distribution instead: clearly different
    wrong = tilted_policy_from_samples(REWARDS[outcomes], 0.5)
    assert abs(wrong["gold_reward"] - exact["gold_reward"]) > 0.05
    with pytest.raises(ValueError, match="equal lengths"):
        tilted_policy_from_samples([0.0, 1.0], 1.0, log_rho_over_proposal=[0.0])


def test_effective_sample_size_by_hand() -> None:
    # rewards [0, log 3] at beta = 1: weights ∝ [1, 3] -> [1/4, 3/4]; ESS = 1 / (1/16 + 9/16) = 1.6
    assert tilted_policy_from_samples([0.0, math.log(3)], 1.0)["effective_sample_size"] == pytest.approx(1.6)


def test_frontier_is_sorted_by_kl_and_interpolates() -> None:
    rewards = np.random.default_rng(1).normal(size=5000)
    frontier = frontier_over_prompts(rewards[None, :], [0.25, 4.0, 1.0])  # one prompt
    assert [point["beta"] for point in frontier] == [4.0, 1.0, 0.25]  # smaller beta: larger KL, larger reward
    assert frontier[0]["gold_reward"] < frontier[1]["gold_reward"] < frontier[2]["gold_reward"]
    hand_made = [{"kl": 0.0, "gold_reward": 0.0}, {"kl": 1.0, "gold_reward": 2.0}, {"kl": 3.0, "gold_reward": 3.0}]
    assert optimal_reward_at_kl(hand_made, 0.25) == pytest.approx(0.5)
    assert optimal_reward_at_kl(hand_made, 2.0) == pytest.approx(2.5)
    with pytest.raises(ValueError, match="outside the frontier"):
        optimal_reward_at_kl(hand_made, 4.0)


def test_fraction_of_optimum_by_hand() -> None:
    # baseline 0.2, optimum 1.0, policy 0.8: (0.8 - 0.2) / (1.0 - 0.2) = 0.75
    assert fraction_of_optimum(0.8, 1.0, 0.2) == pytest.approx(0.75)
    assert fraction_of_optimum(0.45, 0.5) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="not above the baseline"):
        fraction_of_optimum(0.1, 0.2, 0.3)


def test_best_of_n_kl_by_hand() -> None:
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert best_of_n_kl(4) == pytest.approx(math.log(4) - 0.75)


def test_best_of_n_kl_matches_numerical_integration() -> None:
    # for a continuous reward, the best of N has density N u^(N-1) in the base policy's quantile u;
    # KL = ∫ N u^(N-1) log(N u^(N-1)) du over (0, 1), done here by the midpoint rule
    u = (np.arange(1_000_000) + 0.5) / 1_000_000
    for n in (2, 8, 64):
        log_density = math.log(n) + (n - 1) * np.log(u)
        assert best_of_n_kl(n) == pytest.approx(np.mean(np.exp(log_density) * log_density), rel=1e-3)
