"""Tests for rlhf.data: record validation, readers/writers (jsonl, gz, parquet, datasets), atomic writes, importers."""

from __future__ import annotations

import gzip
import json
import logging
from collections import Counter
from pathlib import Path

import pytest

from rlhf.data import importers
from rlhf.data import io as data_io
from rlhf.data.records import Comparison, Demonstration, Prompt, RecordError, Sample

SHARED_DATA = Path(__file__).parents[2] / "shared" / "data"
needs_shared_data = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason=f"real HH-RLHF copies not present at {SHARED_DATA} (only on dev/CI machines)"
)


def example_records() -> list:
    return [
        Prompt(text="SUBREDDIT: r/cats\nTITLE: Café?\nPOST: 猫\nTL;DR:", id="p1", meta={"ref": " ok", "n": [1, 2]}),
        Demonstration(prompt="Say hi.", response=" Hi!", id="d1"),
        Comparison(prompt="Q", responses=[" a", " b"], kind="pairwise", best=1, confidence=7, labeler="w1"),
        Comparison(prompt="Q", responses=["a", "b", "c", "d"], kind="best_of_k", best=2, meta={"gold": [0.5, 1.0]}),
        Comparison(prompt="Q", responses=["a", "b", "c"], kind="ranking", ranks=[1, 0, 1], id="c3"),
        Sample(prompt="Q", response=" truncated", policy="ppo-1", prompt_id="p1", has_stop=False, meta={"t": 0}),
    ]


def group_by_type(records: list) -> dict[type, list]:
    return {kind: [r for r in records if type(r) is kind] for kind in dict.fromkeys(type(r) for r in records)}


def comparison_dict(**changes) -> dict:
    return {"prompt": "Q", "responses": ["a", "b", "c", "d"], "kind": "best_of_k", "best": 0, **changes}


# ---------------------------------------------------------------- records
def test_pairs_for_each_kind():
    pairwise = Comparison(prompt="Q", responses=["a", "b"], kind="pairwise", best=1)
    assert pairwise.pairs() == [(1, 0)]
    best_of_4 = Comparison(prompt="Q", responses=["a", "b", "c", "d"], kind="best_of_k", best=2)
    assert best_of_4.pairs() == [(2, 0), (2, 1), (2, 3)]
    # ranks [1, 0, 2, 0]: responses 1 and 3 tie for best, 0 next, 2 last. Strictly ordered pairs:
    # 0>2; 1>0, 1>2; 3>0, 3>2; the tie (1, 3) gives no pair -> 5 pairs.
    ranking = Comparison(prompt="Q", responses=["a", "b", "c", "d"], kind="ranking", ranks=[1, 0, 2, 0])
    assert ranking.pairs() == [(0, 2), (1, 0), (1, 2), (3, 0), (3, 2)]


def test_best_out_of_range_message_names_location_field_and_expectation():
    with pytest.raises(RecordError) as caught:
        Comparison.from_dict(comparison_dict(best=7), "comparisons.jsonl:12")
    assert str(caught.value) == "comparisons.jsonl:12: field 'best': expected an integer index in 0..3, got 7"
    assert caught.value.field == "best" and caught.value.where == "comparisons.jsonl:12"


@pytest.mark.parametrize(
    "changes, field, fragment",
    [
        ({"kind": "ranking", "best": None, "ranks": [1, 1, 1, 1]}, "ranks", "all responses tied"),
        ({"kind": "ranking", "best": None, "ranks": [1, 2, 3, 1]}, "ranks", "rank 0"),
        ({"kind": "ranking", "best": None, "ranks": [0, 1]}, "ranks", "list of 4 integer ranks"),
        ({"kind": "ranking", "best": 1, "ranks": [0, 1, 2, 3]}, "best", "rank-0 response"),
        ({"kind": "pairwise", "responses": ["a", "b"], "confidence": 10}, "confidence", "1..9, got 10"),
        ({"kind": "pairwise", "responses": ["a", "b"], "confidence": 0}, "confidence", "1..9, got 0"),
        ({"kind": "pairwise"}, "responses", "exactly 2 responses"),
        ({"kind": "best_of_k", "confidence": 5}, "confidence", "only pairwise"),
        ({"best": True}, "best", "integer index"),
        ({"best": None}, "best", "missing"),
        ({"ranks": [0, 1, 2, 3]}, "ranks", "only 'ranking'"),
        ({"kind": "best-of-k"}, "kind", "pairwise, best_of_k, ranking"),
        ({"responses": ["a", 3, "c", "d"]}, "responses[1]", "expected a string"),
        ({"meta": []}, "meta", "object"),
        ({"labler": "x"}, "labler", "unknown field"),
    ],
)
def test_comparison_validation_errors(changes, field, fragment):
    with pytest.raises(RecordError) as caught:
        Comparison.from_dict(comparison_dict(**changes), "c.jsonl:4")
    assert caught.value.field == field
    assert str(caught.value).startswith(f"c.jsonl:4: field '{field}': ")
    assert fragment in str(caught.value)


def test_other_records_validate_their_fields():
    with pytest.raises(RecordError, match="field 'text': expected a non-empty string"):
        Prompt(text="")
    with pytest.raises(RecordError, match="field 'response': expected a non-empty string"):
        Demonstration(prompt="p", response="")
    with pytest.raises(RecordError, match="field 'has_stop': expected true or false, got 1"):
        Sample(prompt="p", response="r", policy="sft", has_stop=1)
    with pytest.raises(RecordError, match="x:1: field 'policy': missing"):
        Sample.from_dict({"prompt": "p", "response": "r"}, "x:1")
    with pytest.raises(RecordError, match="x:2: expected an object"):
        Prompt.from_dict(["not", "a", "dict"], "x:2")


def test_records_are_frozen_and_copy_their_inputs():
    responses = ["a", "b"]
    comparison = Comparison(prompt="Q", responses=responses, kind="pairwise", best=0)
    responses.append("c")
    assert comparison.responses == ["a", "b"]
    with pytest.raises(AttributeError):
        comparison.best = 1  # type: ignore[misc]
    assert Comparison.from_dict(comparison.to_dict()) == comparison


# ---------------------------------------------------------------- readers and writers
@pytest.mark.parametrize("name", ["records.jsonl", "records.jsonl.gz", "records.json"])
def test_jsonl_round_trip(tmp_path, name):
    for record_type, records in group_by_type(example_records()).items():
        path = tmp_path / f"{record_type.__name__}-{name}"
        data_io.write_jsonl(path, records)
        assert data_io.read_jsonl(path, record_type) == records
        assert data_io.read_records(path, record_type) == records
        assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_parquet_round_trip(tmp_path):
    for record_type, records in group_by_type(example_records()).items():
        path = tmp_path / f"{record_type.__name__}.parquet"
        data_io.write_parquet(path, records)
        assert data_io.read_records(str(path), record_type) == records


def test_parquet_rejects_mixed_record_types(tmp_path):
    with pytest.raises(RecordError, match="record 2 is a Demonstration"):
        data_io.write_parquet(tmp_path / "mixed.parquet", example_records())
    assert list(tmp_path.iterdir()) == []


def test_saved_dataset_round_trip(tmp_path):
    import datasets

    comparisons = group_by_type(example_records())[Comparison]
    data_io.records_to_dataset(comparisons).save_to_disk(str(tmp_path / "single"))
    assert data_io.read_records(tmp_path / "single", Comparison) == comparisons
    splits = {
        "train": data_io.records_to_dataset(comparisons[:1]),
        "test": data_io.records_to_dataset(comparisons[1:]),
    }
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "splits"))
    assert data_io.read_records(tmp_path / "splits", Comparison, split="test") == comparisons[1:]
    with pytest.raises(RecordError, match="no split 'validation'; available: train, test"):
        data_io.read_records(tmp_path / "splits", Comparison, split="validation")


def test_dataset_rows_are_validated(tmp_path):
    import datasets

    rows = [comparison_dict(), comparison_dict(best=9)]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(RecordError, match=r"\[train\] row 2: field 'best': expected an integer index in 0..3, got 9"):
        data_io.read_records(tmp_path / "bad", Comparison)


def test_hub_name_without_network_gives_clear_error(monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    # Offline mode makes the real load_dataset call fail at once instead of retrying DNS lookups.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConnectionError, match="could not reach the Hugging Face hub.*pass a local path"):
        data_io.read_records("no-such-org/no-such-dataset", Comparison)


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


GOOD_LINE = json.dumps(comparison_dict())


@pytest.mark.parametrize(
    "bad_line, expected",
    [
        ('{"prompt": "Q", "responses": ', ":3: invalid JSON"),
        ("[1, 2]", ":3: expected one JSON object per line"),
        (json.dumps({"prompt": "Q", "responses": ["a", "b"], "best": 0}), ":3: field 'kind': missing"),
        (json.dumps(comparison_dict(best=7)), ":3: field 'best': expected an integer index in 0..3, got 7"),
        (json.dumps(comparison_dict(kind="ranking", best=None, ranks=[2, 2, 2, 2])), ":3: field 'ranks': expected at"),
        (
            json.dumps(comparison_dict(responses=["a", "b"], kind="pairwise", confidence=10)),
            ":3: field 'confidence': expected an integer confidence in 1..9, got 10",
        ),
    ],
)
def test_read_jsonl_errors_name_file_line_and_field(tmp_path, bad_line, expected):
    # Line 2 is blank (skipped, but still counted), so the bad row is on line 3.
    path = write_lines(tmp_path / "comparisons.jsonl", [GOOD_LINE, "   ", bad_line])
    with pytest.raises(RecordError) as caught:
        data_io.read_jsonl(path, Comparison)
    assert str(caught.value).startswith(f"{path}{expected}")


def test_read_gz_error_line_numbers(tmp_path):
    path = tmp_path / "comparisons.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(GOOD_LINE + "\n\n" + GOOD_LINE + "\n" + json.dumps(comparison_dict(best=-1)) + "\n")
    with pytest.raises(RecordError, match=r"comparisons.jsonl.gz:4: field 'best'.*got -1"):
        data_io.read_records(path, Comparison)


def test_parquet_errors_name_one_based_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [comparison_dict(), comparison_dict(), comparison_dict(best=4)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet")
    with pytest.raises(RecordError, match=r"c.parquet: row 3: field 'best': expected an integer index in 0..3, got 4"):
        data_io.read_records(tmp_path / "c.parquet", Comparison)


def test_unsupported_file_type(tmp_path):
    path = write_lines(tmp_path / "rows.tsv", ["prompt,chosen"])
    with pytest.raises(RecordError, match="unsupported file type"):
        data_io.read_records(path, Comparison)


# ---------------------------------------------------------------- atomic writes
def unserialisable_records() -> list:
    return [Prompt(text="fine"), Prompt(text="bad", meta={"handle": object()})]


@pytest.mark.parametrize("name", ["out.jsonl", "out.jsonl.gz", "out.parquet"])
def test_failed_write_leaves_nothing_behind(tmp_path, name):
    writer = data_io.write_parquet if name.endswith(".parquet") else data_io.write_jsonl
    with pytest.raises(RecordError, match="cannot be written as JSON"):
        writer(tmp_path / name, unserialisable_records())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["out.jsonl", "out.jsonl.gz"])
def test_failed_write_keeps_existing_file(tmp_path, name):
    path = tmp_path / name
    data_io.write_jsonl(path, [Prompt(text="old")])
    before = path.read_bytes()
    with pytest.raises(RecordError, match="record 2 cannot be written"):
        data_io.write_jsonl(path, unserialisable_records())
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_atomic_write_text_and_json(tmp_path):
    data_io.atomic_write_text(tmp_path / "new" / "dir" / "note.txt", "héllo\n")
    assert (tmp_path / "new" / "dir" / "note.txt").read_text(encoding="utf-8") == "héllo\n"
    data_io.atomic_write_json(tmp_path / "summary.json", {"a": [1, 2]})
    assert json.loads((tmp_path / "summary.json").read_text()) == {"a": [1, 2]}
    with pytest.raises(TypeError):
        data_io.atomic_write_json(tmp_path / "summary.json", {"a": object()})
    assert json.loads((tmp_path / "summary.json").read_text()) == {"a": [1, 2]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "summary.json"]


# ---------------------------------------------------------------- importers on hand-written rows
def summarize_row(**changes) -> dict:
    row = {
        "info": {"id": "t3_x", "post": "My cat sleeps all day.", "title": "Lazy cat?", "subreddit": "cats"},
        "summaries": [{"text": " Cat sleeps.", "policy": "sup2"}, {"text": "My cat is lazy.", "policy": "ref"}],
        "choice": 1,
        "extra": {"confidence": 8},
        "worker": "w7",
        "split": "valid1",
    }
    return {**row, **changes}


def test_summarize_row_to_comparison():
    comparison = importers.summarize_row_to_comparison(summarize_row(), "f.jsonl:1")
    assert comparison.prompt == "SUBREDDIT: r/cats\nTITLE: Lazy cat?\nPOST: My cat sleeps all day.\nTL;DR:"
    assert comparison.responses == [" Cat sleeps.", " My cat is lazy."]  # second had no leading space
    assert (comparison.kind, comparison.best, comparison.confidence, comparison.labeler) == ("pairwise", 1, 8, "w7")
    assert comparison.meta["post_id"] == "t3_x" and comparison.meta["policies"] == ["sup2", "ref"]
    assert importers.summarize_row_to_comparison(summarize_row(extra={}), "f:1").confidence is None


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"info": {"id": "x", "title": "t", "subreddit": "s"}}, "f:5: field 'info.post': missing"),
        ({"info": {"id": "x", "article": "a", "site": "cnn"}}, "f:5: field 'info.post': missing: this is a CNN/DM"),
        ({"choice": 2}, "f:5: field 'choice': expected 0 or 1, got 2"),
        ({"extra": {"confidence": 10}}, "f:5: field 'extra.confidence': expected an integer in 1..9, got 10"),
        ({"summaries": [{"text": "a"}]}, "f:5: field 'summaries': expected exactly 2 summaries, got 1"),
        ({"summaries": [{"text": "a"}, {"txt": "b"}]}, "f:5: field 'summaries[1].text': missing"),
    ],
)
def test_summarize_row_errors(changes, expected):
    with pytest.raises(RecordError) as caught:
        importers.summarize_row_to_comparison(summarize_row(**changes), "f:5")
    assert str(caught.value).startswith(expected)


def test_import_summarize_from_feedback_file(tmp_path):
    path = write_lines(tmp_path / "batch1.json", [json.dumps(summarize_row()), json.dumps(summarize_row(choice=0))])
    assert [c.best for c in importers.import_summarize_from_feedback(path)] == [1, 0]
    write_lines(path, [json.dumps(summarize_row()), json.dumps(summarize_row(choice="1"))])
    with pytest.raises(RecordError, match=r"batch1.json:2: field 'choice': expected int, got str"):
        importers.import_summarize_from_feedback(path)


def test_trl_standard_and_conversational_rows():
    standard = {"prompt": "Hi?", "chosen": " Hello.", "rejected": " Go away."}
    comparison = importers.trl_row_to_comparison(standard, "t:1")
    assert (comparison.prompt, comparison.responses, comparison.best) == ("Hi?", [" Hello.", " Go away."], 0)
    row = {
        "prompt": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi?"}],
        "chosen": [{"role": "assistant", "content": "Hello."}],
        "rejected": [{"role": "assistant", "content": "Go away."}],
    }
    comparison = importers.trl_row_to_comparison(row, "t:2")
    assert comparison.prompt == "\n\nSystem: Be kind.\n\nUser: Hi?\n\nAssistant:"
    assert comparison.responses == [" Hello.", " Go away."]
    assert comparison.prompt + comparison.responses[0] == "\n\nSystem: Be kind.\n\nUser: Hi?\n\nAssistant: Hello."


@pytest.mark.parametrize(
    "row, expected",
    [
        (
            {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "x"},
            "t:3: field 'prompt': missing (rows holding whole",
        ),
        ({"prompt": [], "chosen": ["c"], "rejected": []}, "t:3: field 'chosen[0]': expected an object holding 'role'"),
        ({"prompt": [{"role": "user"}], "chosen": [], "rejected": []}, "t:3: field 'prompt[0].content': missing"),
        ({"prompt": [], "chosen": "c", "rejected": []}, "t:3: field 'chosen': expected a list of messages"),
        ({"prompt": "p", "chosen": "c", "rejected": 5}, "t:3: field 'rejected': expected str or list, got int"),
    ],
)
def test_trl_row_errors(row, expected):
    with pytest.raises(RecordError) as caught:
        importers.trl_row_to_comparison(row, "t:3")
    assert str(caught.value).startswith(expected)


def test_import_trl_skips_identical_pairs(tmp_path, caplog):
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": "same", "rejected": "same"}]
    path = write_lines(tmp_path / "prefs.jsonl", [json.dumps(row) for row in rows])
    with caplog.at_level(logging.WARNING, logger="rlhf.data.importers"):
        comparisons = importers.import_trl_preferences(path)
    assert [c.responses for c in comparisons] == [["a", "b"]]
    assert "skipped 1 rows" in caplog.text


def test_hh_rlhf_prompt_and_rows():
    chosen = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Joke?\n\nAssistant: A pun."
    assert importers.hh_rlhf_prompt(chosen) == "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Joke?\n\nAssistant:"
    with pytest.raises(ValueError, match="Assistant:"):
        importers.hh_rlhf_prompt("\n\nHuman: no reply")
    counts: Counter[str] = Counter()
    same_prefix = {"chosen": chosen, "rejected": chosen.replace("A pun.", "No.")}
    comparison = importers.hh_rlhf_row_to_comparison(same_prefix, "h:1", counts)
    assert comparison.prompt == importers.hh_rlhf_prompt(chosen) and comparison.responses == [" A pun.", " No."]
    # Rejected differs earlier in the dialogue: split at its own last cue, keep the chosen prompt.
    other_prefix = {"chosen": chosen, "rejected": "\n\nHuman: Hey\n\nAssistant: Yo\n\nHuman: Joke?\n\nAssistant: Nope"}
    comparison = importers.hh_rlhf_row_to_comparison(other_prefix, "h:2", counts)
    assert comparison.prompt == importers.hh_rlhf_prompt(chosen) and comparison.responses == [" A pun.", " Nope"]
    identical = {"chosen": chosen, "rejected": "\n\nHuman: x\n\nAssistant: A pun."}
    assert importers.hh_rlhf_row_to_comparison(identical, "h:3", counts) is None
    assert counts == Counter({"prefix_mismatch": 2, "identical": 1})
    with pytest.raises(RecordError, match=r"h:4: field 'rejected': expected a dialogue containing"):
        importers.hh_rlhf_row_to_comparison({"chosen": chosen, "rejected": "\n\nHuman: hi"}, "h:4")


def test_import_hh_rlhf_from_saved_dataset_counts_and_warns(tmp_path, caplog):
    import datasets

    chosen = "\n\nHuman: Hi\n\nAssistant: Hello!"
    rows = [
        {"chosen": chosen, "rejected": "\n\nHuman: Hi\n\nAssistant: Bye."},
        {"chosen": chosen, "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!"},
        {"chosen": chosen, "rejected": "\n\nHuman: Yo\n\nAssistant: Bye."},
    ]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "hh"))
    with caplog.at_level(logging.WARNING, logger="rlhf.data.importers"):
        comparisons = importers.import_hh_rlhf(tmp_path / "hh")
    assert [c.responses for c in comparisons] == [[" Hello!", " Bye."], [" Hello!", " Bye."]]
    assert "1 rows' rejected dialogue does not share" in caplog.text and "skipped 1 rows" in caplog.text


# ---------------------------------------------------------------- importers on the real shared files
@needs_shared_data
def test_import_hh_rlhf_real_file(caplog):
    path = SHARED_DATA / "hh-rlhf" / "harmless-base-test.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    assert len(rows) == 2312  # the row count in shared/data/README.md
    with caplog.at_level(logging.WARNING, logger="rlhf.data.importers"):
        comparisons = importers.import_hh_rlhf(path)
    assert len(comparisons) == len(rows)  # this file has no pair with identical responses
    assert all(c.prompt.startswith("\n\nHuman:") and c.prompt.endswith("\n\nAssistant:") for c in comparisons)
    assert all(c.prompt + c.responses[0] == row["chosen"] for c, row in zip(comparisons, rows))
    mismatched = sum(c.prompt + c.responses[1] != row["rejected"] for c, row in zip(comparisons, rows))
    assert f"{mismatched} rows' rejected dialogue does not share" in caplog.text


@needs_shared_data
def test_import_trl_real_file():
    path = SHARED_DATA / "hh-rlhf" / "helpful-pairs-363.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    comparisons = importers.import_trl_preferences(path)
    assert len(rows) == len(comparisons) == 363  # the row count in shared/data/README.md
    assert all(c.kind == "pairwise" and c.best == 0 for c in comparisons)
    assert [(c.prompt, *c.responses) for c in comparisons] == [(r["prompt"], r["chosen"], r["rejected"]) for r in rows]
