"""Could a value network fitted on the initial policy's own samples start PPO with a useful baseline? On a finished
run: samples N_FIT + N_TEST responses of the SFT policy (batches of 32 train prompts), scores them with the reward
model (missing-stop penalty included), fits a least-squares value head on the reward model's trunk (the value
network's start) to every response token's return (the score: gamma = lambda = 1, KL 0 for the initial policy),
and prints the explained variance on the held-out responses, for the per-token hidden states and for the prompt's
last one alone; beside them, the reward model's own head read as a value, and the share of the reward model's
variance that lies between prompts over best-of-N's candidates (RUN/bon/candidates.jsonl, when present).

    .venv/bin/python bench/value_fit_probe.py runs/quickstart [--fit 384] [--test 128]
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

import torch

from rlhf.config_loading import load_config
from rlhf.models.loading import load_reward_model
from rlhf.run import RunDir, seed_everything
from rlhf.stages.rollout import open_policy_roles, prompt_batch, rollout, score
from rlhf.tasks import prompt_source, task_and_stop_rule


def between_prompt_share(candidates: Path) -> float:
    by_prompt = defaultdict(list)
    for line in candidates.read_text().splitlines():
        row = json.loads(line)
        by_prompt[row["prompt"]].append(row["meta"]["rm_score"])
    total = statistics.pvariance([x for xs in by_prompt.values() for x in xs])
    return 1 - statistics.mean(statistics.pvariance(xs) for xs in by_prompt.values()) / total


def explained(pred: torch.Tensor, target: torch.Tensor) -> float:
    return 1 - ((target - pred).var() / target.var()).item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path)
    p.add_argument("--fit", type=int, default=384, help="responses to fit on (a multiple of 32)")
    p.add_argument("--test", type=int, default=128, help="held-out responses (a multiple of 32)")
    args = p.parse_args()
    cfg, run = load_config(args.run / "config.yaml"), RunDir(args.run)
    seed_everything(7)
    roles = open_policy_roles(run, cfg, with_reward=True)
    value = load_reward_model(run, roles.base, "value")
    value.fold_normalization()
    task, length, stop_rule = task_and_stop_rule(cfg, roles.base.tokenizer)
    prompts = [x.text for x in task.load_prompts("train", n=None, source=prompt_source(cfg), seed=cfg.seed + 3)]
    tokens, prompt_tokens, returns, rm_head, batch_of = [], [], [], [], []
    with torch.no_grad():
        for b in range((args.fit + args.test) // 32):
            batch = rollout(
                roles.policy, roles.reference, roles.reward, prompt_batch(prompts, b, 32, 11), length, stop_rule
            )
            scores = score(batch, roles.reward, None, cfg.ppo.missing_stop_penalty).penalised
            e, real = batch.episodes, batch.episodes.response_mask.bool()
            Q, R = e.query_ids.shape[1], e.response_ids.shape[1]
            hidden = value.backbone.hidden_states(value.adapter, e.input_ids, e.attention_mask, e.prefix)
            hidden = hidden[:, Q - 1 : Q + R - 1].float()  # the state before each response token
            tokens.append(hidden[real])
            prompt_tokens.append(hidden[:, :1].expand_as(hidden)[real])
            returns.append(scores[:, None].expand(-1, R)[real])
            rm_head.append(value.head(hidden).squeeze(-1)[real])
            batch_of.append(torch.full((int(real.sum()),), b))
    X, P, y, rm_values, batches = map(torch.cat, (tokens, prompt_tokens, returns, rm_head, batch_of))
    fit = batches < args.fit // 32

    def least_squares(features: torch.Tensor, ridge: float) -> torch.Tensor:
        with_bias = torch.cat([features, torch.ones(len(features), 1)], 1)
        A = with_bias[fit].T @ with_bias[fit] + ridge * torch.eye(with_bias.shape[1])
        return with_bias @ torch.linalg.solve(A, with_bias[fit].T @ y[fit])

    print(
        f"{args.fit} responses fitted, {args.test} held out; the reward model's head as the value: "
        f"explained variance {explained(rm_values[~fit], y[~fit]):.3f} held out"
    )
    for ridge in (1.0, 10.0, 100.0, 1000.0):
        per_token, prompt_only = least_squares(X, ridge), least_squares(P, ridge)
        print(
            f"ridge {ridge:g}: per-token head fitted {explained(per_token[fit], y[fit]):.3f} held out "
            f"{explained(per_token[~fit], y[~fit]):.3f} | prompt's state alone fitted "
            f"{explained(prompt_only[fit], y[fit]):.3f} held out {explained(prompt_only[~fit], y[~fit]):.3f}"
        )
    candidates = args.run / "bon" / "candidates.jsonl"
    if candidates.exists():
        print(
            f"reward model variance between prompts over best-of-N's candidates: {between_prompt_share(candidates):.2f}"
        )


if __name__ == "__main__":
    main()
