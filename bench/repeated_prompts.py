"""What reading a repeated prompt once saves: collect and best-of-N sample K responses per prompt, so a sampling
batch of 128 rows holds 32 distinct prompts, each 4 times. `sample_tokens` runs the prompt's forward pass (the
prefill) once per distinct prompt and copies its cache to the prompt's rows; before, every row ran it. On a
finished run's SFT model and the first 128 rows of its collect/samples.jsonl (the collect stage's first batch),
the two ways alternate, `--repeats` times each, with the reward model's input kept as in best-of-N. Prints
seconds per batch, the ratio of the medians, and whether tokens, log-probs and reward scores are equal bit for bit.

    .venv/bin/python bench/repeated_prompts.py RUN [--threads N] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import rlhf.models.sampling as sampling
from rlhf.config_loading import load_config
from rlhf.models.loading import load_reward_model, open_backbone, sft_model_path
from rlhf.models.roles import LanguageModelRole
from rlhf.run import RunDir
from rlhf.tasks import task_and_stop_rule

DISTINCT_ROWS = sampling.distinct_rows


def every_row(rows: torch.Tensor):
    """`distinct_rows` as if no two rows were equal: every row runs its own prefill (the old way)."""
    return torch.arange(len(rows)), None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    run = RunDir(args.run)
    cfg = load_config(run.root / "config.yaml", [f"model.threads={args.threads}"])
    backbone = open_backbone(cfg, sft_model_path(run, cfg))
    reward = load_reward_model(run, backbone)
    _, response_length, stop_rule = task_and_stop_rule(cfg, backbone.tokenizer)
    with open(run.root / "collect" / "samples.jsonl") as fh:
        prompts = [json.loads(line)["prompt"] for _, line in zip(range(cfg.collect.batch_size), fh)]
    policy = LanguageModelRole(backbone, None, cfg.task.temperature)
    reuse = sampling.prefix_reuse(policy, reward=reward)
    uniforms = sampling.uniform_draws(len(prompts), response_length)
    print(
        f"{len(prompts)} rows, {len(set(prompts))} distinct prompts, {response_length} tokens, {args.threads} threads"
    )
    seconds: dict[str, list[float]] = {"every row": [], "once per prompt": []}
    outputs = {}
    for _ in range(args.repeats):
        for way, rows_of in (("every row", every_row), ("once per prompt", DISTINCT_ROWS)):
            sampling.distinct_rows = rows_of
            start = time.perf_counter()
            episodes, texts = sampling.sample_episodes(policy, prompts, response_length, stop_rule, uniforms, reuse)
            scores = reward.score(prompts, texts, episodes)
            seconds[way].append(time.perf_counter() - start)
            outputs[way] = (episodes.response_ids, episodes.sample_logprobs, scores)
            print(f"{way}: {seconds[way][-1]:.2f} s", flush=True)
    sampling.distinct_rows = DISTINCT_ROWS
    old, new = (statistics.median(seconds[w]) for w in seconds)
    same = all(torch.equal(a, b) for a, b in zip(outputs["every row"], outputs["once per prompt"]))
    print(f"median s/batch: every row {old:.2f}, once per prompt {new:.2f}, ratio x{old / new:.2f}")
    print(f"tokens, log-probs and reward scores equal bit for bit: {same}")


if __name__ == "__main__":
    main()
