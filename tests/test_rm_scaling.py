"""Experiment 4 (reward-model scaling): its pure functions by hand, and an end-to-end run on the tiny model."""

from __future__ import annotations

import gzip
import json
import zlib

import numpy as np
import pytest

from rlhf.data.records import Comparison
from rlhf.experiments.rm_scaling import (
    Config,
    disjoint_pairs,
    keep_last_tokens,
    nested_subset,
    pairwise_correct,
    preferred_index,
    run,
)


def test_keep_last_tokens_keeps_the_end():
    assert keep_last_tokens([1, 2, 3, 4, 5], 3) == [3, 4, 5]
    assert keep_last_tokens([1, 2], 3) == [1, 2]


def test_pairwise_correct_counts_ties_half():
    # preferred 2 > 1 -> 1; 1 == 1 -> 0.5; 0 < 3 -> 0
    assert pairwise_correct(np.array([2.0, 1.0, 0.0]), np.array([1.0, 1.0, 3.0])).tolist() == [1.0, 0.5, 0.0]


def test_preferred_index_uses_gold_when_stored():
    human = Comparison(prompt="p", responses=["a", "b"], kind="pairwise", best=1)
    assert preferred_index(human) == 1
    # gold [0.2, -0.3]: response 0 is better, even though the (noisy) label chose 1
    noisy = Comparison(prompt="p", responses=["a", "b"], kind="pairwise", best=1, meta={"gold": [0.2, -0.3]})
    assert preferred_index(noisy) == 0
    tied = Comparison(prompt="p", responses=["a", "b"], kind="pairwise", best=0, meta={"gold": [0.5, 0.5]})
    assert preferred_index(tied) is None


def test_nested_subset_grows_within_a_seed():
    small, large = nested_subset(10, 3, seed=4), nested_subset(10, 6, seed=4)
    assert large[:3] == small and len(set(large)) == 6
    assert nested_subset(10, 6, seed=5) != large
    with pytest.raises(ValueError, match="pool holds only 10"):
        nested_subset(10, 11, seed=0)


def test_disjoint_pairs_of_four_responses():
    pairs = disjoint_pairs("p", ["a", "b", "c", "d", "e"], [1.0, 2.0, 3.0, 4.0, 5.0])
    assert pairs == [("p", ["a", "b"], [1.0, 2.0]), ("p", ["c", "d"], [3.0, 4.0])]


def write_hh_file(path, n):
    """n HH-RLHF rows: the chosen response is the longer one in every other row."""
    with gzip.open(path, "wt") as fh:
        for i in range(n):
            long, short = f" A long helpful answer number {i}, with detail.", f" No {i}."
            chosen, rejected = (long, short) if i % 2 == 0 else (short, long)
            prompt = f"\n\nHuman: question {i}?\n\nAssistant: earlier turn.\n\nHuman: and then?\n\nAssistant:"
            fh.write(json.dumps({"chosen": prompt + chosen, "rejected": prompt + rejected}) + "\n")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["probe", "lp_ft"])
def test_rm_scaling_end_to_end_on_tiny_model(tmp_path, tiny_model_dir, method, monkeypatch):
    # the tiny random model writes word salad, which VADER scores 0 (all pairs tied): a stand-in gold that never
    # ties on different texts, read when the task is built
    monkeypatch.setattr(
        "rlhf.tasks.sentiment.vader_gold_scores", lambda ps, rs: [zlib.crc32(r.encode()) / 2**32 for r in rs]
    )
    hh = tmp_path / "hh.jsonl.gz"
    write_hh_file(hh, 40)
    cfg = Config(
        sizes=[4, 8],
        seeds=2,
        method=method,
        max_tokens=24,
        human_path=str(hh),
        human_heldout=16,
        simulated_train_prompts=4,
        simulated_heldout_prompts=8,
        bootstrap_resamples=200,
    )
    cfg.run.model.name_or_path = str(tiny_model_dir)
    cfg.run.model.lora_r, cfg.run.model.lora_alpha, cfg.run.model.lora_top_layers = 4, 8, 1
    cfg.run.task.gold, cfg.run.task.response_length, cfg.run.task.stop_min_tokens = "vader", 6, 2
    cfg.run.collect.batch_size = 8
    out = tmp_path / "rm_scaling"
    summary = run(cfg, out)
    saved = json.loads((out / "summary.json").read_text())
    assert saved["points"] == summary["points"] and (out / "rm_scaling.png").stat().st_size > 0
    assert "rm_scaling.png" in (out / "summary.md").read_text()
    assert {(p["source"], p["n_train"]) for p in saved["points"]} == {
        (s, n) for s in ("human", "simulated") for n in (4, 8)
    }
    for p in saved["points"]:
        assert set(p) >= {"n_train", "accuracy", "ci95_low", "ci95_high", "source"}
        assert 0.0 <= p["ci95_low"] <= p["accuracy"] <= p["ci95_high"] <= 1.0
        assert len(p["seed_accuracies"]) == 2
    # the length baseline on the synthetic file: chosen is longer in exactly half of the rows
    human = saved["sources"]["human"]
    assert human["info"]["n_heldout"] == 16 and 0.0 <= human["baseline"]["longer_response"]["accuracy"] <= 1.0
    assert saved["wall_seconds"] > 0
    # a re-run resumes: every fit is read back, nothing is refitted
    fits_before = (out / "human" / "fits.jsonl").read_text()
    again = run(cfg, out)
    assert (out / "human" / "fits.jsonl").read_text() == fits_before
    assert again["points"] == saved["points"]


def test_missing_human_file_is_a_clear_error(tmp_path):
    cfg = Config(human_path=str(tmp_path / "absent.jsonl.gz"), simulated=False)
    with pytest.raises(FileNotFoundError, match="absent.jsonl.gz"):
        from rlhf.experiments.rm_scaling import human_comparisons

        human_comparisons(cfg)


def test_real_hh_rlhf_file_loads(shared_data):
    from rlhf.experiments.rm_scaling import human_comparisons

    cfg = Config(human_path=str(shared_data / "hh-rlhf" / "harmless-base-test.jsonl.gz"), human_heldout=512)
    pool, heldout = human_comparisons(cfg)
    assert len(heldout) == 512 and len(pool) + len(heldout) > 2000
    assert all(c.prompt.endswith("\n\nAssistant:") and c.best == 0 for c in heldout[:20])
