"""The reward-KL frontier of Ziegler et al. 2019 fig. 3: the optimal KL-regularised policy
pi*(x) ∝ rho(x) exp(r(x) / beta) for a range of beta, its expected gold reward and KL(pi* || rho), estimated
from samples of rho by self-normalised importance weights. The KL of best-of-N sampling is
`rlhf.models.best_of_n.best_of_n_kl`.

Why the weights need no log-probabilities: pi*(x) / rho(x) = exp(r(x) / beta) / Z with Z = E_rho[exp(r / beta)],
so for samples x_i ~ rho the weights are w_i ∝ exp(r_i / beta) and KL(pi* || rho) = E_pi*[r] / beta - log Z.
Log-probabilities enter only when the samples come from another proposal q (weights times rho(x_i) / q(x_i)).
`tilted_policy_exact` does the same sums over an enumerated support, which is what the estimator converges to.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.special import logsumexp


def _finite_vector(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name}: expected a non-empty 1-D sequence of numbers, got shape {array.shape}")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise ValueError(f"{name}[{bad[0]}]: expected a finite number, got {array[bad[0]]!r}")
    return array


def _check_beta(beta: float) -> None:
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta: expected a finite number > 0, got {beta!r}")


# Ziegler et al. 2019 §2 / fig. 3: pi* ∝ rho exp(r / beta), the optimum of E[r] - beta KL(pi || rho), on a known support.
def tilted_policy_exact(log_rho: Sequence[float], rewards: Sequence[float], beta: float) -> dict[str, float]:
    """Expected reward and KL(pi* || rho) of pi* ∝ rho exp(r / beta) over an enumerated support, where
    log_rho are rho's log-probabilities of the outcomes (summing to 1) and rewards their rewards."""
    _check_beta(beta)
    log_p, reward = _finite_vector(log_rho, "log_rho"), _finite_vector(rewards, "rewards")
    if log_p.size != reward.size:
        raise ValueError(f"log_rho and rewards: expected equal lengths, got {log_p.size} and {reward.size}")
    if abs(logsumexp(log_p)) > 1e-6:
        raise ValueError(
            f"log_rho: expected log-probabilities of a distribution (summing to 1), got a total of {math.exp(logsumexp(log_p))}"
        )
    log_tilted = log_p + reward / beta
    log_normaliser = logsumexp(log_tilted)
    probability = np.exp(log_tilted - log_normaliser)
    expected_reward = float(probability @ reward)
    return {"beta": beta, "gold_reward": expected_reward, "kl": float(expected_reward / beta - log_normaliser)}


# Ziegler et al. 2019 fig. 3: self-normalised importance sampling of pi* from samples of rho.
def tilted_policy_from_samples(
    rewards: Sequence[float], beta: float, log_rho_over_proposal: Sequence[float] | None = None
) -> dict[str, float]:
    """Estimated expected reward and KL(pi* || rho) of pi* ∝ rho exp(r / beta) from the rewards of samples, with
    Kish's effective sample size of the weights (small = the estimate rests on few samples). The samples are
    from rho itself, or from another proposal q when `log_rho_over_proposal` gives log rho(x_i) - log q(x_i)
    (e.g. summed token log-probs of rho minus those of the sampler, when sampling at another temperature)."""
    _check_beta(beta)
    reward = _finite_vector(rewards, "rewards")
    log_ratio = (
        np.zeros_like(reward)
        if log_rho_over_proposal is None
        else _finite_vector(log_rho_over_proposal, "log_rho_over_proposal")
    )
    if log_ratio.size != reward.size:
        raise ValueError(
            f"rewards and log_rho_over_proposal: expected equal lengths, got {reward.size} and {log_ratio.size}"
        )
    log_weights = log_ratio + reward / beta
    log_normaliser = logsumexp(log_weights) - math.log(reward.size)  # log of the sample mean of (rho/q) exp(r / beta)
    weights = np.exp(log_weights - logsumexp(log_weights))
    expected_reward = float(weights @ reward)
    return {
        "beta": beta,
        "gold_reward": expected_reward,
        "kl": max(0.0, float(expected_reward / beta - log_normaliser)),  # >= 0 exactly; rounding can dip below
        "effective_sample_size": float(1.0 / np.sum(weights**2)),
    }


# Ziegler et al. 2019 fig. 3: pi*(y|x) ∝ rho(y|x) exp(r/beta) per prompt; E_x of its reward and KL.
def frontier_over_prompts(rewards: np.ndarray, betas: list[float]) -> list[dict]:
    """The optimal policy's expected reward and KL(pi* || rho), each averaged over prompts, for each beta,
    estimated per prompt from the rows of `rewards` [P, M] (M samples of rho per prompt); sorted by KL.
    The smallest effective sample size over prompts says how far the estimate can be trusted."""
    points = []
    for beta in betas:
        per_prompt = [tilted_policy_from_samples(row, beta) for row in rewards]
        points.append(
            {
                "beta": float(beta),
                "kl": float(np.mean([p["kl"] for p in per_prompt])),
                "gold_reward": float(np.mean([p["gold_reward"] for p in per_prompt])),
                "min_effective_sample_size": float(min(p["effective_sample_size"] for p in per_prompt)),
            }
        )
    return sorted(points, key=lambda point: point["kl"])


def optimal_reward_at_kl(frontier: Sequence[dict[str, float]], kl: float) -> float:
    """The frontier's gold reward at a given KL, interpolated linearly between its points; outside the
    frontier's KL range this raises, since extrapolating the optimum would not be an estimate."""
    kls = np.array([point["kl"] for point in frontier])
    rewards = np.array([point["gold_reward"] for point in frontier])
    order = np.argsort(kls)
    kls, rewards = kls[order], rewards[order]
    if not kls[0] <= kl <= kls[-1]:
        raise ValueError(
            f"kl: {kl} is outside the frontier's range [{kls[0]:.4g}, {kls[-1]:.4g}]; add smaller or larger betas"
        )
    return float(np.interp(kl, kls, rewards))


def fraction_of_optimum(gold_reward: float, optimal_reward: float, baseline_reward: float = 0.0) -> float:
    """(reward - baseline) / (optimum - baseline): with baseline = rho's mean gold reward (the frontier's KL = 0
    point) the share of the optimum's improvement a policy reached at the same KL; with baseline 0 the plain
    ratio reward / optimum (meaningful only for rewards that are positive)."""
    gain = optimal_reward - baseline_reward
    if gain <= 0:
        raise ValueError(
            f"optimal_reward {optimal_reward} is not above the baseline {baseline_reward}: no gain to divide by"
        )
    return (gold_reward - baseline_reward) / gain
