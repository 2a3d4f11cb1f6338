"""The work queue: which query a user sees next, and storing their judgment exactly once.

Order of work for a labeler: an open assignment (a reload shows the same query); the qualification batch
until it is graded; then, with probability ``gold_rate``, a gold query not yet answered; else the oldest
regular query with a free overlap slot they have not had. Researchers answer overlap queries without
taking a slot, so labeler-researcher agreement can be measured."""

from __future__ import annotations

import datetime as dt
import random
import secrets
from typing import Any

from sqlalchemy import delete, exists, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from rlhf.labeling_app.answers import clean_note, draw_order, gold_correct, parse_answer
from rlhf.labeling_app.settings import LabelSettings
from rlhf.labeling_app.tables import Assignment, Batch, Instructions, Judgment, Query, User, utcnow

_rng = random.SystemRandom()
MAX_INSTRUCTIONS_LENGTH = 50_000  # characters: pages of guidance, far below the request-body limit
CANDIDATES = 16  # choose among the oldest few open queries so concurrent labelers rarely race for one slot


class NoWork(Exception):
    """Nothing to show; ``status`` says why: paused, failed_qualification or empty."""

    def __init__(self, status: str, detail: str = ""):
        super().__init__(status)
        self.status = status
        self.detail = detail


def open_assignment(db: Session, user: User) -> Assignment | None:
    answered = exists().where(Judgment.assignment_id == Assignment.id)
    return db.scalar(
        select(Assignment).where(Assignment.user_id == user.id, ~answered).order_by(Assignment.id).limit(1)
    )


def _assign(db: Session, user: User, query: Query, slot: int | None) -> Assignment | None:
    assignment = Assignment(
        query_id=query.id,
        user_id=user.id,
        slot=slot,
        order=draw_order(len(query.responses), _rng),
        token=secrets.token_urlsafe(24),
    )
    db.add(assignment)
    try:
        db.commit()
    except IntegrityError:  # another request took this slot, or this user already has the query
        db.rollback()
        return None
    return assignment


def _seen_by(user: User):
    return select(Assignment.query_id).where(Assignment.user_id == user.id)


def _unseen_queries(db: Session, user: User, *conditions) -> list[Query]:
    return list(
        db.scalars(
            select(Query)
            .join(Batch)
            .where(Query.id.not_in(_seen_by(user)), *conditions)
            .order_by(Query.id)
            .limit(CANDIDATES)
        )
    )


def qualification_status(db: Session, user: User, settings: LabelSettings) -> str:
    """passed / failed / pending (questions left); graded once every qualification query is answered."""
    if user.qualification in ("passed", "failed"):
        return user.qualification
    batches = list(db.scalars(select(Batch.id).where(Batch.is_qualification.is_(True))))
    total = db.scalar(select(func.count(Query.id)).where(Query.batch_id.in_(batches))) if batches else 0
    if not total:
        return "passed"
    graded = list(
        db.scalars(
            select(Judgment.gold_correct).join(Query).where(Query.batch_id.in_(batches), Judgment.user_id == user.id)
        )
    )
    if len(graded) < total:
        return "pending"
    accuracy = sum(bool(correct) for correct in graded) / total
    user.qualification = "passed" if accuracy >= settings.qualification_threshold else "failed"
    db.commit()
    return user.qualification


def next_assignment(db: Session, user: User, settings: LabelSettings) -> Assignment:
    """The assignment to show ``user`` now, creating one if needed; raises NoWork when there is none."""
    existing = open_assignment(db, user)
    if existing is not None:
        return existing
    if user.paused:
        raise NoWork("paused", user.pause_reason)
    if user.role == "labeler":
        status = qualification_status(db, user, settings)
        if status == "failed":
            raise NoWork("failed_qualification")
        if status == "pending":
            for query in _unseen_queries(db, user, Batch.is_qualification.is_(True)):
                if (assignment := _assign(db, user, query, None)) is not None:
                    return assignment
            raise NoWork("empty")
    for _attempt in range(20):
        assignment = _try_once(db, user, settings)
        if assignment is not None:
            return assignment
    raise NoWork("empty")


def _try_once(db: Session, user: User, settings: LabelSettings) -> Assignment | None:
    regular = (Query.is_gold.is_(False), Batch.is_qualification.is_(False))
    if user.role != "labeler":  # researchers: the overlap sample, no slot
        queries = _unseen_queries(db, user, *regular, Query.target_labelers > 1)
        if not queries:
            raise NoWork("empty")
        return _assign(db, user, queries[0], None)
    if _rng.random() < settings.gold_rate:
        gold = _unseen_queries(db, user, Query.is_gold.is_(True), Batch.is_qualification.is_(False))
        if gold:
            return _assign(db, user, _rng.choice(gold), None)
    taken = (
        select(func.count(Assignment.id))
        .where(Assignment.query_id == Query.id, Assignment.slot.is_not(None))
        .scalar_subquery()
    )
    queries = list(
        db.scalars(
            select(Query)
            .join(Batch)
            .where(*regular, Query.id.not_in(_seen_by(user)), taken < Query.target_labelers)
            .order_by(Query.id)
            .limit(CANDIDATES)
        )
    )
    if not queries:
        if reclaim_expired_slots(db, settings.assignment_timeout_minutes):
            return None
        raise NoWork("empty")
    query = _rng.choice(queries)
    used = set(db.scalars(select(Assignment.slot).where(Assignment.query_id == query.id, Assignment.slot.is_not(None))))
    free = [slot for slot in range(query.target_labelers) if slot not in used]
    if not free:
        return None
    return _assign(db, user, query, free[0])


def reclaim_expired_slots(db: Session, timeout_minutes: float) -> int:
    """Free overlap slots whose assignment has waited unanswered longer than the timeout; returns how many.
    A late submit of such a page is refused (no such assignment), so nothing is stored twice."""
    cutoff = utcnow() - dt.timedelta(minutes=timeout_minutes)
    stale = select(Assignment.id).where(
        Assignment.slot.is_not(None),
        Assignment.created_at < cutoff,
        ~exists().where(Judgment.assignment_id == Assignment.id),
    )
    freed = db.execute(delete(Assignment).where(Assignment.id.in_(stale))).rowcount
    db.commit()
    return freed


def current_instructions(db: Session, batch_id: int) -> Instructions | None:
    return db.scalar(
        select(Instructions).where(Instructions.batch_id == batch_id).order_by(Instructions.version.desc()).limit(1)
    )


def check_instructions(text: str) -> str:
    """``text`` stripped, or a ValueError saying why labelers cannot be shown it (empty, or too long)."""
    text = text.strip()
    if not text:
        raise ValueError("instructions: the text is empty; write what labelers should do")
    if len(text) > MAX_INSTRUCTIONS_LENGTH:
        raise ValueError(f"instructions: at most {MAX_INSTRUCTIONS_LENGTH} characters, got {len(text)}")
    return text


def instructions_version_shown(db: Session, batch_id: int, sent: Any) -> int:
    """The instructions version the page was rendered with (sent back by the form) if it is one of the
    batch's versions, else the current one (0 when the batch has none)."""
    versions = set(db.scalars(select(Instructions.version).where(Instructions.batch_id == batch_id)))
    try:
        version = int(str(sent))
    except ValueError:
        version = -1
    return version if version in versions else max(versions, default=0)


def submit_judgment(
    db: Session, user: User, token: str, form: dict[str, Any], flags: list[str], settings: LabelSettings
) -> tuple[Judgment, bool]:
    """Store the answer to the assignment with this token, once: (judgment, True) when stored now,
    (the earlier judgment, False) for a repeated submit. LookupError if the token is not this user's;
    AnswerError for a bad form."""
    assignment = db.scalar(select(Assignment).where(Assignment.token == token))
    if assignment is None or assignment.user_id != user.id:
        raise LookupError("no such assignment for this account (it may have expired)")
    earlier = db.scalar(select(Judgment).where(Judgment.assignment_id == assignment.id))
    if earlier is not None:
        return earlier, False
    query = assignment.query
    answer = parse_answer(query.kind, form, assignment.order, flags)
    note = clean_note(form.get("note"))
    version = instructions_version_shown(db, query.batch_id, form.get("instructions_version"))
    correct = gold_correct(query.kind, answer, query.gold_answer) if query.is_gold and query.gold_answer else None
    judgment = Judgment(
        assignment_id=assignment.id,
        query_id=query.id,
        user_id=user.id,
        answer=answer,
        note=note,
        instructions_version=version,
        gold_correct=correct,
        seconds=max(0.0, (utcnow() - assignment.created_at).total_seconds()),
    )
    db.add(judgment)
    try:
        db.commit()
    except IntegrityError:  # a concurrent submit of the same form won the race, or the assignment expired meanwhile
        db.rollback()
        earlier = db.scalar(select(Judgment).where(Judgment.assignment_id == assignment.id))
        if earlier is None:
            raise LookupError("no such assignment for this account (it may have expired)") from None
        return earlier, False
    if correct is not None and not query.batch.is_qualification:
        _pause_if_below_threshold(db, user, settings)
    return judgment, True


def gold_accuracy(db: Session, user_id: int) -> tuple[float | None, int]:
    """(accuracy, count) of a user's answers to gold queries outside the qualification batch."""
    graded = list(
        db.scalars(
            select(Judgment.gold_correct)
            .join(Query)
            .join(Batch)
            .where(Judgment.user_id == user_id, Query.is_gold.is_(True), Batch.is_qualification.is_(False))
        )
    )
    if not graded:
        return None, 0
    return sum(bool(correct) for correct in graded) / len(graded), len(graded)


def _pause_if_below_threshold(db: Session, user: User, settings: LabelSettings) -> None:
    accuracy, count = gold_accuracy(db, user.id)
    if accuracy is not None and count >= settings.gold_min_answers and accuracy < settings.gold_threshold:
        user.paused = True
        user.pause_reason = (
            f"gold accuracy {accuracy:.0%} on {count} gold queries is under {settings.gold_threshold:.0%}"
        )
        db.commit()
