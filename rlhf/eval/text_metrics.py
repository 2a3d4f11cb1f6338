"""Text metrics for summaries and responses: ROUGE (rouge-score), copying from the source (Stiennon et al. 2020
fn. 9), novel n-grams and sentences, repeated n-grams (Ziegler et al. 2019 figs. 5-6), first-three-words copying
(Ziegler et al. 2019 table 7) with a heuristic preamble detector, and response-length statistics.

Word-level metrics use `words`: lower-cased runs of letters, digits and inner apostrophes; punctuation is dropped.
Each function scores one (summary, source) pair or a list of them; `mean_over_pairs` averages a per-pair metric.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np

WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def words(text: str) -> list[str]:
    """Lower-cased word tokens of `text` ("Don't stop!" -> ["don't", "stop"])."""
    return WORD.findall(text.lower())


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """The n-grams of `tokens` in order, with repeats ([] when there are fewer than n tokens)."""
    if n < 1:
        raise ValueError(f"n: expected an n-gram order >= 1, got {n}")
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def sentences(text: str) -> list[str]:
    """Sentences of `text`: split after . ! ? followed by whitespace, and at line breaks; empty pieces dropped."""
    return [piece.strip() for piece in SENTENCE_END.split(text) if words(piece)]


def _check_pairs(summaries: Sequence[str], sources: Sequence[str]) -> None:
    if len(summaries) != len(sources):
        raise ValueError(f"summaries and sources: expected equal lengths, got {len(summaries)} and {len(sources)}")
    if not summaries:
        raise ValueError("summaries: expected at least one summary, got none")


def mean_over_pairs(
    metric: Callable[[str, str], float | None], summaries: Sequence[str], sources: Sequence[str]
) -> float:
    """Mean of metric(summary, source) over the pairs where it is defined (not None); nan if it never is."""
    _check_pairs(summaries, sources)
    values = [value for value in (metric(s, t) for s, t in zip(summaries, sources)) if value is not None]
    return float(np.mean(values)) if values else float("nan")


# ------------------------------------------------------------------------------------------------ ROUGE


def rouge_per_pair(
    predictions: Sequence[str], references: Sequence[str], use_stemmer: bool = True
) -> list[dict[str, float]]:
    """ROUGE-1/2/L F1 of each prediction against its reference (Lin 2004; Google's rouge-score package)."""
    from rouge_score import rouge_scorer  # lazy: a heavy import, needed for ROUGE only

    _check_pairs(predictions, references)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=use_stemmer)
    out = []
    for prediction, reference in zip(predictions, references):
        scores = scorer.score(reference, prediction)  # rouge-score takes (target, prediction)
        out.append({name: scores[name].fmeasure for name in ROUGE_TYPES})
    return out


def rouge_f1(predictions: Sequence[str], references: Sequence[str], use_stemmer: bool = True) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 of predictions against references."""
    per_pair = rouge_per_pair(predictions, references, use_stemmer)
    return {name: sum(p[name] for p in per_pair) / len(per_pair) for name in ROUGE_TYPES}


# ------------------------------------------------------------------------------------------------ copying


def longest_common_subsequence_length(first: Sequence, second: Sequence) -> int:
    """Length of the longest common subsequence of two sequences (dynamic programming, O(len * len))."""
    previous = [0] * (len(second) + 1)
    for item in first:
        current = [0]
        for j, other in enumerate(second):
            current.append(previous[j] + 1 if item == other else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


# Stiennon et al. 2020 fn. 9: copying = LCS of bigrams between summary and source / number of summary bigrams.
def copying_fraction(summary: str, source: str) -> float | None:
    """Share of the summary's bigrams in the longest common subsequence of summary and source bigrams
    (1 = the summary is copied in order from the source); None for a summary of fewer than 2 words."""
    summary_bigrams = ngrams(words(summary), 2)
    if not summary_bigrams:
        return None
    return longest_common_subsequence_length(summary_bigrams, ngrams(words(source), 2)) / len(summary_bigrams)


# See et al. 2017 / Ziegler et al. 2019 §4.2: novelty = share of the summary's n-grams that never occur in the source.
def novel_ngram_fraction(summary: str, source: str, n: int) -> float | None:
    """Share of the summary's n-gram occurrences that appear nowhere in the source; None if it has no n-gram."""
    summary_ngrams = ngrams(words(summary), n)
    if not summary_ngrams:
        return None
    source_ngrams = set(ngrams(words(source), n))
    return sum(gram not in source_ngrams for gram in summary_ngrams) / len(summary_ngrams)


def _contains_run(haystack: Sequence[str], needle: Sequence[str]) -> bool:
    """True when `needle` occurs as a contiguous run of `haystack`."""
    size = len(needle)
    return any(list(haystack[i : i + size]) == list(needle) for i in range(len(haystack) - size + 1))


# Ziegler et al. 2019 §4.2 (copying whole sentences): a sentence is novel unless its words appear verbatim in the source.
def novel_sentence_fraction(summary: str, source: str) -> float | None:
    """Share of the summary's sentences whose word sequence is not a contiguous run of the source's words."""
    summary_sentences = [words(sentence) for sentence in sentences(summary)]
    if not summary_sentences:
        return None
    source_words = words(source)
    return sum(not _contains_run(source_words, sentence) for sentence in summary_sentences) / len(summary_sentences)


# Ziegler et al. 2019 figs. 5-6: repetition within a sample = share of its n-grams that repeat an earlier one.
def repeated_ngram_fraction(text: str, n: int) -> float | None:
    """1 - distinct / total n-grams of one text (0 = no n-gram repeats); None if it has no n-gram."""
    grams = ngrams(words(text), n)
    if not grams:
        return None
    return 1.0 - len(set(grams)) / len(grams)


# Ziegler et al. 2019 table 7: how often a summary starts with the source's first three words.
def copies_first_three_words(summary: str, source: str) -> bool | None:
    """True when the summary's first three words equal the source's first three; None if either is shorter."""
    summary_words, source_words = words(summary), words(source)
    if len(summary_words) < 3 or len(source_words) < 3:
        return None
    return summary_words[:3] == source_words[:3]


def first_three_words_copying(
    summaries: Sequence[str], sources: Sequence[str], has_preamble: Sequence[bool] | None = None
) -> dict[str, float | int]:
    """Share of summaries that start with their source's first three words, overall and (when `has_preamble`
    flags the sources that open with a preamble, e.g. "Long time lurker, first post") on those sources only;
    pairs where either text has fewer than three words are left out of both counts."""
    _check_pairs(summaries, sources)
    if has_preamble is not None and len(has_preamble) != len(sources):
        raise ValueError(f"has_preamble: expected {len(sources)} flags, got {len(has_preamble)}")
    flags = list(has_preamble) if has_preamble is not None else [False] * len(sources)
    copied = [(copies_first_three_words(s, t), flag) for s, t, flag in zip(summaries, sources, flags)]
    defined = [(value, flag) for value, flag in copied if value is not None]
    with_preamble = [value for value, flag in defined if flag]
    return {
        "first_three_copied": float(np.mean([v for v, _ in defined])) if defined else float("nan"),
        "n": len(defined),
        "first_three_copied_with_preamble": float(np.mean(with_preamble)) if with_preamble else float("nan"),
        "n_with_preamble": len(with_preamble),
    }


# Ziegler et al. 2019 table 7 reports first-three-words copying "on posts with a preamble"; this rule set decides which
# posts have one. Each rule is (name, pattern), searched case-insensitively in the post's first sentence only.
PREAMBLE_RULES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern, re.IGNORECASE))
    for name, pattern in (
        ("greeting", r"^(?:hi|hello|hey|heyo|hiya|howdy|greetings|dear)\b(?:[\s,!.]+[^\s,!.]+){0,3}[\s,!.]*$"),
        ("lurker", r"\blurk(?:er|ing)\b|\bfirst[- ]time poster\b"),
        (
            "first post",  # "my first time posting a photo" is about content: no article or pronoun may follow
            r"\bfirst (?:ever )?(?:reddit )?(?:post|time posting)\b(?!\s+(?:a|an|the|my|his|her|their|this|some)\b)",
        ),
        ("throwaway", r"\bthrowaway\b|\b(?:an? )?(?:alt|alternate) account\b"),
        (
            "apology for the writing",
            r"\b(?:sorry|apologi[sz]e|apologies|excuse)\b.*\b(?:format\w*|typos?|spelling|grammar|grammatical|grammical|"
            r"errors|mistakes|english|mobile|phone|length|long|wall of text)\b",
        ),
        (
            "on mobile",
            r"\b(?:i'm|i’m|im|i am|currently|posting|typing|writing|submitting)\s+(?:this\s+)?(?:on|from|through|via)\s+(?:my\s+|a\s+)?"
            r"(?:mobile|phone|cell(?:phone)?|iphone|android)\b|\bmobile (?:user|here)\b|\bformat\w*\b.*\bmobile\b",
        ),
        (
            "not a native speaker",
            r"\benglish (?:is not|isn't|isn’t|is not) my (?:first|native|mother)|\bnon-?native (?:english )?speaker|"
            r"\bnot a native (?:english )?speaker",
        ),
        ("repost", r"\brepost(?:ed|ing)?\b|\bx-?post\b|\bcross-?post\w*|\b(?:previously|originally|also) posted\b"),
        ("edit or update", r"^(?:edit|edited|update|updated|eta)\s*\d*\s*[:\-]"),
        ("obligatory", r"^obligatory\b"),
        (
            "long post warning",
            r"\b(?:this|it)(?:'s|’s| is)? (?:going to|gonna|will|might|may) be (?:a )?(?:bit |little |very |pretty )?(?:long|lengthy)\b|"
            r"\bbear with me\b|\bwall of text\b|\blong post\b",
        ),
        (
            "right place",
            r"\b(?:right|correct|appropriate) (?:place|sub(?:reddit)?) (?:to|for)\b|\bnot sure (?:if|where) (?:this|to post)",
        ),
    )
)


def preamble_rule(post: str) -> str | None:
    """The name of the first rule of PREAMBLE_RULES that matches the post's first sentence (see `sentences`:
    split after . ! ? and at line breaks), or None. A heuristic, not a classifier: it knows the usual
    throat-clearing openings of Reddit posts (a bare greeting, "long time lurker", "first post", "throwaway",
    apologies for formatting or English, "on mobile", "repost", "Edit:", "Obligatory ...", "this will be long, bear with me",
    "not sure this is the right sub") and misses other phrasings; words later in the post are never looked at."""
    first = sentences(post)
    if not first:
        return None
    sentence = first[0]
    return next((name for name, pattern in PREAMBLE_RULES if pattern.search(sentence)), None)


def has_preamble(post: str) -> bool:
    """True when the post's first sentence is throat-clearing before the content (see `preamble_rule`)."""
    return preamble_rule(post) is not None


def copying_report(summaries: Sequence[str], sources: Sequence[str], max_n: int = 4) -> dict[str, float]:
    """Mean copying fraction, novel n-gram fractions for n = 1..max_n, novel-sentence fraction and repeated
    trigram fraction over (summary, source) pairs."""
    report = {"copying": mean_over_pairs(copying_fraction, summaries, sources)}
    for n in range(1, max_n + 1):
        report[f"novel_{n}gram"] = mean_over_pairs(lambda s, t, n=n: novel_ngram_fraction(s, t, n), summaries, sources)
    report["novel_sentence"] = mean_over_pairs(novel_sentence_fraction, summaries, sources)
    report["repeated_3gram"] = mean_over_pairs(lambda s, _t: repeated_ngram_fraction(s, 3), summaries, sources)
    return report


# ------------------------------------------------------------------------------------------------ length


def length_statistics(
    token_counts: Sequence[int], has_stop: Sequence[bool], length_limit: int
) -> dict[str, float | int]:
    """Mean response length in tokens, the share of responses that reached `length_limit` tokens and the
    share that ended without EOS or a stop string (has_stop False)."""
    if len(token_counts) != len(has_stop):
        raise ValueError(
            f"token_counts and has_stop: expected equal lengths, got {len(token_counts)} and {len(has_stop)}"
        )
    if not token_counts:
        raise ValueError("token_counts: expected at least one response, got none")
    if length_limit < 1:
        raise ValueError(f"length_limit: expected a positive number of tokens, got {length_limit}")
    counts = np.asarray(token_counts, dtype=float)
    if np.any(counts < 0) or np.any(counts > length_limit):
        bad = int(np.flatnonzero((counts < 0) | (counts > length_limit))[0])
        raise ValueError(f"token_counts[{bad}]: expected 0..{length_limit} tokens, got {token_counts[bad]}")
    return {
        "length_mean": float(counts.mean()),
        "at_length_limit": float(np.mean(counts == length_limit)),
        "without_stop": float(np.mean([not stop for stop in has_stop])),
        "n": len(token_counts),
    }
