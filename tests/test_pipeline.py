"""End-to-end runs of the whole pipeline on a tiny random model: the one-minute smoke run, stage-by-stage
commands, and a PPO stage killed with SIGKILL and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"
pytestmark = pytest.mark.slow


def rlhf(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run([sys.executable, "-m", "rlhf.cli", *args], capture_output=True, text=True, env=env, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"rlhf {' '.join(args)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


def test_smoke_run_writes_complete_run_directory(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    rlhf("run", "--config", str(SMOKE), "--out", str(out), f"model.name_or_path={tiny_model_dir}")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reward_model"]["heldout_n"] >= 0 and "heldout_accuracy" in summary["reward_model"]
    for policy in ("initial", "sft", "ppo", "bon"):
        for key in ("gold_reward_mean", "gold_reward_sem", "kl_to_reference", "distinct_1", "distinct_2"):
            assert key in summary["policies"][policy], (policy, key)
    for key in ("win_rate", "ci95_low", "ci95_high", "n"):
        assert key in summary["winrates"]["ppo_vs_initial"]
    assert summary["winrates"]["ppo_vs_initial"]["n"] == 8
    assert summary["wall_seconds_total"] > 0
    # the SFT policy's evaluation samples are best-of-N's first candidates, and best-of-N's are among its candidates
    N = summary["policies"]["bon"]["n_samples"]
    candidates = [json.loads(line) for line in (out / "bon" / "candidates.jsonl").read_text().splitlines()]
    evaluated = [json.loads(line) for line in (out / "eval" / "samples.jsonl").read_text().splitlines()]
    assert len(candidates) == 8 * N
    assert [r["response"] for r in evaluated if r["policy"] == "sft"] == [c["response"] for c in candidates[::N]]
    for i, r in enumerate(r for r in evaluated if r["policy"] == "bon"):
        assert r["response"] in [c["response"] for c in candidates[i * N : (i + 1) * N]]
    rows = [json.loads(line) for line in (out / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2, 3]
    for r in rows:  # the PPO ratio is exactly 1 on the first minibatch of every iteration
        assert r["first_minibatch_max_log_ratio"] == 0.0
        for key in (
            "rm_score",
            "kl",
            "beta",
            "entropy",
            "clipfrac",
            "approx_kl",
            "value_loss",
            "ratio_mean",
            "response_length",
            "no_stop_count",
        ):
            assert key in r
    assert rows[-1]["kl"] > 0  # the policy moved away from the reference
    html = (out / "report.html").read_text()
    assert "data:image/png;base64" in html
    # a LoRA run keeps adapters (peft adapter folders), not merged models
    assert (out / "ppo" / "model" / "adapter_config.json").exists() and (
        out / "sft" / "model" / "adapter_config.json"
    ).exists()
    # a finished run is skipped stage by stage when run again
    again = rlhf("run", "--config", str(SMOKE), "--out", str(out), f"model.name_or_path={tiny_model_dir}")
    assert "already done" in again.stderr


def test_stage_commands_and_sigkill_resume_of_ppo(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    overrides = [f"model.name_or_path={tiny_model_dir}", "ppo.iterations=12", "ppo.checkpoint_every=1"]
    rlhf("init", "--config", str(SMOKE), "--out", str(out), *overrides)
    for stage in ("sft", "collect", "reward"):
        rlhf(stage, str(out))
    assert (out / "reward" / "reward.safetensors").exists()

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlhf.cli", "ppo", str(out)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    metrics = out / "ppo" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline:  # kill it in the middle: after at least 3 iterations were checkpointed
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3 and (out / "ppo" / "checkpoint.pt").exists():
            break
        assert proc.poll() is None, "ppo ended before it could be killed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "ppo" / "done.json").exists()

    rlhf("ppo", str(out))  # resumes from the checkpoint
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["iteration"] for r in rows] == list(range(1, 13))
    assert (out / "ppo" / "done.json").exists() and (out / "ppo" / "model" / "adapter_model.safetensors").exists()
    assert not (out / "ppo" / "checkpoint.pt").exists()
    rlhf("bon", str(out))
    rlhf("eval", str(out))
    rlhf("report", str(out))
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["policies"]) == {"initial", "sft", "ppo", "bon"}


def test_andon_cord_stops_ppo_with_a_checkpoint(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    stop = tmp_path / "STOP"
    rlhf(
        "init",
        "--config",
        str(SMOKE),
        "--out",
        str(out),
        f"model.name_or_path={tiny_model_dir}",
        f"ppo.stop_file={stop}",
    )
    for stage in ("sft", "collect", "reward"):
        rlhf(stage, str(out))
    stop.write_text("responses look broken")
    proc = rlhf("ppo", str(out), check=False)
    assert proc.returncode == 3 and "responses look broken" in proc.stdout
    assert (out / "ppo" / "checkpoint.pt").exists() and not (out / "ppo" / "done.json").exists()
    stop.unlink()
    rlhf("ppo", str(out))
    assert (out / "ppo" / "done.json").exists()


@pytest.mark.parametrize(
    "overrides",
    [
        [
            "model.lora_r=0",
            "ppo.log_gold_reward=false",
            "ppo.value_warmup_iterations=1",
        ],  # full fine-tuning: separate copies of the model for each role
        [
            "collect.kind=ranking",
            "collect.responses_per_prompt=5",
            "reward.normalize=reference",
            "ppo.adaptive_kl=false",
            "ppo.ptx_coef=0.5",
            "ppo.value_learning_rate=1e-2",
        ],
        [
            "collect.kind=pairwise",
            "collect.responses_per_prompt=2",
            "model.lora_top_layers=1",
            "ppo.reward_source=gold",
        ],
    ],
)
def test_pipeline_variants(tiny_model_dir, tmp_path, overrides):
    out = tmp_path / "run"
    rlhf(
        "run",
        "--config",
        str(SMOKE),
        "--out",
        str(out),
        f"model.name_or_path={tiny_model_dir}",
        "ppo.iterations=2",
        *overrides,
    )
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["policies"]) == {"initial", "sft", "ppo", "bon"}
    rows = [json.loads(line) for line in (out / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["first_minibatch_max_log_ratio"] == 0.0 for r in rows)
    if "ppo.ptx_coef=0.5" in overrides:
        assert all("ptx_nll" in r for r in rows)
    assert all(("gold_reward" in r) == ("ppo.log_gold_reward=false" not in overrides) for r in rows)
    if "ppo.value_warmup_iterations=1" in overrides:  # iteration 1 trained the value alone: the policy did not move
        assert rows[0]["ratio_max"] == pytest.approx(1.0, abs=1e-5) and rows[0]["clipfrac"] == 0.0
        assert rows[1]["kl"] == pytest.approx(0.0, abs=1e-5)  # so iteration 2 still sampled the SFT policy
        assert rows[1]["approx_kl"] > 0  # and then it moved
    if "ppo.reward_source=gold" in overrides:  # PPO maximised the gold score itself
        assert all(abs(r["rm_score"] - r["gold_reward"]) < 1e-5 for r in rows)
    weights = "model.safetensors" if "model.lora_r=0" in overrides else "adapter_model.safetensors"
    assert all((out / stage / "model" / weights).exists() for stage in ("sft", "ppo"))  # full weights only when full
