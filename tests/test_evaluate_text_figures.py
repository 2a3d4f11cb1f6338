"""Tests for the text figures the evaluation stage adds per policy (rlhf.eval.evaluate.text_figures)."""

from __future__ import annotations

import pytest

from rlhf.eval.evaluate import text_figures


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
    assert set(text_figures(prompts, texts, with_copying=False)) == {"distinct_1", "distinct_2"}


def test_text_figures_without_words_are_none() -> None:
    figures = text_figures(["p", "q"], ["!", "?"], with_copying=True)
    assert figures == {"distinct_1": None, "distinct_2": None, "copying": None, "novel_2gram": None}
