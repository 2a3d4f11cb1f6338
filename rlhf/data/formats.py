"""Read the dataset formats TRL documents, from any source ``io.iter_rows`` reads (JSONL, Parquet, CSV, a saved
``datasets`` folder or a hub dataset), into ``Example`` rows.

Formats (the "type" of a TRL dataset), each plain text or conversational (values are lists of {role, content}
messages; every value of a row must be the same kind):
- prompt_only: ``prompt``.
- prompt_completion: ``prompt`` and ``completion``; or, conversational, one ``messages`` list whose last message
  is the assistant's: the prompt is every message before it, the completion is ``[that message]``.
- preference: ``prompt``, ``chosen`` and ``rejected``.
- implicit_preference: ``chosen`` and ``rejected`` only, each holding the whole text or dialogue; the prompt is
  taken out of them as TRL's ``extract_prompt`` does (see ``extract_prompt`` below for the boundary we choose).
  A text ``prompt`` beside conversational ``chosen``/``rejected`` (as in UltraFeedback-binarized) is ignored and
  the row read as implicit, as TRL does.
Columns other than these are ignored. ``columns`` maps these canonical names to the user's own column names
(``response`` is accepted as another name for ``completion``). CSV values are always text: conversational rows
need JSONL, Parquet or a ``datasets`` folder. With ``format="auto"`` each row's format is detected and every row
of a source must agree (same format, all text or all conversational); a given format names the columns read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from rlhf.data.io import PathLike, iter_rows
from rlhf.data.records import RecordError

FORMATS = ("prompt_only", "prompt_completion", "preference", "implicit_preference")
CANONICAL_COLUMNS = ("prompt", "completion", "chosen", "rejected", "messages")
COLUMN_ALIASES = {"response": "completion"}
HH_ASSISTANT_TURN = "\n\nAssistant:"  # HH-RLHF dialogues: "\n\nHuman: ...\n\nAssistant: ..."
MAX_ERRORS = 50  # scan_examples stops collecting bad rows after this many


@dataclass(frozen=True)
class Example:
    """One row of a TRL-format dataset; values are text, or lists of {role, content} messages."""

    where: str  # "FILE:LINE" (or "DATASET [split] row N") for error messages
    prompt: str | list[dict] | None  # text, or messages [{"role", "content"}]
    completion: str | list[dict] | None = None  # prompt-completion rows
    chosen: str | list[dict] | None = None  # preference rows
    rejected: str | list[dict] | None = None


@dataclass
class Scan:
    """What ``scan_examples`` found: the examples of the good rows, the source's format, and the bad rows."""

    examples: list[Example] = field(default_factory=list)
    format: str = ""  # one of FORMATS; "" when no row was read
    conversational: bool = False
    errors: list[RecordError] = field(default_factory=list)


def _shown(value: Any) -> str:
    return f"{type(value).__name__} {repr(value)[:40]}"


def is_conversational(value: Any) -> bool:
    """Whether ``value`` is a list (possibly empty) of messages: dicts with string ``role`` and ``content``."""
    return isinstance(value, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
    )


def _value(row: dict[str, Any], name: str, where: str, labels: dict[str, str]) -> str | list[dict]:
    """``row[name]`` checked to be text or a list of {role, content} messages; errors name the user's column."""
    label = labels.get(name, name)
    if name not in row:
        raise RecordError("missing", field=label, where=where)
    value = row[name]
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise RecordError(
            f"expected a string or a list of {{role, content}} messages, got {_shown(value)}", field=label, where=where
        )
    for index, message in enumerate(value):
        if not isinstance(message, dict):
            raise RecordError(
                f"expected a {{role, content}} message, got {_shown(message)}", field=f"{label}[{index}]", where=where
            )
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                got = "missing" if key not in message else f"expected a string, got {_shown(message[key])}"
                raise RecordError(got, field=f"{label}[{index}].{key}", where=where)
    return value


def _same_kind(values: dict[str, str | list[dict]], where: str, labels: dict[str, str]) -> None:
    """All text, or all message lists (TRL's standard vs conversational format)."""
    first_name, first = next(iter(values.items()))
    for name, value in values.items():
        if isinstance(value, str) != isinstance(first, str):
            wanted = "text" if isinstance(first, str) else "a list of messages"
            got = "text" if isinstance(value, str) else "a list of messages"
            detail = f"expected {wanted} like '{labels.get(first_name, first_name)}' (one row is all text or all conversational), got {got}"
            raise RecordError(detail, field=labels.get(name, name), where=where)


def _non_empty(value: str | list[dict], name: str, where: str, labels: dict[str, str]) -> None:
    if not value:
        wanted = "a non-empty string" if isinstance(value, str) else "at least one message"
        raise RecordError(f"expected {wanted}, got {value!r}", field=labels.get(name, name), where=where)


def _detect(row: dict[str, Any], where: str, labels: dict[str, str]) -> str:
    def named(*names: str) -> str:
        return "+".join(labels.get(n, n) for n in names)

    if "chosen" in row or "rejected" in row:
        for name in ("chosen", "rejected"):
            if name not in row:
                raise RecordError(
                    f"missing (a preference row needs {named('chosen', 'rejected')})",
                    field=labels.get(name, name),
                    where=where,
                )
        text_prompt_beside_messages = isinstance(row.get("prompt"), str) and isinstance(row["chosen"], list)
        return "preference" if "prompt" in row and not text_prompt_beside_messages else "implicit_preference"
    if "completion" in row:
        if "prompt" not in row:
            raise RecordError(
                f"missing (a prompt-completion row needs {named('prompt', 'completion')})",
                field=labels.get("prompt", "prompt"),
                where=where,
            )
        return "prompt_completion"
    if "messages" in row:
        return "prompt_completion"
    if "prompt" in row:
        return "prompt_only"
    expected = " | ".join(
        [
            named("prompt"),
            named("prompt", "completion"),
            named("messages"),
            named("prompt", "chosen", "rejected"),
            named("chosen", "rejected"),
        ]
    )
    if "text" in row:
        expected += " ('text' rows are for language modelling and hold no prompt)"
    raise RecordError(f"expected the columns of a TRL format: {expected}; got columns {sorted(row)}", where=where)


def detect_format(row: dict, where: str) -> str:
    """The TRL format of a row with canonical column names (one of FORMATS); RecordError when it fits none."""
    if not isinstance(row, dict):
        raise RecordError(f"expected an object (one row), got {_shown(row)}", where=where)
    return _detect(row, where, {})


def extract_prompt(chosen: str | list[dict], rejected: str | list[dict]) -> tuple[Any, Any, Any]:
    """(prompt, chosen, rejected) of an implicit-prompt pair; prompt + chosen and prompt + rejected give them back.

    Conversational: the prompt is the leading messages the two share. Text: their longest common prefix cut back
    to a boundary, so no word is split: after the last "\\n\\nAssistant:" it holds (HH-RLHF dialogues; the same
    split as ``importers.hh_rlhf_prompt`` when both share the dialogue), else before the last whitespace at which
    both continue (both responses then start with that whitespace: "The sky is" / " blue." / " green."), else "".
    """
    if isinstance(chosen, list):
        shared = 0
        while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
            shared += 1
        return chosen[:shared], chosen[shared:], rejected[shared:]
    common = os.path.commonprefix([chosen, rejected])
    cue = common.rfind(HH_ASSISTANT_TURN)
    if cue >= 0:
        cut = cue + len(HH_ASSISTANT_TURN)
    else:
        boundaries = [i for i, char in enumerate(common) if char.isspace()]
        end = len(common)
        if all(len(text) == end or text[end].isspace() for text in (chosen, rejected)):
            boundaries.append(end)
        cut = max(boundaries, default=0)
    return chosen[:cut], chosen[cut:], rejected[cut:]


def _example(row: dict[str, Any], fmt: str, where: str, labels: dict[str, str]) -> Example:
    """The Example of a row (canonical column names) read in format ``fmt``."""
    if fmt == "prompt_only":
        prompt = _value(row, "prompt", where, labels)
        _non_empty(prompt, "prompt", where, labels)
        return Example(where, prompt)
    if fmt == "prompt_completion":
        if "completion" not in row and "messages" in row:
            return _split_messages(_value(row, "messages", where, labels), where, labels)
        values = {name: _value(row, name, where, labels) for name in ("prompt", "completion")}
        _same_kind(values, where, labels)
        _non_empty(values["completion"], "completion", where, labels)
        return Example(where, values["prompt"], completion=values["completion"])
    names = ("prompt", "chosen", "rejected") if fmt == "preference" else ("chosen", "rejected")
    values = {name: _value(row, name, where, labels) for name in names}
    _same_kind(values, where, labels)
    if fmt == "preference":
        return Example(where, values["prompt"], chosen=values["chosen"], rejected=values["rejected"])
    prompt, chosen, rejected = extract_prompt(values["chosen"], values["rejected"])
    return Example(where, prompt, chosen=chosen, rejected=rejected)


def _split_messages(messages: str | list[dict], where: str, labels: dict[str, str]) -> Example:
    """A conversational prompt-completion given as one ``messages`` list: prompt = all but the last assistant turn."""
    label = labels.get("messages", "messages")
    if isinstance(messages, str):
        raise RecordError("expected a list of {role, content} messages, got text", field=label, where=where)
    if len(messages) < 2 or messages[-1]["role"] != "assistant":
        got = f"{len(messages)} message(s)" + (f", the last from '{messages[-1]['role']}'" if messages else "")
        raise RecordError(
            f"expected messages ending with an assistant turn after at least one other, got {got}",
            field=label,
            where=where,
        )
    return Example(where, messages[:-1], completion=messages[-1:])


def _labels(columns: dict[str, str] | None) -> dict[str, str]:
    """canonical name -> the user's column name; unknown canonical names are an error."""
    labels = {}
    for name, column in (columns or {}).items():
        canonical = COLUMN_ALIASES.get(name, name)
        if canonical not in CANONICAL_COLUMNS or not isinstance(column, str) or not column:
            known = ", ".join([*CANONICAL_COLUMNS, *COLUMN_ALIASES])
            raise ValueError(f"columns: expected a mapping from {known} to column names, got {name!r}: {column!r}")
        labels[canonical] = column
    return labels


def _canonical_row(row: dict[str, Any], labels: dict[str, str], where: str) -> dict[str, Any]:
    """The row under canonical column names: mapped columns renamed, others as they are. One mapping serves every
    file of a task (prompts, demonstrations, pairs): a file that lacks a mapped column keeps the field under its
    TRL name if it has that; the format detection names the row's columns when a needed one is missing."""
    canonical = {name: row[name] for name in CANONICAL_COLUMNS if name in row}
    for name, column in labels.items():
        if column in row:
            canonical[name] = row[column]
    return canonical


def _is_conversational_example(example: Example) -> bool:
    return any(isinstance(v, list) for v in (example.prompt, example.completion, example.chosen, example.rejected))


def scan_examples(
    source: PathLike,
    split: str = "train",
    subset: str = "",
    columns: dict[str, str] | None = None,
    format: str = "auto",
    max_errors: int = MAX_ERRORS,
) -> Scan:
    """Every good row as an Example and every bad row as a RecordError (up to ``max_errors``, then it stops)."""
    if format not in (*FORMATS, "auto"):
        raise ValueError(f"format: expected auto or one of {', '.join(FORMATS)}, got {format!r}")
    labels = _labels(columns)
    scan, first = Scan(), ""
    for where, row in iter_rows(source, split, subset, errors=scan.errors):
        if len(scan.errors) >= max_errors:
            break
        try:
            canonical = _canonical_row(row, labels, where)
            fmt = _detect(canonical, where, labels) if format == "auto" else format
            example = _example(canonical, fmt, where, labels)
            conversational = _is_conversational_example(example)
            if not first:
                first, scan.format, scan.conversational = where, fmt, conversational
            elif (fmt, conversational) != (scan.format, scan.conversational):
                kinds = [
                    f"{f} ({'conversational' if c else 'text'})"
                    for f, c in ((fmt, conversational), (scan.format, scan.conversational))
                ]
                raise RecordError(
                    f"this row is {kinds[0]} but the first row ({first}) is {kinds[1]}; every row of a source must have one format",
                    where=where,
                )
        except RecordError as error:
            scan.errors.append(error)
            continue
        scan.examples.append(example)
    del scan.errors[max_errors:]
    return scan


def read_examples(
    source: str,
    split: str = "train",
    subset: str = "",
    columns: dict[str, str] | None = None,
    format: str = "auto",
) -> list[Example]:
    """The rows of a TRL-format source as Examples; the first bad row raises RecordError naming file:line and field.

    ``source``: a .jsonl/.jsonl.gz/.parquet/.csv file, a ``save_to_disk`` folder or a hub dataset name (with its
    ``subset`` (config name) and ``split``); ``columns``: canonical name -> the user's column; ``format``: "auto"
    (detected, all rows must agree) or one of FORMATS.
    """
    scan = scan_examples(source, split, subset, columns, format, max_errors=1)
    if scan.errors:
        raise scan.errors[0]
    return scan.examples
