"""The three tasks (sentiment, tldr, dialogue): `get_task(name, **options)` builds one `Task`."""

from __future__ import annotations

from typing import Any

from rlhf.tasks.base import Task, find_stop_index

TASK_NAMES = ("sentiment", "tldr", "dialogue")


def get_task(name: str, **options: Any) -> Task:
    """The task called `name`; options go to its make_* function:
    sentiment: response_length, stop_min_tokens, stop_strings;
    tldr: response_length, stop_min_tokens, count_tokens, max_query_tokens;
    dialogue: response_length, stop_min_tokens."""
    if name == "sentiment":
        from rlhf.tasks.sentiment import make_sentiment_task as make_task
    elif name == "tldr":
        from rlhf.tasks.tldr import make_tldr_task as make_task
    elif name == "dialogue":
        from rlhf.tasks.dialogue import make_dialogue_task as make_task
    else:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASK_NAMES)}")
    try:
        return make_task(**options)
    except TypeError as error:
        raise ValueError(f"task {name!r}: bad options {sorted(options)} ({error})") from None


__all__ = ["TASK_NAMES", "Task", "find_stop_index", "get_task"]
