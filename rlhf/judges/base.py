"""Judges of pairwise comparisons, all with one interface: `judge.compare(prompt, a, b) -> Verdict`.

A `Verdict` says which of the two responses, in the order shown, the judge preferred ("a", "b"), "tie", or
"unparseable" (the judge answered but its answer could not be read; never turned into a random choice).
This module has the gold (simulated) judge, a judge wrapping any `Labeler`, the reward-model judge and the
human-label judge; the LLM judge over an HTTP endpoint is in `rlhf.judges.llm`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from rlhf.data.io import read_records
from rlhf.data.records import Comparison
from rlhf.labelers.base import Labeler
from rlhf.labelers.simulated import GoldScorer, score_with_gold

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


@runtime_checkable
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


class GoldJudge:
    """The noiseless simulated labeler: prefers the response with the higher gold score (ties when equal)."""

    def __init__(self, gold_scorer: GoldScorer, name: str = "gold"):
        self.gold_scorer = gold_scorer
        self.name = name

    def compare(self, prompt: str, a: str, b: str) -> Verdict:
        score_a, score_b = score_with_gold(self.gold_scorer, prompt, [a, b])
        return verdict_from_scores(score_a, score_b)


class LabelerJudge:
    """Any `Labeler` (e.g. a `SimulatedLabeler` with Bradley-Terry noise) asked for a pairwise comparison."""

    def __init__(self, labeler: Labeler):
        self.labeler = labeler
        self.name = labeler.name

    def compare(self, prompt: str, a: str, b: str) -> Verdict:
        comparison = self.labeler.label(prompt, [a, b], "pairwise")
        return Verdict("a" if comparison.best == 0 else "b", f"best={comparison.best}")


class RewardModelJudge:
    """Prefers the response with the higher reward-model score. `score` is called as score(prompts, responses)
    and returns one number per response: pass `rlhf.models.roles.ScalarRole.score` (a tensor is fine)."""

    def __init__(self, score: Callable[[list[str], list[str]], Sequence[float]], name: str = "reward_model"):
        self.score = score
        self.name = name

    def compare(self, prompt: str, a: str, b: str) -> Verdict:
        scores = [float(value) for value in self.score([prompt, prompt], [a, b])]
        if len(scores) != 2:
            raise ValueError(f"{self.name}: expected 2 scores for 2 responses, got {len(scores)}")
        return verdict_from_scores(*scores)


def _pair_key(prompt: str, first: str, second: str) -> tuple[str, frozenset[str]]:
    return prompt, frozenset((first, second))


class HumanLabelJudge:
    """Answers with the human label of the same (prompt, {a, b}) pair from an exported comparisons file
    (JSONL/parquet of pairwise `Comparison` records, as the labeling app and the importers write them).
    A pair that was labeled more than once is answered by majority, a tie when the labels are split."""

    def __init__(self, comparisons: Sequence[Comparison], name: str = "human", source: str = "comparisons"):
        self.name = name
        self.source = source
        self.votes: dict[tuple[str, frozenset[str]], dict[str, int]] = {}
        for index, comparison in enumerate(comparisons):
            if comparison.kind != "pairwise":
                raise ValueError(f"{source}[{index}]: field 'kind': expected 'pairwise', got {comparison.kind!r}")
            first, second = comparison.responses
            if first == second:
                continue
            preferred = comparison.responses[comparison.best]
            votes = self.votes.setdefault(_pair_key(comparison.prompt, first, second), {})
            votes[preferred] = votes.get(preferred, 0) + 1

    @classmethod
    def from_file(cls, path: str | Path, name: str = "human") -> HumanLabelJudge:

        return cls(read_records(path, Comparison), name=name, source=str(path))

    def compare(self, prompt: str, a: str, b: str) -> Verdict:
        votes = self.votes.get(_pair_key(prompt, a, b))
        if votes is None:
            raise LookupError(f"{self.source}: no human label for this pair (prompt starting {prompt[:60]!r})")
        votes_a, votes_b = votes.get(a, 0), votes.get(b, 0)
        raw = f"{votes_a} vote(s) for a, {votes_b} for b"
        return Verdict("a" if votes_a > votes_b else "b" if votes_b > votes_a else "tie", raw)
