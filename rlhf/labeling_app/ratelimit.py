"""Login rate limiting, kept in the database so that it holds across server processes.

Every login attempt is counted *before* its password is checked, in one short transaction that first locks the
rows of its account and of its client address (an upsert, in a fixed order); attempts beyond the limit within
the sliding window are refused with HTTP 429 and their password is never checked, so concurrent guesses cannot
overtake the limit. A successful login takes its attempt back from its address and clears its account."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from rlhf.labeling_app.auth import name_key
from rlhf.labeling_app.tables import LoginLimit

CLEANUP_EVERY_SECONDS = 60.0


def account_bucket(name: str) -> str:
    """The limit row of the account called ``name`` (any case or Unicode form of it)."""
    return "u:" + hashlib.sha256(name_key(name).encode("utf-8", "surrogatepass")).hexdigest()


def address_bucket(address: str) -> str:
    return "a:" + hashlib.sha256(address.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Refusal:
    """Why an attempt was refused and in how many seconds one will be let through."""

    message: str
    retry_after: int


@dataclass(frozen=True)
class Admission:
    """An attempt that was counted: its two rows and its time stamp (to take it back after a success)."""

    account: str
    address: str
    at: float


def _lock_buckets(db: Session, buckets: list[str], now: float) -> dict[str, LoginLimit]:
    """Create missing rows and lock all of ``buckets`` (sorted, so two transactions never wait on each other in
    a cycle) until the transaction ends; SQLite takes its single write lock instead. Returns the rows, fresh."""
    insert = postgresql.insert if db.get_bind().dialect.name == "postgresql" else sqlite.insert
    statement = insert(LoginLimit).values([{"bucket": b, "stamps": [], "last_at": now} for b in sorted(buckets)])
    db.execute(statement.on_conflict_do_update(index_elements=["bucket"], set_={"last_at": now}))
    rows = db.scalars(
        select(LoginLimit).where(LoginLimit.bucket.in_(buckets)).execution_options(populate_existing=True)
    )
    return {row.bucket: row for row in rows}


class LoginLimiter:
    """At most ``max_per_user`` attempts per account and ``max_per_address`` per client address in any
    ``window`` seconds (successful attempts excepted); the attempts are rows of the login_limits table."""

    def __init__(self, max_per_user: int, max_per_address: int, window: float, clock: Callable[[], float] = time.time):
        if max_per_user < 1 or max_per_address < 1 or window <= 0:
            raise ValueError("LoginLimiter: the limits must be at least 1 and the window positive")
        self.max_per_user, self.max_per_address, self.window, self.clock = max_per_user, max_per_address, window, clock
        self.last_cleanup = float("-inf")

    def admit(self, db: Session, name: str, address: str) -> Admission | Refusal:
        """Count one attempt to log in as ``name`` from ``address``, or refuse it (with when to retry)."""
        now = self.clock()
        self._forget_old_rows(db, now)
        account, from_address = account_bucket(name), address_bucket(address)
        rows = _lock_buckets(db, [account, from_address], now)
        recent = {bucket: [t for t in row.stamps if t > now - self.window] for bucket, row in rows.items()}
        for bucket, limit, what in (
            (account, self.max_per_user, "for this account"),
            (from_address, self.max_per_address, "from your address"),
        ):
            if len(recent[bucket]) >= limit:
                db.commit()
                wait = int(min(recent[bucket]) + self.window - now) + 1
                return Refusal(f"too many failed logins {what}; try again in {wait} s", wait)
        for bucket, row in rows.items():
            row.stamps = [*recent[bucket], now]
        db.commit()
        return Admission(account, from_address, now)

    def succeeded(self, db: Session, admission: Admission) -> None:
        """A counted attempt had the right password: clear its account, take it back from its address."""
        rows = _lock_buckets(db, [admission.account, admission.address], self.clock())
        rows[admission.account].stamps = []
        stamps = list(rows[admission.address].stamps)
        if admission.at in stamps:
            stamps.remove(admission.at)
        rows[admission.address].stamps = stamps
        db.commit()

    def _forget_old_rows(self, db: Session, now: float) -> None:
        """Delete rows untouched for a whole window (at most once a minute per process); rows another
        transaction holds are skipped on PostgreSQL rather than waited for."""
        if now - self.last_cleanup < CLEANUP_EVERY_SECONDS:
            return
        self.last_cleanup = now
        cutoff = now - self.window
        stale = (
            select(LoginLimit.bucket).where(LoginLimit.last_at < cutoff).limit(1000).with_for_update(skip_locked=True)
        )
        db.execute(delete(LoginLimit).where(LoginLimit.bucket.in_(stale), LoginLimit.last_at < cutoff))
        db.commit()


def clear_account(db: Session, name: str) -> bool:
    """Forget the recent attempts on account ``name`` (`rlhf label unlock`); True if it had a row."""
    cleared = db.execute(delete(LoginLimit).where(LoginLimit.bucket == account_bucket(name))).rowcount
    db.commit()
    return bool(cleared)


def clear_address(db: Session, address: str) -> bool:
    """Forget the recent attempts from client ``address``; True if it had a row."""
    cleared = db.execute(delete(LoginLimit).where(LoginLimit.bucket == address_bucket(address))).rowcount
    db.commit()
    return bool(cleared)
