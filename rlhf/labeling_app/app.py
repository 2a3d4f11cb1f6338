"""The labeling web app (FastAPI, server-rendered Jinja2 pages, a little plain JavaScript).

Every page escapes text (Jinja2 autoescape on), every POST checks the session's CSRF token, every page
checks the role, and a labeler only ever reads their own assignments and judgments. The routes live in
one module per part of the app: login, labeling, admin, dashboard, Andon cord, static files."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader
from sqlalchemy.orm import Session, sessionmaker
from starlette.middleware.sessions import SessionMiddleware

from rlhf.labeling_app import (
    admin_routes,
    andon_routes,
    auth,
    dashboard_routes,
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
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


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
    app = FastAPI(title="rlhf labeling", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings
    app.state.sessions = sessions or open_database(settings.database_url or None)
    app.state.templates = Jinja2Templates(env=Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True))
    app.state.login_limiter = LoginLimiter(
        settings.login_max_failures_per_user, settings.login_max_failures_per_address, settings.login_window_seconds
    )
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
    for routes in (static_routes, login_routes, labeling_routes, dashboard_routes, admin_routes, andon_routes):
        app.include_router(routes.router)
    return app
