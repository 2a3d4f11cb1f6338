"""Does SFT on the built-in demonstrations move the sentiment policy's gold reward? Samples the initial and the
SFT policy of a finished run on the 128 test prompts with two sampling seeds each, and on 64 prompts x 4 samples
(the best-of-N path), and prints each draw's gold mean +- sem, response length and stop share:

    .venv/bin/python bench/sft_vs_initial.py RUN
"""

from __future__ import annotations

import sys

import numpy as np

from rlhf.config_loading import load_config
from rlhf.models.loading import base_model_path, open_backbone, sft_model_path
from rlhf.models.roles import LanguageModelRole
from rlhf.models.sampling import sample_texts
from rlhf.run import RunDir, seed_everything
from rlhf.tasks import evaluation_prompts, task_and_stop_rule


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        sys.exit(__doc__)
    run = RunDir(argv[0])
    cfg = load_config(run.root / "config.yaml", ["task.n_eval_prompts=128"])
    prompts = evaluation_prompts(cfg)
    for name, path in (("initial", base_model_path(cfg)), ("sft", sft_model_path(run, cfg))):
        backbone = open_backbone(cfg, path)
        task, response_length, stop_rule = task_and_stop_rule(cfg, backbone.tokenizer)
        role = LanguageModelRole(backbone, None, cfg.task.temperature)
        draws = [(f"seed {seed}", prompts, seed) for seed in (1, 2)]
        draws.append(("64 prompts x 4", [p for p in prompts[:64] for _ in range(4)], 3))
        for label, batch, seed in draws:
            seed_everything(seed)
            texts, stops, lengths = sample_texts(role, batch, response_length, stop_rule, 64)
            gold = np.array(task.gold_scorer(batch, texts))
            print(
                f"{name} {label}: gold {gold.mean():.3f} +- {gold.std() / len(gold) ** 0.5:.3f} "
                f"length {np.mean(lengths):.1f} stop {np.mean(stops):.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main(sys.argv[1:])
