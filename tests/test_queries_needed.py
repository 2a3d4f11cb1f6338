"""Experiment 2 (queries needed): its helpers by hand, and an end-to-end run on the tiny model."""

from __future__ import annotations

import json

import pytest

from rlhf.config_loading import load_config
from rlhf.data.records import Comparison
from rlhf.experiments.queries_needed import Config, episodes_axis, nested_first, run


def test_episodes_axis_is_iterations_times_batch():
    # iterations 1, 2, 3 of 32 episodes each: 32, 64, 96 episodes seen
    assert episodes_axis([1, 2, 3], 32) == [32, 64, 96]


def test_nested_first_sets_grow_and_refuse_too_many():
    comparisons = [Comparison(prompt=f"p{i}", responses=["a", "b"], kind="pairwise", best=0) for i in range(10)]
    small, large = nested_first(comparisons, 3, seed=1), nested_first(comparisons, 7, seed=1)
    assert large[:3] == small and len({c.prompt for c in large}) == 7
    with pytest.raises(ValueError, match="holds only 10"):
        nested_first(comparisons, 11, seed=1)


def test_default_config_loads():
    cfg = load_config("configs/experiments/queries_needed.yaml", ["n_queries=[8, 32]"], cls=Config)
    assert cfg.n_queries == [8, 32] and cfg.run.task.gold == "lm" and cfg.run.collect.kind == "best_of_k"


@pytest.mark.slow
def test_queries_needed_end_to_end_on_tiny_model(tmp_path, tiny_model_dir):
    cfg = Config(run=load_config("configs/smoke.yaml"))
    cfg.n_queries, cfg.eval_prompts = [2, 4], 4
    cfg.run.model.name_or_path = str(tiny_model_dir)
    cfg.run.task.gold = "vader"
    cfg.run.ppo.iterations, cfg.run.ppo.batch_size, cfg.run.ppo.ppo_epochs = 2, 4, 1
    out = tmp_path / "queries_needed"
    summary = run(cfg, out)
    saved = json.loads((out / "summary.json").read_text())
    assert (out / "queries_needed.png").stat().st_size > 0 and "queries_needed.png" in (out / "summary.md").read_text()
    assert [(r["reward"], r["n_queries"]) for r in saved["runs"]] == [("rm", 2), ("rm", 4), ("gold", None)]
    for r in saved["runs"]:
        assert r["curve"]["episodes"] == [4, 8] and len(r["curve"]["gold_reward"]) == 2
        assert all(-1.0 <= g <= 1.0 for g in r["curve"]["gold_reward"])  # VADER compound (or the -1 no-stop score)
        assert -1.0 <= r["final"]["gold_reward"] <= 1.0 and r["final"]["n"] == 4
    assert [len((out / f"rm_{n}" / "collect" / "comparisons.jsonl").read_text().splitlines()) for n in (2, 4)] == [2, 4]
    assert saved["wall_seconds"] > 0 and summary["runs"] == saved["runs"]
    # the gold run's PPO was fed the gold scorer itself: its logged "rm_score" is the gold reward of the batch
    gold_curve = saved["runs"][-1]["curve"]
    assert gold_curve["rm_score"] == pytest.approx(gold_curve["gold_reward"], abs=1e-5)
    # a re-run skips every finished sub-run and gives the same curves
    again = run(cfg, out)
    assert [r["curve"] for r in again["runs"]] == [r["curve"] for r in saved["runs"]]
