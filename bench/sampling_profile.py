"""Where sampling time goes: responses per second of the SFT policy of a finished run at sampling batch sizes 64,
128 and 256 (each measured twice, in turn, on the 172 test prompts plus 84 repeated), then the top operators of a
torch profile of one batch of 64. Sampling changes nothing in the run directory:

    .venv/bin/python bench/sampling_profile.py RUN
"""
from __future__ import annotations

import sys
import time

import torch

from rlhf.config import load_config
from rlhf.models.loading import open_backbone, sft_model_path, task_and_stop_rule
from rlhf.models.roles import LanguageModelRole, encode_queries, sample_tokens
from rlhf.models.sampling import sample_texts
from rlhf.run import RunDir, seed_everything
from rlhf.train.bon import eval_prompts


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        sys.exit(__doc__)
    run = RunDir(argv[0])
    cfg = load_config(run.root / "config.yaml", ["task.n_eval_prompts=172"])
    prompts = eval_prompts(cfg)
    prompts = prompts + prompts[:84]
    backbone = open_backbone(cfg, sft_model_path(run, cfg))
    _, response_length, stop_rule = task_and_stop_rule(cfg, backbone.tokenizer)
    role = LanguageModelRole(backbone, None, cfg.task.temperature)
    sample_texts(role, prompts[:16], response_length, stop_rule, 16)  # warm-up
    for batch_size in (64, 128, 256, 64, 128, 256):
        seed_everything(0)
        start = time.perf_counter()
        sample_texts(role, prompts, response_length, stop_rule, batch_size)
        print(f"batch {batch_size}: {len(prompts) / (time.perf_counter() - start):.2f} responses/s", flush=True)
    query_ids, query_mask = encode_queries(backbone.tokenizer, prompts[:64])
    with torch.profiler.profile() as profile, backbone.use(None) as lm:
        sample_tokens(lm, query_ids, query_mask, response_length, cfg.task.temperature)
    print(profile.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))


if __name__ == "__main__":
    main(sys.argv[1:])
