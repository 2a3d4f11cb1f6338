"""Running a judge over many (prompt, a, b) items with position-bias control, summarising the verdicts into a
win rate, and validating a judge against held-out human comparisons.

Position handling: "both" asks for both orders and counts a disagreement as a tie (and reports how often the
two orders agree); "random" shows each item once in an order drawn from a seeded RNG and records it. An item
with an unparseable verdict (in either order) is counted and left out of the win rate, never guessed.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rlhf.data.records import Comparison
from rlhf.judges.base import Judge, Verdict
from rlhf.stats import length_controlled_win_rate, win_rate

POSITION_MODES = ("both", "random")


@dataclass(frozen=True)
class JudgedItem:
    """The verdict(s) on one item, each as the judge gave it for the order it was shown, and the result for a."""

    orders: tuple[str, ...]
    """The orders shown: "ab" (a first) and/or "ba" (b first)."""
    verdicts: tuple[Verdict, ...]
    """The judge's verdict for each order, in terms of the responses as shown (verdicts[i] for orders[i])."""
    outcome_for_a: float | None
    """1 / 0.5 / 0 for a against b after undoing the order; None when a verdict was unparseable."""
    consistent: bool | None
    """Both orders: whether the two verdicts name the same response (or both tie); None with one order or unparseable."""


def combine_orders(forward: Verdict, backward_as_shown: Verdict) -> tuple[float | None, bool | None]:
    """Outcome for a from a verdict on (a, b) and one on (b, a); a disagreement is a tie (0.5)."""
    backward = backward_as_shown.swapped()
    first, second = forward.score_for_a, backward.score_for_a
    if first is None or second is None:
        return None, None
    return (first if first == second else 0.5), first == second


def judge_item(judge: Judge, prompt: str, a: str, b: str, position: str, rng: random.Random) -> JudgedItem:
    """Judge one item in both orders, or in one order drawn from `rng` (position = "both" / "random")."""
    if position == "both":
        forward, backward = judge.compare(prompt, a, b), judge.compare(prompt, b, a)
        outcome, consistent = combine_orders(forward, backward)
        return JudgedItem(("ab", "ba"), (forward, backward), outcome, consistent)
    if position != "random":
        raise ValueError(f"position: expected one of {POSITION_MODES}, got {position!r}")
    if rng.random() < 0.5:
        verdict = judge.compare(prompt, a, b)
        return JudgedItem(("ab",), (verdict,), verdict.score_for_a, None)
    verdict = judge.compare(prompt, b, a)
    return JudgedItem(("ba",), (verdict,), verdict.swapped().score_for_a, None)


def judge_pairs(judge: Judge, items: Sequence[tuple[str, str, str]], position: str = "both", seed: int = 0) -> list[JudgedItem]:
    """Judge each (prompt, a, b) item; with position="random" the orders come from random.Random(seed)."""
    if position not in POSITION_MODES:
        raise ValueError(f"position: expected one of {POSITION_MODES}, got {position!r}")
    rng = random.Random(seed)
    return [judge_item(judge, prompt, a, b, position, rng) for prompt, a, b in items]


def position_statistics(judged: Sequence[JudgedItem]) -> dict[str, float | int | None]:
    """How often the two orders agreed (both-order items), and how often a decisive verdict picked the
    response shown first (0.5 = no position bias); None where there is nothing to count."""
    consistency = [item.consistent for item in judged if item.consistent is not None]
    shown_first = [
        verdict.outcome == "a" for item in judged for verdict in item.verdicts if verdict.outcome in ("a", "b")
    ]
    return {
        "position_consistency_rate": float(np.mean(consistency)) if consistency else None,
        "n_both_orders": len(consistency),
        "first_position_rate": float(np.mean(shown_first)) if shown_first else None,
        "n_decisive_verdicts": len(shown_first),
    }


def summarize_judgements(
    judged: Sequence[JudgedItem],
    length_a: Sequence[float] | None = None,
    length_b: Sequence[float] | None = None,
    seed: int = 0,
    n_resamples: int = 2000,
) -> dict:
    """Win rate of a (ties 0.5) over the items with parseable verdicts, with SEM and bootstrap interval, the
    number and share of unparseable items, position statistics, and the length-controlled win rate when the
    responses' lengths are given."""
    if not judged:
        raise ValueError("judged: expected at least one judged item, got none")
    parsed = [index for index, item in enumerate(judged) if item.outcome_for_a is not None]
    summary: dict = {
        "n_items": len(judged),
        "n_unparseable": len(judged) - len(parsed),
        "unparseable_rate": (len(judged) - len(parsed)) / len(judged),
        **position_statistics(judged),
    }
    outcomes = [judged[index].outcome_for_a for index in parsed]
    summary["win_rate"] = win_rate(outcomes, seed=seed, n_resamples=n_resamples) if outcomes else None
    if length_a is not None and length_b is not None and outcomes:
        if not len(length_a) == len(length_b) == len(judged):
            raise ValueError(f"length_a, length_b: expected {len(judged)} lengths each, got {len(length_a)} and {len(length_b)}")
        summary["length_controlled"] = length_controlled_win_rate(
            outcomes, [length_a[i] for i in parsed], [length_b[i] for i in parsed], seed=seed, n_resamples=min(n_resamples, 1000)
        )
    return summary


def validate_judge(
    judge: Judge, comparisons: Sequence[Comparison], position: str = "both", seed: int = 0, n_resamples: int = 2000
) -> dict:
    """Agreement of the judge with held-out human pairwise comparisons (1 when it picks the human's choice,
    0.5 for a tie, 0 otherwise; unparseable items counted and left out) with a bootstrap interval, and the
    share of its decisive verdicts that prefer the longer response (in characters; equal lengths left out)."""
    items, longer_is_a = [], []
    for index, comparison in enumerate(comparisons):
        if comparison.kind != "pairwise":
            raise ValueError(f"comparisons[{index}]: field 'kind': expected 'pairwise', got {comparison.kind!r}")
        chosen, rejected = comparison.responses[comparison.best], comparison.responses[1 - comparison.best]
        items.append((comparison.prompt, chosen, rejected))
        longer_is_a.append(None if len(chosen) == len(rejected) else len(chosen) > len(rejected))
    judged = judge_pairs(judge, items, position, seed)
    summary = summarize_judgements(judged, seed=seed, n_resamples=n_resamples)
    decisive = [
        (item.outcome_for_a == 1.0) == longer
        for item, longer in zip(judged, longer_is_a)
        if longer is not None and item.outcome_for_a in (0.0, 1.0)
    ]
    human_longer = [longer for longer in longer_is_a if longer is not None]
    agreement = summary.pop("win_rate")
    return {
        "judge": judge.name,
        "human_agreement": agreement,
        "prefers_longer_rate": float(np.mean(decisive)) if decisive else None,
        "n_decisive_unequal_length": len(decisive),
        "human_prefers_longer_rate": float(np.mean(human_longer)) if human_longer else None,
        **summary,
    }
