"""The admin page: accounts (add, unpause, end their sessions) and new versions of a batch's instructions."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from rlhf.labeling_app import auth
from rlhf.labeling_app.guards import RowId
from rlhf.labeling_app.pages import get_db, page
from rlhf.labeling_app.tables import ROLES, Batch, Instructions, User
from rlhf.labeling_app.work import check_instructions, current_instructions

router = APIRouter()


@router.get("/admin")
def admin(request: Request, db: Session = Depends(get_db)) -> HTMLResponse:
    return admin_page(request, db)


def admin_page(request: Request, db: Session, error: str = "", status_code: int = 200) -> HTMLResponse:
    """The admin page; ``error`` is a message of the server's own (never text from the URL)."""
    user = auth.require_role(request, db, "admin")
    users = list(db.scalars(select(User).order_by(User.id)))
    batches = list(db.scalars(select(Batch).order_by(Batch.id)))
    return page(request, db, "admin.jinja", user, status_code, users=users, batches=batches, roles=ROLES, error=error)


@router.post("/admin/users")
def add_user(
    request: Request,
    name: str = Form(""),
    password: str = Form(""),
    role: str = Form(""),
    csrf: str = Form(""),
    db: Session = Depends(get_db),
) -> Response:
    auth.check_csrf(request, csrf)
    auth.require_role(request, db, "admin")
    try:
        auth.create_user(db, name, password, role)
    except ValueError as error:
        return admin_page(request, db, error=str(error), status_code=422)
    return RedirectResponse("/admin", status_code=303)


@router.post("/admin/users/{user_id}/unpause")
def unpause(user_id: RowId, request: Request, csrf: str = Form(""), db: Session = Depends(get_db)) -> Response:
    auth.check_csrf(request, csrf)
    auth.require_role(request, db, "admin")
    target = db.get(User, user_id)
    if target is None:
        raise HTTPException(status_code=404, detail="no such user")
    target.paused, target.pause_reason = False, ""
    db.commit()
    return RedirectResponse("/admin", status_code=303)


@router.post("/admin/users/{user_id}/end-sessions")
def end_sessions(user_id: int, request: Request, csrf: str = Form(""), db: Session = Depends(get_db)) -> Response:
    """Log a user out everywhere: their cookies, copied or not, no longer open a session."""
    auth.check_csrf(request, csrf)
    auth.require_role(request, db, "admin")
    target = db.get(User, user_id)
    if target is None:
        raise HTTPException(status_code=404, detail="no such user")
    ended = auth.end_all_sessions(db, target.id)
    request.session["flash"] = f"ended {ended} session{'' if ended == 1 else 's'} of {target.name}"
    return RedirectResponse("/admin", status_code=303)


@router.post("/admin/batches/{batch_id}/instructions")
def new_instructions(
    batch_id: RowId, request: Request, text: str = Form(""), csrf: str = Form(""), db: Session = Depends(get_db)
) -> Response:
    auth.check_csrf(request, csrf)
    auth.require_role(request, db, "admin", "researcher")
    batch = db.get(Batch, batch_id)
    if batch is None:
        raise HTTPException(status_code=404, detail="no such batch")
    try:
        text = check_instructions(text)
    except ValueError as error:
        raise HTTPException(status_code=422, detail=str(error)) from None
    latest = current_instructions(db, batch_id)
    db.add(Instructions(batch_id=batch_id, version=(latest.version if latest else 0) + 1, text=text))
    db.commit()
    return RedirectResponse("/admin", status_code=303)
