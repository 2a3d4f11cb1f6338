"""Moving data between a run directory and the app: `push` turns a run's sampled responses into a batch of
queries; `pull` exports the answers as Comparison JSONL (what the reward stage reads through
collect.comparisons_path) and as summarize-from-feedback JSON rows. Ranking answers stay one record each;
the reward-model loss expands them into their C(K,2) pairs."""

from __future__ import annotations

import json
import random
from collections import OrderedDict
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from rlhf.data.importers import read_comparisons
from rlhf.data.io import atomic_write_text, read_jsonl, write_jsonl
from rlhf.data.records import MAX_RANKED_RESPONSES, Comparison, RecordError, Sample
from rlhf.labeling_app.andon import register_run
from rlhf.labeling_app.tables import Batch, Instructions, Judgment, Query, User
from rlhf.labeling_app.work import check_instructions

DEFAULT_INSTRUCTIONS = {
    "pairwise": "Pick the better response (A or B), then say how sure you are: 1 = a guess, 5 = can't tell, 9 = certain.",
    "best_of_k": "Pick the best response.",
    "ranking": "Rank the responses: 1 = best. Give equal ranks to responses you find equally good.",
    "likert": "Rate the response from 1 (poor) to 7 (excellent) on each axis, tick any flag that applies.",
}


def overlap_targets(count: int, share: float, labelers: int, seed: int) -> list[int]:
    """Labelers wanted per query: round(share * count) queries, drawn with ``seed``, get ``labelers``; the rest 1."""
    chosen = set(random.Random(seed).sample(range(count), int(round(share * count)))) if count else set()
    return [labelers if index in chosen else 1 for index in range(count)]


def _group_by_prompt(samples: list[Sample]) -> list[tuple[str, list[Sample]]]:
    groups: OrderedDict[str, list[Sample]] = OrderedDict()
    for sample in samples:
        groups.setdefault(sample.prompt, []).append(sample)
    return list(groups.items())


def _check_group_size(kind: str, prompt: str, count: int, where: str) -> None:
    low, high = {"pairwise": (2, 2), "best_of_k": (2, 64), "ranking": (2, MAX_RANKED_RESPONSES), "likert": (1, 10**6)}[
        kind
    ]
    if not low <= count <= high:
        raise RecordError(
            f"a {kind} query needs {low}..{high} responses per prompt, got {count} for prompt {prompt[:50]!r}",
            where=where,
        )


def new_batch(
    db: Session, name: str, kind: str, instructions: str = "", qualification: bool = False, run_id: int | None = None
) -> Batch:
    if db.scalar(select(Batch).where(Batch.name == name)) is not None:
        raise ValueError(f"a batch named {name!r} exists already; choose another --name")
    batch = Batch(name=name, kind=kind, is_qualification=qualification, run_id=run_id)
    db.add(batch)
    db.flush()
    text = check_instructions(instructions) if instructions.strip() else DEFAULT_INSTRUCTIONS[kind]
    db.add(Instructions(batch_id=batch.id, version=1, text=text))
    return batch


def push_samples(
    db: Session,
    run_dir: str | Path,
    kind: str,
    name: str = "",
    overlap_share: float = 0.05,
    overlap_labelers: int = 5,
    seed: int = 0,
    instructions: str = "",
) -> Batch:
    """RUN_DIR/collect/samples.jsonl -> a batch of queries (one per prompt; one per response for likert)."""
    path = Path(run_dir) / "collect" / "samples.jsonl"
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no samples; run `rlhf collect {run_dir}` (or give a run that has sampled responses)"
        )
    return push_sample_records(
        db,
        read_jsonl(path, Sample),
        run_dir,
        kind,
        name,
        overlap_share,
        overlap_labelers,
        seed,
        instructions,
        where=str(path),
    )


def push_sample_records(
    db: Session,
    samples: list[Sample],
    run_dir: str | Path,
    kind: str,
    name: str = "",
    overlap_share: float = 0.05,
    overlap_labelers: int = 5,
    seed: int = 0,
    instructions: str = "",
    where: str = "samples",
) -> Batch:
    """Samples (grouped by prompt) -> a batch of queries of `run_dir`'s run; `push_samples` and online PPO use it."""
    items: list[tuple[str, list[dict[str, str]]]] = []
    for prompt, group in _group_by_prompt(samples):
        responses = [{"text": s.response, "policy": s.policy} for s in group]
        if kind == "likert":
            items += [(prompt, [response]) for response in responses]
        else:
            _check_group_size(kind, prompt, len(responses), where)
            items.append((prompt, responses))
    run = register_run(db, run_dir)
    batch = new_batch(db, name or f"{run.name}-{kind}-{len(items)}", kind, instructions, run_id=run.id)
    for (prompt, responses), target in zip(items, overlap_targets(len(items), overlap_share, overlap_labelers, seed)):
        db.add(Query(batch_id=batch.id, kind=kind, prompt=prompt, responses=responses, target_labelers=target))
    db.commit()
    return batch


def gold_answer(comparison: Comparison) -> dict[str, Any]:
    if comparison.kind == "ranking":
        return {"ranks": list(comparison.ranks or [])}
    answer: dict[str, Any] = {"best": comparison.best}
    if comparison.confidence is not None:
        answer["confidence"] = comparison.confidence
    return answer


def push_gold(db: Session, path: str | Path, name: str, qualification: bool = False, instructions: str = "") -> Batch:
    """Comparisons with known answers (our records, or TRL preference / summarize-from-feedback rows) -> gold
    queries (mixed silently into work), or a qualification batch."""
    comparisons = read_comparisons(path)
    if not comparisons:
        raise RecordError("no comparisons in the file", where=str(path))
    kinds = {c.kind for c in comparisons}
    if len(kinds) != 1:
        raise RecordError(f"one kind per gold file, got {sorted(kinds)}", where=str(path))
    batch = new_batch(db, name, kinds.pop(), instructions, qualification=qualification)
    for c in comparisons:
        db.add(
            Query(
                batch_id=batch.id,
                kind=c.kind,
                prompt=c.prompt,
                responses=[{"text": r, "policy": "gold"} for r in c.responses],
                is_gold=True,
                gold_answer=gold_answer(c),
                source_id=c.id,
            )
        )
    db.commit()
    return batch


def _judgments(db: Session, batch_names: list[str]) -> list[tuple[Judgment, Query, User, Batch]]:
    statement = (
        select(Judgment, Query, User, Batch)
        .join(Query, Judgment.query_id == Query.id)
        .join(User, Judgment.user_id == User.id)
        .join(Batch, Query.batch_id == Batch.id)
        .where(Query.is_gold.is_(False), Batch.is_qualification.is_(False))
    )
    if batch_names:
        statement = statement.where(Batch.name.in_(batch_names))
    return list(db.execute(statement.order_by(Judgment.id)).all())


def batch_names_starting_with(db: Session, prefix: str) -> list[str]:
    """The names of the batches whose name starts with `prefix` (taken literally: % and _ are no wildcards)."""
    return list(db.scalars(select(Batch.name).where(Batch.name.startswith(prefix, autoescape=True))))


def count_queries(db: Session, batch_prefix: str) -> int:
    """Queries asked in the batches whose name starts with `batch_prefix`; gold queries do not count."""
    statement = (
        select(func.count(Query.id))
        .join(Batch)
        .where(Batch.name.startswith(batch_prefix, autoescape=True), Query.is_gold.is_(False))
    )
    return db.scalar(statement) or 0


def count_answers(db: Session, batch_prefix: str) -> int:
    """Judgments stored for the queries of the batches whose name starts with `batch_prefix`; answers to gold
    queries do not count."""
    statement = (
        select(func.count(Judgment.id))
        .join(Query, Judgment.query_id == Query.id)
        .join(Batch)
        .where(Batch.name.startswith(batch_prefix, autoescape=True), Query.is_gold.is_(False))
    )
    return db.scalar(statement) or 0


def answered_comparisons(db: Session, batch_names: list[str]) -> list[Comparison]:
    """The answers to the comparison queries of these batches, as `pull` writes them (likert left out)."""
    if not batch_names:
        return []
    return [judgment_to_comparison(*row) for row in _judgments(db, batch_names) if row[1].kind != "likert"]


def judgment_to_comparison(judgment: Judgment, query: Query, user: User, batch: Batch) -> Comparison:
    """One stored answer as a Comparison in the query's original response order (policy names in meta)."""
    answer = judgment.answer
    meta = {
        "query_id": query.id,
        "batch": batch.name,
        "instructions_version": judgment.instructions_version,
        "seconds": round(judgment.seconds, 3),
        "policies": [r["policy"] for r in query.responses],
    }
    if judgment.note:
        meta["note"] = judgment.note
    return Comparison(
        prompt=query.prompt,
        responses=[r["text"] for r in query.responses],
        kind=query.kind,
        best=answer.get("best"),
        ranks=answer.get("ranks"),
        confidence=answer.get("confidence"),
        labeler=user.name,
        id=f"judgment-{judgment.id}",
        meta=meta,
    )


def summarize_from_feedback_row(comparison: Comparison) -> dict[str, Any]:
    """A pairwise Comparison as a summarize-from-feedback row (Stiennon et al. 2020's released format);
    info.post holds the whole prompt as shown to the labeler."""
    policies = comparison.meta.get("policies", ["", ""])
    return {
        "info": {
            "id": str(comparison.meta.get("query_id", "")),
            "post": comparison.prompt,
            "title": "",
            "subreddit": "",
        },
        "summaries": [
            {"text": text, "policy": policy, "note": ""} for text, policy in zip(comparison.responses, policies)
        ],
        "choice": comparison.best,
        "worker": comparison.labeler,
        "batch": comparison.meta.get("batch", ""),
        "split": "train",
        "extra": {"confidence": comparison.confidence} if comparison.confidence is not None else {},
    }


def pull_answers(db: Session, out_dir: str | Path, batch_names: list[str] | None = None) -> dict[str, int]:
    """Write OUT/comparisons.jsonl (every comparison kind), OUT/likert.jsonl (ratings) and
    OUT/summarize_from_feedback.jsonl (pairwise answers); returns counts."""
    out = Path(out_dir)
    comparisons, ratings = [], []
    for judgment, query, user, batch in _judgments(db, batch_names or []):
        if query.kind == "likert":
            ratings.append(
                {
                    "prompt": query.prompt,
                    "response": query.responses[0]["text"],
                    "policy": query.responses[0]["policy"],
                    "labeler": user.name,
                    "batch": batch.name,
                    "query_id": query.id,
                    "note": judgment.note,
                    "instructions_version": judgment.instructions_version,
                    **judgment.answer,
                }
            )
        else:
            comparisons.append(judgment_to_comparison(judgment, query, user, batch))
    write_jsonl(out / "comparisons.jsonl", comparisons)
    atomic_write_text(out / "likert.jsonl", "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in ratings))
    pairwise = [summarize_from_feedback_row(c) for c in comparisons if c.kind == "pairwise"]
    atomic_write_text(
        out / "summarize_from_feedback.jsonl", "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in pairwise)
    )
    return {"comparisons": len(comparisons), "likert": len(ratings), "summarize_from_feedback": len(pairwise)}
