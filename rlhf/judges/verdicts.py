"""The verdict every judge gives: `judge.compare(prompt, a, b) -> Verdict`, "a" or "b" (the preferred response in
the order shown), "tie", or "unparseable" (the judge answered but its answer could not be read; never turned into
a random choice)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

OUTCOMES = ("a", "b", "tie", "unparseable")


@dataclass(frozen=True)
class Verdict:
    """One judgement of (prompt, a, b) with a and b in the order they were shown to the judge."""

    outcome: str
    """"a" or "b" (the preferred response as shown), "tie", or "unparseable"."""
    raw: str = ""
    """What the judge said or computed (an LLM's answer text, two scores, a label id), kept for inspection."""

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"Verdict.outcome: expected one of {OUTCOMES}, got {self.outcome!r}")

    @property
    def score_for_a(self) -> float | None:
        """1.0 if a is preferred, 0.0 if b, 0.5 for a tie, None when unparseable."""
        return {"a": 1.0, "b": 0.0, "tie": 0.5}.get(self.outcome)

    def swapped(self) -> Verdict:
        """The same judgement with a and b renamed (for a verdict given on the swapped order)."""
        return Verdict({"a": "b", "b": "a"}.get(self.outcome, self.outcome), self.raw)


class Judge(Protocol):
    """Anything that compares two responses to one prompt."""

    name: str

    def compare(self, prompt: str, a: str, b: str) -> Verdict: ...


def verdict_from_scores(score_a: float, score_b: float) -> Verdict:
    """'a' if score_a > score_b, 'b' if lower, 'tie' if exactly equal; 'unparseable' if either is not finite."""
    raw = f"{score_a!r} vs {score_b!r}"
    if not (math.isfinite(score_a) and math.isfinite(score_b)):
        return Verdict("unparseable", raw)
    return Verdict("a" if score_a > score_b else "b" if score_a < score_b else "tie", raw)
