"""Simulated labelers answering Likert queries (so a rehearsal covers all four query types): the 1-7 rule by
hand, and a simulated app user answering a batch of each query type through the real server on 127.0.0.1."""

from __future__ import annotations

import json

import numpy as np
import pytest
from label_helpers import PASSWORD, running_server, write_samples

from rlhf.data.io import read_jsonl
from rlhf.data.records import Comparison
from rlhf.labelers.simulated import SimulatedLabeler, likert_cut_points, likert_from_score
from rlhf.labeling_app import exchange
from rlhf.labeling_app.app import create_app
from rlhf.labeling_app.auth import create_user
from rlhf.labeling_app.db import open_database
from rlhf.labeling_app.settings import LabelSettings
from rlhf.labeling_app.simulated_client import AppLabelerClient, label_through_app
from rlhf.labeling_app.tables import LIKERT_AXES


def last_digit_gold(prompts, responses):
    """Gold score k of "response p.k" (write_samples' texts): the later response of a prompt is better."""
    return [float(r.rsplit(".", 1)[1]) for r in responses]


def test_likert_cut_points_are_the_septiles_of_the_batch():
    # gold 0..6: the k/7 quantile sits at position 6k/7 of the sorted scores, so the cut points are 6k/7
    assert likert_cut_points([3, 0, 6, 1, 5, 2, 4]) == pytest.approx([6 / 7, 12 / 7, 18 / 7, 24 / 7, 30 / 7, 36 / 7])
    # gold [0, 1, 2, 3] x 3 sorted: positions 11k/7 = 1.57, 3.14, 4.71, 6.29, 7.86, 9.43 fall on 0, 1, 1, 2, 2, 3
    assert likert_cut_points([0, 1, 2, 3] * 3) == pytest.approx([0, 1, 1, 2, 2, 3])
    with pytest.raises(ValueError, match="no gold scores"):
        likert_cut_points([])


def test_likert_from_score_counts_the_cut_points_below():
    cuts = [1, 2, 3, 4, 5, 6]
    assert [likert_from_score(s, cuts) for s in (-10, 1, 1.5, 3.2, 6, 6.5)] == [1, 1, 2, 4, 6, 7]  # equal -> lower
    assert [likert_from_score(s, [0, 1, 1, 2, 2, 3]) for s in (0, 1, 2, 3)] == [1, 2, 4, 6]


def test_simulated_labeler_rates_by_gold_at_t0_and_with_noise_around_it():
    exact = SimulatedLabeler(last_digit_gold, temperature=0.0)
    with pytest.raises(ValueError, match="no Likert calibration"):
        exact.rate("p", "response 0.1", LIKERT_AXES)
    exact.calibrate_likert([0, 1, 2, 3, 4, 5, 6])
    assert exact.rate("p", "response 0.4", LIKERT_AXES) == {axis: 5 for axis in LIKERT_AXES}  # 4 > 24/7, < 30/7
    noisy = SimulatedLabeler(last_digit_gold, temperature=1.0, seed=3)
    noisy.calibrate_likert([0, 1, 2, 3, 4, 5, 6])
    low = [r for _ in range(300) for r in noisy.rate("p", "response 0.2", LIKERT_AXES).values()]
    high = [r for _ in range(300) for r in noisy.rate("p", "response 0.5", LIKERT_AXES).values()]
    assert len(set(low)) >= 3 and min(low) >= 1 and max(high) <= 7  # noise spreads ratings over the scale
    # noise T (Gumbel - gamma) has mean 0: the mean rating stays near the noise-free one (3 for gold 2, 6 for gold 5)
    assert abs(np.mean(low) - 3) < 0.5 and abs(np.mean(high) - 6) < 0.6 and np.mean(high) - np.mean(low) > 2


def test_a_simulated_labeler_answers_all_four_query_types_through_the_app(tmp_path):
    sessions = open_database(f"sqlite:///{tmp_path / 'label.db'}")
    pairs, fours = write_samples(tmp_path / "pairs", 3, 2), write_samples(tmp_path / "fours", 3, 4)
    with sessions() as db:
        exchange.push_samples(db, pairs, "pairwise", overlap_share=0.0)
        for kind in ("best_of_k", "ranking", "likert"):
            exchange.push_samples(db, fours, kind, overlap_share=0.0)
        create_user(db, "sim", PASSWORD, "labeler", simulated="last digit T=0")
    labeler = SimulatedLabeler(last_digit_gold, temperature=0.0, name="sim")
    labeler.calibrate_likert(
        last_digit_gold([], [f"response {p}.{k}" for p in range(3) for k in range(4)])
    )  # the batch: cuts 0,1,1,2,2,3
    with running_server(create_app(LabelSettings(secret_key="k", gold_rate=0.0), sessions)) as url:
        assert len(label_through_app(AppLabelerClient(url, "sim", PASSWORD), labeler)) == 3 + 3 + 3 + 12
    with sessions() as db:
        counts = exchange.pull_answers(db, tmp_path / "pulled")
    assert counts == {"comparisons": 9, "likert": 12, "summarize_from_feedback": 3}
    comparisons = read_jsonl(tmp_path / "pulled" / "comparisons.jsonl", Comparison)
    assert {(c.kind, c.best if c.kind != "ranking" else tuple(c.ranks)) for c in comparisons} == {
        ("pairwise", 1),
        ("best_of_k", 3),
        ("ranking", (3, 2, 1, 0)),
    }
    ratings = [json.loads(line) for line in (tmp_path / "pulled" / "likert.jsonl").read_text().splitlines()]
    expected = {0: 1, 1: 2, 2: 4, 3: 6}  # likert_from_score(k, [0, 1, 1, 2, 2, 3]), worked out above
    for row in ratings:
        k = int(row["response"].rsplit(".", 1)[1])
        assert all(row[axis] == expected[k] for axis in LIKERT_AXES) and row["flags"] == []
