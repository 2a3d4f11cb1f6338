"""Sessions: the home redirect, log in (rate-limited in the database), log out (ends the server-side session), and
the session's CSRF token as JSON."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from rlhf.labeling_app import auth
from rlhf.labeling_app.pages import HOME_OF_ROLE, get_db, page
from rlhf.labeling_app.ratelimit import Refusal

router = APIRouter()


@router.get("/")
def home(request: Request, db: Session = Depends(get_db)) -> Response:
    user = auth.current_user(request, db)
    return RedirectResponse(HOME_OF_ROLE[user.role] if user else "/login", status_code=303)


@router.get("/login")
def login_page(request: Request) -> HTMLResponse:
    return page(request, None, "login.jinja", None)


@router.post("/login")
def login(
    request: Request,
    name: str = Form(""),
    password: str = Form(""),
    csrf: str = Form(""),
    db: Session = Depends(get_db),
) -> Response:
    auth.check_csrf(request, csrf)
    limiter = request.app.state.login_limiter
    address = request.client.host if request.client else ""
    attempt = limiter.admit(db, name, address)  # counted before the password is checked
    if isinstance(attempt, Refusal):  # refused before the password is checked, so guessing learns nothing
        response = page(request, None, "login.jinja", None, status_code=429, error=attempt.message)
        response.headers["Retry-After"] = str(attempt.retry_after)
        return response
    user = auth.authenticate(db, name, password)
    if user is None:
        return page(request, None, "login.jinja", None, status_code=401, error="wrong name or password")
    limiter.succeeded(db, attempt)
    auth.start_session(request, db, user)
    return RedirectResponse(HOME_OF_ROLE[user.role], status_code=303)


@router.post("/logout")
def logout(request: Request, csrf: str = Form(""), db: Session = Depends(get_db)) -> Response:
    auth.check_csrf(request, csrf)
    auth.end_session(request, db)
    return RedirectResponse("/login", status_code=303)


@router.get("/api/session")
def api_session(request: Request, db: Session = Depends(get_db)) -> JSONResponse:
    """Who is logged in, and the CSRF token a scripted client sends with its forms."""
    user = auth.current_user(request, db)
    return JSONResponse(
        {"csrf": auth.csrf_token(request), "user": user.name if user else None, "role": user.role if user else None}
    )
