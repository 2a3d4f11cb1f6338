"""Sampling speed of a finished run's SFT policy on the 172 test prompts (plus 84 repeated), in three modes measured
in turn, three times each, from the same seed: batch 64 with every row computed at every step (stops_at=None, how
sampling ran before), batch 64 with rows that reached their stop dropped from the batch, and batch 128 with them
dropped. Prints responses/s per mode and repetition, the ratios of the medians, and the share of responses
identical to the first mode's (it should be 1: the uniform draws do not depend on the batch, and dropping a row
only skips work whose tokens become padding). With --profile, also the top operators of a torch profile of one
batch of 64. Changes nothing in the run directory:

    .venv/bin/python bench/sampling_speed.py RUN [--profile]
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from rlhf.config_loading import load_config
from rlhf.models.encoding import encode_queries
from rlhf.models.loading import open_backbone, sft_model_path
from rlhf.models.sampling import sample_tokens, uniform_draws
from rlhf.run import RunDir, seed_everything
from rlhf.tasks import evaluation_prompts, task_and_stop_rule

MODES = {
    "batch 64, every row": (64, False),
    "batch 64, stopped rows dropped": (64, True),
    "batch 128, stopped rows dropped": (128, True),
}


def sample_all(lm, tokenizer, prompts, response_length, temperature, stop_rule, batch_size: int, drop_stopped: bool):
    seed_everything(0)
    uniforms = uniform_draws(len(prompts), response_length)
    kept = []
    for i in range(0, len(prompts), batch_size):
        query_ids, query_mask = encode_queries(tokenizer, prompts[i : i + batch_size])
        tokens, _, _ = sample_tokens(
            lm,
            query_ids,
            query_mask,
            response_length,
            temperature,
            stop_rule.stops_at if drop_stopped else None,
            uniforms[i : i + batch_size],
        )
        mask, _ = stop_rule.apply(tokens)
        kept += [row[: int(n)].tolist() for row, n in zip(tokens, mask.sum(-1))]
    return kept


def main(argv: list[str]) -> None:
    profile = "--profile" in argv
    argv = [a for a in argv if a != "--profile"]
    if len(argv) != 1:
        sys.exit(__doc__)
    run = RunDir(argv[0])
    cfg = load_config(run.root / "config.yaml", ["task.n_eval_prompts=172"])
    prompts = evaluation_prompts(cfg)
    prompts = prompts + prompts[:84]
    backbone = open_backbone(cfg, sft_model_path(run, cfg))
    _, response_length, stop_rule = task_and_stop_rule(cfg, backbone.tokenizer)
    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    samples: dict[str, list] = {}
    with backbone.use(None) as lm:
        sample_all(
            lm, backbone.tokenizer, prompts[:16], response_length, cfg.task.temperature, stop_rule, 16, True
        )  # warm-up
        for repetition in range(3):
            for mode, (batch_size, drop_stopped) in MODES.items():
                start = time.perf_counter()
                samples[mode] = sample_all(
                    lm,
                    backbone.tokenizer,
                    prompts,
                    response_length,
                    cfg.task.temperature,
                    stop_rule,
                    batch_size,
                    drop_stopped,
                )
                rates[mode].append(len(prompts) / (time.perf_counter() - start))
                print(f"{mode}: {rates[mode][-1]:.2f} responses/s", flush=True)
    first = next(iter(MODES))
    base = statistics.median(rates[first])
    for mode in MODES:
        same = sum(a == b for a, b in zip(samples[mode], samples[first])) / len(prompts)
        print(
            f"{mode}: median {statistics.median(rates[mode]):.2f} responses/s, x{statistics.median(rates[mode]) / base:.2f}; identical responses {same:.3f}"
        )
    print(f"mean response length {sum(len(k) for k in samples[first]) / len(prompts):.1f} of {response_length} tokens")
    if profile:
        query_ids, query_mask = encode_queries(backbone.tokenizer, prompts[:64])
        with torch.profiler.profile() as prof, backbone.use(None) as lm:
            sample_tokens(lm, query_ids, query_mask, response_length, cfg.task.temperature, stop_rule.stops_at)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))


if __name__ == "__main__":
    main(sys.argv[1:])
