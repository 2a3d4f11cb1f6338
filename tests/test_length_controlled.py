"""Tests for the length-controlled win rate in rlhf.stats, and the win-rate interval's coverage with ties."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rlhf.stats import length_controlled_win_rate, length_controlled_win_rate_point, win_rate


def test_lc_win_rate_saturated_model_by_hand() -> None:
    # Length difference takes two values, 0 and 10: a logistic regression with intercept and slope fits each
    # group's win rate exactly, so the rate at zero difference is the equal-length group's: 1/4, whatever the
    # scaling of the difference. The raw win rate is (1 + 0 + 0 + 0 + 1 + 1 + 1 + 0) / 8 = 1/2.
    outcomes = [1, 0, 0, 0, 1, 1, 1, 0]
    lengths_a = [5, 5, 5, 5, 15, 15, 15, 15]
    lengths_b = [5] * 8
    result = length_controlled_win_rate(outcomes, lengths_a, lengths_b, n_resamples=200)
    assert result["win_rate"] == pytest.approx(0.5)
    assert result["lc_win_rate"] == pytest.approx(0.25, abs=1e-4)
    # slope: logit(3/4) - logit(1/4) = 2 log 3 per 10 tokens; sd of the differences [0 x4, 10 x4] is 5,
    # so per standard deviation the slope is 2 log 3 * 5 / 10 = log 3
    assert result["length_slope"] == pytest.approx(math.log(3), abs=1e-3)
    assert result["n"] == 8
    assert 0.0 <= result["ci95_low"] <= result["ci95_high"] <= 1.0


def test_lc_win_rate_counts_ties_as_half() -> None:
    # equal-length group: 1, 0.5, 0, 0 -> 1.5 / 4 = 0.375
    outcomes = [1, 0.5, 0, 0, 1, 1, 1, 0]
    difference = np.array([0, 0, 0, 0, 10, 10, 10, 10], dtype=float)
    assert length_controlled_win_rate_point(np.array(outcomes, dtype=float), difference) == pytest.approx(
        0.375, abs=1e-4
    )


def test_lc_win_rate_without_length_variation_is_the_plain_win_rate() -> None:
    result = length_controlled_win_rate([1, 1, 0, 0.5], [7, 7, 7, 7], [3, 3, 3, 3], n_resamples=100)
    assert result["lc_win_rate"] == pytest.approx(0.625)
    assert result["length_slope"] == 0.0


def test_lc_win_rate_recovers_a_known_answer_when_length_drives_the_raw_win_rate() -> None:
    # Simulated judge: P(a wins) = sigmoid(b0 + 0.08 * (len_a - len_b)) with a usually 30 tokens longer.
    # The win rate at equal length is sigmoid(b0) = 0.4, but the raw win rate is inflated by the length bias.
    rng = np.random.default_rng(7)
    n, b0 = 4000, math.log(0.4 / 0.6)
    length_b = rng.integers(20, 60, n).astype(float)
    length_a = length_b + rng.normal(30.0, 20.0, n).round()
    probability = 1.0 / (1.0 + np.exp(-(b0 + 0.08 * (length_a - length_b))))
    outcomes = (rng.random(n) < probability).astype(float)
    result = length_controlled_win_rate(outcomes, length_a, length_b, seed=1, n_resamples=200)
    assert result["win_rate"] > 0.75  # the length-biased raw number
    assert result["lc_win_rate"] == pytest.approx(0.4, abs=0.03)
    assert result["ci95_low"] <= 0.4 <= result["ci95_high"]
    assert result["length_slope"] > 0


def test_lc_win_rate_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"outcomes\[1\]"):
        length_controlled_win_rate([1, 0.2], [1, 2], [1, 1])
    with pytest.raises(ValueError, match="equal lengths"):
        length_controlled_win_rate([1, 0], [1, 2, 3], [1, 1])


def test_win_rate_interval_coverage_with_ties() -> None:
    # Outcomes win / tie / loss with probabilities 0.45 / 0.2 / 0.35: true win rate 0.45 + 0.5 * 0.2 = 0.55.
    # 200 repetitions of n = 80: the 95% interval should cover 0.55 in about 190 (binomial sd ~ 3).
    true_rate, repetitions, n = 0.55, 200, 80
    rng = np.random.default_rng(11)
    covered = 0
    for repetition in range(repetitions):
        outcomes = rng.choice([1.0, 0.5, 0.0], size=n, p=[0.45, 0.2, 0.35])
        result = win_rate(outcomes, seed=repetition, n_resamples=400)
        covered += result["ci95_low"] <= true_rate <= result["ci95_high"]
    assert 0.88 <= covered / repetitions <= 0.99
