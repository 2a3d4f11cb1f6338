"""What judged items add up to: the win rate (ties one half) with its bootstrap interval, the position statistics,
the unparseable answers (counted and left out, never guessed), the length-controlled win rate, and a judge's
agreement with held-out human comparisons."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rlhf.data.records import Comparison
from rlhf.judges.orders import JudgedItem, judge_pairs
from rlhf.judges.verdicts import Judge
from rlhf.stats import length_controlled_win_rate, win_rate


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
            raise ValueError(
                f"length_a, length_b: expected {len(judged)} lengths each, got {len(length_a)} and {len(length_b)}"
            )
        summary["length_controlled"] = length_controlled_win_rate(
            outcomes,
            [length_a[i] for i in parsed],
            [length_b[i] for i in parsed],
            seed=seed,
            n_resamples=min(n_resamples, 1000),
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
