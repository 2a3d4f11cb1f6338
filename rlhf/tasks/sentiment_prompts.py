"""Built-in movie-review openings and human-style continuations for the sentiment task, composed
deterministically from hand-written fragments (no download needed); see `builtin_prompts`."""

from __future__ import annotations

import random
import zlib
from functools import lru_cache
from itertools import product

MIN_PROMPT_WORDS, MAX_PROMPT_WORDS = 6, 20
MIN_RESPONSE_WORDS, MAX_RESPONSE_WORDS = 12, 20
TEST_FRACTION_DENOMINATOR = 5  # one prompt in five (by a stable hash of its text) goes to "test"
RESPONSE_CHOICE_SEED = 2019  # fixed: which continuation each built-in prompt gets never changes

# (singular, plural) film kinds.
GENRES: tuple[tuple[str, str], ...] = (
    ("thriller", "thrillers"),
    ("romantic comedy", "romantic comedies"),
    ("war film", "war films"),
    ("animated feature", "animated films"),
    ("low-budget horror movie", "horror movies"),
    ("courtroom drama", "courtroom dramas"),
    ("science fiction epic", "science fiction films"),
    ("western", "westerns"),
    ("musical", "musicals"),
    ("documentary", "documentaries"),
    ("period piece", "period dramas"),
    ("heist movie", "heist movies"),
)

# Neutral openings: "{viewing} {genre} {occasion}, and {turn}".
NEUTRAL_VIEWINGS = ("I rented this", "My sister and I watched this", "I finally got around to this")
NEUTRAL_OCCASIONS = ("on a rainy Sunday", "at a half-empty matinee", "after a tiring week at work")
NEUTRAL_TURNS = ("by the end", "halfway through", "to my surprise")

# Mildly negative openings: "{doubt}, {turn}" where the doubt names the genre.
DOUBTS = (
    "I went into this {genre} expecting another tired cash grab",
    "The trailer for this {genre} made it look cheap and rushed",
    "The first twenty minutes of this {genre} are slow and a little clumsy",
    "Critics were fairly harsh about this {genre} when it came out",
)
DOUBT_TURNS = ("but", "but by the end", "but somewhere around the middle", "but I stayed with it and")

# Mildly positive openings: "{hope}, {turn}".
HOPES = (
    "I had heard good things about this {genre} from friends",
    "My whole family had been looking forward to this {genre} for months",
    "The opening shot of this {genre} is quietly beautiful",
    "The cast of this {genre} is full of familiar faces",
    "Everyone at work kept telling me to see this {genre}",
)
HOPE_TURNS = ("and", "and sure enough", "and by the closing credits", "and happily")

# Neutral openings from a fan of the genre: "As a longtime fan of {plural}, I watched this one {manner}, and {turn}".
FAN_MANNERS = ("with an open mind", "with a big bowl of popcorn", "with modest expectations")
FAN_TURNS = ("by the end", "honestly", "within the first ten minutes")

# Continuations a reviewer might write: an independent clause, then a tail; mostly favourable.
CONTINUATION_CLAUSES = (
    "the quiet final scene left me smiling",
    "I had completely stopped checking my phone",
    "the lead performance had won me over",
    "the story found a warmth I did not expect",
    "the whole cast felt like old friends",
    "I was laughing along with everyone else in the room",
    "the script had earned every one of its big moments",
    "the director's patience with small details really paid off",
    "the music was doing most of the emotional heavy lifting",
    "the slow build started to make real sense",
    "the two leads had the kind of chemistry that is hard to fake",
    "it had quietly become one of my favourite films this year",
)
CONTINUATION_TAILS = (
    ", and I would happily watch it again.",
    ", even if the middle stretch dragged a little.",
    ", which is more than I can say for most films like it.",
    ", so I will be recommending it to my friends.",
    ", although a couple of scenes could have been trimmed.",
    ", and the ending landed with real feeling.",
    ", so the slightly clumsy start was easy to forgive.",
    ", and I was honestly sorry when it was over.",
)


def word_count(text: str) -> int:
    """Number of whitespace-separated words."""
    return len(text.split())


def _neutral_openings() -> list[tuple[str, str]]:
    return [
        (f"{viewing} {singular} {occasion}, and {turn}", "neutral")
        for viewing, (singular, _), occasion, turn in product(
            NEUTRAL_VIEWINGS, GENRES, NEUTRAL_OCCASIONS, NEUTRAL_TURNS
        )
    ]


def _doubtful_openings() -> list[tuple[str, str]]:
    return [
        (f"{doubt.format(genre=singular)}, {turn}", "negative")
        for doubt, (singular, _), turn in product(DOUBTS, GENRES, DOUBT_TURNS)
    ]


def _hopeful_openings() -> list[tuple[str, str]]:
    return [
        (f"{hope.format(genre=singular)}, {turn}", "positive")
        for hope, (singular, _), turn in product(HOPES, GENRES, HOPE_TURNS)
    ]


def _fan_openings() -> list[tuple[str, str]]:
    return [
        (f"As a longtime fan of {plural}, I watched this one {manner}, and {turn}", "neutral")
        for (_, plural), manner, turn in product(GENRES, FAN_MANNERS, FAN_TURNS)
    ]


@lru_cache(maxsize=1)
def builtin_openings() -> tuple[tuple[str, str], ...]:
    """All distinct (opening, tone) pairs with 6-20 words, in a fixed order; tone is neutral/negative/positive."""
    seen: set[str] = set()
    openings: list[tuple[str, str]] = []
    for text, tone in _neutral_openings() + _doubtful_openings() + _hopeful_openings() + _fan_openings():
        if text in seen or not MIN_PROMPT_WORDS <= word_count(text) <= MAX_PROMPT_WORDS:
            continue
        seen.add(text)
        openings.append((text, tone))
    return tuple(openings)


def split_of_opening(text: str) -> str:
    """'test' for about one opening in five (stable CRC32 hash of the text), 'train' otherwise."""
    return "test" if zlib.crc32(text.encode("utf-8")) % TEST_FRACTION_DENOMINATOR == 0 else "train"


def builtin_prompts(split: str) -> list[tuple[str, str]]:
    """The (opening, tone) pairs of one split ('train' or 'test'), in the fixed order of `builtin_openings`."""
    if split not in ("train", "test"):
        raise ValueError(f"sentiment built-in prompts: unknown split {split!r}; expected 'train' or 'test'")
    return [(text, tone) for text, tone in builtin_openings() if split_of_opening(text) == split]


@lru_cache(maxsize=1)
def builtin_continuations() -> tuple[str, ...]:
    """All continuations (leading space, 12-20 words, ending with a period), in a fixed order."""
    continuations = [f" {clause}{tail}" for clause, tail in product(CONTINUATION_CLAUSES, CONTINUATION_TAILS)]
    return tuple(c for c in continuations if MIN_RESPONSE_WORDS <= word_count(c) <= MAX_RESPONSE_WORDS)


def builtin_demonstration_pairs(split: str) -> list[tuple[str, str]]:
    """(opening, continuation) for every opening of `split`; the continuation per opening is fixed."""
    continuations = builtin_continuations()
    chooser = random.Random(RESPONSE_CHOICE_SEED)
    return [(text, chooser.choice(continuations)) for text, _tone in builtin_prompts(split)]
