"""Summary statistics for evaluation: mean with standard error, win rates and paired
differences, each with a seeded bootstrap confidence interval (scipy.stats.bootstrap)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import scipy.optimize
import scipy.special
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


# ------------------------------------------------------------------------------------------------ length control


def _soft_label_logistic_loss(parameters: np.ndarray, outcomes: np.ndarray, x: np.ndarray) -> tuple[float, np.ndarray]:
    """Negative log-likelihood of outcomes in [0, 1] under P(win) = sigmoid(b0 + b1 x), and its gradient."""
    logits = parameters[0] + parameters[1] * x
    # -[y log s(z) + (1 - y) log(1 - s(z))] = log(1 + e^z) - y z
    loss = float(np.sum(np.logaddexp(0.0, logits) - outcomes * logits))
    residual = scipy.special.expit(logits) - outcomes
    return loss, np.array([residual.sum(), residual @ x])


def _logistic_intercept_and_slope(outcomes: np.ndarray, standardized_difference: np.ndarray) -> tuple[float, float]:
    """Unpenalised maximum-likelihood fit of P(win) = sigmoid(b0 + b1 * x) to outcomes in {0, 0.5, 1}, a tie
    entering as a soft label 0.5 (scipy.optimize.minimize, BFGS with the analytic gradient). When the data
    are separable the estimates grow until the optimiser stops; the fitted rates stay near 0 or 1."""
    if np.all(outcomes == 1.0) or np.all(outcomes == 0.0):  # the MLE intercept is infinite
        return (math.inf if outcomes[0] == 1.0 else -math.inf), 0.0
    result = scipy.optimize.minimize(
        _soft_label_logistic_loss,
        np.zeros(2),
        args=(outcomes, standardized_difference),
        jac=True,
        method="BFGS",
        options={"gtol": 1e-8, "maxiter": 200},
    )
    return float(result.x[0]), float(result.x[1])


# Dubois et al. 2024 (AlpacaEval LC) without the instruction term: win rate at zero standardised length difference.
def length_controlled_win_rate_point(outcomes: np.ndarray, length_difference: np.ndarray) -> float:
    """sigmoid(b0) of the logistic regression of the outcome on (len_a - len_b) / sd(len_a - len_b);
    the difference is scaled, not centred, so that x = 0 still means equal lengths. When every length
    difference is equal the slope cannot be fitted and the result is the plain win rate."""
    spread = float(np.std(length_difference))
    if spread == 0.0:
        return float(np.mean(outcomes))
    intercept, _ = _logistic_intercept_and_slope(outcomes, length_difference / spread)
    return 1.0 / (1.0 + math.exp(-intercept)) if math.isfinite(intercept) else float(intercept > 0)


def length_controlled_win_rate(
    outcomes: Sequence[float] | np.ndarray,
    length_a: Sequence[float] | np.ndarray,
    length_b: Sequence[float] | np.ndarray,
    seed: int = 0,
    n_resamples: int = 500,
    confidence: float = 0.95,
) -> dict[str, float | int]:
    """Length-controlled win rate of a over b (outcomes 1 / 0.5 / 0), the fitted slope per standard deviation
    of length difference, and a percentile bootstrap interval that resamples items (outcome with its lengths)."""
    array = _as_finite_vector(outcomes, "outcomes")
    invalid = np.flatnonzero(~np.isin(array, (WIN, TIE, LOSS)))
    if invalid.size:
        raise ValueError(
            f"outcomes[{int(invalid[0])}]: expected 1 (win), 0.5 (tie) or 0 (loss), got {array[invalid[0]]!r}"
        )
    first, second = _as_finite_vector(length_a, "length_a"), _as_finite_vector(length_b, "length_b")
    if not first.size == second.size == array.size:
        raise ValueError(
            f"outcomes, length_a, length_b: expected equal lengths, got {array.size}, {first.size}, {second.size}"
        )
    _check_bootstrap_settings(n_resamples, confidence, "percentile")
    difference = first - second
    point = length_controlled_win_rate_point(array, difference)
    spread = float(np.std(difference))
    slope = _logistic_intercept_and_slope(array, difference / spread)[1] if spread > 0 else 0.0
    if np.all(array == array[0]):
        low = high = float(array[0])
    else:
        result = scipy.stats.bootstrap(
            (array, difference),
            length_controlled_win_rate_point,
            paired=True,
            vectorized=False,
            n_resamples=n_resamples,
            confidence_level=confidence,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    return {
        "lc_win_rate": point,
        "ci95_low": low,
        "ci95_high": high,
        "length_slope": slope,
        "win_rate": win_rate_point(array),
        "n": int(array.size),
    }
