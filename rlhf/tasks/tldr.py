"""Stiennon et al. (2020) TL;DR summarization: the query format, truncation of long posts to a token
budget, and prompts/demonstrations from a jsonl(.gz) file or a Hugging Face hub dataset."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

from rlhf.data.importers import format_tldr_query
from rlhf.data.io import iter_rows
from rlhf.data.records import Demonstration, Prompt
from rlhf.tasks.base import Task, require_text_field, row_id, take_first_shuffled

TokenCounter = Callable[[str], int]

TLDR_HUB_NAME = "CarperAI/openai_summarize_tldr"  # fields: prompt (an already formatted query), label (summary)
TLDR_RESPONSE_LENGTH = 48  # Stiennon et al. 2020: summaries of at most 48 tokens
TLDR_STOP_STRINGS = ("\n",)
TLDR_STOP_MIN_TOKENS = 1
TLDR_MAX_QUERY_TOKENS = 512  # Stiennon et al. 2020: posts cut so the query fits in 512 tokens
WORDS_TO_TOKENS = 1.3  # rough tokens per whitespace word for the default counter
_HUB_QUERY = re.compile(
    r"\ASUBREDDIT: r/(?P<subreddit>[^\n]*)\nTITLE: (?P<title>[^\n]*)\nPOST: (?P<post>.*)\nTL;DR:\s*\Z", re.S
)

_POST_OF_QUERY = re.compile(r"(?:\A|\n)POST: ?(?P<post>.*?)\s*(?:TL;DR:\s*)?\Z", re.S)


def approximate_token_count(text: str) -> int:
    """Default token counter when no tokenizer is given: ceil(1.3 x whitespace words)."""
    return math.ceil(len(text.split()) * WORDS_TO_TOKENS)


def _last_fitting(cuts: list[int], fits: Callable[[int], bool]) -> int | None:
    """The largest cut in the ascending list `cuts` with fits(cut), by binary search
    (assumes that a longer prefix of the post never has fewer tokens); None when none fits."""
    low, high, found = 0, len(cuts) - 1, None
    while low <= high:
        middle = (low + high) // 2
        if fits(cuts[middle]):
            found, low = cuts[middle], middle + 1
        else:
            high = middle - 1
    return found


def truncate_post_to_fit(
    subreddit: str,
    title: str,
    post: str,
    count_tokens: TokenCounter,
    max_query_tokens: int = TLDR_MAX_QUERY_TOKENS,
) -> str:
    """The post, cut so the whole query has at most max_query_tokens tokens (Stiennon et al. 2020; Ziegler et al. 2019 §3.2):
    at the last newline that fits, else at the last space that fits, else at the last character that fits.
    Trailing whitespace of a cut post is removed. Raises if even an empty post does not fit."""

    def fits(cut: int) -> bool:
        return count_tokens(format_tldr_query(subreddit, title, post[:cut].rstrip())) <= max_query_tokens

    if count_tokens(format_tldr_query(subreddit, title, post)) <= max_query_tokens:
        return post
    if not fits(0):
        raise ValueError(
            f"truncate_post_to_fit: the query without its post already exceeds {max_query_tokens} tokens "
            f"(subreddit {subreddit!r}, title {title[:60]!r})"
        )
    for separator in ("\n", " "):
        cuts = [index for index, char in enumerate(post) if char == separator and post[:index].strip()]
        cut = _last_fitting(cuts, fits)
        if cut is not None:
            return post[:cut].rstrip()
    cut = _last_fitting(list(range(len(post) + 1)), fits)
    assert cut is not None, "an empty post fits, so some character cut must fit"
    return post[:cut].rstrip()


def stable_unit_hash(post_id: str) -> float:
    """The first 8 bytes of SHA-256 of the id (UTF-8), big-endian, over 2^64: a number in [0, 1) that is the same on
    every machine and Python version (unlike `hash`)."""
    return int.from_bytes(hashlib.sha256(post_id.encode("utf-8")).digest()[:8], "big") / 2**64


def in_split(post_id: str, split: str, test_fraction: float) -> bool:
    """Whether the row belongs to `split` when a file is split by id: `test` holds the ids whose
    stable_unit_hash < test_fraction, every other split the rest; with test_fraction 0 every row is in every split."""
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction: expected a share in [0, 1), got {test_fraction}")
    if test_fraction == 0.0:
        return True
    return (stable_unit_hash(post_id) < test_fraction) == (split == "test")


def parse_tldr_query(query: str, location: str) -> tuple[str, str, str]:
    """(subreddit, title, post) from an already formatted query such as the hub's `prompt` field."""
    match = _HUB_QUERY.match(query.lstrip())
    if match is None:
        raise ValueError(
            f"{location}: field 'prompt' is not of the form 'SUBREDDIT: r/...\\nTITLE: ...\\nPOST: ...\\nTL;DR:'"
        )
    return match["subreddit"], match["title"], match["post"]


def tldr_post(query: str) -> str:
    """The post inside a TL;DR query: the text after the first line that starts with "POST:", up to a final
    "TL;DR:" (left out, with surrounding whitespace). Raises when the query has no "POST:" line."""
    match = _POST_OF_QUERY.search(query)
    if match is None:
        raise ValueError(f"TL;DR query {query[:60]!r}: expected a line starting with 'POST:'")
    return match["post"]


def _tldr_posts(source: str, split: str) -> Iterator[tuple[str, str, str, str, str]]:
    """(id, subreddit, title, post, summary) per row: rows with fields subreddit, title, post, summary
    (and optionally id), as in a local jsonl(.gz) file (the file is the split; `split` is ignored), or rows
    with fields prompt (an already formatted query), label (the summary), as in the hub dataset."""
    for index, (location, row) in enumerate(iter_rows(source, split)):
        if "prompt" in row and "post" not in row:
            subreddit, title, post = parse_tldr_query(require_text_field(row, "prompt", location), location)
            summary = require_text_field(row, "label", location)
        else:
            subreddit, title, post, summary = (
                require_text_field(row, field, location) for field in ("subreddit", "title", "post", "summary")
            )
        yield row_id(row, source, index), subreddit.strip(), title.strip(), post.strip(), summary.strip()


def _query_and_summary(
    source: str, split: str, count_tokens: TokenCounter | None, max_query_tokens: int, test_fraction: float = 0.0
) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(id, truncated query, summary, meta) for every post of the source (of `split`, when test_fraction > 0)."""
    counter = count_tokens or approximate_token_count
    rows = []
    for post_id, subreddit, title, post, summary in _tldr_posts(source, split):
        if not in_split(str(post_id), split, test_fraction):
            continue
        kept_post = truncate_post_to_fit(subreddit, title, post, counter, max_query_tokens)
        meta = {"subreddit": subreddit, "title": title, "summary": summary, "truncated": kept_post != post}
        rows.append((post_id, format_tldr_query(subreddit, title, kept_post), summary, meta))
    return rows


def load_tldr_prompts(
    split: str,
    n: int | None = None,
    source: str | None = None,
    seed: int = 0,
    count_tokens: TokenCounter | None = None,
    max_query_tokens: int = TLDR_MAX_QUERY_TOKENS,
    test_fraction: float = 0.0,
) -> list[Prompt]:
    """The first n of a seeded shuffle of the TL;DR queries of `source` (default: the hub dataset); with
    test_fraction > 0 only the rows of `split` by a stable hash of their id (see `in_split`)."""
    source = source or TLDR_HUB_NAME
    prompts = [
        Prompt(text=query, id=str(post_id), meta=meta)
        for post_id, query, _summary, meta in _query_and_summary(
            source, split, count_tokens, max_query_tokens, test_fraction
        )
    ]
    return take_first_shuffled(prompts, n, seed, f"tldr prompts ({source}, {split})")


def load_tldr_demonstrations(
    split: str,
    n: int | None = None,
    source: str | None = None,
    seed: int = 0,
    count_tokens: TokenCounter | None = None,
    max_query_tokens: int = TLDR_MAX_QUERY_TOKENS,
    test_fraction: float = 0.0,
) -> list[Demonstration]:
    """(query, " " + the author's TL;DR) pairs, the first n of a seeded shuffle; posts with an empty
    summary are left out (nothing to imitate)."""
    source = source or TLDR_HUB_NAME
    demonstrations = [
        Demonstration(prompt=query, response=" " + summary, id=str(post_id))
        for post_id, query, summary, _meta in _query_and_summary(
            source, split, count_tokens, max_query_tokens, test_fraction
        )
        if summary
    ]
    return take_first_shuffled(demonstrations, n, seed, f"tldr demonstrations ({source}, {split})")


def make_tldr_task(
    response_length: int = TLDR_RESPONSE_LENGTH,
    stop_min_tokens: int = TLDR_STOP_MIN_TOKENS,
    count_tokens: TokenCounter | None = None,
    max_query_tokens: int = TLDR_MAX_QUERY_TOKENS,
    test_fraction: float = 0.0,
) -> Task:
    """The TL;DR task; a summary ends at its first newline (from token 1 on). No simulated gold scorer: comparisons
    come from people (collect.comparisons_path) or from a pairwise judge (collect.labeler: judge)."""
    in_split("", "train", test_fraction)  # checks the share
    return Task(
        name="tldr",
        response_length=response_length,
        stop_strings=TLDR_STOP_STRINGS,
        stop_min_tokens=stop_min_tokens,
        load_prompts=partial(
            load_tldr_prompts, count_tokens=count_tokens, max_query_tokens=max_query_tokens, test_fraction=test_fraction
        ),
        load_demonstrations=partial(
            load_tldr_demonstrations,
            count_tokens=count_tokens,
            max_query_tokens=max_query_tokens,
            test_fraction=test_fraction,
        ),
        gold_scorer=None,
    )
