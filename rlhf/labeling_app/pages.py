"""What every route module shares: the request's database session, the app's settings, and rendering a page.

`create_app` keeps the settings, the session factory, the templates and the login limiter on `app.state`;
the routes reach them through the request, so one process can serve several apps (as the tests do)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from rlhf.labeling_app import andon, auth
from rlhf.labeling_app.settings import LabelSettings
from rlhf.labeling_app.tables import User

HOME_OF_ROLE = {"admin": "/admin", "researcher": "/dashboard", "labeler": "/label"}


def get_db(request: Request) -> Iterator[Session]:
    """A database session for one request (a FastAPI dependency)."""
    with request.app.state.sessions() as db:
        yield db


def settings_of(request: Request) -> LabelSettings:
    return request.app.state.settings


def page(
    request: Request, db: Session | None, name: str, user: User | None, status_code: int = 200, **context: Any
) -> HTMLResponse:
    """Render template `name`; every page gets the user, the CSRF token, a one-time flash message and the
    runs stopped by an Andon cord (none on pages rendered without a database session)."""
    context.update(
        request=request,
        user=user,
        csrf=auth.csrf_token(request),
        flash=request.session.pop("flash", ""),
        stopped_runs=andon.open_pulls(db) if db is not None else [],
    )
    return request.app.state.templates.TemplateResponse(request, name, context, status_code=status_code)
