"""A labeler's (or researcher's) work: the next query as a page or as JSON, submitting an answer, and
their own past judgments. Policy names never leave the server; nobody reads another person's judgments."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from rlhf.labeling_app import auth
from rlhf.labeling_app.answers import LIKERT_RANGE, AnswerError
from rlhf.labeling_app.guards import RowId
from rlhf.labeling_app.pages import get_db, page, settings_of
from rlhf.labeling_app.tables import LIKERT_AXES, LIKERT_FLAGS, Judgment, User
from rlhf.labeling_app.work import NoWork, current_instructions, next_assignment, submit_judgment

router = APIRouter()
WORKERS = ("labeler", "researcher")


def label_page(request: Request, db: Session, user: User, error: str = "", status_code: int = 200) -> HTMLResponse:
    """The user's next query as a form (with `error` above it after a refused answer), or why there is none."""
    try:
        assignment = next_assignment(db, user, settings_of(request))
    except NoWork as none:
        return page(request, db, "no_work.jinja", user, status=none.status, detail=none.detail)
    query = assignment.query
    instructions = current_instructions(db, query.batch_id)
    shown = [query.responses[index]["text"] for index in assignment.order]  # policy names stay on the server
    return page(
        request,
        db,
        f"query_{query.kind}.jinja",
        user,
        status_code=status_code,
        assignment=assignment,
        query=query,
        responses=shown,
        instructions=instructions,
        error=error,
        axes=LIKERT_AXES,
        flags=LIKERT_FLAGS,
        likert=range(LIKERT_RANGE[0], LIKERT_RANGE[1] + 1),
        confidence=range(1, 10),
    )


@router.get("/label")
def label(request: Request, db: Session = Depends(get_db)) -> HTMLResponse:
    return label_page(request, db, auth.require_role(request, db, *WORKERS))


@router.post("/label/submit")
async def submit(request: Request) -> Response:
    form = await request.form()
    fields = {key: str(value) for key, value in form.items() if isinstance(value, str)}
    flags = [str(value) for value in form.getlist("flags")]
    return await run_in_threadpool(store_answer, request, fields, flags)


def store_answer(request: Request, fields: dict[str, str], flags: list[str]) -> Response:
    """Store a submitted answer once (a repeated submit stores nothing) and go on to the next query;
    403 without the session's CSRF token, 404 for an assignment not the user's, 422 for a bad answer."""
    with request.app.state.sessions() as db:
        user = auth.require_role(request, db, *WORKERS)
        auth.check_csrf(request, fields.get("csrf", ""))
        try:
            _judgment, stored = submit_judgment(db, user, fields.get("token", ""), fields, flags, settings_of(request))
        except LookupError as error:
            raise HTTPException(status_code=404, detail=str(error)) from None
        except AnswerError as error:
            return label_page(request, db, user, error=str(error), status_code=422)
        request.session["flash"] = "saved" if stored else "already saved (submitted twice); nothing was duplicated"
        return RedirectResponse("/label", status_code=303)


@router.get("/api/next")
def api_next(request: Request, db: Session = Depends(get_db)) -> JSONResponse:
    """The next query as JSON, for scripted (simulated) labelers; answers go to POST /label/submit."""
    user = auth.require_role(request, db, *WORKERS)
    try:
        assignment = next_assignment(db, user, settings_of(request))
    except NoWork as none:
        return JSONResponse({"status": none.status, "detail": none.detail})
    query = assignment.query
    instructions = current_instructions(db, query.batch_id)
    return JSONResponse(
        {
            "status": "ok",
            "token": assignment.token,
            "kind": query.kind,
            "prompt": query.prompt,
            "responses": [query.responses[index]["text"] for index in assignment.order],
            "instructions_version": instructions.version if instructions else 0,
        }
    )


@router.get("/my")
def my_work(request: Request, db: Session = Depends(get_db)) -> HTMLResponse:
    user = auth.require_role(request, db, *WORKERS)
    judgments = list(
        db.scalars(select(Judgment).where(Judgment.user_id == user.id).order_by(Judgment.id.desc()).limit(200))
    )
    return page(request, db, "my.jinja", user, judgments=judgments)


@router.get("/my/{judgment_id}")
def my_judgment(judgment_id: RowId, request: Request, db: Session = Depends(get_db)) -> HTMLResponse:
    user = auth.require_role(request, db, *WORKERS)
    judgment = db.get(Judgment, judgment_id)
    if judgment is None or judgment.user_id != user.id:  # other labelers' work does not exist for you
        raise HTTPException(status_code=404, detail="no such judgment of yours")
    return page(request, db, "judgment.jinja", user, judgment=judgment)
