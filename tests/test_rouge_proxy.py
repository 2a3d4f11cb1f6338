"""Experiment 3b (ROUGE as the proxy on TL;DR): the rank correlation against hand-worked numbers and (slow) the
experiment end to end on a tiny random model with TL;DR rows written by the RLHF-vs-SFT tests' helper."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_experiments_e2e import rlhf
from test_rlhf_vs_sft import write_tldr_rows

from rlhf.eval.text_metrics import rouge_f1, rouge_per_pair
from rlhf.experiments.rouge_proxy import spearman

ROOT = Path(__file__).resolve().parents[1]


def test_spearman_hand_worked_and_nan_pairs_left_out():
    # ranks (1,2,3,4) and (1,3,2,4): sum of squared rank differences 2; 1 - 6*2 / (4*15) = 0.8
    assert spearman(np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.0, 1.0, 0.5, 1.0 + 1e-9])) == pytest.approx(0.8)
    assert spearman(np.array([1.0, 2.0, 3.0, 4.0, 5.0]), np.array([0.0, 1.0, 0.5, 2.0, np.nan])) == pytest.approx(0.8)
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([0.5, 0.5, 0.5])) is None  # a constant has no ranks


def test_rouge_per_pair_averages_to_rouge_f1():
    preds, refs = ["the cat sat on the mat", "a dog barked"], ["the cat sat", "the dog barked loudly"]
    per_pair = rouge_per_pair(preds, refs)
    # ROUGE-1 of the first: 3 of 6 predicted words match, all 3 reference words: P 0.5, R 1, F1 2/3
    assert per_pair[0]["rouge1"] == pytest.approx(2 / 3)
    assert rouge_f1(preds, refs)["rougeL"] == pytest.approx((per_pair[0]["rougeL"] + per_pair[1]["rougeL"]) / 2)


@pytest.mark.slow
def test_rouge_proxy_experiment_end_to_end(tiny_model_dir, tmp_path):
    source = write_tldr_rows(tmp_path / "tldr.jsonl", 24)
    run = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    run["model"]["name_or_path"] = str(tiny_model_dir)
    run["task"] = {
        "name": "tldr",
        "source": str(source),
        "test_fraction": 0.4,
        "max_query_tokens": 96,
        "response_length": 8,
    }
    run["sft"].update(n_demonstrations=8)
    run["judge"] = {"kind": "lm", "lm_model": str(tiny_model_dir), "lm_batch_size": 8}
    config = tmp_path / "experiment.yaml"
    config.write_text(yaml.safe_dump({"run": run, "pool_posts": 3, "pool_samples_per_post": 4, "bon_n": [1, 2, 4]}))
    out = tmp_path / "exp"
    command = ("experiment", "rouge_proxy", "--config", str(config), "--out", str(out))
    rlhf(*command)
    s = json.loads((out / "summary.json").read_text())
    pool = json.loads((out / "pool.json").read_text())
    assert len(pool["texts"]) == 12 and len(pool["outcomes"]) == 12 and s["judged"]["n"] == 12
    assert [p["n"] for p in s["bon_sweep"]] == [1, 2, 4] and s["bon_sweep"][0]["kl"] == 0.0
    for p in s["bon_sweep"]:
        assert 0.0 <= p["gold_reward"] <= 1.0 and 0.0 <= p["proxy_reward"] <= 1.0
    rouge = np.array([r["rougeL"] for r in pool["rouge"]]).reshape(3, 4)
    assert s["bon_sweep"][0]["proxy_reward"] == pytest.approx(rouge.mean())  # best-of-1 is rho's mean
    assert s["bon_sweep"][-1]["proxy_reward"] == pytest.approx(rouge.max(1).mean())  # best-of-4 is each post's highest
    per_post = [[o for o in pool["outcomes"][i * 4 : (i + 1) * 4] if o is not None] for i in range(3)]
    assert s["bon_sweep"][0]["gold_reward"] == pytest.approx(
        np.mean([np.mean(o) for o in per_post if o])
    )  # rho's win rate
    assert (out / "rouge_proxy.png").stat().st_size > 1000 and "rouge_proxy.png" in (out / "summary.md").read_text()
    again = rlhf(*command)  # a re-run reuses SFT and the pool
    assert "already done" in again.stderr
    assert json.loads((out / "summary.json").read_text())["bon_sweep"] == s["bon_sweep"]


def test_rouge_proxy_rejects_a_task_without_references(tmp_path):
    from rlhf.experiments.rouge_proxy import Config, check_config

    cfg = Config()
    cfg.run.task.name = "sentiment"
    with pytest.raises(ValueError, match="run.task.name must be tldr"):
        check_config(cfg)
    cfg.run.task.name, cfg.run.task.source = "tldr", str(tmp_path / "missing.jsonl")
    with pytest.raises(FileNotFoundError, match="is not a file"):
        check_config(cfg)
