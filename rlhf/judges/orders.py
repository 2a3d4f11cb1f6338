"""Judging many (prompt, a, b) items with the position bias under control: each item in both orders, a disagreement
counting as a tie (Zheng et al. 2023), or in one order drawn from a seeded RNG; the orders shown are recorded."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from rlhf.judges.verdicts import Judge, Verdict

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
    """Both orders: whether the two verdicts name the same response (or both tie); None with one order or
    unparseable."""


def combine_orders(forward: Verdict, backward_as_shown: Verdict) -> tuple[float | None, bool | None]:
    """Outcome for a from a verdict on (a, b) and one on (b, a); a disagreement is a tie (0.5)."""
    backward = backward_as_shown.swapped()
    first, second = forward.score_for_a, backward.score_for_a
    if first is None or second is None:
        return None, None
    return (first if first == second else 0.5), first == second


def item_from_both_orders(forward: Verdict, backward_as_shown: Verdict) -> JudgedItem:
    """The judged item from its verdicts on (a, b) and on (b, a) (see `combine_orders`)."""
    outcome, consistent = combine_orders(forward, backward_as_shown)
    return JudgedItem(("ab", "ba"), (forward, backward_as_shown), outcome, consistent)


def judge_both_orders(judge: Judge, items: Sequence[tuple[str, str, str]]) -> list[JudgedItem]:
    """Each (prompt, a, b) judged as (a, b) and as (b, a). A judge with a `compare_both_orders(items)` method (the LM
    judge, which batches all 2n comparisons and has its own rule for combining them) is asked through it."""
    if hasattr(judge, "compare_both_orders"):
        return judge.compare_both_orders(items)
    return [item_from_both_orders(judge.compare(prompt, a, b), judge.compare(prompt, b, a)) for prompt, a, b in items]


def judge_in_random_order(judge: Judge, prompt: str, a: str, b: str, rng: random.Random) -> JudgedItem:
    """One item judged once, a or b shown first by a coin flip of `rng`."""
    if rng.random() < 0.5:
        verdict = judge.compare(prompt, a, b)
        return JudgedItem(("ab",), (verdict,), verdict.score_for_a, None)
    verdict = judge.compare(prompt, b, a)
    return JudgedItem(("ba",), (verdict,), verdict.swapped().score_for_a, None)


def judge_pairs(
    judge: Judge, items: Sequence[tuple[str, str, str]], position: str = "both", seed: int = 0
) -> list[JudgedItem]:
    """Judge each (prompt, a, b) item in both orders, or (position="random") in one order from random.Random(seed)."""
    if position == "both":
        return judge_both_orders(judge, items)
    if position != "random":
        raise ValueError(f"position: expected one of {POSITION_MODES}, got {position!r}")
    rng = random.Random(seed)
    return [judge_in_random_order(judge, prompt, a, b, rng) for prompt, a, b in items]
