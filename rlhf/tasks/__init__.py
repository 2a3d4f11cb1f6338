"""The three tasks (sentiment, tldr, dialogue): `get_task(name, **options)` builds one `Task`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rlhf.config import RunConfig
from rlhf.data.records import Prompt
from rlhf.models.device import resolve_placement
from rlhf.models.loading import base_model_path
from rlhf.models.provision import load_tokenizer
from rlhf.models.sampling import StopRule
from rlhf.tasks.base import Task
from rlhf.tasks.dialogue import make_dialogue_task
from rlhf.tasks.sentiment import make_sentiment_task
from rlhf.tasks.tldr import make_tldr_task

TASK_NAMES = ("sentiment", "tldr", "dialogue")


def get_task(name: str, **options: Any) -> Task:
    """The task called `name`; options go to its make_* function:
    sentiment: response_length, stop_min_tokens, stop_strings, gold, placement (of the `lm` gold scorer);
    tldr: response_length, stop_min_tokens, count_tokens, max_query_tokens;
    dialogue: response_length, stop_min_tokens."""
    make_task = {"sentiment": make_sentiment_task, "tldr": make_tldr_task, "dialogue": make_dialogue_task}.get(name)
    if make_task is None:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASK_NAMES)}")
    try:
        return make_task(**options)
    except TypeError as error:
        raise ValueError(f"task {name!r}: bad options {sorted(options)} ({error})") from None


def task_for(cfg: RunConfig):
    """The configured task (with its gold scorer option, when set; for tldr its query budget, counted with the
    model's tokenizer, and its split of a local file by id)."""
    options = {"gold": cfg.task.gold} if cfg.task.gold else {}
    if cfg.task.gold == "lm":  # the zero-shot classifier runs where the models do
        options["placement"] = resolve_placement(cfg.model)
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


def held_out_prompts(
    cfg: RunConfig, n: int | None = None, split: str = "test", keep: Callable[[Prompt], bool] | None = None
) -> list[Prompt]:
    """The first n (default task.n_eval_prompts) of a seeded shuffle of the task's `split` prompts that pass `keep`:
    the prompts every policy is evaluated on (best-of-N, the evaluation stage and the experiments use this list)."""
    what, n = ("task.n_eval_prompts", cfg.task.n_eval_prompts) if n is None else ("n", n)
    prompts = task_for(cfg).load_prompts(split, n=None, source=prompt_source(cfg), seed=cfg.seed)
    kept = [p for p in prompts if keep is None or keep(p)]
    if not 1 <= n <= len(kept):
        source = cfg.task.source or "the default source"
        raise ValueError(
            f"{what}: expected 1..{len(kept)} (prompts of split {split!r} of {source}"
            f"{' that pass the filter' if keep else ''}), got {n}"
        )
    return kept[:n]


def evaluation_prompts(cfg: RunConfig, n: int | None = None) -> list[str]:
    """The texts of `held_out_prompts(cfg, n)`."""
    return [p.text for p in held_out_prompts(cfg, n)]


__all__ = [
    "TASK_NAMES",
    "Task",
    "evaluation_prompts",
    "get_task",
    "held_out_prompts",
    "prompt_source",
    "task_and_stop_rule",
    "task_for",
]
