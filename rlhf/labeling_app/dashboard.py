"""The numbers on the researchers' dashboard: per-labeler throughput, time, gold accuracy and agreement,
and overall agreement rates with bootstrap intervals, Krippendorff's alpha and Cohen's kappa."""

from __future__ import annotations

from collections import defaultdict
from itertools import product
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from rlhf.labeling_app.answers import top_choice
from rlhf.labeling_app.metrics import (
    agreement_rate,
    bootstrap_interval,
    cohen_kappa,
    krippendorff_alpha,
    median_seconds,
    pairwise_agreement_counts,
    throughput_per_hour,
)
from rlhf.labeling_app.tables import LIKERT_AXES, Batch, Judgment, Query, User


def comparable_label(kind: str, answer: dict[str, Any]) -> Any:
    """What two judgments of one query agree on: the best response(s), or the overall Likert score."""
    return answer["overall"] if kind == "likert" else top_choice(kind, answer)


def _rate(items: list[tuple[int, int]]) -> dict[str, Any]:
    interval = bootstrap_interval(items)
    return {
        "rate": agreement_rate(items),
        "interval95": interval,
        "pairs": sum(n for _, n in items),
        "queries": len(items),
    }


def _alpha_tables(by_query: dict[int, list[tuple[Judgment, User, Query]]]) -> dict[str, Any]:
    """Krippendorff's alpha: nominal on the chosen response per comparison kind, ordinal per Likert axis."""
    raters = sorted({user.id for rows in by_query.values() for _, user, _ in rows})
    results: dict[str, Any] = {}
    for kind in ("pairwise", "best_of_k", "ranking", "likert"):
        queries = [qid for qid, rows in by_query.items() if rows[0][2].kind == kind and len(rows) >= 2]
        if not queries:
            continue
        axes = LIKERT_AXES if kind == "likert" else ("choice",)
        for axis in axes:
            codes: dict[Any, int] = {}
            table = [[None] * len(queries) for _ in raters]
            for column, qid in enumerate(queries):
                for judgment, user, _query in by_query[qid]:
                    value = (
                        judgment.answer[axis]
                        if kind == "likert"
                        else codes.setdefault(top_choice(kind, judgment.answer), len(codes))
                    )
                    table[raters.index(user.id)][column] = value
            level = "ordinal" if kind == "likert" else "nominal"
            results[f"{kind}:{axis}"] = {
                "alpha": krippendorff_alpha(table, level),
                "level": level,
                "queries": len(queries),
            }
    return results


def dashboard_stats(db: Session) -> dict[str, Any]:
    rows = db.execute(
        select(Judgment, User, Query)
        .join(User, Judgment.user_id == User.id)
        .join(Query, Judgment.query_id == Query.id)
        .join(Batch, Query.batch_id == Batch.id)
        .where(Batch.is_qualification.is_(False))
        .order_by(Judgment.id)
    ).all()
    by_user: dict[int, list[tuple[Judgment, Query]]] = defaultdict(list)
    users: dict[int, User] = {}
    overlap: dict[int, list[tuple[Judgment, User, Query]]] = defaultdict(list)
    for judgment, user, query in rows:
        by_user[user.id].append((judgment, query))
        users[user.id] = user
        if not query.is_gold:
            overlap[query.id].append((judgment, user, query))
    overlap = {qid: group for qid, group in overlap.items() if len(group) >= 2}

    agree_with: dict[tuple[int, str], list[tuple[int, int]]] = defaultdict(list)  # (user, other role) -> items
    labeler_pairs, researcher_pairs, cross_pairs = [], [], []
    kappa_first, kappa_second = [], []
    for group in overlap.values():
        label = {judgment.id: comparable_label(query.kind, judgment.answer) for judgment, _, query in group}
        labelers = [(j, u) for j, u, _ in group if u.role == "labeler"]
        researchers = [(j, u) for j, u, _ in group if u.role != "labeler"]
        if len(labelers) >= 2:
            labeler_pairs.append(pairwise_agreement_counts([label[j.id] for j, _ in labelers]))
        if len(researchers) >= 2:
            researcher_pairs.append(pairwise_agreement_counts([label[j.id] for j, _ in researchers]))
        if labelers and researchers:
            matches = [(label[lj.id], label[rj.id]) for (lj, _), (rj, _) in product(labelers, researchers)]
            cross_pairs.append((sum(a == b for a, b in matches), len(matches)))
            kappa_first += [str(a) for a, _ in matches]
            kappa_second += [str(b) for _, b in matches]
        for judgment, user, _ in group:
            for other, other_user, _ in group:
                if other_user.id != user.id:
                    side = "labelers" if other_user.role == "labeler" else "researchers"
                    agree_with[(user.id, side)].append((int(label[judgment.id] == label[other.id]), 1))

    per_user = []
    for user_id, items in sorted(by_user.items()):
        user = users[user_id]
        times = [judgment.created_at for judgment, _ in items]
        gold = [
            judgment.gold_correct for judgment, query in items if query.is_gold and judgment.gold_correct is not None
        ]
        per_user.append(
            {
                "name": user.name,
                "role": user.role,
                "paused": user.paused,
                "judgments": len(items),
                "per_hour": throughput_per_hour(len(items), (max(times) - min(times)).total_seconds()),
                "median_seconds": median_seconds([judgment.seconds for judgment, _ in items]),
                "gold_accuracy": sum(gold) / len(gold) if gold else None,
                "gold_answered": len(gold),
                "agreement_with_labelers": agreement_rate(agree_with[(user_id, "labelers")]),
                "agreement_with_researchers": agreement_rate(agree_with[(user_id, "researchers")]),
            }
        )
    return {
        "judgments": len(rows),
        "labelers": per_user,
        "agreement": {
            "labeler_labeler": _rate(labeler_pairs),
            "labeler_researcher": _rate(cross_pairs),
            "researcher_researcher": _rate(researcher_pairs),
        },
        "krippendorff_alpha": _alpha_tables(overlap),
        "cohen_kappa_labeler_researcher": cohen_kappa(kappa_first, kappa_second),
    }
