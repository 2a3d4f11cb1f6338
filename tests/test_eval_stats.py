"""Tests for rlhf.stats: hand-worked means, SEMs and win rates, and bootstrap interval coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rlhf.stats import mean_sem, paired_bootstrap_diff, win_rate


def test_mean_sem_by_hand() -> None:
    # values 2, 4, 9: mean = 15/3 = 5; deviations -3, -1, 4; squares 9 + 1 + 16 = 26;
    # sample variance = 26 / (3 - 1) = 13; sem = sqrt(13) / sqrt(3) = sqrt(13/3) ~ 2.0817
    result = mean_sem([2.0, 4.0, 9.0])
    assert result["n"] == 3
    assert result["mean"] == pytest.approx(5.0)
    assert result["sem"] == pytest.approx(math.sqrt(13.0 / 3.0))


def test_mean_sem_single_value_has_nan_sem() -> None:
    result = mean_sem([7.5])
    assert result["mean"] == 7.5 and result["n"] == 1
    assert math.isnan(result["sem"])


def test_mean_sem_rejects_empty_and_non_finite() -> None:
    with pytest.raises(ValueError, match="at least one"):
        mean_sem([])
    with pytest.raises(ValueError, match=r"values\[1\].*finite"):
        mean_sem([1.0, math.inf])


def test_win_rate_hand_worked() -> None:
    # outcomes 1, 1, 0, 0.5: win rate = (1 + 1 + 0 + 0.5) / 4 = 0.625
    # deviations 0.375, 0.375, -0.625, -0.125; squares 0.140625 + 0.140625 + 0.390625 + 0.015625 = 0.6875
    # sample variance = 0.6875 / 3; sem = sqrt(0.6875 / 3) / sqrt(4) ~ 0.23936
    result = win_rate([1, 1, 0, 0.5], seed=0, n_resamples=500)
    assert result["win_rate"] == pytest.approx(0.625)
    assert result["sem"] == pytest.approx(math.sqrt(0.6875 / 3) / 2)
    assert (result["n"], result["wins"], result["ties"], result["losses"]) == (4, 2, 1, 1)
    # Every bootstrap mean of values in [0, 1] lies in [0, 1]; the point estimate is inside the interval.
    assert 0.0 <= result["ci95_low"] <= 0.625 <= result["ci95_high"] <= 1.0
    assert result["ci95_low"] < result["ci95_high"]


def test_win_rate_is_reproducible_for_a_seed() -> None:
    outcomes = [1, 0, 0.5, 1, 1, 0, 1, 0.5, 0, 1]
    assert win_rate(outcomes, seed=3, n_resamples=300) == win_rate(outcomes, seed=3, n_resamples=300)


@pytest.mark.parametrize("outcome", [0.0, 0.5, 1.0])
def test_win_rate_all_equal_outcomes_returns_point_interval(outcome: float) -> None:
    result = win_rate([outcome] * 5)
    assert result["win_rate"] == outcome
    assert result["ci95_low"] == outcome and result["ci95_high"] == outcome
    assert result["sem"] == 0.0


def test_win_rate_percentile_method_also_works() -> None:
    result = win_rate([1, 0, 1, 1, 0, 0.5], n_resamples=400, method="percentile")
    # (1 + 0 + 1 + 1 + 0 + 0.5) / 6 = 3.5 / 6
    assert result["win_rate"] == pytest.approx(3.5 / 6)
    assert result["ci95_low"] <= 3.5 / 6 <= result["ci95_high"]


@pytest.mark.parametrize(
    ("outcomes", "message"),
    [
        ([1, 0.3, 0], r"outcomes\[1\]: expected 1 \(win\), 0.5 \(tie\) or 0 \(loss\)"),
        ([1, 2], r"outcomes\[1\]"),
        ([0, -1], r"outcomes\[1\]"),
        ([1, float("nan")], r"outcomes\[1\]: expected a finite number"),
        ([], "at least one"),
        ([[1, 0], [0, 1]], "1-D"),
    ],
)
def test_win_rate_rejects_invalid_outcomes(outcomes: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        win_rate(outcomes)


def test_win_rate_rejects_bad_bootstrap_settings() -> None:
    with pytest.raises(ValueError, match="confidence"):
        win_rate([1, 0], confidence=1.5)
    with pytest.raises(ValueError, match="n_resamples"):
        win_rate([1, 0], n_resamples=0)
    with pytest.raises(ValueError, match="method"):
        win_rate([1, 0], method="studentized-t")


def test_win_rate_interval_coverage_on_bernoulli_draws() -> None:
    # 200 repetitions of n = 100 Bernoulli(0.6) outcomes; a 95% interval should cover 0.6 about 95% of the
    # time. With 200 repetitions the binomial sd of the coverage is sqrt(0.95 * 0.05 / 200) ~ 0.015, so
    # [0.88, 0.99] leaves room for the bootstrap's known slight under-coverage at n = 100.
    true_rate, repetitions, n = 0.6, 200, 100
    rng = np.random.default_rng(20240601)
    covered = 0
    for repetition in range(repetitions):
        outcomes = (rng.random(n) < true_rate).astype(float)
        result = win_rate(outcomes, seed=repetition, n_resamples=400)
        covered += result["ci95_low"] <= true_rate <= result["ci95_high"]
    assert 0.88 <= covered / repetitions <= 0.99


def test_paired_bootstrap_diff_sign_and_mean() -> None:
    # a - b = 2, 3, 4, 5: mean difference = 14 / 4 = 3.5; every resampled mean lies in [2, 5]
    a, b = [3.0, 5.0, 7.0, 9.0], [1.0, 2.0, 3.0, 4.0]
    forward = paired_bootstrap_diff(a, b, n_resamples=500)
    assert forward["mean_diff"] == pytest.approx(3.5)
    assert 2.0 <= forward["ci95_low"] <= 3.5 <= forward["ci95_high"] <= 5.0
    backward = paired_bootstrap_diff(b, a, n_resamples=500)
    assert backward["mean_diff"] == pytest.approx(-3.5)
    assert -5.0 <= backward["ci95_low"] <= -3.5 <= backward["ci95_high"] <= -2.0


def test_paired_bootstrap_diff_uses_the_pairing() -> None:
    # b varies a lot across prompts, a = b + 0.5 on every prompt: every paired difference is 0.5,
    # so the interval is the single point 0.5 (an unpaired comparison would be wide).
    b = [-10.0, 3.0, 25.0, 0.0, 7.0]
    a = [value + 0.5 for value in b]
    result = paired_bootstrap_diff(a, b)
    assert result["mean_diff"] == pytest.approx(0.5)
    assert result["ci95_low"] == pytest.approx(0.5) and result["ci95_high"] == pytest.approx(0.5)


def test_paired_bootstrap_diff_rejects_unequal_lengths() -> None:
    with pytest.raises(ValueError, match="same number"):
        paired_bootstrap_diff([1.0, 2.0], [1.0])
