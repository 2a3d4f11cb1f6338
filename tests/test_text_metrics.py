"""Tests for rlhf.eval.text_metrics: every metric against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest

from rlhf.eval.text_metrics import (
    copies_first_three_words,
    copying_fraction,
    copying_report,
    first_three_words_copying,
    has_preamble,
    length_statistics,
    longest_common_subsequence_length,
    ngrams,
    novel_ngram_fraction,
    novel_sentence_fraction,
    preamble_rule,
    repeated_ngram_fraction,
    rouge_f1,
    sentences,
    words,
)

SUMMARY = "The cat sat on the mat."
SOURCE = "Yesterday the cat sat quietly on the mat"


def test_words_and_ngrams() -> None:
    assert words("Don't STOP, now!") == ["don't", "stop", "now"]
    assert ngrams(["a", "b", "c"], 2) == [("a", "b"), ("b", "c")]
    assert ngrams(["a"], 2) == []
    with pytest.raises(ValueError, match="n-gram order"):
        ngrams(["a"], 0)


def test_sentences_split_at_end_marks_and_line_breaks() -> None:
    assert sentences("One. Two!  Three?\nFour") == ["One.", "Two!", "Three?", "Four"]
    assert sentences("...") == []


def test_longest_common_subsequence_by_hand() -> None:
    # "ABCBDAB" vs "BDCABA": a classic LCS of length 4 (e.g. BCBA)
    assert longest_common_subsequence_length("ABCBDAB", "BDCABA") == 4
    assert longest_common_subsequence_length("", "abc") == 0
    assert longest_common_subsequence_length("abc", "abc") == 3


def test_copying_fraction_by_hand() -> None:
    # summary bigrams: the-cat, cat-sat, sat-on, on-the, the-mat (5); the source has all but sat-on, in order:
    # LCS = 4 -> 4/5
    assert copying_fraction(SUMMARY, SOURCE) == pytest.approx(0.8)
    # the-mat, mat-the, the-cat: the source has the-cat before the-mat, so only one of them is in order: 1/3
    assert copying_fraction("the mat the cat", SOURCE) == pytest.approx(1 / 3)
    assert copying_fraction("cat", SOURCE) is None  # no bigram


def test_novel_ngram_fraction_by_hand() -> None:
    # every summary word occurs in the source
    assert novel_ngram_fraction(SUMMARY, SOURCE, 1) == 0.0
    # bigrams: only sat-on is missing from the source -> 1/5
    assert novel_ngram_fraction(SUMMARY, SOURCE, 2) == pytest.approx(0.2)
    # trigrams the-cat-sat, cat-sat-on, sat-on-the, on-the-mat: the middle two are novel -> 2/4
    assert novel_ngram_fraction(SUMMARY, SOURCE, 3) == pytest.approx(0.5)
    # 4-grams the-cat-sat-on, cat-sat-on-the, sat-on-the-mat: all novel
    assert novel_ngram_fraction(SUMMARY, SOURCE, 4) == 1.0
    assert novel_ngram_fraction("a b", SOURCE, 3) is None


def test_novel_sentence_fraction_by_hand() -> None:
    # "The cat sat." is a run of the source's words; "It was happy!" is not -> 1/2
    assert novel_sentence_fraction("The cat sat. It was happy!", SOURCE) == pytest.approx(0.5)
    assert novel_sentence_fraction("On the mat.", SOURCE) == 0.0
    assert novel_sentence_fraction("!!", SOURCE) is None


def test_repeated_ngram_fraction_by_hand() -> None:
    # bigrams a-b, b-a, a-b, b-a: 2 distinct of 4 -> 1 - 2/4
    assert repeated_ngram_fraction("a b a b a", 2) == pytest.approx(0.5)
    assert repeated_ngram_fraction("one two three", 1) == 0.0
    assert repeated_ngram_fraction("one", 2) is None


def test_first_three_words_copying_overall_and_with_preamble() -> None:
    summaries = ["I am a student who", "My friend is here", "hi"]
    sources = ["I am a student here", "I have a friend", "hello world there"]
    assert copies_first_three_words(summaries[0], sources[0]) is True
    assert copies_first_three_words(summaries[1], sources[1]) is False
    assert copies_first_three_words(summaries[2], sources[2]) is None
    result = first_three_words_copying(summaries, sources, has_preamble=[True, False, True])
    # defined pairs: 1 (copied, preamble) and 2 (not copied) -> 1/2; with preamble: pair 1 only -> 1/1
    assert result == {"first_three_copied": 0.5, "n": 2, "first_three_copied_with_preamble": 1.0, "n_with_preamble": 1}
    no_flags = first_three_words_copying(summaries, sources)
    assert no_flags["n_with_preamble"] == 0 and math.isnan(no_flags["first_three_copied_with_preamble"])
    with pytest.raises(ValueError, match="has_preamble"):
        first_three_words_copying(summaries, sources, has_preamble=[True])


PREAMBLE_POSTS = [  # (post, the rule expected to flag it)
    ("Long time lurker, first time poster. My boyfriend and I have been dating for a year.", "lurker"),
    ("Throwaway for obvious reasons.\n\nMy sister stole my car.", "throwaway"),
    ("Sorry for formatting, I'm on mobile. So yesterday my landlord called.", "apology for the writing"),
    ("Obligatory English is not my first language. I (22F) met a guy at work.", "not a native speaker"),
    ("Edit: solved, thanks everyone!\nMy laptop would not boot.", "edit or update"),
    ("UPDATE 2 - he called back. Original post below.", "edit or update"),
    ("This is going to be long, so bear with me. It started in high school.", "long post warning"),
    ("First post here, be gentle. My dog keeps barking at night.", "first post"),
    ("Hello reddit!\nMy roommate never cleans.", "greeting"),
    ("Dear fellow redditors,\nI need advice about my lease.", "greeting"),
    ("I'm typing this on my phone. Anyway, here goes.", "on mobile"),
    ("Not sure if this is the right sub for this. My car makes a noise.", "right place"),
    ("Repost from r/relationships. We have been together 3 years.", "repost"),
]
NO_PREAMBLE_POSTS = [
    "My first car broke down yesterday. Long time lurker, first time poster, by the way.",  # preamble not first
    "I lost my phone on the bus. Sorry for the formatting, I'm on mobile.",
    "We first met at a party five years ago and it was my first time posting a photo online.",
    "My mobile phone bill doubled last month and the company will not explain why.",
    "Hey guys, so I just messed up at work and my boss is furious with me.",  # a greeting with content
    "Dear landlord, I am writing to complain about the heating in my flat.",
    "My girlfriend and I have been in a long distance relationship for two years.",
    "The throw was away from the catcher, and the game ended.",
    "",
]


def test_preamble_rules_on_hand_written_posts() -> None:
    for post, rule in PREAMBLE_POSTS:
        assert has_preamble(post) and has_preamble(post.upper()), post  # case-insensitive
    assert [preamble_rule(post) for post, _ in PREAMBLE_POSTS] == [rule for _, rule in PREAMBLE_POSTS]
    for post in NO_PREAMBLE_POSTS:
        assert not has_preamble(post), post


def test_copying_report_averages_over_pairs() -> None:
    report = copying_report([SUMMARY, "the mat the cat"], [SOURCE, SOURCE], max_n=2)
    assert report["copying"] == pytest.approx((0.8 + 1 / 3) / 2)
    assert report["novel_1gram"] == 0.0
    # second summary bigrams the-mat, mat-the, the-cat: mat-the is novel -> 1/3; mean with 1/5
    assert report["novel_2gram"] == pytest.approx((0.2 + 1 / 3) / 2)
    assert set(report) == {"copying", "novel_1gram", "novel_2gram", "novel_sentence", "repeated_3gram"}
    with pytest.raises(ValueError, match="equal lengths"):
        copying_report([SUMMARY], [SOURCE, SOURCE])


def test_rouge_by_hand() -> None:
    # "the cat sat" vs "the cat ran": unigram overlap 2 of 3 each way -> F1 2/3; bigrams the-cat of 2 -> 1/2;
    # LCS "the cat" = 2 of 3 -> 2/3
    scores = rouge_f1(["the cat sat"], ["the cat ran"])
    assert scores["rouge1"] == pytest.approx(2 / 3)
    assert scores["rouge2"] == pytest.approx(0.5)
    assert scores["rougeL"] == pytest.approx(2 / 3)
    # a perfect match and a disjoint pair average to 1/2
    assert rouge_f1(["a b c", "x y"], ["a b c", "p q"])["rouge1"] == pytest.approx(0.5)


def test_length_statistics_by_hand() -> None:
    # lengths 10, 24, 24, 5 -> mean 63/4; two of four at the 24-token limit; one of four without a stop
    result = length_statistics([10, 24, 24, 5], [True, False, True, True], length_limit=24)
    assert result == {"length_mean": 15.75, "at_length_limit": 0.5, "without_stop": 0.25, "n": 4}
    with pytest.raises(ValueError, match=r"token_counts\[1\]: expected 0..24"):
        length_statistics([3, 25], [True, True], length_limit=24)
    with pytest.raises(ValueError, match="equal lengths"):
        length_statistics([3], [True, False], length_limit=24)
