"""A judge as the simulated labeler (`collect.labeler: judge`), for tasks without a gold scorer.

Every pair of the K responses is judged in both orders; a response's score is its wins, ties one half (Copeland's
rule), and the comparison asked for (pairwise, best of K, ranking) is read off the scores, exact ties broken by a
seeded RNG (a tied pair gets confidence 5, "can't tell"). The scores are kept as meta["gold"], so the reward stage
measures held-out accuracy against the judge's order-debiased preferences.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np

from rlhf.data.records import Comparison
from rlhf.judges.orders import judge_both_orders
from rlhf.judges.verdicts import Judge
from rlhf.labelers.base import check_kind_and_count
from rlhf.labelers.simulated import CONFIDENCE_CANT_TELL, ranks_by_descending_gold


def copeland_scores(k: int, outcomes: dict[tuple[int, int], float]) -> list[float]:
    """Wins per response over all pairs (i, j), i < j, with outcomes[(i, j)] = 1 (i preferred), 0.5 (tie) or 0 (j
    preferred); response i gets outcomes[(i, j)] and j gets 1 - outcomes[(i, j)]. A pair without an outcome (the
    judge's answer was unparseable) gives each one half."""
    scores = [0.0] * k
    for i, j in combinations(range(k), 2):
        outcome = outcomes.get((i, j))
        outcome = 0.5 if outcome is None else outcome
        scores[i] += outcome
        scores[j] += 1.0 - outcome
    return scores


class JudgeLabeler:
    """Labels (prompt, K responses) with a pairwise judge asked about every pair in both orders (see module doc)."""

    def __init__(self, judge: Judge, seed: int = 0, name: str = ""):
        self.judge = judge
        self.seed = seed
        self.name = name or f"judge:{judge.name}"
        self.rng = np.random.default_rng(seed)

    def pair_outcomes(self, prompt: str, responses: Sequence[str]) -> dict[tuple[int, int], float | None]:
        """The outcome for i of each pair (i, j), i < j, judged in both orders (None: unparseable)."""
        pairs = list(combinations(range(len(responses)), 2))
        judged = judge_both_orders(self.judge, [(prompt, responses[i], responses[j]) for i, j in pairs])
        return {pair: item.outcome_for_a for pair, item in zip(pairs, judged)}

    def label(self, prompt: str, responses: list[str], kind: str) -> Comparison:
        check_kind_and_count(kind, responses)
        outcomes = self.pair_outcomes(prompt, responses)
        scores = copeland_scores(len(responses), outcomes)
        meta = {
            "gold": scores,
            "judge": self.judge.name,
            "pair_outcomes": {f"{i},{j}": o for (i, j), o in outcomes.items()},
        }
        common = {"prompt": prompt, "responses": list(responses), "kind": kind, "labeler": self.name, "meta": meta}
        top = [i for i, s in enumerate(scores) if s == max(scores)]
        best = int(self.rng.choice(top))
        if kind == "pairwise":
            return Comparison(**common, best=best, confidence=CONFIDENCE_CANT_TELL if len(top) > 1 else None)
        if kind == "best_of_k":
            return Comparison(**common, best=best)
        ranks = ranks_by_descending_gold(scores)
        if len(set(ranks)) == 1:  # a ranking needs one strict preference: the RNG's pick goes first
            ranks = [0 if i == best else 1 for i in range(len(responses))]
        return Comparison(**common, ranks=ranks)
