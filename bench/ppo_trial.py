"""PPO-only trial on a finished run: copies RUN's sft/collect/reward into OUT, trains PPO with the overrides,
then samples the PPO and SFT policies on held-out prompts with one seed and compares their gold rewards.
The README's table of PPO settings was measured with it (RUN = a finished quickstart run, default 128 prompts):

    .venv/bin/python bench/ppo_trial.py RUN OUT [section.field=value ...]
    .venv/bin/python bench/ppo_trial.py runs/quickstart /tmp/trial_lam1 ppo.lam=1.0

Last line: gold_gain=<ppo - sft> sem=<x> win_rate_vs_sft=<x> n=<prompts> kl_last_batch=<x> ppo_seconds=<x>
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from rlhf.config import load_config
from rlhf.models.loading import open_backbone, sft_model_path
from rlhf.models.roles import LanguageModelRole
from rlhf.models.sampling import sample_texts
from rlhf.run import RunDir, seed_everything
from rlhf.stages.ppo import train_ppo
from rlhf.tasks import evaluation_prompts, task_and_stop_rule


def gold_rewards(cfg, model_path: str, prompts: list[str], seed: int) -> list[float]:
    seed_everything(seed)
    backbone = open_backbone(cfg, model_path)
    task, response_length, stop_rule = task_and_stop_rule(cfg, backbone.tokenizer)
    texts, _, _ = sample_texts(
        LanguageModelRole(backbone, None, cfg.task.temperature), prompts, response_length, stop_rule, 64
    )
    return task.gold_scorer(prompts, texts)


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        sys.exit(__doc__)
    src, out, overrides = Path(argv[0]), Path(argv[1]), argv[2:]
    for stage in ("sft", "collect", "reward"):
        if not (src / stage / "done.json").exists():
            sys.exit(f"{src}: stage {stage} is not finished; run the pipeline first")
    # 1. a fresh run directory holding the source run's finished SFT, comparisons and reward model
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for stage in ("sft", "collect", "reward"):
        shutil.copytree(src / stage, out / stage, symlinks=True)
    shutil.copy(src / "config.yaml", out / "config.yaml")
    run = RunDir(out)
    cfg = load_config(out / "config.yaml", ["task.n_eval_prompts=128", *overrides])
    # 2. PPO with the overrides
    t0 = time.time()
    train_ppo(run, cfg)
    ppo_seconds = time.time() - t0
    # 3. PPO and SFT samples on the same held-out prompts with the same seed; gold reward of each
    prompts = evaluation_prompts(cfg)
    ppo_gold = np.array(gold_rewards(cfg, str(out / "ppo" / "model"), prompts, seed=123))
    sft_gold = np.array(gold_rewards(cfg, sft_model_path(run, cfg), prompts, seed=123))
    diff = ppo_gold - sft_gold
    win_rate = float(np.mean(np.where(diff > 0, 1.0, np.where(diff == 0, 0.5, 0.0))))
    rows = [json.loads(line) for line in open(out / "ppo" / "metrics.jsonl")]
    print(
        f"gold_gain={diff.mean():.3f} sem={diff.std() / len(diff) ** 0.5:.3f} win_rate_vs_sft={win_rate:.3f} "
        f"n={len(diff)} kl_last_batch={rows[-1]['kl']:.2f} ppo_seconds={ppo_seconds:.0f}"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
