"""Tests for rlhf.labelers: the simulated labeler's choices, ranks, noise frequencies and confidence."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rlhf.labelers import Labeler, SimulatedLabeler, gold_preference, label_many
from rlhf.labelers.simulated import (
    bradley_terry_probability,
    confidence_from_probability,
    ranks_by_descending_gold,
    softmax_choice_probabilities,
)


class FakeGold:
    """Gold score = a fixed number per response text; records each call's size."""

    def __init__(self, scores: dict[str, float]):
        self.scores = scores
        self.call_sizes: list[int] = []

    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        assert len(prompts) == len(responses)
        self.call_sizes.append(len(responses))
        return [self.scores[response] for response in responses]


GOLD = FakeGold({"bad": -1.0, "meh": 0.2, "meh too": 0.2, "good": 0.9, "half": 0.5, "zero": 0.0, "ln3": math.log(3)})


def test_temperature_zero_picks_the_gold_best_for_every_kind():
    gold = FakeGold(GOLD.scores)
    labeler = SimulatedLabeler(gold, temperature=0.0, seed=1)
    pairwise = labeler.label("p", ["bad", "good"], "pairwise")
    assert (pairwise.best, pairwise.confidence, pairwise.labeler) == (1, 9, "simulated")
    assert labeler.label("p", ["good", "meh"], "pairwise").best == 0
    best_of_k = labeler.label("p", ["meh", "bad", "good", "meh too"], "best_of_k")
    assert best_of_k.best == 2 and best_of_k.meta["gold_scores"] == [0.2, -1.0, 0.9, 0.2]
    ranking = labeler.label("p", ["meh", "good", "meh too", "bad"], "ranking")
    # gold 0.2, 0.9, 0.2, -1.0: "good" first, the two 0.2s share rank 1, "bad" rank 2.
    assert ranking.ranks == [1, 0, 1, 2] and ranking.best is None
    assert gold.call_sizes == [2, 2, 4, 4]  # one scorer call per query, with all K responses
    assert isinstance(labeler, Labeler)


def test_exact_ties_at_temperature_zero_are_broken_by_the_seeded_rng():
    def tie_choices(seed: int) -> list[int]:
        labeler = SimulatedLabeler(GOLD, temperature=0.0, seed=seed)
        return [labeler.label("p", ["meh", "meh too"], "pairwise").best for _ in range(40)]

    choices = tie_choices(5)
    assert set(choices) == {0, 1} and choices == tie_choices(5)
    tied = SimulatedLabeler(GOLD, seed=0).label("p", ["meh", "meh too"], "pairwise")
    assert tied.confidence == 5  # P = 0.5: "can't tell"
    picks = {SimulatedLabeler(GOLD, seed=s).label("p", ["bad", "meh", "meh too"], "best_of_k").best for s in range(30)}
    assert picks == {1, 2}  # only the two tied maxima are ever picked
    all_tied = SimulatedLabeler(GOLD, seed=3).label("p", ["meh", "meh too", "meh"], "ranking")
    assert sorted(all_tied.ranks) == [0, 1, 1]  # one strict preference, as a ranking record requires


def test_ranks_by_descending_gold_share_ranks_on_exact_ties():
    assert ranks_by_descending_gold([1.0, 3.0, 3.0, 0.0]) == [1, 0, 0, 2]
    assert ranks_by_descending_gold([0.5, 0.25]) == [0, 1]


def test_pairwise_choice_frequency_matches_bradley_terry():
    # gold 0.5 vs 0.0 at T = 0.5: P(first) = sigmoid(1) = 1 / (1 + e^-1) = 1 / 1.367879 = 0.731059.
    expected = 0.731059
    assert bradley_terry_probability(0.5, 0.0, 0.5) == pytest.approx(expected, abs=1e-6)
    labeler = SimulatedLabeler(GOLD, temperature=0.5, seed=11)
    picks = [labeler.label("p", ["half", "zero"], "pairwise").best for _ in range(4000)]
    assert abs(picks.count(0) / 4000 - expected) < 0.03


def test_best_of_k_frequency_matches_softmax():
    # gold ln 3, 0, 0 at T = 1: weights 3, 1, 1 -> P(first) = 3 / 5 = 0.6.
    assert softmax_choice_probabilities([math.log(3), 0.0, 0.0], 1.0) == pytest.approx([0.6, 0.2, 0.2])
    labeler = SimulatedLabeler(GOLD, temperature=1.0, seed=12)
    picks = [labeler.label("p", ["ln3", "zero", "zero"], "best_of_k").best for _ in range(4000)]
    assert abs(picks.count(0) / 4000 - 0.6) < 0.03


def test_ranking_frequency_matches_plackett_luce():
    # weights 3, 1, 1: P(order 0, 1, 2) = 3/5 (0 first) * 1/2 (1 next among weights 1, 1) = 0.3;
    # P(response 0 ranked last) = 1/5 * 1/4 + 1/5 * 1/4 = 0.1 (either 1 or 2 first, then the other of weight 1).
    labeler = SimulatedLabeler(GOLD, temperature=1.0, seed=13)
    rankings = [labeler.label("p", ["ln3", "zero", "zero"], "ranking").ranks for _ in range(4000)]
    assert abs(sum(r == [0, 1, 2] for r in rankings) / 4000 - 0.3) < 0.03
    assert abs(sum(r[0] == 2 for r in rankings) / 4000 - 0.1) < 0.03
    assert all(sorted(r) == [0, 1, 2] for r in rankings)


def test_confidence_mapping_by_hand():
    # 5 + 8 (p - 0.5), rounded half up.
    assert confidence_from_probability(0.5) == 5
    assert confidence_from_probability(0.5625) == 6  # 5.5 -> 6
    assert confidence_from_probability(0.6) == 6  # 5.8
    assert confidence_from_probability(0.75) == 7
    assert confidence_from_probability(0.9) == 8  # 8.2
    assert confidence_from_probability(1.0) == 9
    with pytest.raises(ValueError, match=r"\[0.5, 1\]"):
        confidence_from_probability(0.4)
    # gold ln 3 vs 0 at T = 1: sigmoid(ln 3) = 3 / 4 -> confidence 7, whichever response the noise picks.
    labeler = SimulatedLabeler(GOLD, temperature=1.0, seed=0)
    assert {labeler.label("p", ["ln3", "zero"], "pairwise").confidence for _ in range(20)} == {7}


def test_gold_preference_win_tie_loss():
    assert gold_preference(GOLD, "p", "good", "bad") == 1.0
    assert gold_preference(GOLD, "p", "meh", "meh too") == 0.5
    assert gold_preference(GOLD, "p", "bad", "good") == 0.0


def test_label_many_keeps_order_and_checks_kind():
    labeler = SimulatedLabeler(GOLD)
    items = [("p1", ["bad", "good"]), ("p2", ["good", "bad"])]
    comparisons = label_many(labeler, items, "pairwise")
    assert [(c.prompt, c.best) for c in comparisons] == [("p1", 1), ("p2", 0)]
    with pytest.raises(ValueError, match="unknown comparison kind"):
        label_many(labeler, items, "triplet")
    with pytest.raises(ValueError, match="exactly 2 responses"):
        labeler.label("p", ["bad", "good", "meh"], "pairwise")


def test_bad_temperature_and_bad_scorer_raise():
    with pytest.raises(ValueError, match="temperature"):
        SimulatedLabeler(GOLD, temperature=-1.0)
    with pytest.raises(ValueError, match="1 scores for 2 responses"):
        SimulatedLabeler(lambda prompts, responses: [0.0]).label("p", ["a", "b"], "best_of_k")
    with pytest.raises(ValueError, match="non-finite"):
        SimulatedLabeler(lambda prompts, responses: [0.0, np.nan]).label("p", ["a", "b"], "best_of_k")
