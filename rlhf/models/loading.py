"""Opening the models a stage needs from a run directory."""
from __future__ import annotations

import torch

from rlhf.config import RunConfig
from rlhf.models.provision import load_causal_lm, load_tokenizer, resolve_model
from rlhf.models.roles import Backbone
from rlhf.models.sampling import StopRule
from rlhf.run import RunDir


def set_threads(cfg: RunConfig) -> None:
    if cfg.model.threads > 0:
        torch.set_num_threads(cfg.model.threads)


def base_model_path(cfg: RunConfig) -> str:
    return resolve_model(cfg.model.name_or_path, cfg.model.cache_dir)


def sft_model_path(run: RunDir, cfg: RunConfig) -> str:
    """The SFT policy: RUN_DIR/sft/model, or the base model when SFT was skipped (n_demonstrations: 0)."""
    info = run.done_info("sft") if run.is_done("sft") else None
    if info is None:
        run.require("sft")
    return str(run.root / "sft" / "model") if info.get("trained") else base_model_path(cfg)


def open_backbone(cfg: RunConfig, path: str) -> Backbone:
    set_threads(cfg)
    tokenizer = load_tokenizer(path)
    model = load_causal_lm(path, tokenizer)
    m = cfg.model
    return Backbone(model, tokenizer, m.lora_r, m.lora_alpha, m.lora_target_modules, m.lora_top_layers)


def task_for(cfg: RunConfig):
    """The configured task (with its gold scorer option, when set; for tldr its query budget, counted with the
    model's tokenizer, and its split of a local file by id)."""
    from rlhf.tasks import get_task

    options = {"gold": cfg.task.gold} if cfg.task.gold else {}
    if cfg.task.max_query_tokens:
        options["max_query_tokens"] = cfg.task.max_query_tokens
    if cfg.task.test_fraction:
        options["test_fraction"] = cfg.task.test_fraction
    if cfg.task.name == "tldr":
        tokenizer = load_tokenizer(base_model_path(cfg))
        options["count_tokens"] = lambda text: len(tokenizer(text, add_special_tokens=True).input_ids)
    return get_task(cfg.task.name, **options)


def task_and_stop_rule(cfg: RunConfig, tokenizer):
    task = task_for(cfg)
    response_length = cfg.task.response_length or task.response_length
    min_tokens = task.stop_min_tokens if cfg.task.stop_min_tokens < 0 else cfg.task.stop_min_tokens
    return task, response_length, StopRule(tokenizer, task.stop_strings, min_tokens)


def prompt_source(cfg: RunConfig) -> str | None:
    return cfg.task.source or None
