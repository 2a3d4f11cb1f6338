"""`rlhf data convert` (between TRL preference rows, HH-RLHF, summarize-from-feedback and our Comparison records)
and `rlhf data inspect` (what a data file holds: format, counts, lengths in tokens, a sample row, every bad row)."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rlhf.config import ModelConfig
from rlhf.data.formats import MAX_ERRORS, Example, scan_examples
from rlhf.data.importers import (
    comparisons_to_trl,
    import_hh_rlhf,
    import_summarize_from_feedback,
    import_trl_preferences,
    summarize_row_to_comparison,
)
from rlhf.data.io import iter_rows, read_records, record_from_row, write_jsonl, write_parquet, write_parquet_rows
from rlhf.data.records import Comparison, Demonstration, Prompt, RecordError, Sample
from rlhf.models.provision import load_tokenizer, resolve_model

SOURCES = ("trl", "hh-rlhf", "summarize-from-feedback", "comparisons")
TARGETS = ("comparisons", "trl")
OUT_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")
SAMPLE_CHARS = 1500  # the sample row is cut after this many characters


def _source_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split", default="train", help="split of a hub dataset or saved DatasetDict (default train)")
    p.add_argument("--subset", default="", help="config name of a hub dataset")
    p.add_argument(
        "--column",
        action="append",
        default=[],
        metavar="NAME=COLUMN",
        help="TRL rows: read canonical column NAME (prompt, completion, chosen, rejected, messages) from COLUMN",
    )


def add_data_parser(sub) -> None:
    data = sub.add_parser(
        "data", help="convert and inspect data files", description="Convert between data formats, inspect a file."
    )
    commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    p = commands.add_parser(
        "convert",
        help="convert preference data between TRL rows, HH-RLHF, summarize-from-feedback and Comparison records",
        description="Read IN (a .jsonl/.jsonl.gz/.parquet/.csv file, a saved dataset folder or a hub dataset) as "
        "--from, write OUT (.jsonl, .jsonl.gz or .parquet, atomically) as --to. To TRL rows, best_of_k and ranking "
        "comparisons expand to every (better, worse) pair they imply; conversational rows keep their messages.",
    )
    p.add_argument("input", metavar="IN")
    p.add_argument("output", metavar="OUT")
    p.add_argument("--from", dest="source_format", choices=SOURCES, required=True)
    p.add_argument("--to", dest="target_format", choices=TARGETS, required=True)
    _source_options(p)
    p = commands.add_parser(
        "inspect",
        help="format, counts, lengths in tokens, a sample row and every bad row of a data file",
        description="Report what FILE holds: its TRL format (or our record kind), row count, comparison kinds, "
        "whether it is conversational, prompt and response lengths in tokens, one sample row, and every bad row "
        f"by file:line (up to {MAX_ERRORS}). Exit status 1 when any row is bad.",
    )
    p.add_argument("input", metavar="FILE")
    p.add_argument("--model", default="", help="tokenizer for the lengths: a model folder or hub id (default built-in)")
    p.add_argument(
        "--format", default="auto", help="TRL format: auto (detected) or prompt_only, prompt_completion, ..."
    )
    _source_options(p)


def _columns(pairs: list[str]) -> dict[str, str]:
    columns = {}
    for pair in pairs:
        name, sep, column = pair.partition("=")
        if not sep or not name or not column:
            raise ValueError(f"--column: expected NAME=COLUMN (e.g. prompt=instruction), got {pair!r}")
        columns[name] = column
    return columns


# ---------------------------------------------------------------- convert


def convert(args: argparse.Namespace) -> str:
    """Read, convert, write; returns the line to print."""
    if not args.output.endswith(OUT_SUFFIXES):
        raise ValueError(f"{args.output}: expected an output file ending in {', '.join(OUT_SUFFIXES)}")
    counts: Counter[str] = Counter()
    columns = _columns(args.column)
    if columns and args.source_format != "trl":
        raise ValueError("--column applies to --from trl only")
    if args.source_format == "trl":
        comparisons = import_trl_preferences(args.input, args.split, args.subset, columns, counts)
    elif args.source_format == "hh-rlhf":
        comparisons = import_hh_rlhf(args.input, args.split, args.subset, counts)
    elif args.source_format == "summarize-from-feedback":
        comparisons = import_summarize_from_feedback(args.input, args.split, args.subset)
    else:
        comparisons = read_records(args.input, Comparison, args.split, args.subset)
    notes = [f"{counts['identical']} identical pairs skipped"] if counts["identical"] else []
    if counts["prefix_mismatch"]:
        notes.append(f"{counts['prefix_mismatch']} rejected dialogues split at their own last assistant turn")
    note = f" ({'; '.join(notes)})" if notes else ""
    parquet = args.output.endswith(".parquet")
    if args.target_format == "comparisons":
        (write_parquet if parquet else write_jsonl)(args.output, comparisons)
        return f"wrote {len(comparisons)} comparisons{note} to {args.output}"
    rows = comparisons_to_trl(comparisons)
    (write_parquet_rows if parquet else write_jsonl)(args.output, rows)
    return f"wrote {len(rows)} TRL preference rows from {len(comparisons)} comparisons{note} to {args.output}"


# ---------------------------------------------------------------- inspect


@dataclass
class Inspection:
    """What a file holds, as `rlhf data inspect` prints it."""

    what: str = ""  # "TRL preference (conversational)" or "Comparison records"
    rows: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    prompts: list[Any] = field(default_factory=list)  # text or message lists, for the token lengths
    responses: list[Any] = field(default_factory=list)
    sample: tuple[str, dict[str, Any]] | None = None  # (where, row as read)
    errors: list[RecordError] = field(default_factory=list)


RECORD_KINDS: list[tuple[type, Callable[[dict[str, Any]], bool]]] = [
    (Comparison, lambda row: "responses" in row and "kind" in row),
    (Sample, lambda row: "policy" in row and "response" in row),
    (Demonstration, lambda row: "response" in row and "prompt" in row and "completion" not in row),
    (Prompt, lambda row: "text" in row and set(row) <= {"text", "id", "meta"}),
]


def _record_texts(record: Any) -> tuple[Any, list[Any]]:
    if isinstance(record, Comparison):
        return record.prompt, record.responses
    if isinstance(record, Prompt):
        return record.text, []
    return record.prompt, [record.response]


def _inspect_rows(args: argparse.Namespace, to_record: Callable[[dict[str, Any], str], Any], what: str) -> Inspection:
    """Our records (or summarize-from-feedback rows), row by row, every bad row kept."""
    found = Inspection(what=what)
    for where, row in iter_rows(args.input, args.split, args.subset, errors=found.errors):
        if len(found.errors) >= MAX_ERRORS:
            break
        try:
            record = to_record(row, where)
        except RecordError as error:
            found.errors.append(error if error.where else error.at(where))
            continue
        found.rows += 1
        found.kinds[getattr(record, "kind", type(record).__name__)] += 1
        prompt, responses = _record_texts(record)
        found.prompts.append(prompt)
        found.responses += responses
        found.sample = found.sample or (where, record.to_dict())
    return found


def _example_dict(example: Example) -> dict[str, Any]:
    names = ("prompt", "completion", "chosen", "rejected")
    return {name: getattr(example, name) for name in names if getattr(example, name) is not None}


def inspect_source(args: argparse.Namespace) -> Inspection:
    """Tell the file's kind from its first readable row, then read every row, keeping every bad one."""
    with_errors: list[RecordError] = []
    first = next((row for _, row in iter_rows(args.input, args.split, args.subset, errors=with_errors)), None)
    for record_type, matches in RECORD_KINDS:
        if first is not None and matches(first):
            to_record = lambda row, where, kind=record_type: record_from_row(kind, row, where)  # noqa: E731
            return _inspect_rows(args, to_record, f"{record_type.__name__} records")
    if first is not None and "summaries" in first and "choice" in first:
        return _inspect_rows(args, summarize_row_to_comparison, "summarize-from-feedback comparisons")
    scan = scan_examples(args.input, args.split, args.subset, _columns(args.column), args.format)
    conversational = "conversational" if scan.conversational else "text"
    found = Inspection(what=f"TRL {scan.format or 'rows'} ({conversational})", rows=len(scan.examples))
    found.errors = scan.errors
    found.kinds = Counter(scan.format for _ in scan.examples)
    for example in scan.examples:
        found.prompts.append(example.prompt)
        found.responses += [v for v in (example.completion, example.chosen, example.rejected) if v is not None]
    if scan.examples:
        found.sample = (scan.examples[0].where, _example_dict(scan.examples[0]))
    return found


def _rendered(value: Any) -> str:
    """Text as it is; messages as "\\n\\n{Role}: {content}" per message (how their tokens are counted here)."""
    if isinstance(value, str):
        return value
    return "".join(f"\n\n{m['role'].capitalize()}: {m['content']}" for m in value)


def token_lengths(tokenizer: Any, values: list[Any]) -> list[int]:
    """Tokens per value (no special tokens added)."""
    if not values:
        return []
    return [len(ids) for ids in tokenizer([_rendered(v) for v in values], add_special_tokens=False)["input_ids"]]


def length_line(name: str, lengths: list[int]) -> str:
    if not lengths:
        return f"{name}: none"
    return (
        f"{name}: mean {statistics.fmean(lengths):.1f}, median {statistics.median(lengths):g}, max {max(lengths)} "
        f"({len(lengths)} texts)"
    )


def inspection_report(path: str, found: Inspection, tokenizer: Any, model: str) -> list[str]:
    lines = [path, f"  format: {found.what}", f"  rows: {found.rows} read, {len(found.errors)} bad"]
    if found.kinds:
        lines.append("  kinds: " + ", ".join(f"{kind} {count}" for kind, count in sorted(found.kinds.items())))
    lines.append(f"  tokens ({model}):")
    lines.append("    " + length_line("prompt", token_lengths(tokenizer, found.prompts)))
    lines.append("    " + length_line("responses", token_lengths(tokenizer, found.responses)))
    if found.sample:
        text = json.dumps(found.sample[1], ensure_ascii=False, indent=2)
        text = text if len(text) <= SAMPLE_CHARS else text[:SAMPLE_CHARS] + " ..."
        lines.append(f"  sample row ({found.sample[0]}):")
        lines += ["    " + line for line in text.splitlines()]
    if found.errors:
        capped = f", the first {MAX_ERRORS} shown" if len(found.errors) >= MAX_ERRORS else ""
        lines.append(f"  errors ({len(found.errors)}{capped}):")
        lines += [f"    {error}" for error in found.errors]
    return lines


def main_data(args: argparse.Namespace) -> int:
    """Run one `rlhf data` action; bad input prints `rlhf: error: ...` and returns 2 (inspect: 1 for bad rows)."""
    try:
        if args.data_command == "convert":
            print(convert(args))
            return 0
        model = args.model or ModelConfig().name_or_path
        found = inspect_source(args)
        tokenizer = load_tokenizer(resolve_model(model))
        print("\n".join(inspection_report(args.input, found, tokenizer, model)))
        return 1 if found.errors else 0
    except (ValueError, FileNotFoundError, RuntimeError, ConnectionError) as error:
        print(f"rlhf: error: {error}", file=sys.stderr)
        return 2
