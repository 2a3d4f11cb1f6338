"""Ziegler et al. (2019) §3.1.1 mock labeler: a gold scorer plus Bradley-Terry / Plackett-Luce choice
noise with temperature T (T = 0: always the gold-best response), and gold win/tie/loss judgements."""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence

import numpy as np

from rlhf.data.records import Comparison
from rlhf.labelers.base import check_kind_and_count

GoldScorer = Callable[[list[str], list[str]], list[float]]
CONFIDENCE_CANT_TELL, CONFIDENCE_CERTAIN = 5, 9  # Stiennon App. C.1 9-point scale: 5 = "can't tell"


def stable_sigmoid(x: float) -> float:
    """1 / (1 + exp(-x)) without overflow for large |x|."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    exp_x = math.exp(x)
    return exp_x / (1.0 + exp_x)


# Stiennon et al. 2020 §3.4 eq. 1: Bradley-Terry preference probability sigmoid(r_i - r_j), here with temperature.
def bradley_terry_probability(gold_i: float, gold_j: float, temperature: float) -> float:
    """P(labeler prefers i over j) = sigmoid((g_i - g_j) / T) (Bradley-Terry);
    at T = 0 the better one surely wins: 1.0, 0.5 on an exact tie, or 0.0."""
    if temperature == 0.0:
        return 1.0 if gold_i > gold_j else 0.5 if gold_i == gold_j else 0.0
    return stable_sigmoid((gold_i - gold_j) / temperature)


# Ziegler et al. 2019 eq. 1: the labeler picks response b of K with probability exp(r_b) / sum_i exp(r_i).
def softmax_choice_probabilities(gold: Sequence[float], temperature: float) -> np.ndarray:
    """P(labeler picks response i as best of K) = softmax(g / T)_i (K-way choice);
    at T = 0 uniform over the responses whose gold score equals the maximum exactly."""
    scores = np.asarray(gold, dtype=np.float64)
    if temperature == 0.0:
        is_best = scores == scores.max()
        return is_best / is_best.sum()
    logits = (scores - scores.max()) / temperature
    weights = np.exp(logits)
    return weights / weights.sum()


# Plackett-Luce: Ziegler eq. 1's K-way choice applied repeatedly to the responses not yet ranked.
def sample_plackett_luce_order(gold: Sequence[float], temperature: float, rng: np.random.Generator) -> list[int]:
    """Response indices from best to worst, drawn one position at a time from softmax(g / T) over the
    responses not yet placed (weights exp(g / T); for InstructGPT-style rankings). T > 0."""
    if temperature <= 0.0:
        raise ValueError(f"sample_plackett_luce_order needs temperature > 0, got {temperature}")
    remaining = list(range(len(gold)))
    order = []
    while remaining:
        probabilities = softmax_choice_probabilities([gold[i] for i in remaining], temperature)
        pick = int(rng.choice(len(remaining), p=probabilities))
        order.append(remaining.pop(pick))
    return order


def ranks_by_descending_gold(gold: Sequence[float]) -> list[int]:
    """ranks[i] = number of distinct gold values greater than g_i: 0 = best, exactly equal scores share
    a rank (dense ranking, e.g. g = [1, 3, 3, 0] -> [1, 0, 0, 2])."""
    distinct_descending = sorted(set(gold), reverse=True)
    rank_of_value = {value: rank for rank, value in enumerate(distinct_descending)}
    return [rank_of_value[value] for value in gold]


def ranks_from_order(order: Sequence[int]) -> list[int]:
    """ranks[order[position]] = position: turn a best-to-worst order into per-response ranks."""
    assert sorted(order) == list(range(len(order))), f"not a permutation: {list(order)}"
    ranks = [0] * len(order)
    for position, index in enumerate(order):
        ranks[index] = position
    return ranks


# Stiennon et al. 2020 App. C.1 9-point confidence scale; the linear map from p is our choice.
def confidence_from_probability(probability: float) -> int:
    """Confidence on Stiennon's 9-point scale (App. C.1) from the labeler's probability p in [0.5, 1] of
    preferring the response it prefers: linear 5 + 8 (p - 0.5), rounded half up (0.5 -> 5 "can't tell",
    0.75 -> 7, 1.0 -> 9)."""
    if not 0.5 <= probability <= 1.0:
        raise ValueError(f"confidence_from_probability: expected p in [0.5, 1], got {probability}")
    scaled = CONFIDENCE_CANT_TELL + (CONFIDENCE_CERTAIN - CONFIDENCE_CANT_TELL) * (probability - 0.5) / 0.5
    return int(math.floor(scaled + 0.5))


def likert_cut_points(gold_scores: Sequence[float], points: int = 7) -> list[float]:
    """The k/points quantiles, k = 1..points-1, of a batch's gold scores (numpy's linear interpolation): the cut
    points that put about one seventh of the batch on each point of a 7-point scale."""
    if len(gold_scores) == 0:
        raise ValueError("likert_cut_points: no gold scores to calibrate on")
    return [
        float(q) for q in np.quantile(np.asarray(gold_scores, dtype=np.float64), [k / points for k in range(1, points)])
    ]


# Stiennon et al. 2020 §4.1: 7-point Likert ratings; placing the gold score among the batch's quantiles is our rule.
def likert_from_score(score: float, cut_points: Sequence[float]) -> int:
    """1 + the number of cut points strictly below `score`: 1..7 with 6 cut points (a score equal to a cut point
    takes the lower rating)."""
    return 1 + bisect.bisect_left(list(cut_points), score)


def score_with_gold(gold_scorer: GoldScorer, prompt: str, responses: list[str]) -> list[float]:
    """Gold scores of all responses to one prompt, from one call of the scorer; checked to be K finite floats."""
    scores = [float(score) for score in gold_scorer([prompt] * len(responses), list(responses))]
    if len(scores) != len(responses):
        raise ValueError(f"gold scorer returned {len(scores)} scores for {len(responses)} responses")
    if not all(math.isfinite(score) for score in scores):
        raise ValueError(f"gold scorer returned a non-finite score: {scores}")
    return scores


def preference_from_gold(gold_a: float, gold_b: float) -> float:
    """1.0 if a's gold score is higher, 0.5 if exactly equal, else 0.0 (one game of a win rate)."""
    return 1.0 if gold_a > gold_b else 0.5 if gold_a == gold_b else 0.0


def gold_preference(gold_scorer: GoldScorer, prompt: str, response_a: str, response_b: str) -> float:
    """1.0 if the gold scorer prefers response_a, 0.5 if their gold scores are exactly equal, else 0.0
    (one game of a win rate judged by the gold labeler)."""
    return preference_from_gold(*score_with_gold(gold_scorer, prompt, [response_a, response_b]))


class SimulatedLabeler:
    """Labels with a gold scorer and Bradley-Terry / Plackett-Luce noise of temperature T
    (T = 0: deterministic, exact ties broken by this labeler's seeded RNG)."""

    def __init__(self, gold_scorer: GoldScorer, temperature: float = 0.0, seed: int = 0, name: str = "simulated"):
        if not (math.isfinite(temperature) and temperature >= 0.0):
            raise ValueError(f"SimulatedLabeler: temperature must be a finite number >= 0, got {temperature}")
        self.gold_scorer = gold_scorer
        self.temperature = float(temperature)
        self.seed = seed
        self.name = name
        self.rng = np.random.default_rng(seed)
        self.likert_cuts: list[float] | None = None

    def calibrate_likert(self, gold_scores: Sequence[float]) -> None:
        """Set the Likert cut points from the gold scores of the batch to be rated (see `likert_cut_points`)."""
        self.likert_cuts = likert_cut_points(gold_scores)

    def rate(self, prompt: str, response: str, axes: Sequence[str]) -> dict[str, int]:
        """A 1-7 rating on each axis: the gold score plus this labeler's noise T * (Gumbel - Euler's gamma), drawn
        afresh per axis (the noise under which its best-of-K choices are softmax(g / T); the gold scorer measures
        one quality, so the axes differ by noise only), placed among the calibrated cut points (`likert_from_score`)."""
        if self.likert_cuts is None:
            raise ValueError(
                f"labeler {self.name!r}: no Likert calibration; call calibrate_likert(gold scores of the batch) first "
                "(`rlhf label simulate --likert-from RUN_DIR`)"
            )
        gold = score_with_gold(self.gold_scorer, prompt, [response])[0]
        return {
            axis: likert_from_score(gold + self.temperature * (self.rng.gumbel() - np.euler_gamma), self.likert_cuts)
            for axis in axes
        }

    def label(self, prompt: str, responses: list[str], kind: str) -> Comparison:
        """Score all responses once with the gold scorer, then choose/rank them under the noise model."""
        check_kind_and_count(kind, responses)
        gold = score_with_gold(self.gold_scorer, prompt, responses)
        meta = {"gold_scores": gold, "temperature": self.temperature}
        common = {"prompt": prompt, "responses": list(responses), "kind": kind, "labeler": self.name, "meta": meta}
        if kind == "pairwise":
            best, confidence = self._choose_pairwise(gold)
            return Comparison(**common, best=best, confidence=confidence)
        if kind == "best_of_k":
            return Comparison(**common, best=self._choose_best(gold))
        return Comparison(**common, ranks=self._rank(gold))

    def _choose_pairwise(self, gold: list[float]) -> tuple[int, int]:
        """(best index, confidence): response 0 wins with probability sigmoid((g_0 - g_1) / T). The confidence
        maps P(the labeler prefers the gold-better one) = max(p, 1 - p) to 5..9, so it says how clear the
        pair is to this labeler, whichever response the noise picked."""
        probability_first = bradley_terry_probability(gold[0], gold[1], self.temperature)
        best = 0 if self.rng.random() < probability_first else 1
        confidence = confidence_from_probability(max(probability_first, 1.0 - probability_first))
        return best, confidence

    def _choose_best(self, gold: list[float]) -> int:
        """Index drawn from softmax(g / T) (at T = 0: uniformly among the exact maxima)."""
        probabilities = softmax_choice_probabilities(gold, self.temperature)
        return int(self.rng.choice(len(gold), p=probabilities))

    def _rank(self, gold: list[float]) -> list[int]:
        """Ranks from a Plackett-Luce draw (T > 0), or by descending gold with exact ties sharing a rank (T = 0).
        A ranking needs one strict preference, so when all K gold scores are equal (T = 0) one response,
        picked by the seeded RNG, gets rank 0 and the rest share rank 1 (as best_of_k would pick)."""
        if self.temperature > 0.0:
            return ranks_from_order(sample_plackett_luce_order(gold, self.temperature, self.rng))
        ranks = ranks_by_descending_gold(gold)
        if len(set(ranks)) == 1:
            best = self._choose_best(gold)
            ranks = [0 if index == best else 1 for index in range(len(gold))]
        return ranks
