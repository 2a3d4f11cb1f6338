"""Ziegler et al. (2019) §3.1.1 "mock sentiment": continue a movie-review opening; the gold labeler is
VADER's compound sentiment of the continuation. Built-in prompts by default, IMDB reviews optionally."""

from __future__ import annotations

import re
import zlib
from functools import lru_cache
from typing import Any

from rlhf.data.io import iter_rows
from rlhf.data.records import Demonstration, Prompt
from rlhf.models.device import Placement
from rlhf.tasks.base import Task, check_split, require_text_field, row_id, take_first_shuffled
from rlhf.tasks.sentiment_lm_gold import LMSentimentScorer
from rlhf.tasks.sentiment_prompts import builtin_demonstration_pairs, builtin_prompts

SENTIMENT_SPLITS = ("train", "test")
SENTIMENT_RESPONSE_LENGTH = 24  # Ziegler et al. 2019 §3: 24-token continuations
SENTIMENT_STOP_STRINGS = (".", "!", "?")
SENTIMENT_STOP_MIN_TOKENS = 8
IMDB_MIN_OPENING_WORDS, IMDB_MAX_OPENING_WORDS = 8, 12
IMDB_DEMONSTRATION_MIN_WORDS, IMDB_DEMONSTRATION_MAX_WORDS = 12, 20
_BR_TAG = re.compile(r"<br\s*/?>", flags=re.IGNORECASE)
_SENTENCE_END = (".", "!", "?")


@lru_cache(maxsize=1)
def vader_analyzer() -> Any:
    """One shared VADER analyzer per process (building it parses the lexicon, ~0.1 s)."""
    # lazy: a heavy import, needed for the VADER gold scorer only
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def vader_gold_scores(prompts: list[str], responses: list[str]) -> list[float]:
    """Gold score of each response: VADER compound sentiment of the response text alone, in [-1, 1]
    (stands in for Ziegler §3.1.1's sentiment classifier; the prompt is ignored)."""
    if len(prompts) != len(responses):
        raise ValueError(f"vader_gold_scores: {len(prompts)} prompts but {len(responses)} responses")
    analyzer = vader_analyzer()
    return [float(analyzer.polarity_scores(response)["compound"]) for response in responses]


def clean_review_text(text: str) -> str:
    """Replace IMDB's `<br />` tags with spaces and collapse runs of whitespace."""
    return " ".join(_BR_TAG.sub(" ", text).split())


def opening_word_count(review_id: str) -> int:
    """How many words of a review make its opening: 8-12, fixed per review by a CRC32 of its id."""
    spread = IMDB_MAX_OPENING_WORDS - IMDB_MIN_OPENING_WORDS + 1
    return IMDB_MIN_OPENING_WORDS + zlib.crc32(review_id.encode("utf-8")) % spread


def _imdb_reviews(source: str, split: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(id, cleaned text, meta) of every review of an IMDB jsonl(.gz)/parquet file (the file is the split;
    `split` is ignored) or of the hub dataset `source` (e.g. "stanfordnlp/imdb"; split passed to the hub)."""
    reviews = []
    for index, (location, row) in enumerate(iter_rows(source, split)):
        text = clean_review_text(require_text_field(row, "text", location))
        if not text:
            raise ValueError(f"{location}: field 'text' is empty after removing <br /> tags")
        meta = {key: row[key] for key in ("label", "rating") if key in row}
        reviews.append((row_id(row, source, index), text, meta))
    return reviews


def imdb_opening_prompts(source: str, split: str) -> list[Prompt]:
    """One prompt per review: its first 8-12 words (see `opening_word_count`)."""
    prompts = []
    for review_id, text, meta in _imdb_reviews(source, split):
        words = text.split()
        opening = " ".join(words[: opening_word_count(review_id)])
        prompts.append(Prompt(text=opening, id=f"imdb-{review_id}", meta={**meta, "source": source}))
    return prompts


def imdb_continuation(words: list[str], start: int) -> str | None:
    """The words from `start` up to the first sentence end, as " ..." with 12-20 words; None if there is none."""
    for end in range(start + IMDB_DEMONSTRATION_MIN_WORDS - 1, min(len(words), start + IMDB_DEMONSTRATION_MAX_WORDS)):
        if words[end].endswith(_SENTENCE_END):
            return " " + " ".join(words[start : end + 1])
    return None


def imdb_demonstrations(source: str, split: str) -> list[Demonstration]:
    """(opening, the review's own next 12-20 words up to a sentence end) for positive reviews (label 1);
    reviews whose sentence does not end within that window are left out."""
    demonstrations = []
    for review_id, text, meta in _imdb_reviews(source, split):
        if meta.get("label") != 1:
            continue
        words = text.split()
        opening_length = opening_word_count(review_id)
        continuation = imdb_continuation(words, opening_length)
        if continuation is not None:
            opening = " ".join(words[:opening_length])
            demonstrations.append(Demonstration(prompt=opening, response=continuation, id=f"imdb-{review_id}"))
    return demonstrations


def load_sentiment_prompts(split: str, n: int | None = None, source: str | None = None, seed: int = 0) -> list[Prompt]:
    """The first n prompts of a seeded shuffle of the built-in openings of `split` (or of IMDB `source`)."""
    check_split(split, SENTIMENT_SPLITS, "sentiment")
    if source is None:
        prompts = [
            Prompt(text=text, id=f"sentiment-{split}-{index}", meta={"tone": tone})
            for index, (text, tone) in enumerate(builtin_prompts(split))
        ]
    else:
        prompts = imdb_opening_prompts(source, split)
    return take_first_shuffled(prompts, n, seed, f"sentiment prompts ({source or 'built-in'}, {split})")


def load_sentiment_demonstrations(
    split: str, n: int | None = None, source: str | None = None, seed: int = 0
) -> list[Demonstration]:
    """The first n of a seeded shuffle of the built-in (opening, continuation) pairs of `split`
    (or, with an IMDB `source`, of openings of positive reviews with their own continuation)."""
    check_split(split, SENTIMENT_SPLITS, "sentiment")
    if source is None:
        demonstrations = [
            Demonstration(prompt=prompt, response=response, id=f"sentiment-demo-{split}-{index}")
            for index, (prompt, response) in enumerate(builtin_demonstration_pairs(split))
        ]
    else:
        demonstrations = imdb_demonstrations(source, split)
    return take_first_shuffled(demonstrations, n, seed, f"sentiment demonstrations ({source or 'built-in'}, {split})")


def make_sentiment_task(
    response_length: int = SENTIMENT_RESPONSE_LENGTH,
    stop_min_tokens: int = SENTIMENT_STOP_MIN_TOKENS,
    stop_strings: tuple[str, ...] = SENTIMENT_STOP_STRINGS,
    gold: str = "vader",
    placement: Placement | None = None,
) -> Task:
    """The sentiment task; as in Ziegler §3, a continuation ends at a sentence end (here: from token 8 on).
    `gold`: "vader" (VADER's compound score) or "lm" (a zero-shot classifier's log-odds, `sentiment_lm_gold`)."""
    if gold == "vader":
        gold_scorer = vader_gold_scores
    elif gold == "lm":
        gold_scorer = LMSentimentScorer(placement=placement)
    else:
        raise ValueError(f"sentiment task: gold must be 'vader' or 'lm', got {gold!r}")
    return Task(
        name="sentiment",
        response_length=response_length,
        stop_strings=tuple(stop_strings),
        stop_min_tokens=stop_min_tokens,
        load_prompts=load_sentiment_prompts,
        load_demonstrations=load_sentiment_demonstrations,
        gold_scorer=gold_scorer,
    )
