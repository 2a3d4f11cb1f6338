"""Turn a submitted form into an answer in the query's original response order, check it, and grade it
against a gold answer. Form fields name positions as shown; ``order[position]`` is the original index."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from rlhf.labeling_app.tables import LIKERT_AXES, LIKERT_FLAGS

MAX_NOTE_LENGTH = 5000
LIKERT_RANGE = (1, 7)  # Stiennon et al. 2020 §4.1: 7-point Likert scales
CONFIDENCE_RANGE = (1, 9)  # Stiennon et al. 2020 App. C.1: 9-point confidence scale


class AnswerError(ValueError):
    """A submitted form that cannot be an answer; the message names the field and what was expected."""


def draw_order(count: int, rng: random.Random) -> list[int]:
    """A random presentation order of ``count`` responses (order[position] = original index)."""
    order = list(range(count))
    rng.shuffle(order)
    return order


def _int_field(form: Mapping[str, Any], name: str, low: int, high: int) -> int:
    raw = form.get(name)
    if raw is None or str(raw).strip() == "":
        raise AnswerError(f"{name}: missing; expected a whole number in {low}..{high}")
    try:
        value = int(str(raw).strip())
    except ValueError:
        raise AnswerError(f"{name}: expected a whole number in {low}..{high}, got {str(raw)[:20]!r}") from None
    if not low <= value <= high:
        raise AnswerError(f"{name}: expected a whole number in {low}..{high}, got {value}")
    return value


def dense_ranks(values: Sequence[int]) -> list[int]:
    """Ranks 0, 1, ... by ascending value, equal values sharing a rank: [3, 1, 1, 2] -> [2, 0, 0, 1]."""
    rank_of = {value: rank for rank, value in enumerate(sorted(set(values)))}
    return [rank_of[value] for value in values]


def parse_answer(kind: str, form: Mapping[str, Any], order: Sequence[int], flags: Sequence[str] = ()) -> dict[str, Any]:
    """The answer to a ``kind`` query from its form, indices mapped back through ``order``:
    pairwise {"best", "confidence"}, best_of_k {"best"}, ranking {"ranks"} (0 = best, ties share a rank),
    likert {axis: 1..7 for each axis, "flags": [...]}."""
    count = len(order)
    if kind in ("pairwise", "best_of_k"):
        position = _int_field(form, "choice", 0, count - 1)
        answer: dict[str, Any] = {"best": order[position]}
        if kind == "pairwise":
            answer["confidence"] = _int_field(form, "confidence", *CONFIDENCE_RANGE)
        return answer
    if kind == "ranking":
        shown = [_int_field(form, f"rank_{position}", 1, count) for position in range(count)]
        if len(set(shown)) == 1:
            raise AnswerError("ranks: all responses tied; rank at least one response above another")
        ranks = [0] * count
        for position, rank in enumerate(dense_ranks(shown)):
            ranks[order[position]] = rank
        return {"ranks": ranks}
    if kind == "likert":
        answer = {axis: _int_field(form, axis, *LIKERT_RANGE) for axis in LIKERT_AXES}
        unknown = [flag for flag in flags if flag not in LIKERT_FLAGS]
        if unknown:
            raise AnswerError(f"flags: unknown flag {unknown[0][:40]!r}; expected some of {', '.join(LIKERT_FLAGS)}")
        answer["flags"] = sorted(set(flags))
        return answer
    raise AnswerError(f"unknown query kind {kind!r}")


def clean_note(note: str | None) -> str:
    note = (note or "").strip()
    if len(note) > MAX_NOTE_LENGTH:
        raise AnswerError(f"note: at most {MAX_NOTE_LENGTH} characters, got {len(note)}")
    return note


def top_choice(kind: str, answer: Mapping[str, Any]) -> tuple[int, ...]:
    """The response(s) judged best, as a sorted tuple (a ranking can tie several at the top)."""
    if kind == "ranking":
        return tuple(index for index, rank in enumerate(answer["ranks"]) if rank == 0)
    return (int(answer["best"]),)


def gold_correct(kind: str, answer: Mapping[str, Any], gold: Mapping[str, Any]) -> bool:
    """Whether an answer matches a gold query's known answer: the same best response (pairwise, best-of-K),
    or every response ranked first is one the gold ranking puts first (ranking)."""
    if kind == "ranking":
        return set(top_choice(kind, answer)) <= set(top_choice(kind, gold))
    return top_choice(kind, answer) == top_choice(kind, gold)
