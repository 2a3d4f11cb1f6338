"""Best-of-N: sample N responses per held-out prompt from the SFT policy and keep the one the reward model
scores highest (Stiennon §4.1; Nakano et al. 2021). Writes RUN_DIR/bon/samples.jsonl."""

from __future__ import annotations

from rlhf.config import RunConfig
from rlhf.data.io import write_jsonl
from rlhf.models.best_of_n import best_of_n_kl, draw_best_of_n
from rlhf.models.loading import load_reward_model, open_backbone, sft_model_path
from rlhf.models.roles import LanguageModelRole
from rlhf.run import RunDir, seed_everything
from rlhf.tasks import evaluation_prompts, task_and_stop_rule

STAGE = "bon"


def run_bon(run: RunDir, cfg: RunConfig) -> dict:
    seed_everything(cfg.seed + 4)
    # 1. N samples per held-out prompt from the SFT policy, scored by the reward model
    backbone = open_backbone(cfg, sft_model_path(run, cfg))
    reward = load_reward_model(run, backbone)
    policy = LanguageModelRole(backbone, None, cfg.task.temperature)
    task, response_length, stop_rule = task_and_stop_rule(cfg, backbone.tokenizer)
    prompts = evaluation_prompts(cfg)
    N = cfg.bon.n
    candidates, samples = draw_best_of_n(
        policy,
        reward,
        prompts,
        N,
        response_length,
        stop_rule,
        cfg.collect.batch_size,
        cfg.ppo.missing_stop_penalty,
        run.processes,  # each process samples and scores its share of the prompts
    )
    # 2. keep the best of each prompt's N; all N are kept too (the first of each prompt is a plain SFT sample)
    if run.writer:
        write_jsonl(run.stage(STAGE) / "candidates.jsonl", candidates)
        write_jsonl(run.stage(STAGE) / "samples.jsonl", samples)
    info = {"n": N, "n_prompts": len(prompts), "kl_to_reference": best_of_n_kl(N)}
    run.mark_done(STAGE, info)
    return info
