"""Judges that need no model of their own: the gold scorer, a labeler, a reward model's scores and a file of
human labels, each behind `judge.compare(prompt, a, b) -> Verdict`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from rlhf.data.io import read_records
from rlhf.data.records import Comparison
from rlhf.judges.verdicts import Verdict, verdict_from_scores
from rlhf.labelers.base import Labeler
from rlhf.labelers.simulated import GoldScorer, score_with_gold


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
