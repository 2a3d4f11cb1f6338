"""Your own task: prompts and demonstrations from your files or a hub dataset in any format TRL documents
(prompt-only, prompt-completion, preference; plain text or conversational messages), with your column names.
Conversational prompts are rendered with the model's chat template (generation prompt added) and a response ends
at the template's end of turn. Evaluation prompts come from a test file or split, or a held-out share of a single
file chosen by a stable hash of each prompt, so they are never training prompts unless asked for."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rlhf.data.formats import Example, is_conversational, read_examples
from rlhf.data.records import Demonstration, Prompt
from rlhf.tasks.base import Task, take_first_shuffled

CUSTOM_RESPONSE_LENGTH = 64
HASH_BUCKETS = 10_000

Messages = list[dict]
Render = Callable[[Messages], str]  # a conversation (ending on a user turn) -> the prompt text the policy continues


def in_test_share(prompt_text: str, test_fraction: float) -> bool:
    """Whether a prompt belongs to the held-out share: a CRC32 of its text, so the split is the same in every run
    and every copy of a prompt (and all its completions) falls on one side."""
    return zlib.crc32(prompt_text.encode("utf-8")) % HASH_BUCKETS < round(test_fraction * HASH_BUCKETS)


def plain_render(messages: Messages) -> str:
    """Messages as "role: content" lines and an "assistant:" line to continue (when no chat template is used)."""
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


def response_text(value: str | Messages, where: str) -> str:
    """A completion's text: the string itself, or the content of a conversational completion's assistant turns."""
    if isinstance(value, str):
        return value
    turns = [m["content"] for m in value if m.get("role") == "assistant"]
    if not turns:
        raise ValueError(f"{where}: the completion has no assistant turn (roles: {[m.get('role') for m in value]})")
    return "".join(turns)


@dataclass(frozen=True)
class CustomData:
    """Where a custom task's rows come from, and how its prompts are turned into text."""

    source: str
    subset: str = ""
    split: str = "train"
    demonstrations: str = ""
    test_source: str = ""
    test_split: str = "test"
    test_fraction: float = 0.0
    eval_on_train: bool = False
    columns: tuple[tuple[str, str], ...] = ()
    format: str = "auto"
    render: Render = plain_render

    def examples(self, source: str, split: str) -> list[Example]:
        return read_examples(source, split, self.subset, dict(self.columns), self.format)

    def prompt_text(self, example: Example) -> str:
        if example.prompt is None:
            raise ValueError(f"{example.where}: no prompt (an implicit-prompt preference row with nothing shared?)")
        return self.render(example.prompt) if is_conversational(example.prompt) else example.prompt

    def split_examples(self, source: str, split: str) -> list[Example]:
        """The rows of `split` (train or test) of `source`, the test share and train rest of one file or split
        when task.test_fraction > 0."""
        if split not in ("train", "test"):
            raise ValueError(f"task 'custom': unknown split {split!r}; expected train or test")
        if split == "train" or self.test_fraction > 0:
            rows = self.examples(source, self.split)
            if self.test_fraction > 0:
                rows = [e for e in rows if in_test_share(self.prompt_text(e), self.test_fraction) == (split == "test")]
            return rows
        if self.test_source:
            return self.examples(self.test_source, self.test_split)
        if self.eval_on_train:
            return self.examples(source, self.split)
        if is_local(source):
            raise ValueError(
                f"task 'custom': no evaluation prompts for {source}: set task.test_fraction (a held-out share of it), "
                "task.test_source (a test file), or task.eval_on_train=true to evaluate on training prompts"
            )
        return self.examples(source, self.test_split)

    def load_prompts(self, split: str, n: int | None = None, source: str | None = None, seed: int = 0) -> list[Prompt]:
        """The first n of a seeded shuffle of the distinct prompts of `split`, in the order they first appear."""
        source = source or self.source
        texts = dict.fromkeys(self.prompt_text(e) for e in self.split_examples(source, split))
        prompts = [Prompt(text=t, id=f"custom-{zlib.crc32(t.encode('utf-8')):08x}") for t in texts]
        return take_first_shuffled(prompts, n, seed, f"custom prompts ({source}, {split})")

    def load_demonstrations(
        self, split: str, n: int | None = None, source: str | None = None, seed: int = 0
    ) -> list[Demonstration]:
        """(prompt, completion) pairs of task.demonstrations (or the source): prompt-completion rows, or the chosen
        response of preference rows; the first n of a seeded shuffle."""
        source = self.demonstrations or source or self.source
        demonstrations = []
        for i, e in enumerate(self.split_examples(source, split)):
            target = e.completion if e.completion is not None else e.chosen
            if target is None:
                raise ValueError(
                    f"{e.where}: a demonstration needs a completion (or a chosen response); this file has prompts "
                    "only: give demonstrations in task.demonstrations, or set sft.n_demonstrations=0"
                )
            demonstrations.append(
                Demonstration(prompt=self.prompt_text(e), response=response_text(target, e.where), id=f"demo-{i}")
            )
        return take_first_shuffled(demonstrations, n, seed, f"custom demonstrations ({source}, {split})")


def is_local(source: str) -> bool:
    """A file or folder path rather than a hub dataset name."""
    return Path(source).exists()


def chat_render(tokenizer) -> Render:
    """The tokenizer's chat template with the generation prompt, as the text the policy continues. A BOS token the
    template writes is dropped when the tokenizer adds it anyway, so it is not there twice."""
    bos = tokenizer.bos_token
    adds_bos = bos is not None and tokenizer("x", add_special_tokens=True).input_ids[:1] == [tokenizer.bos_token_id]

    def render(messages: Messages) -> str:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text[len(bos) :] if adds_bos and text.startswith(bos) else text

    return render


def end_of_turn(tokenizer) -> str | None:
    """The text the chat template writes after an assistant message (its first line, e.g. "<|im_end|>" or
    "<|eot_id|>"), or None when there is none or it is the EOS token (EOS ends a response already)."""
    probe = "PROBE-7c1d"
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": probe}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    tail = text.split(probe, 1)[1].strip().split("\n")[0].strip() if probe in text else ""
    return tail if tail and tail != tokenizer.eos_token else None


def make_custom_task(
    data: CustomData,
    response_length: int = CUSTOM_RESPONSE_LENGTH,
    stop_min_tokens: int = 0,
    stop_strings: tuple[str, ...] = (),
    gold_scorer=None,
) -> Task:
    """The custom task over `data`; a gold scorer only when the user gives one (task.gold: python:...)."""
    if not data.source:
        raise ValueError("task 'custom': set task.source to your prompts (a file or hub dataset)")
    return Task(
        name="custom",
        response_length=response_length,
        stop_strings=stop_strings,
        stop_min_tokens=stop_min_tokens,
        load_prompts=data.load_prompts,
        load_demonstrations=data.load_demonstrations,
        gold_scorer=gold_scorer,
    )
