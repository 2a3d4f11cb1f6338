"""Property-based fuzzing (hypothesis) of the data readers and importers and `rlhf data convert|inspect` (issue 20
§2; config loading: test_fuzz_config.py). Whatever the input (random bytes, truncated lines, wrong types, huge
fields, odd unicode, BOMs, CRLF, empty files), a reader returns valid records or raises RecordError naming the file
and line; a failed convert leaves no output. Bounded and derandomized: CI runs the same examples every time."""

from __future__ import annotations

import argparse
import contextlib
import csv
import gzip
import io
import json
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fuzz_helpers import FUZZ, HUGE_TEXT, JSON_VALUES, TEXT, written
from hypothesis import event, example, given
from hypothesis import strategies as st

from rlhf.data import formats, importers
from rlhf.data.io import iter_rows, read_jsonl, read_records
from rlhf.data.records import Comparison, Demonstration, Prompt, RecordError, Sample
from rlhf.data_cli import inspect_source, inspection_report, main_data

SUFFIXES = (".jsonl", ".jsonl.gz", ".csv", ".parquet")
LINE_SUFFIXES = (".jsonl", ".csv")  # their errors must name a line

# ---------------------------------------------------------------- values


def message(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def conversation(text: st.SearchStrategy) -> st.SearchStrategy:
    return st.builds(lambda a, b: [message("user", a), message("assistant", b)], text, text)


def hh_dialogue(prompt: str, response: str) -> str:
    return f"\n\nHuman: {prompt}\n\nAssistant: {response}"


def summarize_row(post: str, a: str, b: str, choice: int, confidence: int) -> dict:
    return {
        "info": {"id": "t3_1", "subreddit": "tifu", "title": "T", "post": post},
        "summaries": [{"text": a, "policy": "sup"}, {"text": b, "policy": "ref"}],
        "choice": choice,
        "worker": "w1",
        "extra": {"confidence": confidence},
    }


# Valid rows of every kind the readers know, by kind; each is then maybe mutated.
KINDS = {
    "comparison": st.builds(
        lambda p, a, b, best: {"prompt": p, "responses": [a, b], "kind": "pairwise", "best": best},
        TEXT,
        TEXT,
        TEXT,
        st.integers(0, 1),
    )
    | st.builds(
        lambda p, r: {"prompt": p, "responses": r, "kind": "ranking", "ranks": [0] + [1] * (len(r) - 1)},
        TEXT,
        st.lists(TEXT, min_size=2, max_size=4),
    ),
    "sample": st.builds(
        lambda p, r, pol: {"prompt": p, "response": r, "policy": "p" + pol, "meta": {"k": p}}, TEXT, TEXT, TEXT
    ),
    "demonstration": st.builds(lambda p, r: {"prompt": p, "response": "r" + r}, TEXT, TEXT),
    "prompt": st.builds(lambda t, i: {"text": "t" + t, "id": i}, TEXT, TEXT),
    "prompt_only": st.builds(lambda p: {"prompt": p}, TEXT),
    "prompt_completion": st.builds(lambda p, c: {"prompt": p, "completion": c}, TEXT, TEXT)
    | st.builds(lambda m: {"messages": m}, conversation(TEXT)),
    "preference": st.builds(lambda p, c, r: {"prompt": p, "chosen": c, "rejected": r}, TEXT, TEXT, TEXT)
    | st.builds(
        lambda p, c, r: {
            "prompt": [message("user", p)],
            "chosen": [message("assistant", c)],
            "rejected": [message("assistant", r)],
        },
        TEXT,
        TEXT,
        TEXT,
    ),
    "implicit_preference": st.builds(lambda c, r: {"chosen": c, "rejected": r}, TEXT, TEXT)
    | st.builds(lambda c, r: {"chosen": c, "rejected": r}, conversation(TEXT), conversation(TEXT)),
    "hh_rlhf": st.builds(
        lambda p, c, r: {"chosen": hh_dialogue(p, c), "rejected": hh_dialogue(p, r)}, TEXT, TEXT, TEXT
    ),
    "summarize": st.builds(summarize_row, TEXT, TEXT, TEXT, st.integers(0, 1), st.integers(1, 9)),
}
ANY_KIND = tuple(KINDS)


@st.composite
def rows(draw, kinds: tuple[str, ...]) -> dict:
    """A valid row of one of `kinds` (or now and then any kind), or one with a field replaced (wrong type, huge
    text), removed, or an unknown field added."""
    kind = draw(st.sampled_from(kinds if draw(st.integers(0, 9)) else ANY_KIND))
    row = dict(draw(KINDS[kind]))
    change = draw(st.sampled_from(["none"] * 6 + ["replace", "huge", "remove", "add"]))
    name = draw(st.sampled_from(sorted(row)))
    if change == "replace":
        row[name] = draw(JSON_VALUES)
    elif change == "huge":
        row[name] = draw(HUGE_TEXT)
    elif change == "remove":
        del row[name]
    elif change == "add":
        row[draw(TEXT)] = draw(JSON_VALUES)
    return row


# ---------------------------------------------------------------- files

DEEP_META = '{"prompt": "p", "response": "r", "policy": "x", "meta": {"a": ' + "[" * 600 + "]" * 600 + "}}"
HUGE_NUMBER = '{"prompt": ' + "9" * 5000 + "}"
DEEP_JSON = '{"prompt": "x", "meta": {"a": ' + "[" * 100_000 + "]" * 100_000 + "}}"
LONE_SURROGATE = '{"prompt": "\\ud800", "chosen": "a", "rejected": "b"}'
RAW_LINES = st.sampled_from(
    ["[1, 2]", "null", '"text"', "{", '{"prompt": ', '{"prompt": "a", "prompt": 3}', '{"text": "\\udc00x"}', "\x00"]
    + [DEEP_META, HUGE_NUMBER, DEEP_JSON, LONE_SURROGATE]
)


def jsonl_bytes(draw, rows_: list[dict]) -> bytes:
    ascii_only = draw(st.booleans())  # False: lone surrogates become invalid UTF-8 bytes
    lines = [json.dumps(row, ensure_ascii=ascii_only) for row in rows_]
    for _ in range(draw(st.integers(0, 2))):
        lines.insert(draw(st.integers(0, len(lines))), draw(RAW_LINES | st.just("") | st.just("  ")))
    end = draw(st.sampled_from(["\n", "\r\n"]))
    text = "".join(line + end for line in lines)
    return text.encode("utf-8", errors="surrogatepass")


def csv_bytes(draw, rows_: list[dict]) -> bytes:
    header = sorted({key for row in rows_ for key in row}, key=str) or draw(st.lists(TEXT, max_size=2))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=draw(st.sampled_from(["\n", "\r\n"])))
    writer.writerow(header)
    for row in rows_:
        cells = [row.get(key, "") for key in header]
        writer.writerow([cell if isinstance(cell, str) else json.dumps(cell) for cell in cells])
        if draw(st.integers(0, 5)) == 0:
            writer.writerow(draw(st.lists(TEXT, max_size=4)))  # a ragged record
    return out.getvalue().encode("utf-8", errors="surrogatepass")


def text_column(values: list) -> pa.Array:
    """Strings as an arrow text column holding their bytes as they are (a lone surrogate gives invalid UTF-8)."""
    return pa.array([value.encode("utf-8", "surrogatepass") for value in values], pa.binary()).view(pa.string())


def parquet_bytes(rows_: list[dict]) -> bytes:
    """Rows as a Parquet table: as arrow types them, else (lone surrogates) as raw text columns, else every value as
    JSON text."""
    keys = sorted({key for row in rows_ for key in row}, key=str)
    tables = [
        lambda: pa.Table.from_pylist(rows_),
        lambda: pa.table({key: text_column([row[key] for row in rows_]) for key in keys}),
        lambda: pa.table(
            {key.encode("utf-8", "replace").decode(): [json.dumps(row.get(key)) for row in rows_] for key in keys}
        ),
    ]
    for table in tables:
        buffer = io.BytesIO()
        try:
            pq.write_table(table(), buffer)
            return buffer.getvalue()
        except (pa.ArrowException, AttributeError, KeyError, OverflowError, TypeError, ValueError):
            continue
    return b"PAR1"


@st.composite
def data_files(draw, kinds: tuple[str, ...] = ANY_KIND) -> tuple[str, bytes]:
    """(suffix, content): rows written in the suffix's format, then maybe truncated, BOM-prefixed or random bytes."""
    suffix = draw(st.sampled_from(SUFFIXES))
    if draw(st.integers(0, 9)) == 0:
        return suffix, draw(st.binary(max_size=200))
    file_kinds = (draw(st.sampled_from(kinds)),)  # the rows of a file are mostly of one kind
    rows_ = draw(st.lists(rows(file_kinds), max_size=4))
    if suffix == ".parquet":
        content = parquet_bytes(rows_)
    elif suffix == ".csv":
        content = csv_bytes(draw, rows_)
    else:
        content = jsonl_bytes(draw, rows_)
    if suffix != ".parquet" and draw(st.integers(0, 4)) == 0:
        content = b"\xef\xbb\xbf" + content
    if suffix == ".jsonl.gz":
        content = gzip.compress(content, mtime=0)
    if draw(st.integers(0, 3)) == 0:
        content = content[: draw(st.integers(0, len(content)))]
    return suffix, content


# ---------------------------------------------------------------- the property


def assert_clear(error: Exception, path: Path) -> None:
    """A RecordError whose message starts with the file, then its line (JSONL, CSV) or row (Parquet) if any."""
    assert type(error) is RecordError, f"{type(error).__name__}: {error}"
    line = r":\d+" if str(path).endswith(LINE_SUFFIXES) else r"(:\d+|: row \d+)?"
    assert re.match(re.escape(str(path)) + line + r": \S", str(error)), str(error)


def assert_writable(value: Any) -> None:
    """A valid record holds JSON-ready UTF-8 text (no lone surrogates, no unbounded nesting)."""
    json.dumps(value, ensure_ascii=False).encode("utf-8")


def check_records(records: list, kind: type) -> None:
    for record in records:
        assert isinstance(record, kind)
        assert_writable(record.to_dict())


def check_examples(examples: list[formats.Example]) -> None:
    for row in examples:
        values = [row.prompt, row.completion, row.chosen, row.rejected]
        for value in values:
            assert value is None or isinstance(value, str) or formats.is_conversational(value)
        assert_writable(values)


def _all_rows(path: Path) -> list:
    return [row for _, row in iter_rows(path)]


def comparisons(records: list) -> None:
    check_records(records, Comparison)


TRL_KINDS = ("prompt_only", "prompt_completion", "preference", "implicit_preference")
PREFERENCE_KINDS = ("preference", "implicit_preference", "hh_rlhf")
# name: (read a path, check what it returned, the kinds of rows its files mostly hold)
READERS: dict[str, tuple[Callable[[Path], Any], Callable[[Any], None], tuple[str, ...]]] = {
    "read_jsonl": (lambda p: read_jsonl(p, Comparison), comparisons, ("comparison",)),
    "iter_rows": (_all_rows, assert_writable, ANY_KIND),
    "read_records-comparison": (lambda p: read_records(p, Comparison), comparisons, ("comparison",)),
    "read_records-sample": (lambda p: read_records(p, Sample), lambda r: check_records(r, Sample), ("sample",)),
    "read_records-demonstration": (
        lambda p: read_records(p, Demonstration),
        lambda r: check_records(r, Demonstration),
        ("demonstration",),
    ),
    "read_records-prompt": (lambda p: read_records(p, Prompt), lambda r: check_records(r, Prompt), ("prompt",)),
    "read_examples-auto": (lambda p: formats.read_examples(str(p)), check_examples, TRL_KINDS),
    "read_examples-preference": (
        lambda p: formats.read_examples(str(p), format="preference"),
        check_examples,
        ("preference",),
    ),
    "read_examples-prompt_completion": (
        lambda p: formats.read_examples(str(p), format="prompt_completion", columns={"completion": "response"}),
        check_examples,
        ("prompt_completion", "demonstration"),
    ),
    "import_trl_preferences": (importers.import_trl_preferences, comparisons, PREFERENCE_KINDS),
    "import_hh_rlhf": (importers.import_hh_rlhf, comparisons, ("hh_rlhf",)),
    "import_summarize_from_feedback": (importers.import_summarize_from_feedback, comparisons, ("summarize",)),
    "read_comparisons": (importers.read_comparisons, comparisons, (*PREFERENCE_KINDS, "comparison", "summarize")),
}


@pytest.mark.parametrize("name", sorted(READERS))
@FUZZ
@given(data=st.data())
def test_reader_returns_valid_records_or_a_located_error(name, data):
    read, check, kinds = READERS[name]
    with written(*data.draw(data_files(kinds), label="file")) as path:
        try:
            result = read(path)
        except RecordError as error:
            event("a located error")
            assert_clear(error, path)
        else:
            event("records" if result else "no records")
            check(result)


# Inputs the fuzzing found: each once gave a traceback from deep inside, an error without its line, a record that
# cannot be written, or (bom) an error for a file that should read. The reader that met it, and the located error it
# now gives ("" = the file now reads).
FOUND = [
    pytest.param(
        ".jsonl.gz", b"\x00", "read_examples-auto", ":1: not a readable gzip file: Not a gzipped", id="not-gzip"
    ),
    pytest.param(".jsonl.gz", b"\x1f\x8b", "import_hh_rlhf", ":1: not a readable gzip file: Compressed", id="cut-gzip"),
    pytest.param(
        ".jsonl.gz",
        gzip.compress(b'{"prompt": "a"}\n', mtime=0)[:-9],
        "iter_rows",
        ":2: not a readable gzip",
        id="gz-end",
    ),
    pytest.param(".csv", b"prompt\nok\n\x80\n", "read_examples-auto", ":3: expected UTF-8 text", id="csv-utf8"),
    pytest.param(
        ".jsonl", HUGE_NUMBER.encode(), "read_examples-auto", ":1: invalid JSON: Exceeds the limit", id="number"
    ),
    pytest.param(".jsonl", DEEP_JSON.encode(), "read_records-prompt", ":1: invalid JSON: nested deeper", id="deep"),
    pytest.param(
        ".jsonl", DEEP_META.encode(), "read_records-sample", ":1: invalid JSON: nested deeper", id="deep-meta"
    ),
    pytest.param(
        ".jsonl", LONE_SURROGATE.encode(), "import_trl_preferences", ":1: invalid JSON: lone UTF-16", id="surrogate"
    ),
    pytest.param(".jsonl", b'\xef\xbb\xbf{"prompt": "a", "completion": "b"}\r\n', "read_examples-auto", "", id="bom"),
    pytest.param(
        ".parquet",
        parquet_bytes([{"prompt": "ok"}, {"prompt": "\ud800"}]),
        "read_examples-auto",
        ": row 2: expected UTF-8 text",
        id="parquet-utf8",
    ),
]


@pytest.mark.parametrize("suffix, content, name, expected", FOUND)
def test_found_inputs_give_located_errors(suffix, content, name, expected):
    read, check, _ = READERS[name]
    with written(suffix, content) as path:
        if not expected:
            check(read(path))
            return
        with pytest.raises(RecordError) as info:
            read(path)
        assert_clear(info.value, path)
        assert str(info.value).startswith(f"{path}{expected}"), str(info.value)


@FUZZ
@given(data=data_files())
def test_scan_examples_keeps_every_bad_row_located(data):
    with written(*data) as path:
        try:
            scan = formats.scan_examples(str(path))
        except RecordError as error:  # the whole file is unreadable (a bad gzip or Parquet file)
            assert_clear(error, path)
            return
        check_examples(scan.examples)
        for error in scan.errors:
            assert_clear(error, path)


class CountingTokenizer:
    """Stands in for a tokenizer in `inspection_report`: one token per character."""

    def __call__(self, texts: list[str], add_special_tokens: bool = False) -> dict:
        return {"input_ids": [list(text) for text in texts]}


@FUZZ
@given(data=data_files())
@example(data=(".jsonl", DEEP_META.encode()))  # was RecursionError copying the sample row
def test_inspect_reports_or_names_the_file(data):
    with written(*data) as path:
        args = argparse.Namespace(input=str(path), split="train", subset="", column=[], format="auto")
        try:
            found = inspect_source(args)
        except RecordError as error:
            assert_clear(error, path)
            return
        for error in found.errors:
            assert_clear(error, path)
        assert inspection_report(str(path), found, CountingTokenizer(), "chars")


COLUMN_OPTIONS = ["prompt=instruction", "chosen=good", "rejected=bad", "completion=response", "bogus=x", "prompt", "=x"]


@FUZZ
@given(
    data=data_files(),
    source=st.sampled_from(["trl", "hh-rlhf", "summarize-from-feedback", "comparisons"]),
    target=st.sampled_from(["comparisons", "trl"]),
    out_suffix=st.sampled_from([".jsonl", ".jsonl.gz", ".parquet"]),
    column=st.just([]) | st.lists(st.sampled_from(COLUMN_OPTIONS), max_size=2),
)
@example(data=(".jsonl", LONE_SURROGATE.encode()), source="trl", target="comparisons", out_suffix=".jsonl", column=[])
def test_convert_writes_a_readable_file_or_nothing(data, source, target, out_suffix, column):
    with written(*data) as path, tempfile.TemporaryDirectory() as out_folder:
        output = Path(out_folder) / f"out{out_suffix}"
        args = argparse.Namespace(
            data_command="convert",
            input=str(path),
            output=str(output),
            source_format=source,
            target_format=target,
            split="train",
            subset="",
            column=column,
        )
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            status = main_data(args)
        event(f"exit {status}")
        if status == 0:
            assert [p.name for p in Path(out_folder).iterdir()] == [output.name]
            if target == "comparisons":
                check_records(read_records(output, Comparison), Comparison)
            else:
                assert_writable(_all_rows(output))
        else:
            assert status == 2, stderr.getvalue()
            named = "|".join([re.escape(str(path)), re.escape(str(output)), "--column", "columns"])
            assert re.match(rf"rlhf: error: ({named})", stderr.getvalue()), stderr.getvalue()
            assert list(Path(out_folder).iterdir()) == []
