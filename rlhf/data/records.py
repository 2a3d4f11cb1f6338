"""Typed, validated data records: prompts, demonstrations, comparisons and policy samples.

Every record is a frozen dataclass checked in ``__post_init__``; bad values raise ``RecordError``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, TypeVar

COMPARISON_KINDS = ("pairwise", "best_of_k", "ranking")
MAX_RANKED_RESPONSES = 9  # InstructGPT (Ouyang et al. 2022, Sec. 3.5): labelers rank K = 4..9 responses
CONFIDENCE_RANGE = (1, 9)  # Stiennon et al. 2020, Appendix C.1: 9-point confidence scale

RecordT = TypeVar("RecordT", bound="_RecordBase")


class RecordError(ValueError):
    """Bad record data; the message names the location, the field and what was expected."""

    def __init__(self, detail: str, *, field: str = "", where: str = "") -> None:
        self.detail = detail
        self.field = field
        self.where = where
        text = f"field '{field}': {detail}" if field else detail
        super().__init__(f"{where}: {text}" if where else text)

    def at(self, where: str) -> RecordError:
        """The same error, located at ``where`` (e.g. ``"comparisons.jsonl:12"``)."""
        return RecordError(self.detail, field=self.field, where=where)


def _shown(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_str(value: Any, name: str, *, non_empty: bool = False) -> None:
    if not isinstance(value, str):
        raise RecordError(f"expected a string, got {_shown(value)}", field=name)
    if non_empty and not value:
        raise RecordError("expected a non-empty string, got ''", field=name)


def _check_int(value: Any, name: str, low: int, high: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RecordError(f"expected {what} in {low}..{high}, got {_shown(value)}", field=name)


def _check_meta(value: Any) -> None:
    if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
        raise RecordError(f"expected an object with string keys, got {_shown(value)}", field="meta")


def _check_str_list(value: Any, name: str) -> None:
    if not isinstance(value, (list, tuple)):
        raise RecordError(f"expected a list of strings, got {_shown(value)}", field=name)
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise RecordError(f"expected a string, got {_shown(item)}", field=f"{name}[{index}]")


class _RecordBase:
    """Shared ``to_dict`` / ``from_dict`` for the record dataclasses below."""

    def to_dict(self) -> dict[str, Any]:
        """All fields, in declaration order, as plain JSON-ready values (lists and dicts copied)."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[RecordT], d: Mapping[str, Any], where: str = "") -> RecordT:
        """Build and validate a record; errors are prefixed with ``where`` (e.g. ``"file.jsonl:12"``)."""
        declared = fields(cls)  # type: ignore[arg-type]
        names = [f.name for f in declared]
        if not isinstance(d, Mapping):
            raise RecordError(f"expected an object with fields {', '.join(names)}; got {_shown(d)}", where=where)
        unknown = [key for key in d if key not in names]
        if unknown:
            raise RecordError(
                f"unknown field for {cls.__name__}; expected one of: {', '.join(names)}",
                field=str(unknown[0]),
                where=where,
            )
        for f in declared:
            if f.default is MISSING and f.default_factory is MISSING and f.name not in d:
                raise RecordError(f"missing (required for {cls.__name__})", field=f.name, where=where)
        try:
            return cls(**d)
        except RecordError as error:
            raise error.at(where) if where else error from None


@dataclass(frozen=True)
class Prompt(_RecordBase):
    """A prompt to sample from; ``meta`` carries task-specific extras (e.g. a reference summary)."""

    text: str
    id: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_str(self.text, "text", non_empty=True)
        _check_str(self.id, "id")
        _check_meta(self.meta)
        object.__setattr__(self, "meta", dict(self.meta))


@dataclass(frozen=True)
class Demonstration(_RecordBase):
    """A prompt with a demonstrated (human-written) response, for supervised fine-tuning."""

    prompt: str
    response: str
    id: str = ""

    def __post_init__(self) -> None:
        _check_str(self.prompt, "prompt")
        _check_str(self.response, "response", non_empty=True)
        _check_str(self.id, "id")


@dataclass(frozen=True)
class Comparison(_RecordBase):
    """A labeler's judgement over K responses to one prompt.

    kind "pairwise" (Stiennon et al. 2020): 2 responses, ``best`` in {0, 1}, optional ``confidence`` 1..9.
    kind "best_of_k" (Ziegler et al. 2019): K >= 2 responses (usually 4), ``best`` is the chosen index.
    kind "ranking" (Ouyang et al. 2022): K = 2..9 responses, ``ranks[i]`` is the rank of response i,
    0 = best, ties share a rank; ``best`` is optional and, if given, must have rank 0.
    """

    prompt: str
    responses: list[str]
    kind: str
    best: int | None = None
    ranks: list[int] | None = None
    confidence: int | None = None
    labeler: str = ""
    id: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_str(self.prompt, "prompt")
        _check_str_list(self.responses, "responses")
        object.__setattr__(self, "responses", list(self.responses))
        if self.kind not in COMPARISON_KINDS:
            raise RecordError(f"expected one of {', '.join(COMPARISON_KINDS)}, got {_shown(self.kind)}", field="kind")
        if self.kind == "ranking":
            self._check_ranking()
        else:
            self._check_choice()
        if self.confidence is not None:
            if self.kind != "pairwise":
                raise RecordError(
                    f"only pairwise comparisons carry a confidence, got {_shown(self.confidence)}", field="confidence"
                )
            _check_int(self.confidence, "confidence", *CONFIDENCE_RANGE, "an integer confidence")
        _check_str(self.labeler, "labeler")
        _check_str(self.id, "id")
        _check_meta(self.meta)
        object.__setattr__(self, "meta", dict(self.meta))

    def _check_choice(self) -> None:
        count = len(self.responses)
        if self.kind == "pairwise" and count != 2:
            raise RecordError(f"expected exactly 2 responses for a pairwise comparison, got {count}", field="responses")
        if count < 2:
            raise RecordError(f"expected at least 2 responses for best_of_k, got {count}", field="responses")
        if self.best is None:
            raise RecordError(f"missing (required for kind '{self.kind}')", field="best")
        _check_int(self.best, "best", 0, count - 1, "an integer index")
        if self.ranks is not None:
            raise RecordError(f"only 'ranking' comparisons carry ranks, got {_shown(self.ranks)}", field="ranks")

    def _check_ranking(self) -> None:
        count = len(self.responses)
        if not 2 <= count <= MAX_RANKED_RESPONSES:
            raise RecordError(
                f"expected 2..{MAX_RANKED_RESPONSES} responses for a ranking, got {count}", field="responses"
            )
        if self.ranks is None:
            raise RecordError("missing (required for kind 'ranking')", field="ranks")
        if not isinstance(self.ranks, (list, tuple)) or len(self.ranks) != count:
            raise RecordError(f"expected a list of {count} integer ranks, got {_shown(self.ranks)}", field="ranks")
        for index, rank in enumerate(self.ranks):
            _check_int(rank, f"ranks[{index}]", 0, count - 1, "an integer rank")
        object.__setattr__(self, "ranks", list(self.ranks))
        if len(set(self.ranks)) == 1:
            tied = f"expected at least one strict preference, got all responses tied: {self.ranks}"
            raise RecordError(tied, field="ranks")
        if min(self.ranks) != 0:
            raise RecordError(f"expected the best response to have rank 0, got {self.ranks}", field="ranks")
        if self.best is not None:
            _check_int(self.best, "best", 0, count - 1, "an integer index")
            if self.ranks[self.best] != 0:
                raise RecordError(
                    f"expected the index of a rank-0 response, got {self.best} (rank {self.ranks[self.best]})",
                    field="best",
                )

    def pairs(self) -> list[tuple[int, int]]:
        """(better, worse) index pairs implied by the judgement; for accuracy metrics, not for the loss."""
        if self.kind == "pairwise":
            assert self.best is not None
            return [(self.best, 1 - self.best)]
        if self.kind == "best_of_k":
            return [(self.best, other) for other in range(len(self.responses)) if other != self.best]
        assert self.ranks is not None
        count = len(self.ranks)
        return [
            (better, worse)
            for better in range(count)
            for worse in range(count)
            if self.ranks[better] < self.ranks[worse]
        ]


@dataclass(frozen=True)
class Sample(_RecordBase):
    """One response sampled from a policy; ``has_stop`` is False when generation hit the length limit."""

    prompt: str
    response: str
    policy: str
    prompt_id: str = ""
    has_stop: bool = True
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_str(self.prompt, "prompt")
        _check_str(self.response, "response")
        _check_str(self.policy, "policy", non_empty=True)
        _check_str(self.prompt_id, "prompt_id")
        if not isinstance(self.has_stop, bool):
            raise RecordError(f"expected true or false, got {_shown(self.has_stop)}", field="has_stop")
        _check_meta(self.meta)
        object.__setattr__(self, "meta", dict(self.meta))
