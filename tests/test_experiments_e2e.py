"""`rlhf experiment frontier|overoptimization` end to end on a tiny random model with minuscule configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def tiny_config(tmp_path: Path, model_dir: Path, **experiment) -> Path:
    run = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    run["model"]["name_or_path"] = str(model_dir)
    run["task"]["gold"] = "vader"
    run["sft"]["n_demonstrations"] = 0
    run["ppo"].update(iterations=1, batch_size=8, minibatch_size=8, ppo_epochs=1)
    for method in ("rloo", "grpo"):
        run[method] = {"iterations": 2, "prompts_per_batch": 2, "samples_per_prompt": 2, "minibatch_size": 4}
    run["dpo"] = {"epochs": 1, "batch_size": 4}
    path = tmp_path / "experiment.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "run": run,
                "pool_prompts": 3,
                "pool_samples_per_prompt": 4,
                "bon_n": [1, 2, 4],
                "ppo_betas": [0.1, 0.01],
                "measure_samples_per_prompt": 2,
                **experiment,
            }
        )
    )
    return path


def rlhf(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run([sys.executable, "-m", "rlhf.cli", *args], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, (
        f"rlhf {' '.join(args)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )
    return proc


def test_frontier_experiment_writes_summary_and_plot(tiny_model_dir, tmp_path):
    out = tmp_path / "frontier"
    rlhf("experiment", "frontier", "--config", str(tiny_config(tmp_path, tiny_model_dir)), "--out", str(out))
    s = json.loads((out / "summary.json").read_text())
    assert [p["n"] for p in s["bon"]] == [1, 2, 4] and len(s["ppo_runs"]) == 2
    for p in s["bon"] + s["ppo_runs"]:
        assert {"kl", "gold_reward", "optimal_gold_reward_at_kl", "fraction_of_optimum"} <= set(p)
        assert -1.0 <= p["gold_reward"] <= 1.0  # VADER compound, or the -1 missing-stop penalty
    assert s["bon"][0]["kl"] == 0.0 and s["bon"][0]["gold_reward"] == pytest.approx(s["rho_gold_reward"])
    kls = [p["kl"] for p in s["frontier"]]
    assert kls == sorted(kls) and kls[-1] <= 1.3863 + 1e-6  # at most log 4, with 4 samples per prompt
    golds = [p["gold_reward"] for p in s["frontier"]]
    assert all(b >= a - 1e-9 for a, b in zip(golds, golds[1:]))  # more KL buys more reward on the frontier
    assert s["bon"][-1]["gold_reward"] >= s["bon"][0]["gold_reward"]  # best-of-4 by gold is at least rho's mean
    assert s["wall_seconds"] > 0 and s["cpu_seconds"] > 0
    assert (out / "frontier.png").stat().st_size > 1000 and "frontier.png" in (out / "summary.md").read_text()
    assert (out / "ppo_beta0.1" / "reward").is_symlink() and (out / "ppo_beta0.1" / "measured.json").exists()
    # every method on the frontier: PPO at each beta, RLOO, GRPO, DPO, with their episodes and fraction
    runs = s["method_runs"]
    assert [(r["method"], r["beta"]) for r in runs] == [
        ("ppo", 0.1),
        ("ppo", 0.01),
        ("rloo", 0.05),
        ("grpo", 0.04),
        ("dpo", 0.1),
    ]
    assert [r["episodes"] for r in runs[:4]] == [8, 8, 8, 8] and runs[4]["episodes"] > 0
    for r in runs:
        assert {"method", "kl", "gold", "fraction_of_optimum", "episodes"} <= set(r)
        assert (
            out / ("ppo_beta%g" % r["beta"] if r["method"] == "ppo" else r["method"]) / r["method"] / "model"
        ).is_dir()
    assert [len(r["training_curve"]) for r in runs] == [1, 1, 2, 2, 0]
    assert runs[2]["training_curve"][-1]["episodes"] == 8
    assert (out / "fraction_by_episodes.png").stat().st_size > 1000
    # a re-run reuses the base run, the pool and the measured PPO runs
    again = rlhf("experiment", "frontier", "--config", str(tiny_config(tmp_path, tiny_model_dir)), "--out", str(out))
    assert "already done" in again.stderr
    assert json.loads((out / "summary.json").read_text())["ppo_runs"] == s["ppo_runs"]


def test_overoptimization_experiment_writes_sweeps(tiny_model_dir, tmp_path):
    out = tmp_path / "overopt"
    config = tiny_config(tmp_path, tiny_model_dir)
    rlhf(
        "experiment",
        "overoptimization",
        "--config",
        str(config),
        "--out",
        str(out),
        "run.collect.labeler_temperature=0.5",
    )
    s = json.loads((out / "summary.json").read_text())
    assert [p["n"] for p in s["bon_sweep"]] == [1, 2, 4] and [p["beta"] for p in s["ppo_sweep"]] == [0.1, 0.01]
    for p in s["bon_sweep"] + s["ppo_sweep"]:
        assert {"kl", "proxy_reward", "gold_reward"} <= set(p) and -1.0 <= p["gold_reward"] <= 1.0
    proxies = [p["proxy_reward"] for p in s["bon_sweep"]]
    assert all(
        p >= proxies[0] - 1e-6 for p in proxies
    )  # the best of each group by the proxy is at least the group's mean
    assert s["bon_sweep"][0]["proxy_reward"] == pytest.approx(s["rho"]["proxy_reward"], abs=1e-5)
    assert s["labeler_temperature"] == 0.5 and s["wall_seconds"] > 0
    # each PPO run's path, one point per iteration: the first batch is sampled from rho itself (KL 0)
    assert [run["beta"] for run in s["ppo_trajectories"]] == [0.1, 0.01]
    for run in s["ppo_trajectories"]:
        assert [p["iteration"] for p in run["points"]] == [1] and abs(run["points"][0]["kl"]) < 1e-3
        assert all(-1.0 <= p["gold_reward"] <= 1.0 for p in run["points"])
    assert sum(b["n_batches"] for b in s["ppo_batches_by_kl"]) == 2  # one batch per run, pooled by KL
    assert (out / "overoptimization.png").stat().st_size > 1000


def test_unknown_experiment_is_a_clear_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "rlhf.cli", "experiment", "nope", "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 2 and "unknown experiment 'nope'" in proc.stderr
