"""The Andon cord (Ziegler et al. 2019 §4.4): anyone on the team can stop a run from the app.

Pulling writes the run's stop file (atomically, with who and why); PPO checks that file before every
iteration, saves a checkpoint and stops. The pull stays on show until a researcher releases it, which
removes the stop file so the PPO stage can be resumed.

A run has at most one open pull (a partial unique index in the database), and every pull or release holds
an exclusive lock on RUN_DIR/ANDON.lock while it changes the database and then makes the stop file agree with
it, so concurrent pulls and releases leave the stop file present exactly while a pull is open."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload

from rlhf.data.io import atomic_write_text
from rlhf.labeling_app.tables import AndonPull, Run, User, utcnow

MAX_REASON_LENGTH = 2000


def register_run(db: Session, run_dir: str | Path) -> Run:
    """The app's record of a run directory (made once; later calls return it). Its cord writes RUN_DIR/ANDON,
    the stop file PPO polls when ppo.stop_file is not set."""
    run_dir = str(Path(run_dir).resolve())
    existing = db.scalar(select(Run).where(Run.run_dir == run_dir))
    if existing is not None:
        return existing
    run = Run(name=Path(run_dir).name, run_dir=run_dir, stop_file=str(Path(run_dir) / "ANDON"))
    db.add(run)
    db.commit()
    return run


def open_pull(db: Session, run: Run) -> AndonPull | None:
    return db.scalar(
        select(AndonPull)
        .where(AndonPull.run_id == run.id, AndonPull.released_at.is_(None))
        .order_by(AndonPull.id.desc())
        .limit(1)
    )


def open_pulls(db: Session) -> list[AndonPull]:
    """Pulls not released yet, with their run and puller loaded (pages show them after the session closes)."""
    return list(
        db.scalars(
            select(AndonPull)
            .options(joinedload(AndonPull.run), joinedload(AndonPull.pulled_by))
            .where(AndonPull.released_at.is_(None))
            .order_by(AndonPull.id)
        )
    )


@contextlib.contextmanager
def run_lock(run: Run) -> Iterator[None]:
    """An exclusive lock (flock, across processes) on the run's ANDON.lock, next to its stop file."""
    lock_path = Path(run.stop_file).with_name(Path(run.stop_file).name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def sync_stop_file(db: Session, run: Run) -> AndonPull | None:
    """Write the stop file while ``run`` has an open pull and remove it while it has none; returns the pull."""
    pull = open_pull(db, run)
    if pull is None:
        Path(run.stop_file).unlink(missing_ok=True)
    else:
        atomic_write_text(run.stop_file, f"Andon cord pulled by {pull.pulled_by.name}: {pull.reason}\n")
    return pull


def pull_cord(db: Session, run: Run, user: User, reason: str) -> AndonPull:
    """Stop ``run``: record who and why, and write the stop file PPO polls. A reason is required. A run
    already stopped keeps its open pull (the first reason stands), and that pull is returned."""
    reason = reason.strip()
    if not reason:
        raise ValueError("say why you stop the run (reason is empty)")
    if len(reason) > MAX_REASON_LENGTH:
        raise ValueError(f"reason: at most {MAX_REASON_LENGTH} characters")
    with run_lock(run):
        if open_pull(db, run) is None:
            db.add(AndonPull(run_id=run.id, pulled_by_id=user.id, reason=reason))
            try:
                db.commit()
            except IntegrityError:  # another server process opened one first (the index allows one)
                db.rollback()
        pull = sync_stop_file(db, run)
    if pull is None:
        raise RuntimeError(f"run {run.name}: the Andon pull was not recorded")
    return pull


def release_cord(db: Session, run: Run, user: User) -> AndonPull | None:
    """Release the open pull on ``run`` (if any) and remove its stop file."""
    with run_lock(run):
        pull = open_pull(db, run)
        if pull is not None:
            pull.released_by_id, pull.released_at = user.id, utcnow()
            db.commit()
        sync_stop_file(db, run)
    return pull
