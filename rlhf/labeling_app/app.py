"""The labeling web app (FastAPI, server-rendered Jinja2 pages, a little plain JavaScript).

Every page escapes text (Jinja2 autoescape on), every POST checks the session's CSRF token, every page
checks the role, and a labeler only ever reads their own assignments and judgments."""
from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Form, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.middleware.sessions import SessionMiddleware

from rlhf.labeling_app import andon, auth
from rlhf.labeling_app.answers import LIKERT_RANGE, AnswerError
from rlhf.labeling_app.dashboard import dashboard_stats
from rlhf.labeling_app.db import open_database
from rlhf.labeling_app.ratelimit import LoginLimiter
from rlhf.labeling_app.settings import LabelSettings
from rlhf.labeling_app.tables import LIKERT_AXES, LIKERT_FLAGS, ROLES, Batch, Instructions, Judgment, Run, User
from rlhf.labeling_app.work import NoWork, current_instructions, next_assignment, submit_judgment

HERE = Path(__file__).resolve().parent
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}
HOME_OF_ROLE = {"admin": "/admin", "researcher": "/dashboard", "labeler": "/label"}


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


def create_app(settings: LabelSettings | None = None, sessions: sessionmaker[Session] | None = None) -> FastAPI:
    settings = settings or LabelSettings()
    sessions = sessions or open_database(settings.database_url or None)
    app = FastAPI(title="rlhf labeling", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(SessionMiddleware, secret_key=secret_key(settings), session_cookie="rlhf_label",
                       same_site="strict", https_only=settings.cookie_https_only, max_age=12 * 3600)
    templates = Jinja2Templates(env=Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True))
    app.state.settings, app.state.sessions = settings, sessions
    limiter = LoginLimiter(settings.login_max_failures_per_user, settings.login_max_failures_per_address, settings.login_window_seconds)

    def get_db() -> Iterator[Session]:
        with sessions() as db:
            yield db

    def page(request: Request, db: Session | None, name: str, user: User | None, status_code: int = 200, **context: Any) -> HTMLResponse:
        context.update(request=request, user=user, csrf=auth.csrf_token(request), flash=request.session.pop("flash", ""),
                       stopped_runs=andon.open_pulls(db) if db is not None else [])
        return templates.TemplateResponse(request, name, context, status_code=status_code)

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        if request.url.path != "/static/label.js":
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.exception_handler(auth.LoginRequired)
    async def to_login(_request: Request, _exc: auth.LoginRequired) -> Response:
        return RedirectResponse("/login", status_code=303)

    @app.get("/static/label.js")
    def script() -> FileResponse:
        return FileResponse(HERE / "templates" / "label.js", media_type="text/javascript")

    @app.get("/static/label.css")
    def style() -> FileResponse:
        return FileResponse(HERE / "templates" / "label.css", media_type="text/css")

    @app.get("/")
    def home(request: Request, db: Session = Depends(get_db)) -> Response:
        user = auth.current_user(request, db)
        return RedirectResponse(HOME_OF_ROLE[user.role] if user else "/login", status_code=303)

    @app.get("/login")
    def login_page(request: Request) -> HTMLResponse:
        return page(request, None, "login.jinja", None)

    @app.post("/login")
    def login(request: Request, name: str = Form(""), password: str = Form(""), csrf: str = Form(""),
              db: Session = Depends(get_db)) -> Response:
        auth.check_csrf(request, csrf)
        address = request.client.host if request.client else ""
        refused = limiter.blocked(name.strip(), address)
        if refused is not None:  # refused before the password is checked, so guessing learns nothing
            response = page(request, None, "login.jinja", None, status_code=429, error=refused)
            response.headers["Retry-After"] = refused.rsplit(" ", 2)[-2]
            return response
        user = auth.authenticate(db, name, password)
        if user is None:
            limiter.failed(name.strip(), address)
            return page(request, None, "login.jinja", None, status_code=401, error="wrong name or password")
        limiter.succeeded(name.strip())
        request.session.clear()  # a fresh session (and CSRF token) after login
        request.session["user_id"] = user.id
        return RedirectResponse(HOME_OF_ROLE[user.role], status_code=303)

    @app.post("/logout")
    def logout(request: Request, csrf: str = Form("")) -> Response:
        auth.check_csrf(request, csrf)
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    # ------------------------------------------------------------------ labeling
    def label_page(request: Request, db: Session, user: User, error: str = "", status_code: int = 200) -> HTMLResponse:
        try:
            assignment = next_assignment(db, user, settings)
        except NoWork as none:
            return page(request, db, "no_work.jinja", user, status=none.status, detail=none.detail)
        query = assignment.query
        instructions = current_instructions(db, query.batch_id)
        shown = [query.responses[index]["text"] for index in assignment.order]  # policy names stay on the server
        return page(request, db, f"query_{query.kind}.jinja", user, status_code=status_code, assignment=assignment, query=query,
                    responses=shown, instructions=instructions, error=error, axes=LIKERT_AXES, flags=LIKERT_FLAGS,
                    likert=range(LIKERT_RANGE[0], LIKERT_RANGE[1] + 1), confidence=range(1, 10))

    @app.get("/label")
    def label(request: Request, db: Session = Depends(get_db)) -> HTMLResponse:
        return label_page(request, db, auth.require_role(request, db, "labeler", "researcher"))

    @app.post("/label/submit")
    async def submit(request: Request) -> Response:
        form = await request.form()
        fields = {key: str(value) for key, value in form.items() if isinstance(value, str)}
        flags = [str(value) for value in form.getlist("flags")]
        return await run_in_threadpool(store_answer, request, fields, flags)

    def store_answer(request: Request, fields: dict[str, str], flags: list[str]) -> Response:
        with sessions() as db:
            return store_answer_in(request, db, fields, flags)

    def store_answer_in(request: Request, db: Session, fields: dict[str, str], flags: list[str]) -> Response:
        user = auth.require_role(request, db, "labeler", "researcher")
        auth.check_csrf(request, fields.get("csrf", ""))
        try:
            _judgment, stored = submit_judgment(db, user, fields.get("token", ""), fields, flags, settings)
        except LookupError as error:
            raise HTTPException(status_code=404, detail=str(error)) from None
        except AnswerError as error:
            return label_page(request, db, user, error=str(error), status_code=422)
        request.session["flash"] = "saved" if stored else "already saved (submitted twice); nothing was duplicated"
        return RedirectResponse("/label", status_code=303)

    @app.get("/api/session")
    def api_session(request: Request, db: Session = Depends(get_db)) -> JSONResponse:
        user = auth.current_user(request, db)
        return JSONResponse({"csrf": auth.csrf_token(request), "user": user.name if user else None, "role": user.role if user else None})

    @app.get("/api/next")
    def api_next(request: Request, db: Session = Depends(get_db)) -> JSONResponse:
        """The next query as JSON, for scripted (simulated) labelers; answers go to POST /label/submit."""
        user = auth.require_role(request, db, "labeler", "researcher")
        try:
            assignment = next_assignment(db, user, settings)
        except NoWork as none:
            return JSONResponse({"status": none.status, "detail": none.detail})
        query = assignment.query
        instructions = current_instructions(db, query.batch_id)
        return JSONResponse({"status": "ok", "token": assignment.token, "kind": query.kind, "prompt": query.prompt,
                             "responses": [query.responses[index]["text"] for index in assignment.order],
                             "instructions_version": instructions.version if instructions else 0})

    @app.get("/my")
    def my_work(request: Request, db: Session = Depends(get_db)) -> HTMLResponse:
        user = auth.require_role(request, db, "labeler", "researcher")
        judgments = list(db.scalars(select(Judgment).where(Judgment.user_id == user.id).order_by(Judgment.id.desc()).limit(200)))
        return page(request, db, "my.jinja", user, judgments=judgments)

    @app.get("/my/{judgment_id}")
    def my_judgment(judgment_id: int, request: Request, db: Session = Depends(get_db)) -> HTMLResponse:
        user = auth.require_role(request, db, "labeler", "researcher")
        judgment = db.get(Judgment, judgment_id)
        if judgment is None or judgment.user_id != user.id:  # other labelers' work does not exist for you
            raise HTTPException(status_code=404, detail="no such judgment of yours")
        return page(request, db, "judgment.jinja", user, judgment=judgment)

    # ------------------------------------------------------------------ researchers and admins
    @app.get("/dashboard")
    def dashboard(request: Request, db: Session = Depends(get_db)) -> HTMLResponse:
        user = auth.require_role(request, db, "researcher", "admin")
        return page(request, db, "dashboard.jinja", user, stats=dashboard_stats(db))

    @app.get("/api/dashboard")
    def dashboard_json(request: Request, db: Session = Depends(get_db)) -> JSONResponse:
        auth.require_role(request, db, "researcher", "admin")
        return JSONResponse(dashboard_stats(db))

    @app.get("/admin")
    def admin(request: Request, db: Session = Depends(get_db), error: str = "") -> HTMLResponse:
        user = auth.require_role(request, db, "admin")
        users = list(db.scalars(select(User).order_by(User.id)))
        batches = list(db.scalars(select(Batch).order_by(Batch.id)))
        return page(request, db, "admin.jinja", user, users=users, batches=batches, roles=ROLES, error=error)

    @app.post("/admin/users")
    def add_user(request: Request, name: str = Form(""), password: str = Form(""), role: str = Form(""),
                 csrf: str = Form(""), db: Session = Depends(get_db)) -> Response:
        auth.check_csrf(request, csrf)
        auth.require_role(request, db, "admin")
        try:
            auth.create_user(db, name, password, role)
        except ValueError as error:
            return admin(request, db, error=str(error))
        return RedirectResponse("/admin", status_code=303)

    @app.post("/admin/users/{user_id}/unpause")
    def unpause(user_id: int, request: Request, csrf: str = Form(""), db: Session = Depends(get_db)) -> Response:
        auth.check_csrf(request, csrf)
        auth.require_role(request, db, "admin")
        target = db.get(User, user_id)
        if target is None:
            raise HTTPException(status_code=404, detail="no such user")
        target.paused, target.pause_reason = False, ""
        db.commit()
        return RedirectResponse("/admin", status_code=303)

    @app.post("/admin/batches/{batch_id}/instructions")
    def new_instructions(batch_id: int, request: Request, text: str = Form(""), csrf: str = Form(""),
                         db: Session = Depends(get_db)) -> Response:
        auth.check_csrf(request, csrf)
        auth.require_role(request, db, "admin", "researcher")
        batch = db.get(Batch, batch_id)
        if batch is None:
            raise HTTPException(status_code=404, detail="no such batch")
        latest = current_instructions(db, batch_id)
        db.add(Instructions(batch_id=batch_id, version=(latest.version if latest else 0) + 1, text=text.strip()))
        db.commit()
        return RedirectResponse("/admin", status_code=303)

    # ------------------------------------------------------------------ the Andon cord (Ziegler §4.4)
    @app.get("/runs")
    def runs(request: Request, db: Session = Depends(get_db)) -> HTMLResponse:
        user = auth.require_role(request, db, *ROLES)
        return page(request, db, "runs.jinja", user, runs=list(db.scalars(select(Run).order_by(Run.id))))

    @app.post("/runs/{run_id}/andon")
    def pull(run_id: int, request: Request, reason: str = Form(""), csrf: str = Form(""), db: Session = Depends(get_db)) -> Response:
        auth.check_csrf(request, csrf)
        user = auth.require_role(request, db, "labeler", "researcher", "admin")
        run = db.get(Run, run_id)
        if run is None:
            raise HTTPException(status_code=404, detail="no such run")
        try:
            andon.pull_cord(db, run, user, reason)
        except ValueError as error:
            raise HTTPException(status_code=422, detail=str(error)) from None
        return RedirectResponse("/runs", status_code=303)

    @app.post("/runs/{run_id}/release")
    def release(run_id: int, request: Request, csrf: str = Form(""), db: Session = Depends(get_db)) -> Response:
        auth.check_csrf(request, csrf)
        user = auth.require_role(request, db, "researcher", "admin")
        run = db.get(Run, run_id)
        if run is None:
            raise HTTPException(status_code=404, detail="no such run")
        andon.release_cord(db, run, user)
        return RedirectResponse("/runs", status_code=303)

    return app
