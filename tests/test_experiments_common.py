"""The experiments' pure pieces, against numbers worked out by hand."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from rlhf.config import RunConfig
from rlhf.eval.frontier import frontier_over_prompts
from rlhf.experiments import common
from rlhf.experiments.common import best_of_n_from_pool, best_of_n_sweep, link_stages, run_stages
from rlhf.experiments.frontier import point_against_frontier
from rlhf.experiments.overoptimization import batches_by_kl, peak, trajectory
from rlhf.run import RunDir


def test_best_of_n_uses_disjoint_groups_and_the_selector():
    selector = np.array([[1.0, 3.0, 2.0, 0.0], [0.0, 0.0, 5.0, 1.0]])
    values = np.array([[10.0, 20.0, 30.0, 40.0], [1.0, 2.0, 3.0, 4.0]])
    # n=1: every sample; prompt means 25 and 2.5 -> 13.75
    assert best_of_n_from_pool(selector, values, 1)["mean"] == pytest.approx(13.75)
    # n=2: prompt 0 groups (1,3)->20, (2,0)->30: 25; prompt 1 groups (0,0)->first=1, (5,1)->3: 2; mean 13.5
    two = best_of_n_from_pool(selector, values, 2)
    assert two["mean"] == pytest.approx(13.5)
    assert two["sem"] == pytest.approx(np.std([25.0, 2.0], ddof=1) / math.sqrt(2))  # 11.5
    # n=4: prompt 0 -> index 1 (20), prompt 1 -> index 2 (3): 11.5
    assert best_of_n_from_pool(selector, values, 4)["mean"] == pytest.approx(11.5)
    # n=3: one group of the first 3 per prompt, the 4th unused: 20 and 3
    assert best_of_n_from_pool(selector, values, 3)["mean"] == pytest.approx(11.5)
    # selecting by the values themselves: best-of-4 = each row's max = (40 + 4) / 2
    assert best_of_n_from_pool(values, values, 4)["mean"] == pytest.approx(22.0)
    with pytest.raises(ValueError, match="n must be in"):
        best_of_n_from_pool(selector, values, 5)


def test_best_of_n_leaves_out_unparseable_values():
    selector = np.array([[1.0, 3.0, 2.0, 0.0], [0.0, 0.0, 5.0, 1.0]])
    values = np.array([[1.0, np.nan, 0.5, 0.0], [np.nan, 0.0, np.nan, 1.0]])
    # n=2: prompt 0 picks index 1 (nan) and 2 (0.5) -> 0.5; prompt 1 picks index 0 (nan) and 2 (nan) -> dropped
    two = best_of_n_from_pool(selector, values, 2)
    assert two["mean"] == pytest.approx(0.5) and two["n_picks"] == 1
    # n=1: prompt 0 (1 + 0.5 + 0) / 3 = 0.5, prompt 1 (0 + 1) / 2 = 0.5
    one = best_of_n_from_pool(selector, values, 1)
    assert one["mean"] == pytest.approx(0.5) and one["sem"] == pytest.approx(0.0) and one["n_picks"] == 5


def test_frontier_over_prompts_averages_per_prompt_tilts():
    # prompt A: rewards (0, 1), beta 1: weights ∝ (1, e), E[r] = e/(1+e) = 0.731059; log Z = log((1+e)/2) = 0.620115;
    # KL = E[r]/beta - log Z = 0.110944. Prompt B: rewards (0, 0): E[r] = 0, KL = 0. Averages: 0.365529, 0.055472.
    (point,) = frontier_over_prompts(np.array([[0.0, 1.0], [0.0, 0.0]]), [1.0])
    assert point["gold_reward"] == pytest.approx(0.365529, abs=1e-6)
    assert point["kl"] == pytest.approx(0.055472, abs=1e-6)
    assert point["min_effective_sample_size"] == pytest.approx(
        (1 + math.e) ** 2 / (1 + math.e**2)
    )  # prompt A's Kish ESS 1.7864
    # sorted by KL: a large beta (weak tilt) comes first
    points = frontier_over_prompts(np.array([[0.0, 1.0], [0.0, 0.0]]), [0.1, 10.0])
    assert [p["beta"] for p in points] == [10.0, 0.1]


def test_point_against_frontier_fraction_of_gain_and_out_of_range():
    frontier = [{"kl": 0.0, "gold_reward": 0.0}, {"kl": 1.0, "gold_reward": 1.0}, {"kl": 2.0, "gold_reward": 1.5}]
    # at KL 0.5 the optimum is 0.5; rho's gold is -0.5, so the gains are 0.3 - (-0.5) = 0.8 of 0.5 - (-0.5) = 1.0
    p = point_against_frontier(frontier, 0.5, 0.3, -0.5)
    assert p["optimal_gold_reward_at_kl"] == pytest.approx(0.5) and p["fraction_of_optimum"] == pytest.approx(0.8)
    # at KL 1.5: optimum 1.25, gold 1.25 -> fraction 1 (with rho 0)
    assert point_against_frontier(frontier, 1.5, 1.25, 0.0)["fraction_of_optimum"] == pytest.approx(1.0)
    # beyond the frontier: no optimum, no fraction, and a note saying why
    far = point_against_frontier(frontier, 3.0, 1.0, 0.0)
    assert far["optimal_gold_reward_at_kl"] is None and far["fraction_of_optimum"] is None and "beyond" in far["note"]
    # a measured KL just below 0 (sampling noise) reads the frontier's first point; its optimum has no gain: no fraction
    near = point_against_frontier(frontier, -0.01, 0.0, 0.0)
    assert near["optimal_gold_reward_at_kl"] == 0.0 and near["fraction_of_optimum"] is None


def test_peak_finds_the_rise_and_fall():
    points = [{"kl": 2.0, "gold_reward": 0.5}, {"kl": 0.0, "gold_reward": 0.0}, {"kl": 1.0, "gold_reward": 1.0}]
    assert peak(points) == {
        "peak_kl": 1.0,
        "peak_gold_reward": 1.0,
        "gold_falls_after_peak": True,
        "drop_after_peak": 0.5,
        "last_point_sem": None,
    }
    rising = peak([{"kl": 0.0, "gold_reward": 0.0}, {"kl": 1.0, "gold_reward": 1.0}])
    assert rising["gold_falls_after_peak"] is False and rising["drop_after_peak"] == 0.0


def test_trajectory_reads_the_scores_as_optimised_from_the_ppo_log():
    rows = [
        {"iteration": 1, "kl": 0.0, "rm_score": 0.2, "score": -0.1, "gold_reward": 2.0, "gold_score": 1.5},
        {"iteration": 2, "kl": 3.5, "rm_score": 0.9, "score": 0.9},
    ]  # no gold logged in this one
    assert trajectory(rows) == [
        {"iteration": 1, "kl": 0.0, "proxy_reward": -0.1, "gold_reward": 1.5},
        {"iteration": 2, "kl": 3.5, "proxy_reward": 0.9, "gold_reward": None},
    ]


def test_batches_by_kl_pools_the_runs_into_bins():
    runs = [
        {
            "beta": 0.1,
            "points": [
                {"kl": 0.0, "proxy_reward": 0.0, "gold_reward": 1.0},
                {"kl": 5.0, "proxy_reward": 1.0, "gold_reward": 3.0},
            ],
        },
        {
            "beta": 0.01,
            "points": [
                {"kl": 9.0, "proxy_reward": 2.0, "gold_reward": 2.0},
                {"kl": 12.0, "proxy_reward": 4.0, "gold_reward": 4.0},
                {"kl": 3.0, "proxy_reward": 9.0, "gold_reward": None},
                {"kl": 30.0, "proxy_reward": 5.0, "gold_reward": 0.5},
            ],
        },
    ]
    first, second, third = batches_by_kl(
        runs, 8.0
    )  # [0, 8): KL 0 and 5; [8, 16): 9 and 12; [24, 32): 30; no gold = left out
    assert (first["n_batches"], first["kl"], first["proxy_reward"], first["gold_reward"]) == (2, 2.5, 0.5, 2.0)
    assert first["gold_reward_sem"] == pytest.approx(1.0)  # std(1, 3) = sqrt(2), over sqrt(2)
    assert (second["kl_low"], second["kl_high"], second["kl"], second["proxy_reward"], second["gold_reward"]) == (
        8.0,
        16.0,
        10.5,
        3.0,
        3.0,
    )
    assert (third["kl_low"], third["n_batches"], third["gold_reward_sem"]) == (24.0, 1, None)


def test_cli_passes_overrides_after_the_options_to_the_experiment_config(tmp_path, capsys):
    from rlhf.cli import main

    # the override comes after --out: it must reach the config loader (and fail there, before any model is loaded)
    assert main(["experiment", "frontier", "--out", str(tmp_path / "x"), "pool_prompts=oops"]) == 2
    assert "pool_prompts: expected int, got 'oops'" in capsys.readouterr().err
    assert main(["experiment", "overoptimization", "run.ppo.no_such_field=1", "--out", str(tmp_path / "y")]) == 2
    assert "unknown field 'no_such_field'" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # an unknown option is still an error
        main(["experiment", "frontier", "--out", str(tmp_path / "z"), "--bogus"])


def test_link_stages_makes_relative_links_and_keeps_existing_ones(tmp_path):
    (tmp_path / "base" / "sft").mkdir(parents=True)
    (tmp_path / "other" / "reward").mkdir(parents=True)
    sub = RunDir(tmp_path / "sub")
    link_stages(sub, {"sft": tmp_path / "base" / "sft", "reward": tmp_path / "other" / "reward"})
    link_stages(sub, {"sft": tmp_path / "other" / "reward"})  # already linked: left as it is
    assert (sub.root / "sft").readlink() == Path("../base/sft")
    assert (sub.root / "reward").readlink() == Path("../other/reward")


def test_run_stages_runs_in_order_and_a_stopped_stage_is_an_error(tmp_path, monkeypatch):
    ran = []

    def fake_run_stage(run, cfg, name):
        ran.append(name)
        return {"stopped": True, "reason": "andon"} if name == "ppo" else {}

    monkeypatch.setattr(common, "run_stage", fake_run_stage)
    with pytest.raises(RuntimeError, match="ppo stopped \\(andon\\)"):
        run_stages(RunDir(tmp_path), RunConfig(), ("reward", "ppo", "bon"))
    assert ran == ["reward", "ppo"]


def test_best_of_n_sweep_by_hand():
    # one prompt, four samples: the selector picks index 1 of [1, 3], index 0 of [2, 0], index 1 of all four
    selector = np.array([[1.0, 3.0, 2.0, 0.0]])
    gold = np.array([[10.0, 20.0, 30.0, 40.0]])
    rows = best_of_n_sweep(selector, gold, [1, 2, 4])
    assert [r["n"] for r in rows] == [1, 2, 4]
    assert [r["gold_reward"] for r in rows] == [25.0, 25.0, 20.0]
    assert [r["proxy_reward"] for r in rows] == [1.5, 2.5, 3.0]
    assert [r["n_judged_picks"] for r in rows] == [4, 2, 1]
    assert rows[0]["kl"] == 0.0 and abs(rows[2]["kl"] - (math.log(4) - 0.75)) < 1e-12
