"""Tests for the text figures the evaluation stage adds per policy (rlhf.eval.evaluate.text_figures)."""

from __future__ import annotations

import pytest

from rlhf.eval.evaluate import text_figures
from rlhf.tasks.tldr import format_tldr_query


def test_text_figures_by_hand() -> None:
    prompts = ["POST: the cat sat on the mat TL;DR:", "POST: a dog ran home TL;DR:"]
    texts = ["the cat sat", "a dog slept"]
    figures = text_figures(prompts, texts, with_copying=True)
    # unigrams the cat sat a dog slept: 6 distinct of 6; bigrams: 4 distinct of 4
    assert figures["distinct_1"] == 1.0 and figures["distinct_2"] == 1.0
    # copying: the-cat, cat-sat both in order in the post -> 1; a-dog in order, dog-slept not -> 1/2; mean 3/4
    assert figures["copying"] == pytest.approx(0.75)
    # novel bigrams: 0 of 2, 1 of 2 -> mean 1/4
    assert figures["novel_2gram"] == pytest.approx(0.25)
    # first three words: "the cat sat" starts with the post's "the cat sat"; "a dog slept" does not start with
    # "a dog ran": 1 of 2; neither post opens with a preamble
    assert (figures["first_three_copied"], figures["first_three_n"]) == (0.5, 2)
    assert (figures["first_three_copied_with_preamble"], figures["first_three_n_with_preamble"]) == (None, 0)
    assert set(text_figures(prompts, texts, with_copying=False)) == {"distinct_1", "distinct_2"}


def test_text_figures_first_three_words_on_posts_with_a_preamble() -> None:
    prompts = [
        format_tldr_query("relationships", "Help", "Long time lurker, first time poster. My wife left."),
        format_tldr_query("pets", "Dog", "Throwaway for obvious reasons. The dog bit me."),
        format_tldr_query("cars", "Noise", "My car makes a noise when I brake."),
    ]
    # the subreddit and title must not count as the post's first words: "r relationships help" is not copied
    texts = ["Long time lurker wants advice", "my dog bit me", "My car makes noise"]
    figures = text_figures(prompts, texts, with_copying=True)
    # copied: response 1 (long time lurker) and 3 (my car makes) -> 2 of 3; with a preamble: posts 1 and 2 -> 1 of 2
    assert figures["first_three_copied"] == pytest.approx(2 / 3) and figures["first_three_n"] == 3
    assert figures["first_three_copied_with_preamble"] == 0.5 and figures["first_three_n_with_preamble"] == 2
    with pytest.raises(ValueError, match="POST:"):
        text_figures(["no post here"], ["a b c"], with_copying=True)


def test_text_figures_without_words_are_none() -> None:
    figures = text_figures(["POST: p", "POST: q"], ["!", "?"], with_copying=True)
    assert figures == {
        "distinct_1": None,
        "distinct_2": None,
        "copying": None,
        "novel_2gram": None,
        "first_three_copied": None,
        "first_three_n": 0,
        "first_three_copied_with_preamble": None,
        "first_three_n_with_preamble": 0,
    }


def test_copying_is_measured_against_the_post_not_the_title() -> None:
    prompts = [format_tldr_query("pets", "the cat sat", "a dog ran home")]
    # both bigrams of "the cat sat" are in the title only: nothing is copied from the post, both bigrams are novel
    figures = text_figures(prompts, ["the cat sat"], with_copying=True)
    assert figures["copying"] == 0.0 and figures["novel_2gram"] == 1.0
