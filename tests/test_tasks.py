"""Tests for rlhf.tasks: built-in sentiment prompts, VADER gold, TL;DR query/truncation, HH dialogue prompts."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from rlhf.config import RunConfig
from rlhf.tasks import TASK_NAMES, evaluation_prompts, get_task, held_out_prompts
from rlhf.tasks.custom import CustomData
from rlhf.tasks.dialogue import split_dialogue
from rlhf.tasks.sentiment import clean_review_text, opening_word_count, vader_gold_scores
from rlhf.tasks.tldr import (
    approximate_token_count,
    format_tldr_query,
    parse_tldr_query,
    tldr_post,
    truncate_post_to_fit,
)

SHARED_DATA = Path(__file__).parents[2] / "shared" / "data"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return path


# ---------------------------------------------------------------- get_task


def test_get_task_builds_each_task_and_names_known_tasks_on_error():
    assert TASK_NAMES == ("sentiment", "tldr", "dialogue", "custom")
    assert [get_task(name).name for name in TASK_NAMES[:3]] == ["sentiment", "tldr", "dialogue"]
    custom = get_task("custom", data=CustomData(source="prompts.jsonl"))  # files are read when prompts are loaded
    assert (custom.name, custom.response_length, custom.stop_strings, custom.gold_scorer) == ("custom", 64, (), None)
    with pytest.raises(ValueError, match="task 'custom': bad options"):
        get_task("custom")  # needs its data
    sentiment = get_task("sentiment", stop_min_tokens=4)
    assert (sentiment.response_length, sentiment.stop_min_tokens) == (24, 4)
    assert sentiment.stop_strings == (".", "!", "?")
    assert get_task("tldr").gold_scorer is None and get_task("dialogue").gold_scorer is None
    assert get_task("dialogue").stop_strings == ("Human:",)
    with pytest.raises(ValueError, match="sentiment, tldr, dialogue, custom"):
        get_task("poetry")
    with pytest.raises(ValueError, match="bad options"):
        get_task("sentiment", max_query_tokens=10)
    with pytest.raises(ValueError, match="stop_min_tokens"):
        get_task("sentiment", stop_min_tokens=24)


def test_held_out_prompts_are_the_first_n_of_the_seeded_test_shuffle():
    cfg = RunConfig()
    cfg.task.name, cfg.task.n_eval_prompts, cfg.seed = "sentiment", 5, 3
    task = get_task("sentiment")
    assert held_out_prompts(cfg) == task.load_prompts("test", n=5, seed=3)
    assert evaluation_prompts(cfg, 2) == [p.text for p in task.load_prompts("test", n=2, seed=3)]
    positive = held_out_prompts(cfg, split="train", keep=lambda p: p.meta["tone"] == "positive")
    assert positive == [p for p in task.load_prompts("train", seed=3) if p.meta["tone"] == "positive"][:5]
    with pytest.raises(ValueError, match=r"task.n_eval_prompts: expected 1\.\.\d+ \(prompts of split 'test'"):
        cfg.task.n_eval_prompts = 100_000
        held_out_prompts(cfg)
    with pytest.raises(ValueError, match=r"n: expected 1\.\."):
        held_out_prompts(cfg, 0)


# ---------------------------------------------------------------- sentiment


def test_builtin_sentiment_prompts_count_split_and_shape():
    task = get_task("sentiment")
    train = [p.text for p in task.load_prompts("train")]
    test = [p.text for p in task.load_prompts("test")]
    assert len(train) + len(test) >= 600
    assert len(set(train)) == len(train) and len(set(test)) == len(test)
    assert not set(train) & set(test)
    assert 0.15 <= len(test) / (len(train) + len(test)) <= 0.25
    for text in train + test:
        assert 6 <= len(text.split()) <= 20, text
        assert not text.endswith((".", "!", "?")), f"should end mid-sentence: {text}"
    tones = {p.meta["tone"] for p in task.load_prompts("train")}
    assert tones == {"neutral", "negative", "positive"}
    with pytest.raises(ValueError, match="unknown split"):
        task.load_prompts("valid")


def test_sentiment_prompts_are_a_seeded_shuffle():
    task = get_task("sentiment")
    first = task.load_prompts("train", n=20, seed=7)
    assert first == task.load_prompts("train", n=20, seed=7)
    assert first == task.load_prompts("train", seed=7)[:20]
    assert [p.text for p in first] != [p.text for p in task.load_prompts("train", n=20, seed=8)]
    assert len(task.load_prompts("test", n=5)) == 5
    with pytest.raises(ValueError, match="only"):
        task.load_prompts("test", n=100_000)


def test_sentiment_demonstrations_are_well_formed():
    task = get_task("sentiment")
    demonstrations = task.load_demonstrations("train", seed=3)
    train_prompts = {p.text for p in task.load_prompts("train")}
    assert len(demonstrations) >= 200
    assert demonstrations == task.load_demonstrations("train", seed=3)
    for demonstration in demonstrations:
        assert demonstration.prompt in train_prompts
        assert demonstration.response.startswith(" ") and demonstration.response.endswith(".")
        assert 12 <= len(demonstration.response.split()) <= 20, demonstration.response
    assert len({d.response for d in demonstrations}) >= 50


def test_vader_gold_scorer_orders_positive_above_negative():
    task = get_task("sentiment")
    positive = " a wonderful, joyful film and I loved every minute of it."
    negative = " a dreadful, boring mess and I hated every minute of it."
    neutral = " the film is ninety minutes long."
    scores = task.gold_scorer(["p", "p", "p"], [positive, neutral, negative])
    assert scores[0] > 0.5 and scores[2] < -0.5 and scores[1] == 0.0
    assert all(-1.0 <= score <= 1.0 for score in scores)
    with pytest.raises(ValueError, match="2 prompts but 1"):
        vader_gold_scores(["a", "b"], ["c"])


def test_imdb_source_gives_openings_without_br_tags(tmp_path):
    # Words w8..w30 follow "One two ... seven"; only w24 ends a sentence. Whatever the opening length k in 8..12,
    # the continuation runs from word k+1 to word 24: 24 - k words, between 12 and 16.
    numbered = " ".join(f"w{i}." if i == 24 else f"w{i}" for i in range(8, 31))
    rows = [
        {
            "id": "test_pos_1",
            "text": f"One two three four five six seven<br /><br />{numbered}",
            "label": 1,
            "rating": 9,
        },
        {"id": "test_neg_2", "text": "Bad " * 30, "label": 0, "rating": 2},
    ]
    path = write_jsonl(tmp_path / "imdb.jsonl.gz", rows)
    prompts = get_task("sentiment").load_prompts("test", source=str(path))
    by_id = {p.id: p for p in prompts}
    opening = by_id["imdb-test_pos_1"].text
    assert "<br" not in opening and opening.startswith("One two three four five six seven w8")
    assert len(opening.split()) == opening_word_count("test_pos_1")
    assert 8 <= opening_word_count("test_pos_1") <= 12
    assert by_id["imdb-test_neg_2"].meta == {"label": 0, "rating": 2, "source": str(path)}
    assert clean_review_text("a<br />b <BR/>c") == "a b c"
    demonstrations = get_task("sentiment").load_demonstrations("test", source=str(path))
    assert [d.id for d in demonstrations] == ["imdb-test_pos_1"]  # only positive reviews with a sentence end
    k = opening_word_count("test_pos_1")
    assert demonstrations[0].response == " " + " ".join(f"w{i}" for i in range(k + 1, 24)) + " w24."


# ---------------------------------------------------------------- tldr


def test_format_tldr_query_exact_string():
    expected = "SUBREDDIT: r/cats\nTITLE: My cat sleeps all day\nPOST: Is this normal?\nIt is 3 years old.\nTL;DR:"
    assert format_tldr_query("cats", "My cat sleeps all day", "Is this normal?\nIt is 3 years old.") == expected
    parsed = parse_tldr_query(expected, "here")
    assert parsed == ("cats", "My cat sleeps all day", "Is this normal?\nIt is 3 years old.")
    with pytest.raises(ValueError, match="here: field 'prompt'"):
        parse_tldr_query("no header", "here")


def test_tldr_post_of_a_query():
    query = format_tldr_query("cats", "POST: in the title", "Is this normal?\nPOST: a later line\nIt is 3 years old.")
    assert tldr_post(query) == "Is this normal?\nPOST: a later line\nIt is 3 years old."
    assert tldr_post("POST: the cat sat TL;DR:") == "the cat sat"  # the TL;DR marker need not be on its own line
    assert tldr_post("TITLE: t\nPOST: no marker at the end") == "no marker at the end"
    assert tldr_post(format_tldr_query("cats", "t", "")) == ""
    with pytest.raises(ValueError, match="expected a line starting with 'POST:'"):
        tldr_post("SUBREDDIT: r/cats\nTITLE: a POST: inside the title\nTL;DR:")


def word_counter(text: str) -> int:
    return len(text.split())


def test_truncate_post_cuts_at_last_fitting_newline():
    # The query without a post has 7 words: "SUBREDDIT:", "r/test", "TITLE:", "A", "title", "POST:", "TL;DR:".
    post = "one two three\nfour five\nsix seven eight"
    # Whole query: 7 + 8 = 15 words. Budget 12 leaves 5 post words: the cut after "four five" (5 words) fits.
    assert truncate_post_to_fit("test", "A title", post, word_counter, 12) == "one two three\nfour five"
    # Budget 11 leaves 4 words: a space cut could keep 4, but the last fitting newline keeps 3.
    assert truncate_post_to_fit("test", "A title", post, word_counter, 11) == "one two three"
    assert truncate_post_to_fit("test", "A title", post, word_counter, 15) == post


def test_truncate_post_falls_back_to_spaces_then_characters():
    # No newline fits: budget 9 leaves 2 of the 4 post words.
    assert truncate_post_to_fit("test", "A title", "alpha beta gamma delta", word_counter, 9) == "alpha beta"
    # Character counter: "SUBREDDIT: r/s" (14) + "\n" + "TITLE: t" (8) + "\n" + "POST: " (6) + "\nTL;DR:" (7) = 37,
    # so a budget of 40 leaves 3 characters of a post with no space or newline.
    assert truncate_post_to_fit("s", "t", "abcdefghij", len, 40) == "abc"
    with pytest.raises(ValueError, match="without its post"):
        truncate_post_to_fit("s", "t", "abc", len, 36)


def test_approximate_token_count():
    assert approximate_token_count("a b c") == 4  # ceil(3 * 1.3) = ceil(3.9)
    assert approximate_token_count("") == 0


def test_tldr_prompts_and_demonstrations_from_a_file(tmp_path):
    rows = [
        {
            "id": "t3_a",
            "subreddit": "cats",
            "title": "Sleepy cat",
            "post": "Is this normal?\n",
            "summary": "cat naps a lot",
        },
        {"id": "t3_b", "subreddit": "dogs", "title": "Loud dog", "post": "word " * 600, "summary": "dog barks"},
    ]
    path = write_jsonl(tmp_path / "tldr.jsonl", rows)
    task = get_task("tldr")
    prompts = {p.id: p for p in task.load_prompts("test", source=str(path))}
    assert prompts["t3_a"].text == "SUBREDDIT: r/cats\nTITLE: Sleepy cat\nPOST: Is this normal?\nTL;DR:"
    assert prompts["t3_a"].meta["summary"] == "cat naps a lot" and not prompts["t3_a"].meta["truncated"]
    assert prompts["t3_b"].meta["truncated"] and approximate_token_count(prompts["t3_b"].text) <= 512
    demonstrations = {d.id: d for d in task.load_demonstrations("test", source=str(path))}
    assert demonstrations["t3_a"].response == " cat naps a lot"
    assert demonstrations["t3_a"].prompt == prompts["t3_a"].text
    small = get_task("tldr", count_tokens=word_counter, max_query_tokens=10)
    small_prompts = {p.id: p.text for p in small.load_prompts("test", source=str(path))}
    # The header of each query has 7 words, so a budget of 10 leaves 3 post words.
    assert small_prompts["t3_b"] == "SUBREDDIT: r/dogs\nTITLE: Loud dog\nPOST: word word word\nTL;DR:"
    assert small_prompts["t3_a"] == prompts["t3_a"].text  # 7 + 3 words already fit
    bad = write_jsonl(tmp_path / "bad.jsonl", [rows[0], {"id": "x", "subreddit": "s", "title": "t", "summary": "y"}])
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: missing field 'post'"):
        task.load_prompts("test", source=str(bad))


# ---------------------------------------------------------------- dialogue


def test_split_dialogue_keeps_everything_up_to_the_last_assistant_turn():
    chosen = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Any tea tips?\n\nAssistant: Use water just off the boil."
    prompt, response = split_dialogue(chosen)
    assert prompt == "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Any tea tips?\n\nAssistant:"
    assert response == " Use water just off the boil."
    with pytest.raises(ValueError, match="no '\\\\n\\\\nAssistant:' turn"):
        split_dialogue("\n\nHuman: only a question")


def test_dialogue_prompts_and_demonstrations_from_a_file(tmp_path):
    rows = [
        {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello there.", "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."},
        {"chosen": "\n\nHuman: Bye\n\nAssistant:", "rejected": "\n\nHuman: Bye\n\nAssistant: Later."},
    ]
    path = write_jsonl(tmp_path / "hh.jsonl.gz", rows)
    task = get_task("dialogue")
    prompts = task.load_prompts("test", source=str(path))
    assert sorted(p.text for p in prompts) == ["\n\nHuman: Bye\n\nAssistant:", "\n\nHuman: Hi\n\nAssistant:"]
    assert sorted(p.id for p in prompts) == ["hh-0", "hh-1"]
    demonstrations = task.load_demonstrations("test", source=str(path))
    assert [(d.prompt, d.response) for d in demonstrations] == [("\n\nHuman: Hi\n\nAssistant:", " Hello there.")]


# ---------------------------------------------------------------- the real shared files


def shared_file(relative: str) -> Path:
    path = SHARED_DATA / relative
    if not path.is_file():
        pytest.skip(f"shared data file {path} not present (only on development/CI machines)")
    return path


def test_real_tldr_file():
    path = shared_file("tldr/test-500.jsonl")
    prompts = get_task("tldr").load_prompts("test", source=str(path))
    assert len(prompts) == 500
    assert all(p.text.startswith("SUBREDDIT: r/") and p.text.endswith("\nTL;DR:") for p in prompts)
    assert all(approximate_token_count(p.text) <= 512 for p in prompts)
    assert len(get_task("tldr").load_demonstrations("test", n=10, source=str(path))) == 10
    untruncated = [p for p in prompts if not p.meta["truncated"]]
    posts = {row["id"]: row["post"].strip() for row in map(json.loads, path.read_text().splitlines())}
    assert untruncated and all(tldr_post(p.text) == posts[p.id] for p in untruncated)


def test_real_hh_rlhf_file():
    path = shared_file("hh-rlhf/harmless-base-test.jsonl.gz")
    prompts = get_task("dialogue").load_prompts("test", source=str(path))
    assert len(prompts) == 2312
    assert all(p.text.startswith("\n\nHuman:") and p.text.endswith("\n\nAssistant:") for p in prompts)


def test_real_imdb_file():
    path = shared_file("imdb/test.jsonl.gz")
    prompts = get_task("sentiment").load_prompts("test", n=200, source=str(path), seed=1)
    assert len(prompts) == 200
    assert all(8 <= len(p.text.split()) <= 12 and "<br" not in p.text for p in prompts)
