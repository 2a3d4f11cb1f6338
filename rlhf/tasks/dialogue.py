"""Anthropic HH-RLHF dialogue: the prompt is a conversation up to and including its last
"\\n\\nAssistant:", the response is the assistant's next turn; rows from jsonl(.gz) or the hub."""

from __future__ import annotations

from collections.abc import Iterator

from rlhf.data.importers import HH_ASSISTANT_TURN, hh_rlhf_prompt
from rlhf.data.io import iter_rows
from rlhf.data.records import Demonstration, Prompt
from rlhf.tasks.base import Task, require_text_field, row_id, take_first_shuffled

DIALOGUE_HUB_NAME = "Anthropic/hh-rlhf"
DIALOGUE_RESPONSE_LENGTH = 64
# The stop rule looks at one token's decoded text at a time, and tokenizers split "\n\nHuman:" over
# several tokens, so the stop string is the shorter "Human:". It fires only when a tokenizer emits
# "Human:" (possibly with leading space/newlines) as one token; otherwise the fixed length ends the turn.
DIALOGUE_STOP_STRINGS = ("Human:",)
DIALOGUE_STOP_MIN_TOKENS = 0


def split_dialogue(dialogue: str, location: str = "dialogue") -> tuple[str, str]:
    """(prompt, response): the prompt is everything up to and including the last "\\n\\nAssistant:",
    the response is the rest (it usually starts with a space)."""
    if HH_ASSISTANT_TURN not in dialogue:
        raise ValueError(f"{location}: field 'chosen' contains no {HH_ASSISTANT_TURN!r} turn")
    prompt = hh_rlhf_prompt(dialogue)
    return prompt, dialogue[len(prompt) :]


def _chosen_dialogues(source: str, split: str) -> Iterator[tuple[str, str, str]]:
    """(id, prompt, chosen response) per row with a `chosen` field, from a local jsonl(.gz)/parquet file
    (the file is the split; `split` is ignored) or the hub dataset `source` (split passed to the hub)."""
    for index, (location, row) in enumerate(iter_rows(source, split)):
        prompt, response = split_dialogue(require_text_field(row, "chosen", location), location)
        yield row_id(row, source, index), prompt, response


def load_dialogue_prompts(split: str, n: int | None = None, source: str | None = None, seed: int = 0) -> list[Prompt]:
    """The first n of a seeded shuffle of the dialogue prompts of `source` (default: the hub dataset)."""
    source = source or DIALOGUE_HUB_NAME
    prompts = [
        Prompt(text=prompt, id=dialogue_id) for dialogue_id, prompt, _response in _chosen_dialogues(source, split)
    ]
    return take_first_shuffled(prompts, n, seed, f"dialogue prompts ({source}, {split})")


def load_dialogue_demonstrations(
    split: str, n: int | None = None, source: str | None = None, seed: int = 0
) -> list[Demonstration]:
    """(prompt, chosen assistant turn) pairs, the first n of a seeded shuffle; rows whose chosen
    turn is empty are left out (nothing to imitate)."""
    source = source or DIALOGUE_HUB_NAME
    demonstrations = [
        Demonstration(prompt=prompt, response=response, id=dialogue_id)
        for dialogue_id, prompt, response in _chosen_dialogues(source, split)
        if response.strip()
    ]
    return take_first_shuffled(demonstrations, n, seed, f"dialogue demonstrations ({source}, {split})")


def make_dialogue_task(
    response_length: int = DIALOGUE_RESPONSE_LENGTH,
    stop_min_tokens: int = DIALOGUE_STOP_MIN_TOKENS,
) -> Task:
    """The HH-RLHF dialogue task (the hub default loads all HH subsets together). No simulated gold."""
    return Task(
        name="dialogue",
        response_length=response_length,
        stop_strings=DIALOGUE_STOP_STRINGS,
        stop_min_tokens=stop_min_tokens,
        load_prompts=load_dialogue_prompts,
        load_demonstrations=load_dialogue_demonstrations,
        gold_scorer=None,
    )
