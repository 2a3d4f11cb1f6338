"""Database tables of the labeling app (SQLAlchemy 2 declarative mapped classes, one per table).

A judgment is stored exactly once: one judgment per assignment (unique), one assignment per
(query, labeler) (unique) and one per (query, overlap slot) (unique), so concurrent requests that race
for the same slot or resubmit the same form fail on a constraint instead of writing twice."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

ROLES = ("admin", "researcher", "labeler")
QUERY_KINDS = ("pairwise", "best_of_k", "ranking", "likert")
LIKERT_AXES = ("overall", "accuracy", "coverage", "coherence")  # Stiennon et al. 2020 §4.1
LIKERT_FLAGS = ("off_topic", "offensive", "not_english", "incomplete")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class User(Base):
    """An account: admin, researcher or labeler; simulated labelers are users too (``simulated`` set)."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(80), unique=True)
    name_key: Mapped[str] = mapped_column(String(255), unique=True)  # NFKC + case fold: auth.name_key
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(20))
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    pause_reason: Mapped[str] = mapped_column(Text, default="")
    qualification: Mapped[str] = mapped_column(String(20), default="pending")  # pending / passed / failed
    simulated: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class LoginSession(Base):
    """A login: the cookie holds a random token, this row its SHA-256. Logging out deletes the row, an admin's
    "end sessions" deletes all of a user's rows, and a cookie whose row is gone counts as logged out."""

    __tablename__ = "login_sessions"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime, index=True)


class LoginLimit(Base):
    """Recent login attempts (epoch seconds) of one account or one client address, for the login limits;
    ``bucket`` is "a:" or "u:" and a hash of the address or the account's name key."""

    __tablename__ = "login_limits"
    bucket: Mapped[str] = mapped_column(String(80), primary_key=True)
    stamps: Mapped[list[Any]] = mapped_column(JSON)
    last_at: Mapped[float] = mapped_column(Float, index=True)


class Batch(Base):
    """A set of queries pushed together (from one run directory, or a qualification set)."""

    __tablename__ = "batches"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(20))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), nullable=True)
    is_qualification: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    instructions: Mapped[list[Instructions]] = relationship(order_by="Instructions.version", back_populates="batch")


class Instructions(Base):
    """One version of a batch's instructions; every judgment records the version it was made under."""

    __tablename__ = "instructions"
    __table_args__ = (UniqueConstraint("batch_id", "version"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id"))
    version: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    batch: Mapped[Batch] = relationship(back_populates="instructions")


class Query(Base):
    """One item to judge: a prompt and K responses (``responses`` = [{"text", "policy"}], policies never shown).

    ``target_labelers`` > 1 marks an overlap query; gold queries carry ``gold_answer`` and take no slot."""

    __tablename__ = "queries"
    id: Mapped[int] = mapped_column(primary_key=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id"), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    prompt: Mapped[str] = mapped_column(Text)
    responses: Mapped[list[Any]] = mapped_column(JSON)
    target_labelers: Mapped[int] = mapped_column(Integer, default=1)
    is_gold: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    gold_answer: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    source_id: Mapped[str] = mapped_column(String(200), default="")
    batch: Mapped[Batch] = relationship()


class Assignment(Base):
    """A query shown to one user, with the response order drawn for this assignment and a one-time submit token."""

    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("query_id", "user_id"), UniqueConstraint("query_id", "slot"))
    id: Mapped[int] = mapped_column(primary_key=True)
    query_id: Mapped[int] = mapped_column(ForeignKey("queries.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    slot: Mapped[int | None] = mapped_column(Integer, nullable=True)  # 0..target-1 for labelers' regular work
    order: Mapped[list[Any]] = mapped_column(JSON)  # order[position] = index into query.responses
    token: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    query: Mapped[Query] = relationship()


class Judgment(Base):
    """A submitted answer, in the query's original response order, stored exactly once per assignment."""

    __tablename__ = "judgments"
    __table_args__ = (UniqueConstraint("query_id", "user_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id"), unique=True)
    query_id: Mapped[int] = mapped_column(ForeignKey("queries.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    answer: Mapped[dict[str, Any]] = mapped_column(JSON)
    note: Mapped[str] = mapped_column(Text, default="")
    instructions_version: Mapped[int] = mapped_column(Integer)
    seconds: Mapped[float] = mapped_column(Float)
    gold_correct: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    query: Mapped[Query] = relationship()


class Run(Base):
    """A training run directory the app knows; its Andon cord writes ``stop_file``, which PPO polls."""

    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    run_dir: Mapped[str] = mapped_column(Text)
    stop_file: Mapped[str] = mapped_column(Text)


class AndonPull(Base):
    """Someone stopped a run (Ziegler §4.4): who, why, and who released it (open while ``released_at`` is None)."""

    __tablename__ = "andon_pulls"
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    pulled_by_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    reason: Mapped[str] = mapped_column(Text)
    pulled_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    released_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    released_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    run: Mapped[Run] = relationship()
    pulled_by: Mapped[User] = relationship(foreign_keys=[pulled_by_id])


# at most one open (unreleased) pull per run, enforced by the database: a partial unique index (migration 0003)
OPEN_PULL = AndonPull.released_at.is_(None)
Index("uq_andon_pulls_one_open", AndonPull.run_id, unique=True, sqlite_where=OPEN_PULL, postgresql_where=OPEN_PULL)
