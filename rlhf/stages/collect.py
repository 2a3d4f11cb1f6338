"""Collect comparisons: sample K responses per prompt from the current policy, ask a labeler to compare them,
and write RUN_DIR/collect/{samples,comparisons,heldout}.jsonl for the reward-model stage."""

from __future__ import annotations

import logging
import random

from rlhf.config import RunConfig
from rlhf.data.importers import read_comparisons
from rlhf.data.io import write_jsonl
from rlhf.data.records import Comparison, Sample
from rlhf.judges import JudgeLabeler, make_judge
from rlhf.labelers.base import label_many
from rlhf.labelers.simulated import SimulatedLabeler
from rlhf.models.device import resolve_placement
from rlhf.models.loading import open_backbone, sft_model_path
from rlhf.models.roles import LanguageModelRole
from rlhf.models.sampling import sample_texts
from rlhf.run import RunDir, seed_everything
from rlhf.tasks import prompt_source, task_and_stop_rule, task_comparisons

log = logging.getLogger("rlhf")
STAGE = "collect"


def split_heldout(
    comparisons: list[Comparison], fraction: float, seed: int
) -> tuple[list[Comparison], list[Comparison]]:
    """Hold out whole prompts (all comparisons of a prompt go to one side)."""
    prompts = sorted({c.prompt for c in comparisons})
    random.Random(seed).shuffle(prompts)
    heldout_prompts = set(prompts[: int(round(len(prompts) * fraction))])
    train = [c for c in comparisons if c.prompt not in heldout_prompts]
    heldout = [c for c in comparisons if c.prompt in heldout_prompts]
    return train, heldout


def collect(run: RunDir, cfg: RunConfig) -> dict:

    cc = cfg.collect
    if cc.kind == "pairwise" and cc.responses_per_prompt != 2:
        raise ValueError(
            f"collect.kind=pairwise compares 2 responses; set collect.responses_per_prompt=2 (got {cc.responses_per_prompt})"
        )
    if cc.kind == "ranking" and not 2 <= cc.responses_per_prompt <= 9:
        raise ValueError(
            f"collect.kind=ranking ranks K=2..9 responses (InstructGPT: 4..9); got {cc.responses_per_prompt}"
        )
    seed_everything(cfg.seed + 1)
    out = run.stage(STAGE)

    if cc.comparisons_path:
        # 1'. comparisons given (e.g. exported from the labeling app): no sampling, no simulated labeler
        # our records, TRL preference rows or summarize-from-feedback rows; a custom task's columns and chat template
        columns = cfg.task.columns if cfg.task.name == "custom" else None
        comparisons = task_comparisons(cfg, read_comparisons(cc.comparisons_path, columns=columns))
        train, heldout = split_heldout(comparisons, cc.heldout_fraction, cfg.seed)
        if run.writer:
            write_jsonl(out / "comparisons.jsonl", train)
            write_jsonl(out / "heldout.jsonl", heldout)
        info = {"source": cc.comparisons_path, "n_train": len(train), "n_heldout": len(heldout)}
        run.mark_done(STAGE, info)
        return info

    # 1. K responses per prompt from the current policy (the SFT model)
    backbone = open_backbone(cfg, sft_model_path(run, cfg))
    task, response_length, stop_rule = task_and_stop_rule(cfg, backbone.tokenizer)
    if cc.labeler == "gold" and task.gold_scorer is None:
        raise ValueError(
            f"task '{task.name}' has no simulated gold labeler; set collect.comparisons_path to human comparisons, "
            "or collect.labeler=judge for the pairwise judge of the `judge` section"
        )
    prompts = [p.text for p in task.load_prompts("train", n=cc.n_prompts, source=prompt_source(cfg), seed=cfg.seed + 1)]
    policy = LanguageModelRole(backbone, None, cfg.task.temperature)
    K = cc.responses_per_prompt
    repeated = [p for p in prompts for _ in range(K)]
    texts, stops, _ = sample_texts(
        policy, repeated, response_length, stop_rule, cc.batch_size, "collect: sampling", run.processes
    )
    samples = [Sample(prompt=p, response=t, policy="sft", has_stop=s) for p, t, s in zip(repeated, texts, stops)]
    if run.writer:
        write_jsonl(out / "samples.jsonl", samples)

    items = [(p, texts[i * K : (i + 1) * K]) for i, p in enumerate(prompts)]
    if cc.labeler == "judge":
        # 2'. a pairwise judge compares every pair of each prompt's K responses in both orders (rlhf/judges/labeler.py);
        # its win counts are stored as meta["gold"]

        comparisons = label_many(
            JudgeLabeler(make_judge(cfg.judge, resolve_placement(cfg.model)), seed=cfg.seed), items, cc.kind
        )
        return _write_comparisons(
            run,
            cfg,
            comparisons,
            {
                "n_prompts": len(prompts),
                "responses_per_prompt": K,
                "kind": cc.kind,
                "labeler": "judge",
                "judge": cfg.judge.kind,
                "no_stop_fraction": 1 - sum(stops) / len(stops),
            },
        )

    # 2. the labeler compares the K responses of each prompt (gold scores computed once, in batches)
    gold = run.processes.map_rows(task.gold_scorer, repeated, texts)  # each process scores its rows
    known = {(p, t): g for p, t, g in zip(repeated, texts, gold)}
    labeler = SimulatedLabeler(
        lambda ps, rs: [known[(p, r)] for p, r in zip(ps, rs)], temperature=cc.labeler_temperature, seed=cfg.seed
    )
    comparisons = label_many(labeler, items, cc.kind)

    # 3. gold scores beside each comparison, so held-out accuracy is measured against the noise-free gold labeler
    comparisons = [
        Comparison(**{**c.to_dict(), "meta": {**c.meta, "gold": list(gold[i * K : (i + 1) * K])}})
        for i, c in enumerate(comparisons)
    ]
    return _write_comparisons(
        run,
        cfg,
        comparisons,
        {
            "n_prompts": len(prompts),
            "responses_per_prompt": K,
            "kind": cc.kind,
            "no_stop_fraction": 1 - sum(stops) / len(stops),
        },
    )


def _write_comparisons(run: RunDir, cfg: RunConfig, comparisons: list[Comparison], info: dict) -> dict:
    """Split off the held-out prompts, write both files and mark the stage done."""
    train, heldout = split_heldout(comparisons, cfg.collect.heldout_fraction, cfg.seed)
    if run.writer:
        write_jsonl(run.stage(STAGE) / "comparisons.jsonl", train)
        write_jsonl(run.stage(STAGE) / "heldout.jsonl", heldout)
    info = {**info, "n_train": len(train), "n_heldout": len(heldout)}
    run.mark_done(STAGE, info)
    return info
