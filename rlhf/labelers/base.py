"""The `Labeler` interface every labeler implements (simulated now, a human web-app queue later),
and `label_many`, which labels a list of (prompt, responses) items with a progress bar."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from tqdm import tqdm

from rlhf.data.records import COMPARISON_KINDS, Comparison


@runtime_checkable
class Labeler(Protocol):
    """Judges K responses to one prompt and returns a `Comparison` of the requested kind:
    "pairwise" (2 responses; best in {0, 1}, optional confidence 1..9), "best_of_k" (best index)
    or "ranking" (ranks[i] = rank of responses[i], 0 = best, ties share a rank).

    `label` is a plain blocking call, so a human labeler can implement it by queueing the item for the
    web app and waiting for the answer; it must not reorder `responses` in the returned Comparison."""

    name: str

    def label(self, prompt: str, responses: list[str], kind: str) -> Comparison: ...


def check_kind_and_count(kind: str, responses: list[str]) -> None:
    """Raise a clear error for an unknown kind or a response count that kind cannot take."""
    if kind not in COMPARISON_KINDS:
        raise ValueError(f"unknown comparison kind {kind!r}; expected one of {', '.join(COMPARISON_KINDS)}")
    if kind == "pairwise" and len(responses) != 2:
        raise ValueError(f"a pairwise comparison needs exactly 2 responses, got {len(responses)}")
    if len(responses) < 2:
        raise ValueError(f"a {kind} comparison needs at least 2 responses, got {len(responses)}")


def label_many(labeler: Labeler, items: list[tuple[str, list[str]]], kind: str) -> list[Comparison]:
    """`labeler.label(prompt, responses, kind)` for each (prompt, responses) item, in order."""
    if kind not in COMPARISON_KINDS:
        raise ValueError(f"unknown comparison kind {kind!r}; expected one of {', '.join(COMPARISON_KINDS)}")
    comparisons = []
    for prompt, responses in tqdm(items, desc=f"labelling ({labeler.name}, {kind})", unit="query"):
        comparison = labeler.label(prompt, list(responses), kind)
        if comparison.kind != kind or len(comparison.responses) != len(responses):
            raise ValueError(
                f"labeler {labeler.name!r} returned a {comparison.kind} comparison of "
                f"{len(comparison.responses)} responses for a {kind} request of {len(responses)}"
            )
        comparisons.append(comparison)
    return comparisons
