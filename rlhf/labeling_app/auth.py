"""Accounts and sessions: Argon2 password hashes, the signed session cookie's user, role checks and the
per-session CSRF token every form must send back."""

from __future__ import annotations

import hmac
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import HTTPException, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from rlhf.labeling_app.tables import ROLES, User

_hasher = PasswordHasher()
MIN_PASSWORD_LENGTH = 8


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def password_matches(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def create_user(db: Session, name: str, password: str, role: str, simulated: str = "") -> User:
    """Add an account; a clear ValueError for a bad role, a short password or a name already taken."""
    name = name.strip()
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    if not name or len(name) > 80:
        raise ValueError("user name must be 1..80 characters")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"password must have at least {MIN_PASSWORD_LENGTH} characters")
    if db.scalar(select(User).where(User.name == name)) is not None:
        raise ValueError(f"user {name!r} already exists")
    user = User(name=name, password_hash=hash_password(password), role=role, simulated=simulated)
    db.add(user)
    db.commit()
    return user


def authenticate(db: Session, name: str, password: str) -> User | None:
    user = db.scalar(select(User).where(User.name == name.strip()))
    if user is None:
        _hasher.hash(password)  # spend the same time whether or not the name exists
        return None
    return user if password_matches(user.password_hash, password) else None


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
    user_id = request.session.get("user_id")
    if user_id is None:
        return None
    return db.get(User, user_id)


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
