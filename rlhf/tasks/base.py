"""The `Task` description handed to the generic sampler and trainer,
and the small helpers (split check, seeded subsets, field check) the three tasks share."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhf.data.records import Demonstration, Prompt

GoldScorer = Callable[[list[str], list[str]], list[float]]
PromptLoader = Callable[..., list[Prompt]]
DemonstrationLoader = Callable[..., list[Demonstration]]


@dataclass(frozen=True)
class Task:
    """Everything task-specific the sampler and trainer need; the loaders are called as
    `task.load_prompts(split, n=None, source=None, seed=0)` (same for `load_demonstrations`)."""

    name: str
    response_length: int  # fixed number of sampled tokens (Ziegler et al. 2019 §3; Stiennon et al. 2020)
    stop_strings: tuple[str, ...]  # checked against each token's own decoded text
    stop_min_tokens: int  # the stop rule fires only at 0-based token index >= this
    load_prompts: PromptLoader
    load_demonstrations: DemonstrationLoader
    gold_scorer: GoldScorer | None  # (prompts, responses) -> gold scores; None: no simulated gold

    def __post_init__(self) -> None:
        if self.response_length <= 0:
            raise ValueError(f"task {self.name!r}: response_length must be > 0, got {self.response_length}")
        if not 0 <= self.stop_min_tokens < self.response_length:
            raise ValueError(
                f"task {self.name!r}: stop_min_tokens must be in [0, response_length={self.response_length}), "
                f"got {self.stop_min_tokens}"
            )
        if not all(isinstance(s, str) and s for s in self.stop_strings):
            raise ValueError(f"task {self.name!r}: stop_strings must be non-empty strings, got {self.stop_strings!r}")


def check_split(split: str, allowed: Sequence[str], task_name: str) -> None:
    """Raise a clear error when `split` is not one of `allowed`."""
    if split not in allowed:
        raise ValueError(f"task {task_name!r}: unknown split {split!r}; expected one of {list(allowed)}")


def take_first_shuffled(items: list[Any], n: int | None, seed: int, what: str) -> list[Any]:
    """The first n items of a copy of `items` shuffled with `random.Random(seed)` (all of them when n is None)."""
    if n is not None and n < 0:
        raise ValueError(f"{what}: n must be >= 0 or None, got {n}")
    if n is not None and n > len(items):
        raise ValueError(f"{what}: asked for n={n} but only {len(items)} are available")
    shuffled = list(items)
    random.Random(seed).shuffle(shuffled)
    return shuffled if n is None else shuffled[:n]


def require_text_field(row: dict[str, Any], field: str, location: str) -> str:
    """Return row[field], raising a clear error (location, field) when it is missing or not a string."""
    if field not in row:
        raise ValueError(f"{location}: missing field {field!r} (fields present: {sorted(row)})")
    value = row[field]
    if not isinstance(value, str):
        raise ValueError(f"{location}: field {field!r} must be a string, got {type(value).__name__}")
    return value


def row_id(row: dict[str, Any], source: str, index: int) -> str:
    """The row's own `id` when it has one, else "<source file or dataset stem>-<0-based row index>"."""
    if row.get("id") not in (None, ""):
        return str(row["id"])
    return f"{Path(source).name.split('.')[0]}-{index}"
