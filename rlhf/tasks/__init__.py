"""The tasks (sentiment, tldr, dialogue, custom): `get_task(name, **options)` builds one `Task`."""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

from rlhf.config import RunConfig
from rlhf.data.records import Comparison, Prompt
from rlhf.models.device import resolve_placement
from rlhf.models.loading import base_model_path
from rlhf.models.provision import load_tokenizer
from rlhf.models.sampling import StopRule
from rlhf.tasks.base import GoldScorer, Task
from rlhf.tasks.custom import CustomData, chat_render, end_of_turn, make_custom_task, plain_render, response_text
from rlhf.tasks.dialogue import make_dialogue_task
from rlhf.tasks.sentiment import make_sentiment_task
from rlhf.tasks.tldr import make_tldr_task

TASK_NAMES = ("sentiment", "tldr", "dialogue", "custom")


def get_task(name: str, **options: Any) -> Task:
    """The task called `name`; options go to its make_* function:
    sentiment: response_length, stop_min_tokens, stop_strings, gold, placement (of the `lm` gold scorer);
    tldr: response_length, stop_min_tokens, count_tokens, max_query_tokens;
    dialogue: response_length, stop_min_tokens;
    custom: data (a CustomData), response_length, stop_min_tokens, stop_strings, gold_scorer."""
    make_task = {
        "sentiment": make_sentiment_task,
        "tldr": make_tldr_task,
        "dialogue": make_dialogue_task,
        "custom": make_custom_task,
    }.get(name)
    if make_task is None:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASK_NAMES)}")
    try:
        return make_task(**options)
    except TypeError as error:
        raise ValueError(f"task {name!r}: bad options {sorted(options)} ({error})") from None


def python_gold_scorer(spec: str) -> GoldScorer:
    """The function `python:MODULE:FUNCTION` names (task.gold), called as fn(prompts, responses) -> floats; the
    scores are checked to be one finite float per response."""
    _, module_name, function_name = spec.split(":")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"task.gold={spec}: cannot load {module_name}.{function_name} ({error})") from None

    def gold(prompts: list[str], responses: list[str]) -> list[float]:
        scores = [float(s) for s in function(prompts, responses)]
        if len(scores) != len(responses):
            raise ValueError(f"task.gold={spec}: returned {len(scores)} scores for {len(responses)} responses")
        return scores

    return gold


def custom_data(cfg: RunConfig) -> tuple[CustomData, str | None]:
    """The custom task's data, and the chat template's end of turn when one is used (else None): with
    task.chat_template auto and a tokenizer that has a template, conversational prompts are rendered by it."""
    t = cfg.task
    tokenizer = load_tokenizer(base_model_path(cfg))
    templated = t.chat_template == "auto" and bool(getattr(tokenizer, "chat_template", None))
    data = CustomData(
        source=t.source,
        subset=t.subset,
        split=t.split,
        demonstrations=t.demonstrations,
        test_source=t.test_source,
        test_split=t.test_split,
        test_fraction=t.test_fraction,
        eval_on_train=t.eval_on_train,
        columns=tuple(sorted(t.columns.items())),
        format=t.format,
        render=chat_render(tokenizer) if templated else plain_render,
    )
    return data, end_of_turn(tokenizer) if templated else None


def custom_task_options(cfg: RunConfig) -> dict[str, Any]:
    """The custom task's options: its data, and the task's stop strings with the chat template's end of turn."""
    data, turn_end = custom_data(cfg)
    extra = (turn_end,) if turn_end and turn_end not in cfg.task.stop_strings else ()
    return {"data": data, "stop_strings": tuple(cfg.task.stop_strings) + extra}


def task_comparisons(cfg: RunConfig, comparisons: list[Comparison]) -> list[Comparison]:
    """Comparisons as the task's policy sees its prompts: for the custom task, conversational ones (their messages
    kept in meta["messages"]) get the prompt text the task renders and their responses' assistant text."""
    if cfg.task.name != "custom" or not any("messages" in c.meta for c in comparisons):
        return comparisons
    data, _ = custom_data(cfg)
    out = []
    for i, c in enumerate(comparisons):
        messages = c.meta.get("messages")
        if messages:
            where = f"{cfg.collect.comparisons_path}: comparison {i}"
            responses = [response_text(r, where) for r in messages["responses"]]
            c = dataclasses.replace(c, prompt=data.render(messages["prompt"]), responses=responses)
        out.append(c)
    return out


def task_for(cfg: RunConfig):
    """The configured task (with its gold scorer option, when set; for tldr its query budget, counted with the
    model's tokenizer, and its split of a local file by id; for custom its data and chat template). A
    `python:MODULE:FUNCTION` gold scorer replaces the task's own."""
    builtin_gold = cfg.task.gold if cfg.task.gold in ("vader", "lm") else ""
    options = {"gold": builtin_gold} if builtin_gold else {}
    if builtin_gold == "lm":  # the zero-shot classifier runs where the models do
        options["placement"] = resolve_placement(cfg.model)
    if cfg.task.max_query_tokens:
        options["max_query_tokens"] = cfg.task.max_query_tokens
    if cfg.task.test_fraction and cfg.task.name != "custom":
        options["test_fraction"] = cfg.task.test_fraction
    if cfg.task.name == "tldr":
        tokenizer = load_tokenizer(base_model_path(cfg))
        options["count_tokens"] = lambda text: len(tokenizer(text, add_special_tokens=True).input_ids)
    if cfg.task.name == "custom":
        options.update(custom_task_options(cfg))
    task = get_task(cfg.task.name, **options)
    if cfg.task.stop_strings and cfg.task.name != "custom":
        task = dataclasses.replace(task, stop_strings=tuple(cfg.task.stop_strings))
    if cfg.task.gold.startswith("python:"):
        task = dataclasses.replace(task, gold_scorer=python_gold_scorer(cfg.task.gold))
    return task


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
    "task_comparisons",
    "task_for",
]
