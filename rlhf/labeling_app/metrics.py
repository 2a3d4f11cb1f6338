"""Agreement and throughput measures for the dashboard, each a small pure function."""

from __future__ import annotations

import statistics
from collections.abc import Hashable, Sequence
from itertools import combinations

import numpy as np


# Stiennon et al. 2020 App. C.2: agreement rate = share of pairs of labelers on the same item who agree.
def pairwise_agreement_counts(labels: Sequence[Hashable]) -> tuple[int, int]:
    """(agreeing pairs, all pairs) among the labels several raters gave one item: [0, 0, 1] -> (1, 3)."""
    pairs = list(combinations(labels, 2))
    return sum(a == b for a, b in pairs), len(pairs)


def agreement_rate(items: Sequence[tuple[int, int]]) -> float | None:
    """Pooled agreement over items given as (agreeing, total) pairs: sum agreeing / sum total."""
    total = sum(n for _, n in items)
    return sum(a for a, _ in items) / total if total else None


# Stiennon et al. 2020 App. C.2 report agreement ± an interval; here a percentile bootstrap over items.
def bootstrap_interval(
    items: Sequence[tuple[int, int]], resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of ``agreement_rate``, resampling items (queries) with replacement."""
    if not items or sum(n for _, n in items) == 0:
        return None
    agree = np.array([a for a, _ in items], dtype=float)
    total = np.array([n for _, n in items], dtype=float)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(items), size=(resamples, len(items)))
    totals = total[picks].sum(axis=1)
    rates = np.where(totals > 0, agree[picks].sum(axis=1) / np.maximum(totals, 1), np.nan)
    low, high = np.nanquantile(rates, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(low), float(high)


# Krippendorff (2004) alpha = 1 - D_o / D_e, via the `krippendorff` package (ordinal for Likert scales).
def krippendorff_alpha(ratings: Sequence[Sequence[float | None]], level: str) -> float | None:
    """Alpha of a raters x items table (None = not rated); None when fewer than 2 values vary."""
    import krippendorff  # lazy: a heavy import, needed for the agreement dashboard only

    table = np.array([[np.nan if value is None else value for value in row] for row in ratings], dtype=float)
    if table.size == 0 or table.shape[0] < 2 or len(set(table[~np.isnan(table)].tolist())) < 2:
        return None
    return float(krippendorff.alpha(reliability_data=table, level_of_measurement=level))


# Cohen (1960) kappa = (p_o - p_e) / (1 - p_e), via scikit-learn.
def cohen_kappa(first: Sequence[Hashable], second: Sequence[Hashable]) -> float | None:
    """Kappa between two raters' labels on the same items; None if undefined (one label only, or no items)."""
    from sklearn.metrics import cohen_kappa_score  # lazy: a heavy import, needed for the agreement dashboard only

    if not first or len(set(first) | set(second)) < 2:
        return None
    value = float(cohen_kappa_score([str(x) for x in first], [str(x) for x in second]))
    return None if np.isnan(value) else value


def median_seconds(seconds: Sequence[float]) -> float | None:
    return statistics.median(seconds) if seconds else None


def throughput_per_hour(count: int, active_seconds: float) -> float | None:
    """Judgments per hour over the span between a labeler's first and last judgment."""
    return count / active_seconds * 3600 if count >= 2 and active_seconds > 0 else None
