"""The labeling web app (FastAPI, server-rendered Jinja2 pages, a little plain JavaScript).

Every page escapes text (Jinja2 autoescape on), every POST checks the session's CSRF token, every page
checks the role, and a labeler only ever reads their own assignments and judgments. Before any route runs,
a request body over the size limit is refused (413) and a form with control characters is refused (422);
see guards.py. The routes live in one module per part of the app: login, labeling, admin, dashboard,
Andon cord, static files."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from starlette.middleware.sessions import SessionMiddleware

from rlhf.labeling_app import (
    admin_routes,
    andon_routes,
    auth,
    dashboard_routes,
    guards,
    labeling_routes,
    login_routes,
    static_routes,
)
from rlhf.labeling_app.db import open_database
from rlhf.labeling_app.ratelimit import LoginLimiter
from rlhf.labeling_app.settings import LabelSettings

HERE = Path(__file__).resolve().parent
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}
HSTS = "max-age=31536000"


def secret_key(settings: LabelSettings) -> str:
    """The cookie-signing key: the setting, $RLHF_LABEL_SECRET, or a random key kept in the data directory."""
    if settings.secret_key or os.environ.get("RLHF_LABEL_SECRET"):
        return settings.secret_key or os.environ["RLHF_LABEL_SECRET"]
    path = Path(os.environ.get("RLHF_LABEL_DATA", "data")) / "secret_key"
    if not path.exists():
        create_private_file(path, secrets.token_urlsafe(48))
    return path.read_text().strip()


def create_private_file(path: Path, text: str) -> None:
    """Write ``text`` to a new file readable by its owner only (mode 0600 from creation, never wider): a
    temporary file made with O_EXCL and linked into place, so a concurrent creator leaves one whole file."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.link(temporary, path)
    except FileExistsError:  # another process made it first: keep theirs
        pass
    finally:
        temporary.unlink(missing_ok=True)


async def security_headers(request: Request, call_next) -> Response:
    """The security headers on every response (HSTS too when cookies are HTTPS-only); nothing but the script may
    be cached."""
    response = await call_next(request)
    response.headers.update(SECURITY_HEADERS)
    if request.app.state.settings.cookie_https_only:  # served over HTTPS: browsers must keep to it
        response.headers["Strict-Transport-Security"] = HSTS
    if request.url.path != "/static/label.js":
        response.headers["Cache-Control"] = "no-store"
    return response


async def to_login(_request: Request, _exc: auth.LoginRequired) -> Response:
    return RedirectResponse("/login", status_code=303)


def create_app(settings: LabelSettings | None = None, sessions: sessionmaker[Session] | None = None) -> FastAPI:
    """The app: settings, database sessions, templates and login limiter on `app.state`, then the routes."""
    settings = settings or LabelSettings()
    app = FastAPI(
        title="rlhf labeling",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        dependencies=[Depends(guards.refuse_control_characters)],
    )
    app.state.settings = settings
    app.state.sessions = sessions or open_database(settings.database_url or None)
    app.state.templates = Jinja2Templates(env=Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True))
    app.state.login_limiter = LoginLimiter(
        settings.login_max_failures_per_user, settings.login_max_failures_per_address, settings.login_window_seconds
    )
    app.add_middleware(guards.BodySizeLimit, max_bytes=settings.max_body_bytes)  # innermost: before any form is read
    app.add_middleware(
        SessionMiddleware,
        secret_key=secret_key(settings),
        session_cookie="rlhf_label",
        same_site="strict",
        https_only=settings.cookie_https_only,
        max_age=auth.SESSION_SECONDS,
    )
    app.middleware("http")(security_headers)
    app.add_exception_handler(auth.LoginRequired, to_login)
    app.add_exception_handler(RequestValidationError, guards.path_not_found)
    app.add_exception_handler(IntegrityError, guards.conflict)
    for routes in (static_routes, login_routes, labeling_routes, dashboard_routes, admin_routes, andon_routes):
        app.include_router(routes.router)
    return app
