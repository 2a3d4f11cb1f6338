"""Best-of-N sampling (Stiennon §4.1; Nakano et al. 2021): N samples of a policy per prompt, the reward model
keeps the highest-scoring one. Inference, used by the best-of-N stage, the evaluation and the experiments."""

from __future__ import annotations

import math

import torch

from rlhf.data.records import Sample
from rlhf.losses import apply_missing_stop_penalty
from rlhf.models.roles import LanguageModelRole, ScalarRole
from rlhf.models.sampling import prefix_reuse, sampled_batches
from rlhf.processes import Processes


def best_of_n_kl(n: int) -> float:
    # Stiennon App. G.3 / Hilton: KL(best-of-N || base) = log N - (N - 1) / N
    return math.log(n) - (n - 1) / n


def best_of_n(scores: torch.Tensor) -> torch.Tensor:
    """Index of the highest-scoring response in each row of scores [P, N]."""
    assert scores.dim() == 2
    return scores.argmax(-1)


def draw_best_of_n(
    policy: LanguageModelRole,
    reward: ScalarRole,
    prompts: list[str],
    n: int,
    response_length: int,
    stop_rule,
    batch_size: int,
    missing_stop_penalty: float,
    processes: Processes = Processes(),
) -> tuple[list[Sample], list[Sample]]:
    """N samples of `policy` per prompt scored by the reward model; returns (all N per prompt, in prompt order,
        policy "sft"; the highest-scoring one of each prompt, policy "bon<N>"). A response without a stop scores the
        fixed penalty it would get in PPO (Ziegler §3.1.2); meta keeps both rm_score and rm_score_no_penalty. With
    several `processes` each samples and scores its rows; every process gets all of them."""
    repeated = [p for p in prompts for _ in range(n)]
    texts, stops, batch_scores = [], [], []
    reuse = prefix_reuse(policy, reward=reward)  # the reward model scores from the sampling loop when it can
    for rows, episodes, batch_texts in sampled_batches(
        policy, repeated, response_length, stop_rule, batch_size, reuse, f"best-of-{n}: sampling", processes
    ):
        texts += batch_texts
        stops += episodes.has_stop.tolist()
        batch_scores += reward.score([repeated[i] for i in rows], batch_texts, episodes).tolist()
    texts, stops = processes.in_order(texts, len(repeated)), processes.in_order(stops, len(repeated))
    rm_scores = torch.tensor(processes.in_order(batch_scores, len(repeated)))
    scores = apply_missing_stop_penalty(rm_scores, torch.tensor(stops, dtype=torch.bool), missing_stop_penalty)
    best = best_of_n(scores.view(len(prompts), n))
    chosen = [i * n + int(b) for i, b in enumerate(best)]
    candidates = [
        Sample(
            prompt=repeated[i],
            response=texts[i],
            policy="sft",
            has_stop=stops[i],
            meta={"rm_score": float(scores[i]), "rm_score_no_penalty": float(rm_scores[i])},
        )
        for i in range(len(repeated))
    ]
    return candidates, [Sample(**{**candidates[i].to_dict(), "policy": f"bon{n}"}) for i in chosen]
