"""The whole pipeline from a user's own files in each of TRL's formats, with a column mapping, on a tiny random
model: prompt-only prompts, prompt-completion demonstrations and preference pairs, plain and conversational ->
SFT -> reward model on the user's pairs -> PPO -> evaluation -> export, and the exported reward model loaded
with plain transformers gives the run's scores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import pipeline

from rlhf.models.export import scalar_role
from rlhf.run import RunDir

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"
pytestmark = pytest.mark.slow

TOPICS = ["rain", "cats", "tea", "maps", "jazz", "bread", "snow", "ships", "moss", "bees", "clocks", "kites"]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def user_files(folder: Path, conversational: bool) -> dict[str, Path]:
    """Prompts (prompt-only), demonstrations (prompt-completion) and pairs (preference) in the user's own column
    names: question, answer, better, worse."""

    def turn(role: str, text: str):
        return [{"role": role, "content": text}] if conversational else text

    prompts = [{"question": turn("user", f"Say something about {t}."), "id": i} for i, t in enumerate(TOPICS)]
    demos = [
        {"question": turn("user", f"Say something about {t}."), "answer": turn("assistant", f" {t.title()} are fine.")}
        for t in TOPICS
    ]
    pairs = [
        {
            "question": turn("user", f"Say something about {t}."),
            "better": turn("assistant", f" I like {t}."),
            "worse": turn("assistant", f" {t}? No."),
        }
        for t in TOPICS * 2
    ]
    return {
        "prompts": write_jsonl(folder / "prompts.jsonl", prompts),
        "demos": write_jsonl(folder / "demos.jsonl", demos),
        "pairs": write_jsonl(folder / "pairs.jsonl", pairs),
    }


def rlhf(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run([sys.executable, "-m", "rlhf.cli", *args], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, (
        f"rlhf {' '.join(args)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )
    return proc


@pytest.mark.parametrize("conversational", [False, True], ids=["plain", "conversational"])
def test_pipeline_from_user_files_in_trl_formats(tiny_model_dir, tmp_path, conversational):
    files = user_files(tmp_path, conversational)
    out = tmp_path / "run"
    rlhf(
        "run",
        "--config",
        str(SMOKE),
        "--out",
        str(out),
        f"model.name_or_path={tiny_model_dir}",
        "task.name=custom",
        f"task.source={files['prompts']}",
        f"task.demonstrations={files['demos']}",
        "task.test_fraction=0.3",
        "task.columns={prompt: question, completion: answer, chosen: better, rejected: worse}",
        f"collect.comparisons_path={files['pairs']}",
        "collect.heldout_fraction=0.25",
        "task.n_eval_prompts=2",
        "sft.n_demonstrations=8",
    )
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["policies"]) == {"initial", "sft", "ppo", "bon"}
    assert summary["reward_model"]["train_n"] > 0 and summary["reward_model"]["heldout_n"] > 0
    # the reward model trained on the user's pairs, rendered as the policy sees its prompts
    comparisons = [json.loads(line) for line in (out / "collect" / "comparisons.jsonl").read_text().splitlines()]
    prompts = [json.loads(line)["prompt"] for line in (out / "eval" / "samples.jsonl").read_text().splitlines()]
    if conversational:
        assert all(c["prompt"].endswith("<|im_start|>assistant\n") for c in comparisons)
        assert all(p.endswith("<|im_start|>assistant\n") for p in prompts)
        assert all(c["responses"][0].startswith(" I like ") for c in comparisons)
    else:
        assert {c["prompt"] for c in comparisons} <= {f"Say something about {t}." for t in TOPICS}
    # evaluation prompts are held out from the prompts PPO trains on
    train_prompts = {json.loads(line)["prompt"] for line in (out / "ppo" / "samples.jsonl").read_text().splitlines()}
    assert not train_prompts & set(prompts)
    # export: plain transformers scores the user's pairs as the run's reward model does
    rlhf("export", str(out), "--what", "reward", "--to", str(tmp_path / "rm"))
    rlhf("export", str(out), "--what", "policy", "--to", str(tmp_path / "policy"), "--adapter")
    run = RunDir(out)
    ours = scalar_role(run, run.load_config(), "reward")
    pairs = [(c["prompt"], r) for c in comparisons[:4] for r in c["responses"]]
    expected = ours.score([p for p, _ in pairs], [r for _, r in pairs]).tolist()
    offset = json.loads((tmp_path / "rm" / "config.json").read_text()).get("rlhf_score_offset", 0.0)
    score = pipeline("text-classification", model=str(tmp_path / "rm"), function_to_apply="none", device="cpu")
    got = [score({"text": p, "text_pair": r})["score"] + offset for p, r in pairs]
    assert got == pytest.approx(expected, abs=1e-4)
    assert (tmp_path / "policy" / "adapter_config.json").exists() and (tmp_path / "rm" / "README.md").exists()
