"""Convert public preference datasets (summarize-from-feedback, TRL preference rows, Anthropic HH-RLHF)
into pairwise ``Comparison`` records, and comparisons back into TRL preference rows. Each importer takes a local
file path or a hub dataset name; ``read_comparisons`` takes any of them, or our own Comparison records."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections import Counter
from typing import Any

from rlhf.data.formats import HH_ASSISTANT_TURN, Example, scan_examples
from rlhf.data.io import PathLike, iter_rows, read_records
from rlhf.data.records import CONFIDENCE_RANGE, Comparison, RecordError

logger = logging.getLogger(__name__)

# HH_ASSISTANT_TURN (from formats) stays importable from here: tasks/dialogue.py uses it.


def format_tldr_query(subreddit: str, title: str, post: str) -> str:
    """The query shown to the policy (the template of Stiennon et al. 2020, single newlines)."""
    return f"SUBREDDIT: r/{subreddit}\nTITLE: {title}\nPOST: {post}\nTL;DR:"


def _field(row: Any, name: str, where: str, expected: type | tuple[type, ...], label: str = "") -> Any:
    """``row[name]`` checked to be an instance of ``expected``; errors call the field ``label`` (or ``name``)."""
    label = label or name
    if not isinstance(row, dict):
        parent = label.rpartition(".")[0] or label.rpartition("[")[0]
        raise RecordError(f"expected an object holding '{name}', got {type(row).__name__}", field=parent, where=where)
    if name not in row:
        raise RecordError("missing", field=label, where=where)
    value = row[name]
    allowed = expected if isinstance(expected, tuple) else (expected,)
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        wanted = " or ".join(kind.__name__ for kind in allowed)
        raise RecordError(f"expected {wanted}, got {type(value).__name__} {repr(value)[:40]}", field=label, where=where)
    return value


def _pairwise(prompt: str, responses: list[str], best: int, where: str, **extra: Any) -> Comparison:
    try:
        return Comparison(prompt=prompt, responses=responses, kind="pairwise", best=best, **extra)
    except RecordError as error:
        raise error.at(where) from None


def _chosen_over_rejected(
    prompt: str, chosen: str, rejected: str, where: str, counts: Counter[str] | None
) -> Comparison | None:
    """The pairwise comparison [chosen, rejected] with best 0; None (counted as "identical") when they are equal."""
    if chosen == rejected:
        if counts is not None:
            counts["identical"] += 1
        return None
    return _pairwise(prompt, [chosen, rejected], 0, where)


def _with_leading_space(text: str) -> str:
    return text if text.startswith(" ") else " " + text


# ---------------------------------------------------------------- OpenAI summarize-from-feedback


def summarize_row_to_comparison(row: dict[str, Any], where: str) -> Comparison:
    """One summarize-from-feedback comparison row (Stiennon et al. 2020) -> a pairwise Comparison."""
    info = _field(row, "info", where, dict)
    if "post" not in info and "article" in info:
        cnn_dm = "missing: this is a CNN/DM article row; only TL;DR post rows are supported"
        raise RecordError(cnn_dm, field="info.post", where=where)
    query = format_tldr_query(
        _field(info, "subreddit", where, str, "info.subreddit"),
        _field(info, "title", where, str, "info.title"),
        _field(info, "post", where, str, "info.post"),
    )
    summaries = _field(row, "summaries", where, list)
    if len(summaries) != 2:
        raise RecordError(f"expected exactly 2 summaries, got {len(summaries)}", field="summaries", where=where)
    texts = [_field(summary, "text", where, str, f"summaries[{index}].text") for index, summary in enumerate(summaries)]
    choice = _field(row, "choice", where, int)
    if choice not in (0, 1):
        raise RecordError(f"expected 0 or 1, got {choice}", field="choice", where=where)
    extra = row.get("extra") or {}
    if not isinstance(extra, dict):
        raise RecordError(f"expected an object, got {type(extra).__name__}", field="extra", where=where)
    confidence = extra.get("confidence")
    low, high = CONFIDENCE_RANGE
    if confidence is not None and (isinstance(confidence, bool) or confidence not in range(low, high + 1)):
        expected = f"expected an integer in {low}..{high}, got {confidence!r}"
        raise RecordError(expected, field="extra.confidence", where=where)
    worker = row.get("worker") or ""
    if not isinstance(worker, str):
        raise RecordError(f"expected a string, got {type(worker).__name__}", field="worker", where=where)
    meta = {"post_id": info.get("id"), "batch": row.get("batch"), "split": row.get("split")}
    policies = [summary.get("policy") for summary in summaries]
    if any(policies):
        meta["policies"] = policies
    return _pairwise(
        query,
        [_with_leading_space(text) for text in texts],
        choice,
        where,
        confidence=confidence,
        labeler=worker,
        meta={key: value for key, value in meta.items() if value is not None},
    )


def import_summarize_from_feedback(source: PathLike, split: str = "train", subset: str = "") -> list[Comparison]:
    """Comparisons from summarize-from-feedback JSONL files (or a hub dataset of the same rows)."""
    return [summarize_row_to_comparison(row, where) for where, row in iter_rows(source, split, subset)]


# ---------------------------------------------------------------- TRL preference rows


def _render_messages(messages: list[Any], where: str, label: str) -> str:
    """Conversational rows: "\\n\\n{Role}: {content}" per message, roles capitalised."""
    parts = []
    for index, message in enumerate(messages):
        role = _field(message, "role", where, str, f"{label}[{index}].role")
        content = _field(message, "content", where, str, f"{label}[{index}].content")
        parts.append(f"\n\n{role.capitalize()}: {content}")
    return "".join(parts)


def _render_trl_row(row: dict[str, Any], where: str) -> tuple[str, str, str]:
    """(prompt, chosen, rejected) text of a standard or conversational TRL preference row."""
    if isinstance(row, dict) and "prompt" not in row and "chosen" in row:
        raise RecordError(
            "missing (rows holding whole dialogues in chosen/rejected are HH-RLHF format: use import_hh_rlhf)",
            field="prompt",
            where=where,
        )
    values = {name: _field(row, name, where, (str, list)) for name in ("prompt", "chosen", "rejected")}
    if all(isinstance(value, str) for value in values.values()):
        return values["prompt"], values["chosen"], values["rejected"]
    for name, value in values.items():
        if not isinstance(value, list):
            raise RecordError(
                "expected a list of messages like the other fields (conversational format), got a string",
                field=name,
                where=where,
            )
    prompt, chosen, rejected = (_render_messages(values[name], where, name) for name in values)
    # Move the shared assistant cue into the prompt so the prompt ends like HH-RLHF prompts do.
    cue = HH_ASSISTANT_TURN
    if chosen.startswith(cue) and rejected.startswith(cue):
        prompt, chosen, rejected = prompt + cue, chosen[len(cue) :], rejected[len(cue) :]
    return prompt, chosen, rejected


def trl_row_to_comparison(row: dict[str, Any], where: str, counts: Counter[str] | None = None) -> Comparison | None:
    """A TRL preference row -> pairwise Comparison with responses [chosen, rejected] and best=0.

    The order is fixed (chosen first); shuffling is the reward-model stage's job. Returns None (and counts
    "identical") when chosen and rejected are the same text. Conversational rows are rendered as
    "\\n\\n{Role}: {content}" per message; when both responses open with an assistant turn, that
    "\\n\\nAssistant:" cue moves to the end of the prompt (prompt + response is unchanged).
    """
    return _chosen_over_rejected(*_render_trl_row(row, where), where, counts)


def example_to_comparison(
    example: Example, implicit: bool = False, counts: Counter[str] | None = None
) -> Comparison | None:
    """A preference Example -> pairwise Comparison [chosen, rejected], best 0 (as ``trl_row_to_comparison``).

    A Comparison holds text, so a conversational row keeps its messages in ``meta["messages"]`` = {"prompt": [...],
    "responses": [chosen messages, rejected messages]} and an implicit-prompt row sets ``meta["implicit_prompt"]``;
    ``comparisons_to_trl`` uses both to give the row back as it was.
    """
    row = {"prompt": example.prompt, "chosen": example.chosen, "rejected": example.rejected}
    comparison = trl_row_to_comparison(row, example.where, counts)
    meta: dict[str, Any] = {}
    if isinstance(example.chosen, list):
        meta["messages"] = {"prompt": example.prompt, "responses": [example.chosen, example.rejected]}
    if implicit:
        meta["implicit_prompt"] = True
    return dataclasses.replace(comparison, meta=meta) if comparison is not None and meta else comparison


def import_trl_preferences(
    source: PathLike,
    split: str = "train",
    subset: str = "",
    columns: dict[str, str] | None = None,
    counts: Counter[str] | None = None,
) -> list[Comparison]:
    """Comparisons from TRL preference rows: {prompt, chosen, rejected} or implicit-prompt {chosen, rejected}, text
    or message lists (``formats.read_examples``; ``columns`` maps canonical names to the file's)."""
    counts = Counter() if counts is None else counts
    scan = scan_examples(str(source), split, subset, columns, max_errors=1)
    if scan.errors:
        raise scan.errors[0]
    if scan.examples and scan.format not in ("preference", "implicit_preference"):
        raise RecordError(
            f"expected preference rows (prompt, chosen, rejected or chosen, rejected), got {scan.format} rows",
            where=scan.examples[0].where,
        )
    implicit = scan.format == "implicit_preference"
    comparisons = [example_to_comparison(example, implicit, counts) for example in scan.examples]
    if counts["identical"]:
        logger.warning("%s: skipped %d rows whose chosen and rejected are identical", source, counts["identical"])
    return [comparison for comparison in comparisons if comparison is not None]


def _messages_of(comparison: Comparison, where: str) -> dict[str, Any] | None:
    """``meta["messages"]`` checked against the comparison's responses (None when the comparison is text only)."""
    messages = comparison.meta.get("messages")
    if messages is None:
        return None
    responses = messages.get("responses") if isinstance(messages, dict) else None
    if not isinstance(responses, list) or len(responses) != len(comparison.responses) or "prompt" not in messages:
        count = len(comparison.responses)
        detail = f"expected {{prompt, responses}} with {count} message lists (one per response), got {messages!r:.60}"
        raise RecordError(detail, field="meta.messages", where=where)
    return messages


def comparisons_to_trl(comparisons: list[Comparison]) -> list[dict[str, Any]]:
    """TRL preference rows {prompt, chosen, rejected}, one per (better, worse) pair a comparison implies
    (``Comparison.pairs``): pairwise -> 1 row; best_of_k over K -> K-1 rows (the best over each other);
    ranking -> one row per strictly ordered pair (tied responses give none). Conversational comparisons
    (``meta["messages"]``) give message lists; implicit-prompt ones (``meta["implicit_prompt"]``) give
    {chosen, rejected} with the prompt put back in front. Labeler, confidence and ids are not carried.
    """
    rows = []
    for number, comparison in enumerate(comparisons, start=1):
        where = f"comparison {number}" + (f" (id {comparison.id})" if comparison.id else "")
        messages = _messages_of(comparison, where)
        prompt = comparison.prompt if messages is None else messages["prompt"]
        responses = comparison.responses if messages is None else messages["responses"]
        for better, worse in comparison.pairs():
            if comparison.meta.get("implicit_prompt"):
                rows.append({"chosen": prompt + responses[better], "rejected": prompt + responses[worse]})
            else:
                rows.append({"prompt": prompt, "chosen": responses[better], "rejected": responses[worse]})
    return rows


# ---------------------------------------------------------------- Anthropic HH-RLHF


def hh_rlhf_prompt(dialogue: str) -> str:
    """Everything up to and including the last "\\n\\nAssistant:" of an HH-RLHF dialogue."""
    cut = dialogue.rfind(HH_ASSISTANT_TURN)
    if cut < 0:
        raise ValueError(f"expected an HH-RLHF dialogue containing {HH_ASSISTANT_TURN!r}, got {dialogue[:60]!r}")
    return dialogue[: cut + len(HH_ASSISTANT_TURN)]


def _hh_dialogue(row: dict[str, Any], name: str, where: str) -> str:
    dialogue = _field(row, name, where, str)
    if HH_ASSISTANT_TURN not in dialogue:
        raise RecordError(
            f"expected a dialogue containing {HH_ASSISTANT_TURN!r}, got {dialogue[:60]!r}", field=name, where=where
        )
    return dialogue


def hh_rlhf_row_to_comparison(row: dict[str, Any], where: str, counts: Counter[str] | None = None) -> Comparison | None:
    """An HH-RLHF row {chosen, rejected} -> pairwise Comparison (responses [chosen, rejected], best=0).

    The prompt is the chosen dialogue up to its last assistant cue. If the rejected dialogue does not share
    that prefix it is split at its own last cue (counted as "prefix_mismatch"). Rows with identical
    responses return None (counted as "identical").
    """
    chosen_dialogue = _hh_dialogue(row, "chosen", where)
    rejected_dialogue = _hh_dialogue(row, "rejected", where)
    prompt = hh_rlhf_prompt(chosen_dialogue)
    if rejected_dialogue.startswith(prompt):
        rejected = rejected_dialogue[len(prompt) :]
    else:
        rejected = rejected_dialogue[len(hh_rlhf_prompt(rejected_dialogue)) :]
        if counts is not None:
            counts["prefix_mismatch"] += 1
    return _chosen_over_rejected(prompt, chosen_dialogue[len(prompt) :], rejected, where, counts)


def import_hh_rlhf(
    source: PathLike, split: str = "train", subset: str = "", counts: Counter[str] | None = None
) -> list[Comparison]:
    """Comparisons from Anthropic HH-RLHF rows (JSONL, gzipped JSONL, parquet or a hub dataset)."""
    counts = Counter() if counts is None else counts
    comparisons = [hh_rlhf_row_to_comparison(row, where, counts) for where, row in iter_rows(source, split, subset)]
    if counts["prefix_mismatch"]:
        logger.warning(
            "%s: %d rows' rejected dialogue does not share the chosen prompt; split at its own last %r",
            source,
            counts["prefix_mismatch"],
            HH_ASSISTANT_TURN,
        )
    if counts["identical"]:
        logger.warning(
            "%s: skipped %d rows whose chosen and rejected responses are identical", source, counts["identical"]
        )
    return [comparison for comparison in comparisons if comparison is not None]


# ---------------------------------------------------------------- any comparisons file


def read_comparisons(
    source: PathLike,
    split: str = "train",
    subset: str = "",
    counts: Counter[str] | None = None,
    columns: dict[str, str] | None = None,
) -> list[Comparison]:
    """Comparisons from our Comparison records, TRL preference rows (explicit or implicit prompt, text or
    conversational; HH-RLHF files are implicit-prompt rows; `columns` maps TRL's names to the file's) or
    summarize-from-feedback rows, told by the first row's columns (every row must then be of that kind)."""
    columns = columns or {}
    with contextlib.closing(iter_rows(source, split, subset)) as rows:
        where, first = next(rows, ("", None))
    if first is None:
        return []
    if "responses" in first:
        return read_records(source, Comparison, split, subset)
    if "summaries" in first:
        return import_summarize_from_feedback(source, split, subset)
    if columns.get("chosen", "chosen") in first or columns.get("rejected", "rejected") in first:
        return import_trl_preferences(source, split, subset, columns=columns, counts=counts)
    raise RecordError(
        "expected a Comparison record (prompt, responses, kind, ...), a TRL preference row (prompt, chosen, "
        f"rejected, or chosen, rejected) or a summarize-from-feedback row (info, summaries, choice); got columns "
        f"{sorted(first)}",
        where=where,
    )
