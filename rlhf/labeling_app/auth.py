"""Accounts and sessions: Argon2 password hashes, user names compared in one normal form, server-side login
sessions (the signed cookie holds only a random token, the database its hash), role checks and the per-session
CSRF token every form must send back."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import unicodedata

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import HTTPException, Request
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from rlhf.labeling_app.tables import ROLES, LoginSession, User, utcnow

_hasher = PasswordHasher()
MIN_PASSWORD_LENGTH = 8
MAX_NAME_LENGTH = 80
SESSION_SECONDS = 12 * 3600
"""How long a login lasts (also the signed cookie's max_age in app.py)."""


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def password_matches(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def normal_name(name: str) -> str:
    """The name as stored and shown: Unicode NFKC, outer white space removed."""
    return unicodedata.normalize("NFKC", name).strip()


def name_key(name: str) -> str:
    """What two names must differ in to be different accounts: the NFKC form, case-folded (`Lab1` = `lab1`)."""
    return unicodedata.normalize("NFKC", normal_name(name).casefold())


def name_problem(name: str) -> str | None:
    """Why ``name`` (already normalised) cannot be a user name, or None: empty, too long, or holding a
    control, format (such as U+202E RIGHT-TO-LEFT OVERRIDE), unassigned or line-separator character."""
    if not name or len(name) > MAX_NAME_LENGTH:
        return f"user name must be 1..{MAX_NAME_LENGTH} characters"
    for position, char in enumerate(name):
        category = unicodedata.category(char)
        if category.startswith("C") or category in ("Zl", "Zp"):
            what = unicodedata.name(char, "unnamed character")
            return (
                f"user name must not contain control or format characters; "
                f"found U+{ord(char):04X} {what} at position {position + 1}"
            )
    return None


def create_user(db: Session, name: str, password: str, role: str, simulated: str = "") -> User:
    """Add an account; a clear ValueError for a bad role or name, a short password or a name already taken
    (names are compared case-insensitively after NFKC normalisation)."""
    name = normal_name(name)
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    problem = name_problem(name)
    if problem:
        raise ValueError(problem)
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"password must have at least {MIN_PASSWORD_LENGTH} characters")
    existing = db.scalar(select(User).where(User.name_key == name_key(name)))
    if existing is not None:
        same = "" if existing.name == name else f" (as {existing.name!r}; names are compared ignoring case)"
        raise ValueError(f"user {name!r} already exists{same}")
    user = User(
        name=name, name_key=name_key(name), password_hash=hash_password(password), role=role, simulated=simulated
    )
    db.add(user)
    db.commit()
    return user


def find_user(db: Session, name: str) -> User | None:
    """The account called ``name`` (in any case or Unicode form), or None; never raises on odd input."""
    if name_problem(normal_name(name)):
        return None
    return db.scalar(select(User).where(User.name_key == name_key(name)))


def authenticate(db: Session, name: str, password: str) -> User | None:
    user = find_user(db, name)
    if user is None:
        _hasher.hash(password)  # spend the same time whether or not the name exists
        return None
    return user if password_matches(user.password_hash, password) else None


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start_session(request: Request, db: Session, user: User) -> None:
    """A fresh session (and CSRF token) for ``user``: a new row in login_sessions, its token in the cookie."""
    now = utcnow()
    expired = (LoginSession.user_id == user.id) & (LoginSession.expires_at <= now)
    db.execute(delete(LoginSession).where(expired))  # forget the user's expired logins (only theirs: no lock waits)
    token = secrets.token_urlsafe(32)
    db.add(
        LoginSession(
            id=_token_hash(token),
            user_id=user.id,
            created_at=now,
            expires_at=now + dt.timedelta(seconds=SESSION_SECONDS),
        )
    )
    db.commit()
    request.session.clear()
    request.session["session"] = token


def end_session(request: Request, db: Session) -> None:
    """Log this browser out: its server-side session is deleted, so a copy of the cookie is worthless too."""
    token = request.session.get("session")
    if isinstance(token, str):
        db.execute(delete(LoginSession).where(LoginSession.id == _token_hash(token)))
        db.commit()
    request.session.clear()


def end_all_sessions(db: Session, user_id: int) -> int:
    """Log a user out everywhere (admin action, `rlhf label end-sessions`); returns how many sessions ended."""
    ended = db.execute(delete(LoginSession).where(LoginSession.user_id == user_id)).rowcount
    db.commit()
    return ended


def csrf_token(request: Request) -> str:
    """The session's CSRF token (made on first use), put in a hidden field of every form."""
    token = request.session.get("csrf")
    if not token:
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return token


def check_csrf(request: Request, sent: str) -> None:
    """Refuse (403) a form whose token is missing or differs from the session's."""
    expected = request.session.get("csrf", "")
    if not expected or not sent or not hmac.compare_digest(expected, sent):
        raise HTTPException(status_code=403, detail="missing or invalid CSRF token; reload the page and try again")


def current_user(request: Request, db: Session) -> User | None:
    """The user of this request's session, or None when it has none, it ended (logout, admin) or expired."""
    token = request.session.get("session")
    if not isinstance(token, str):
        return None
    login = db.get(LoginSession, _token_hash(token))
    if login is None or login.expires_at <= utcnow():
        return None
    return db.get(User, login.user_id)


class LoginRequired(Exception):
    """Raised for pages that need a session; the app turns it into a redirect to /login."""


def require_role(request: Request, db: Session, *roles: str) -> User:
    """The logged-in user if their role is one of ``roles``; otherwise redirect to login (no session) or 403."""
    user = current_user(request, db)
    if user is None:
        raise LoginRequired()
    if user.role not in roles:
        raise HTTPException(status_code=403, detail=f"this page is for {' or '.join(roles)} accounts")
    return user
