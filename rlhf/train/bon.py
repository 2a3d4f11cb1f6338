"""Best-of-N: sample N responses per held-out prompt from the SFT policy and keep the one the reward model
scores highest (Stiennon §4.1; Nakano et al. 2021). Writes RUN_DIR/bon/samples.jsonl."""
from __future__ import annotations

import math

import torch

from rlhf.config import RunConfig
from rlhf.data.io import write_jsonl
from rlhf.data.records import Sample
from rlhf.models.loading import task_for, open_backbone, prompt_source, sft_model_path, task_and_stop_rule
from rlhf.models.roles import LanguageModelRole
from rlhf.models.sampling import sampled_batches
from rlhf.run import RunDir, seed_everything
from rlhf.train.reward import load_reward_model

STAGE = "bon"


def best_of_n_kl(n: int) -> float:
    # Stiennon App. G.3 / Hilton: KL(best-of-N || base) = log N - (N - 1) / N
    return math.log(n) - (n - 1) / n


def best_of_n(scores: torch.Tensor) -> torch.Tensor:
    """Index of the highest-scoring response in each row of scores [P, N]."""
    assert scores.dim() == 2
    return scores.argmax(-1)


def eval_prompts(cfg: RunConfig) -> list[str]:
    task = task_for(cfg)
    return [p.text for p in task.load_prompts("test", n=cfg.task.n_eval_prompts, source=prompt_source(cfg), seed=cfg.seed)]


def draw_best_of_n(policy: LanguageModelRole, reward, prompts: list[str], n: int, response_length: int, stop_rule,
                   batch_size: int, missing_stop_penalty: float) -> tuple[list[Sample], list[Sample]]:
    """N samples of `policy` per prompt scored by the reward model; returns (all N per prompt, in prompt order,
    policy "sft"; the highest-scoring one of each prompt, policy "bon<N>"). A response without a stop scores the
    fixed penalty it would get in PPO (Ziegler §3.1.2); meta keeps both rm_score and rm_score_no_penalty."""
    repeated = [p for p in prompts for _ in range(n)]
    # a reward model on the policy's frozen bottom layers scores from the sampling loop's hidden states (top layers only)
    from_sampling = policy.backbone.same_frozen_prefix(reward.backbone)
    texts, stops, batch_scores = [], [], []
    for rows, episodes, batch_texts in sampled_batches(policy, repeated, response_length, stop_rule, batch_size,
                                                       for_scoring=from_sampling, progress=f"best-of-{n}: sampling"):
        texts += batch_texts
        stops += episodes.has_stop.tolist()
        batch_scores.append(reward.score_episodes(episodes) if from_sampling else reward.score(repeated[rows], batch_texts))
    rm_scores = torch.cat(batch_scores)
    scores = torch.where(torch.tensor(stops), rm_scores, torch.full_like(rm_scores, missing_stop_penalty))
    best = best_of_n(scores.view(len(prompts), n))
    chosen = [i * n + int(b) for i, b in enumerate(best)]
    candidates = [Sample(prompt=repeated[i], response=texts[i], policy="sft", has_stop=stops[i],
                         meta={"rm_score": float(scores[i]), "rm_score_no_penalty": float(rm_scores[i])}) for i in range(len(repeated))]
    return candidates, [Sample(**{**candidates[i].to_dict(), "policy": f"bon{n}"}) for i in chosen]


def run_bon(run: RunDir, cfg: RunConfig) -> dict:
    seed_everything(cfg.seed + 4)
    # 1. N samples per held-out prompt from the SFT policy, scored by the reward model
    backbone = open_backbone(cfg, sft_model_path(run, cfg))
    reward = load_reward_model(run, backbone)
    policy = LanguageModelRole(backbone, None, cfg.task.temperature)
    task, response_length, stop_rule = task_and_stop_rule(cfg, backbone.tokenizer)
    prompts = eval_prompts(cfg)
    N = cfg.bon.n
    candidates, samples = draw_best_of_n(policy, reward, prompts, N, response_length, stop_rule, cfg.collect.batch_size,
                                         cfg.ppo.missing_stop_penalty)
    # 2. keep the best of each prompt's N; all N are kept too (the first of each prompt is a plain SFT sample)
    write_jsonl(run.stage(STAGE) / "candidates.jsonl", candidates)
    write_jsonl(run.stage(STAGE) / "samples.jsonl", samples)
    info = {"n": N, "n_prompts": len(prompts), "kl_to_reference": best_of_n_kl(N)}
    run.mark_done(STAGE, info)
    return info
