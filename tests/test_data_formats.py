"""TRL dataset formats (rlhf/data/formats.py), comparisons <-> TRL rows (importers), `rlhf data convert|inspect`."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from rlhf.cli import main
from rlhf.data import importers
from rlhf.data.formats import Example, detect_format, extract_prompt, is_conversational, read_examples
from rlhf.data.io import read_records, write_jsonl, write_parquet
from rlhf.data.records import Comparison, RecordError


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def bot(text: str) -> dict:
    return {"role": "assistant", "content": text}


def write_rows(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


# ---------------------------------------------------------------- detection
@pytest.mark.parametrize(
    "row, expected",
    [
        ({"prompt": "The sky is"}, "prompt_only"),
        ({"prompt": [user("Sky colour?")]}, "prompt_only"),
        ({"prompt": "The sky is", "completion": " blue."}, "prompt_completion"),
        ({"prompt": [user("Sky?")], "completion": [bot("Blue.")]}, "prompt_completion"),
        ({"messages": [user("Sky?"), bot("Blue.")]}, "prompt_completion"),
        ({"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}, "preference"),
        ({"prompt": [user("Sky?")], "chosen": [bot("Blue.")], "rejected": [bot("Green.")]}, "preference"),
        ({"chosen": "The sky is blue.", "rejected": "The sky is green."}, "implicit_preference"),
        ({"chosen": [user("Sky?"), bot("Blue.")], "rejected": [user("Sky?"), bot("Red.")]}, "implicit_preference"),
        # UltraFeedback-binarized: a text prompt beside whole dialogues is read as implicit, as TRL does
        (
            {"prompt": "Sky?", "chosen": [user("Sky?"), bot("Blue.")], "rejected": [user("Sky?"), bot("Red.")]},
            "implicit_preference",
        ),
        ({"prompt": "p", "completion": "c", "id": 7, "source": "mine"}, "prompt_completion"),  # other columns ignored
    ],
)
def test_detect_format(row, expected):
    assert detect_format(row, "f:1") == expected


@pytest.mark.parametrize(
    "row, expected",
    [
        ({"chosen": "a"}, "f:1: field 'rejected': missing (a preference row needs chosen+rejected)"),
        ({"completion": "a"}, "f:1: field 'prompt': missing (a prompt-completion row needs prompt+completion)"),
        ({"text": "The sky is blue."}, "f:1: expected the columns of a TRL format: prompt | prompt+completion"),
        ({"question": "q"}, "f:1: expected the columns of a TRL format"),
    ],
)
def test_detect_format_errors(row, expected):
    with pytest.raises(RecordError) as caught:
        detect_format(row, "f:1")
    assert str(caught.value).startswith(expected)
    assert "language modelling" in str(caught.value) or "text" not in row


def test_is_conversational():
    assert is_conversational([user("hi"), bot("hello")]) and is_conversational([])
    assert not is_conversational("hi")
    assert not is_conversational([{"role": "user"}])
    assert not is_conversational([{"role": "user", "content": 3}])
    assert not is_conversational(["hi"])


def test_extract_prompt():
    assert extract_prompt("The sky is blue.", "The sky is green.") == ("The sky is", " blue.", " green.")
    assert extract_prompt("I like cats", "I like cars") == ("I like", " cats", " cars")  # no word is split
    assert extract_prompt("blue", "black") == ("", "blue", "black")
    assert extract_prompt("Hi there", "Hi there friend") == ("Hi there", "", " friend")  # "there" ends in both
    hh_chosen = "\n\nHuman: Joke?\n\nAssistant: A pun about cats."
    hh_rejected = "\n\nHuman: Joke?\n\nAssistant: A dull one."
    assert extract_prompt(hh_chosen, hh_rejected) == (
        "\n\nHuman: Joke?\n\nAssistant:",
        " A pun about cats.",
        " A dull one.",
    )
    chosen, rejected = (
        [user("Hi"), bot("Hello"), user("Joke?"), bot("Pun.")],
        [user("Hi"), bot("Hello"), user("Joke?"), bot("No.")],
    )
    assert extract_prompt(chosen, rejected) == (chosen[:3], [bot("Pun.")], [bot("No.")])
    assert extract_prompt([user("a"), bot("b")], [user("x"), bot("b")]) == (
        [],
        [user("a"), bot("b")],
        [user("x"), bot("b")],
    )


# ---------------------------------------------------------------- reading
def test_read_examples_each_format(tmp_path):
    path = write_rows(
        tmp_path / "pc.jsonl", [{"prompt": "2+2=", "completion": " 4"}, {"prompt": "3+3=", "completion": " 6"}]
    )
    assert read_examples(str(path)) == [
        Example(f"{path}:1", "2+2=", completion=" 4"),
        Example(f"{path}:2", "3+3=", completion=" 6"),
    ]
    path = write_rows(
        tmp_path / "msgs.jsonl", [{"messages": [{"role": "system", "content": "Be brief."}, user("2+2?"), bot("4")]}]
    )
    (example,) = read_examples(str(path))
    assert example.prompt == [{"role": "system", "content": "Be brief."}, user("2+2?")] and example.completion == [
        bot("4")
    ]
    path = write_rows(tmp_path / "implicit.jsonl", [{"chosen": "The sky is blue.", "rejected": "The sky is green."}])
    assert read_examples(str(path)) == [Example(f"{path}:1", "The sky is", chosen=" blue.", rejected=" green.")]
    # a given format names the columns read: prompts only from a prompt-completion file
    path = write_rows(tmp_path / "pc2.jsonl", [{"prompt": "2+2=", "completion": " 4"}])
    assert read_examples(str(path), format="prompt_only") == [Example(f"{path}:1", "2+2=")]
    with pytest.raises(RecordError, match=r"pc2.jsonl:1: field 'chosen': missing"):
        read_examples(str(path), format="preference")


def test_read_examples_parquet_and_saved_dataset(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": [user("Sky?")], "chosen": [bot("Blue.")], "rejected": [bot("Green.")]}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "prefs.parquet")
    (example,) = read_examples(str(tmp_path / "prefs.parquet"))
    assert (example.where, example.prompt, example.chosen) == (
        f"{tmp_path / 'prefs.parquet'}: row 1",
        [user("Sky?")],
        [bot("Blue.")],
    )
    split = datasets.DatasetDict({"test": datasets.Dataset.from_list([{"prompt": "p", "completion": "c"}])})
    split.save_to_disk(str(tmp_path / "saved"))
    assert read_examples(str(tmp_path / "saved"), split="test") == [
        Example(f"{tmp_path / 'saved'} [test] row 1", "p", completion="c")
    ]


def test_column_mapping_jsonl_and_csv(tmp_path):
    columns = {"prompt": "instruction", "completion": "gold_response"}
    path = write_rows(tmp_path / "mine.jsonl", [{"instruction": "Say hi", "gold_response": "Hi!", "prompt": "ignored"}])
    assert read_examples(str(path), columns=columns) == [Example(f"{path}:1", "Say hi", completion="Hi!")]
    csv_path = tmp_path / "mine.csv"
    csv_path.write_text('instruction,gold_response\n"Say\nhi",Hi!\nWave,*waves*\n', encoding="utf-8")
    examples = read_examples(str(csv_path), columns={"prompt": "instruction", "response": "gold_response"})
    assert examples == [
        Example(f"{csv_path}:2", "Say\nhi", completion="Hi!"),
        Example(f"{csv_path}:4", "Wave", completion="*waves*"),
    ]
    path = write_rows(
        tmp_path / "gap.jsonl", [{"instruction": "a", "gold_response": "b"}, {"instruction": "a", "gold": "b"}]
    )
    with pytest.raises(RecordError, match=r"gap.jsonl:2: this row is prompt_only \(text\) but the first row"):
        read_examples(str(path), columns=columns)
    with pytest.raises(ValueError, match="columns: expected a mapping from prompt"):
        read_examples(str(path), columns={"question": "instruction"})


def test_csv_record_with_wrong_field_count(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text('prompt,completion\n"a\nb",c\nd,e,f\n', encoding="utf-8")
    with pytest.raises(RecordError, match=r"bad.csv:4: expected 2 fields \(as in the header\), got 3"):
        read_examples(str(path))


@pytest.mark.parametrize(
    "rows, expected",
    [
        (
            [{"prompt": "p"}, {"prompt": "p", "completion": "c"}],
            "x.jsonl:2: this row is prompt_completion (text) but the first row (PATH:1) is prompt_only (text)",
        ),
        (
            [{"prompt": "p"}, {"prompt": [user("p")]}],
            "x.jsonl:2: this row is prompt_only (conversational) but the first row",
        ),
        (
            [{"prompt": "p", "chosen": "a", "rejected": 5}],
            "x.jsonl:1: field 'rejected': expected a string or a list of {role, content} messages, got int 5",
        ),
        ([{"prompt": [{"role": "user"}], "completion": [bot("c")]}], "x.jsonl:1: field 'prompt[0].content': missing"),
        (
            [{"prompt": ["hi"], "completion": [bot("c")]}],
            "x.jsonl:1: field 'prompt[0]': expected a {role, content} message, got str",
        ),
        (
            [{"prompt": [user("p")], "completion": "c"}],
            "x.jsonl:1: field 'completion': expected a list of messages like 'prompt' (one row is all text or all conversational), got text",
        ),
        ([{"prompt": "p", "completion": ""}], "x.jsonl:1: field 'completion': expected a non-empty string, got ''"),
        ([{"prompt": ""}], "x.jsonl:1: field 'prompt': expected a non-empty string"),
        (
            [{"messages": [user("p"), user("q")]}],
            "x.jsonl:1: field 'messages': expected messages ending with an assistant turn after at least one other, got 2 message(s), the last from 'user'",
        ),
        (
            [{"prompt": None}],
            "x.jsonl:1: field 'prompt': expected a string or a list of {role, content} messages, got NoneType",
        ),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path, rows, expected):
    path = write_rows(tmp_path / "x.jsonl", rows)
    with pytest.raises(RecordError) as caught:
        read_examples(str(path))
    assert str(caught.value).startswith(str(tmp_path / expected.replace("PATH", str(path))))


# ---------------------------------------------------------------- comparisons <-> TRL rows
ROUND_TRIP_FILES = {
    "text": [
        {"prompt": "2+2=", "chosen": " 4", "rejected": " 5"},
        {"prompt": "Sky:", "chosen": " blue", "rejected": " red"},
    ],
    "conversational": [
        {
            "prompt": [{"role": "system", "content": "Be kind."}, user("Hi?")],
            "chosen": [bot("Hello.")],
            "rejected": [bot("Go away.")],
        },
        {
            "prompt": [user("Joke?")],
            "chosen": [bot("A pun."), user("More?"), bot("Another.")],
            "rejected": [bot("No.")],
        },
    ],
    "implicit_text": [{"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi\n\nAssistant: Bye."}],
    "implicit_conversational": [{"chosen": [user("Hi"), bot("Hello!")], "rejected": [user("Hi"), bot("Bye.")]}],
}


@pytest.mark.parametrize("name", list(ROUND_TRIP_FILES))
@pytest.mark.parametrize("stored_as", [".jsonl", ".parquet"])
def test_trl_to_comparisons_to_trl_gives_the_same_rows(tmp_path, name, stored_as):
    rows = ROUND_TRIP_FILES[name]
    comparisons = importers.import_trl_preferences(write_rows(tmp_path / "in.jsonl", rows))
    assert [(c.kind, c.best) for c in comparisons] == [("pairwise", 0)] * len(rows)
    stored = tmp_path / f"comparisons{stored_as}"
    (write_jsonl if stored_as == ".jsonl" else write_parquet)(stored, comparisons)
    assert importers.comparisons_to_trl(read_records(stored, Comparison)) == rows


def test_conversational_comparison_keeps_its_messages_in_meta(tmp_path):
    rows = ROUND_TRIP_FILES["implicit_conversational"]
    (comparison,) = importers.import_trl_preferences(write_rows(tmp_path / "in.jsonl", rows))
    assert (comparison.prompt, comparison.responses) == ("\n\nUser: Hi\n\nAssistant:", [" Hello!", " Bye."])
    assert comparison.meta == {
        "messages": {"prompt": [user("Hi")], "responses": [[bot("Hello!")], [bot("Bye.")]]},
        "implicit_prompt": True,
    }


def test_comparisons_to_trl_expands_best_of_k_and_ranking():
    best_of_3 = Comparison(prompt="p", responses=["a", "b", "c"], kind="best_of_k", best=1)
    ranking = Comparison(prompt="q", responses=["x", "y", "z"], kind="ranking", ranks=[2, 0, 1])
    tied = Comparison(prompt="t", responses=["u", "v", "w"], kind="ranking", ranks=[1, 0, 1])
    assert importers.comparisons_to_trl([best_of_3, ranking, tied]) == [
        {"prompt": "p", "chosen": "b", "rejected": "a"},
        {"prompt": "p", "chosen": "b", "rejected": "c"},
        {"prompt": "q", "chosen": "y", "rejected": "x"},
        {"prompt": "q", "chosen": "y", "rejected": "z"},
        {"prompt": "q", "chosen": "z", "rejected": "x"},
        {"prompt": "t", "chosen": "v", "rejected": "u"},  # u and w are tied: no row for them
        {"prompt": "t", "chosen": "v", "rejected": "w"},
    ]
    broken = Comparison(prompt="p", responses=["a", "b"], kind="pairwise", best=0, meta={"messages": {"prompt": []}})
    with pytest.raises(
        RecordError, match=r"comparison 1: field 'meta.messages': expected \{prompt, responses\} with 2"
    ):
        importers.comparisons_to_trl([broken])


def summarize_rows() -> list[dict]:
    """summarize-from-feedback comparisons in their published schema (info, summaries, choice, worker, extra)."""
    info = {"id": "t3_a", "post": "My cat sleeps all day.", "title": "Lazy cat?", "subreddit": "cats"}
    return [
        {
            "info": info,
            "summaries": [{"text": " Cat sleeps.", "policy": "sup2"}, {"text": " Cat lazy.", "policy": "ref"}],
            "choice": 1,
            "worker": "w1",
            "batch": "b1",
            "split": "train",
            "extra": {"confidence": 7},
        },
        {
            "info": {**info, "id": "t3_b"},
            "summaries": [{"text": " A.", "policy": "a"}, {"text": " B.", "policy": "b"}],
            "choice": 0,
            "worker": "w2",
            "batch": "b1",
            "split": "train",
            "extra": {},
        },
    ]


def test_read_comparisons_accepts_each_kind(tmp_path):
    trl = write_rows(tmp_path / "trl.jsonl", ROUND_TRIP_FILES["text"])
    assert [(c.prompt, c.responses) for c in importers.read_comparisons(trl)] == [
        ("2+2=", [" 4", " 5"]),
        ("Sky:", [" blue", " red"]),
    ]
    ours = tmp_path / "ours.jsonl"
    write_jsonl(ours, [Comparison(prompt="p", responses=["a", "b", "c"], kind="best_of_k", best=2)])
    assert importers.read_comparisons(ours) == read_records(ours, Comparison)
    summarize = write_rows(tmp_path / "sff.jsonl", summarize_rows())
    assert [c.best for c in importers.read_comparisons(summarize)] == [1, 0]
    assert importers.read_comparisons(write_rows(tmp_path / "empty.jsonl", [])) == []
    with pytest.raises(RecordError, match=r"odd.jsonl:1: expected a Comparison record .* got columns \['question'\]"):
        importers.read_comparisons(write_rows(tmp_path / "odd.jsonl", [{"question": "q"}]))


# ---------------------------------------------------------------- rlhf data convert / inspect
def test_convert_summarize_from_feedback(tmp_path, capsys):
    source = write_rows(tmp_path / "sff.jsonl", summarize_rows())
    assert (
        main(
            [
                "data",
                "convert",
                str(source),
                str(tmp_path / "c.jsonl"),
                "--from",
                "summarize-from-feedback",
                "--to",
                "comparisons",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out == f"wrote 2 comparisons to {tmp_path / 'c.jsonl'}\n"
    comparisons = read_records(tmp_path / "c.jsonl", Comparison)
    assert [(c.best, c.confidence, c.labeler) for c in comparisons] == [(1, 7, "w1"), (0, None, "w2")]
    assert (
        main(
            [
                "data",
                "convert",
                str(source),
                str(tmp_path / "t.parquet"),
                "--from",
                "summarize-from-feedback",
                "--to",
                "trl",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out == f"wrote 2 TRL preference rows from 2 comparisons to {tmp_path / 't.parquet'}\n"
    rows = [
        {"prompt": c.prompt, "chosen": c.responses[c.best], "rejected": c.responses[1 - c.best]} for c in comparisons
    ]
    assert (
        main(
            [
                "data",
                "convert",
                str(tmp_path / "t.parquet"),
                str(tmp_path / "back.jsonl"),
                "--from",
                "trl",
                "--to",
                "trl",
            ]
        )
        == 0
    )
    assert [json.loads(line) for line in (tmp_path / "back.jsonl").read_text().splitlines()] == rows


def test_convert_counts_identical_pairs_and_rejects_bad_output(tmp_path, capsys):
    rows = [{"q": "p", "chosen": "a", "rejected": "b"}, {"q": "p", "chosen": "same", "rejected": "same"}]
    source = write_rows(tmp_path / "prefs.jsonl", rows)
    assert (
        main(
            [
                "data",
                "convert",
                str(source),
                str(tmp_path / "c.jsonl.gz"),
                "--from",
                "trl",
                "--to",
                "comparisons",
                "--column",
                "prompt=q",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out == f"wrote 1 comparisons (1 identical pairs skipped) to {tmp_path / 'c.jsonl.gz'}\n"
    assert main(["data", "convert", str(source), str(tmp_path / "c.txt"), "--from", "trl", "--to", "trl"]) == 2
    assert "expected an output file ending in .jsonl, .jsonl.gz, .parquet" in capsys.readouterr().err
    assert not (tmp_path / "c.txt").exists()


def test_convert_hh_rlhf_shared_file(shared_data, tmp_path, capsys):
    path = shared_data / "hh-rlhf" / "harmless-base-test.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    assert (
        main(["data", "convert", str(path), str(tmp_path / "c.parquet"), "--from", "hh-rlhf", "--to", "comparisons"])
        == 0
    )
    assert capsys.readouterr().out.startswith(f"wrote {len(rows)} comparisons")
    assert len(read_records(tmp_path / "c.parquet", Comparison)) == len(rows) == 2312
    # read as TRL implicit-prompt rows, the file comes back unchanged
    assert main(["data", "convert", str(path), str(tmp_path / "t.jsonl"), "--from", "trl", "--to", "trl"]) == 0
    assert [json.loads(line) for line in (tmp_path / "t.jsonl").read_text(encoding="utf-8").splitlines()] == rows


def test_inspect_reports_format_lengths_sample_and_every_bad_row(tiny_model_dir, tmp_path, capsys):
    from transformers import AutoTokenizer

    rows = [
        {"prompt": [user("Sky colour?")], "completion": [bot("Blue.")]},
        {"prompt": [user("Grass?")], "completion": [bot("Green, mostly.")]},
    ]
    path = write_rows(tmp_path / "chat.jsonl", rows)
    assert main(["data", "inspect", str(path), "--model", str(tiny_model_dir)]) == 0
    out = capsys.readouterr().out
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = [
        len(tokenizer("\n\nUser: " + t, add_special_tokens=False)["input_ids"]) for t in ("Sky colour?", "Grass?")
    ]
    answers = [
        len(tokenizer("\n\nAssistant: " + t, add_special_tokens=False)["input_ids"])
        for t in ("Blue.", "Green, mostly.")
    ]
    assert (
        "  format: TRL prompt_completion (conversational)\n  rows: 2 read, 0 bad\n  kinds: prompt_completion 2\n" in out
    )
    assert f"prompt: mean {sum(prompts) / 2:.1f}, median {sum(prompts) / 2:g}, max {max(prompts)} (2 texts)" in out
    assert f"responses: mean {sum(answers) / 2:.1f}, median {sum(answers) / 2:g}, max {max(answers)} (2 texts)" in out
    assert f"sample row ({path}:1):" in out and '"content": "Sky colour?"' in out
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps(rows[0]) + "\n{oops\n" + json.dumps({"prompt": [user("x")], "completion": "y"}) + "\n",
        encoding="utf-8",
    )
    assert main(["data", "inspect", str(bad), "--model", str(tiny_model_dir)]) == 1
    out = capsys.readouterr().out
    assert "rows: 1 read, 2 bad" in out
    assert (
        f"    {bad}:2: invalid JSON" in out and f"    {bad}:3: field 'completion': expected a list of messages" in out
    )


def test_inspect_our_comparison_records(tiny_model_dir, tmp_path, capsys):
    records = [
        Comparison(prompt="p", responses=["a", "b"], kind="pairwise", best=0),
        Comparison(prompt="p", responses=["a", "b", "c"], kind="ranking", ranks=[0, 1, 1]),
    ]
    write_jsonl(tmp_path / "c.jsonl", records)
    with open(tmp_path / "c.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps({**records[0].to_dict(), "best": 5}) + "\n")
    assert main(["data", "inspect", str(tmp_path / "c.jsonl"), "--model", str(tiny_model_dir)]) == 1
    out = capsys.readouterr().out
    assert "format: Comparison records\n  rows: 2 read, 1 bad\n  kinds: pairwise 1, ranking 1\n" in out
    assert "(5 texts)" in out and "c.jsonl:3: field 'best': expected an integer index in 0..1, got 5" in out


def test_collect_stage_reads_a_trl_preference_file(tmp_path):
    from rlhf.config import RunConfig
    from rlhf.run import RunDir
    from rlhf.stages.collect import collect

    rows = [{"prompt": f"q{i}", "chosen": f" good {i}", "rejected": f" bad {i}"} for i in range(10)]
    cfg = RunConfig()
    cfg.collect.comparisons_path = str(write_rows(tmp_path / "prefs.jsonl", rows))
    cfg.collect.heldout_fraction = 0.2
    run = RunDir(tmp_path / "run")
    run.save_config(cfg)
    info = collect(run, cfg)
    assert (info["n_train"], info["n_heldout"]) == (8, 2)
    kept = read_records(run.root / "collect" / "comparisons.jsonl", Comparison)
    kept += read_records(run.root / "collect" / "heldout.jsonl", Comparison)
    assert sorted((c.prompt, *c.responses) for c in kept) == sorted(
        (r["prompt"], r["chosen"], r["rejected"]) for r in rows
    )
