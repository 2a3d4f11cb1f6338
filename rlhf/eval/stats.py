"""Summary statistics for evaluation: mean with standard error, win rates and paired
differences, each with a seeded bootstrap confidence interval (scipy.stats.bootstrap)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import scipy.stats

WIN, TIE, LOSS = 1.0, 0.5, 0.0
BOOTSTRAP_METHODS = ("BCa", "percentile")


def _as_finite_vector(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    """Return `values` as a non-empty 1-D float array of finite numbers, or raise naming the bad entry."""
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D sequence of numbers, got an array of shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name}: expected at least one value, got none")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise ValueError(f"{name}[{bad[0]}]: expected a finite number, got {array[bad[0]]!r}")
    return array


def _check_bootstrap_settings(n_resamples: int, confidence: float, method: str) -> None:
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise ValueError(f"n_resamples: expected a positive integer, got {n_resamples!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence: expected a number strictly between 0 and 1, got {confidence!r}")
    if method not in BOOTSTRAP_METHODS:
        raise ValueError(f"method: expected one of {BOOTSTRAP_METHODS}, got {method!r}")


def _mean_along_axis(sample: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(sample, axis=axis)


def bootstrap_mean_interval(
    values: np.ndarray, seed: int, n_resamples: int, confidence: float, method: str = "BCa"
) -> tuple[float, float]:
    """Bootstrap confidence interval of the mean of `values` (resampling with replacement).

    When every value is equal the bootstrap distribution is a single point (BCa is undefined
    there), so the point value is returned as both ends.
    """
    _check_bootstrap_settings(n_resamples, confidence, method)
    values = _as_finite_vector(values, "values")
    if np.all(values == values[0]):
        return float(values[0]), float(values[0])
    result = scipy.stats.bootstrap(
        (values,),
        _mean_along_axis,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method=method,
        vectorized=True,
        rng=np.random.default_rng(seed),
    )
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    if method == "BCa" and not (math.isfinite(low) and math.isfinite(high)):
        # BCa can fail on near-degenerate resamples; the percentile interval is always defined.
        return bootstrap_mean_interval(values, seed, n_resamples, confidence, method="percentile")
    assert low <= high, f"bootstrap interval is inverted: [{low}, {high}]"
    return low, high


def mean_sem(values: Sequence[float] | np.ndarray) -> dict[str, float | int]:
    """Mean, standard error of the mean (sample std with ddof=1 over sqrt(n); nan when n=1) and n."""
    array = _as_finite_vector(values, "values")
    n = int(array.size)
    sem = float(np.std(array, ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return {"mean": float(np.mean(array)), "sem": sem, "n": n}


# Stiennon et al. 2020, Fig. 1: win rate = fraction of comparisons a policy's output is preferred (ties count half).
def win_rate_point(outcomes: np.ndarray) -> float:
    return float(np.mean(outcomes))


def win_rate(
    outcomes: Sequence[float] | np.ndarray,
    seed: int = 0,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    method: str = "BCa",
) -> dict[str, float | int]:
    """Win rate of outcomes coded 1 (win), 0.5 (tie), 0 (loss), its SEM and a bootstrap interval.

    The interval keys are named ci95_* whatever `confidence` is, so readers of summary.json
    find them in one place; pass confidence=0.95 for what the name says.
    """
    array = _as_finite_vector(outcomes, "outcomes")
    invalid = np.flatnonzero(~np.isin(array, (WIN, TIE, LOSS)))
    if invalid.size:
        index = int(invalid[0])
        raise ValueError(f"outcomes[{index}]: expected 1 (win), 0.5 (tie) or 0 (loss), got {array[index]!r}")
    low, high = bootstrap_mean_interval(array, seed, n_resamples, confidence, method)
    wins, ties, losses = (int(np.sum(array == code)) for code in (WIN, TIE, LOSS))
    assert wins + ties + losses == array.size, "every outcome must be a win, a tie or a loss"
    return {
        "win_rate": win_rate_point(array),
        "sem": mean_sem(array)["sem"],
        "ci95_low": low,
        "ci95_high": high,
        "n": int(array.size),
        "wins": wins,
        "ties": ties,
        "losses": losses,
    }


def paired_bootstrap_diff(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    seed: int = 0,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    method: str = "BCa",
) -> dict[str, float]:
    """Mean of a - b over paired items (e.g. two policies' gold rewards on the same prompts) with a
    bootstrap interval that resamples prompts, keeping each a[i] with its b[i]."""
    first = _as_finite_vector(a, "a")
    second = _as_finite_vector(b, "b")
    if first.shape != second.shape:
        raise ValueError(f"a and b: expected the same number of paired values, got {first.size} and {second.size}")
    differences = first - second
    low, high = bootstrap_mean_interval(differences, seed, n_resamples, confidence, method)
    return {"mean_diff": float(np.mean(differences)), "ci95_low": low, "ci95_high": high}
