"""Tests for rlhf.eval.diversity: distinct-n, EAD and embedding diversity against hand-worked numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rlhf.eval.diversity import (
    distinct_n,
    diversity_report,
    embedding_diversity,
    expectation_adjusted_distinct,
    expected_distinct_count,
    per_input_mean,
)


def test_distinct_n_by_hand() -> None:
    # unigrams a b a | b c: 3 distinct of 5; bigrams a-b, b-a | b-c: 3 distinct of 3 (no bigram spans texts)
    assert distinct_n(["a b a", "b c"], 1) == pytest.approx(0.6)
    assert distinct_n(["a b a", "b c"], 2) == 1.0
    assert math.isnan(distinct_n(["a"], 2))


def test_expected_distinct_count_by_hand() -> None:
    # V = 2, C = 2: 2 * (1 - (1/2)^2) = 1.5;  V = 4, C = 3: 4 * (1 - (3/4)^3) = 4 * 37/64 = 2.3125
    assert expected_distinct_count(2, 2) == pytest.approx(1.5)
    assert expected_distinct_count(3, 4) == pytest.approx(2.3125)
    assert expected_distinct_count(0, 4) == 0.0
    # a huge vocabulary: almost every draw is new, so the expectation is about C
    assert expected_distinct_count(5, 10**9) == pytest.approx(5.0, rel=1e-6)
    with pytest.raises(ValueError, match="vocabulary_size"):
        expected_distinct_count(3, 0)


def test_expectation_adjusted_distinct_by_hand() -> None:
    # 3 distinct unigrams of C = 5, V = 4: 3 / (4 * (1 - (3/4)^5)) = 3 / (4 * 781/1024) = 768/781
    assert expectation_adjusted_distinct(["a b a", "b c"], 1, vocabulary_size=4) == pytest.approx(768 / 781)
    # with a huge vocabulary EAD tends to distinct-n
    assert expectation_adjusted_distinct(["a b a", "b c"], 1, vocabulary_size=10**9) == pytest.approx(0.6, rel=1e-6)


def test_ead_is_less_length_sensitive_than_distinct_n() -> None:
    # 40 draws from 20 types, every type twice: distinct-1 = 0.5, but 40 uniform draws from V = 20 are expected to
    # show 20 * (1 - 0.95^40) = 17.43 types, so EAD = 20 / 17.43 > 1 (as diverse as uniform sampling can be)
    text = " ".join(f"w{i}" for i in range(20)) + " " + " ".join(f"w{i}" for i in range(20))
    assert distinct_n([text], 1) == 0.5
    assert expectation_adjusted_distinct([text], 1, vocabulary_size=20) == pytest.approx(20 / (20 * (1 - 0.95**40)))


def test_embedding_diversity_by_hand() -> None:
    # pairs (0,1) cos 1, (0,2) cos 0, (1,2) cos 0 -> mean 1/3 -> diversity 2/3
    assert embedding_diversity(np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])) == pytest.approx(2 / 3)
    assert embedding_diversity(np.array([[1.0, 0.0], [0.0, 2.0]])) == pytest.approx(1.0)
    assert embedding_diversity(np.array([[3.0, 4.0], [6.0, 8.0]])) == pytest.approx(0.0)
    # opposite directions: cosine -1, diversity 2
    assert embedding_diversity(np.array([[1.0, 1.0], [-1.0, -1.0]])) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="at least 2 rows"):
        embedding_diversity(np.array([[1.0, 0.0]]))
    with pytest.raises(ValueError, match=r"embeddings\[1\]"):
        embedding_diversity(np.array([[1.0, 0.0], [0.0, 0.0]]))


def test_per_input_and_across_input() -> None:
    groups = [["a a", "a a"], ["a b", "c d"]]
    # per input: distinct-1 of {a a a a} = 1/4, of {a b c d} = 1 -> mean 0.625
    assert per_input_mean(lambda texts: distinct_n(texts, 1), groups) == pytest.approx(0.625)

    def embed(texts: list[str]) -> np.ndarray:  # a toy encoder: count of "a" and of other words
        return np.array([[t.split().count("a"), len(t.split()) - t.split().count("a")] for t in texts], dtype=float)

    report = diversity_report(groups, vocabulary_size=10**9, embed=embed, max_n=1)
    assert report["distinct_1_per_input"] == pytest.approx(0.625)
    # across input: first samples "a a" and "a b": a a a b -> 2 distinct of 4
    assert report["distinct_1_across_input"] == pytest.approx(0.5)
    # per input embeddings: group 1 [2,0],[2,0] -> 0; group 2 [1,1],[0,2] -> 1 - 1/sqrt(2); mean of the two
    assert report["embedding_per_input"] == pytest.approx((1 - 1 / math.sqrt(2)) / 2)
    # across input: [2,0] and [1,1] -> 1 - 1/sqrt(2)
    assert report["embedding_across_input"] == pytest.approx(1 - 1 / math.sqrt(2))


@pytest.mark.slow
def test_sentence_encoder_loads_offline_and_separates_paraphrases_from_unrelated_text() -> None:
    from rlhf.eval.diversity import sentence_encoder

    embed = sentence_encoder()
    vectors = embed(["The movie was great.", "The film was wonderful.", "I need to fix the brakes on my car."])
    assert vectors.shape == (3, 384)
    paraphrases = embedding_diversity(vectors[[0, 1]])
    unrelated = embedding_diversity(vectors[[0, 2]])
    assert 0.0 < paraphrases < unrelated <= 2.0
