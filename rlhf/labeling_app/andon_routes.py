"""The Andon cord (Ziegler et al. 2019 §4.4): the runs page, where anyone stops a run and a researcher or
admin releases it."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from rlhf.labeling_app import andon, auth
from rlhf.labeling_app.guards import RowId
from rlhf.labeling_app.pages import get_db, page
from rlhf.labeling_app.tables import ROLES, Run

router = APIRouter()


@router.get("/runs")
def runs(request: Request, db: Session = Depends(get_db)) -> HTMLResponse:
    user = auth.require_role(request, db, *ROLES)
    return page(request, db, "runs.jinja", user, runs=list(db.scalars(select(Run).order_by(Run.id))))


@router.post("/runs/{run_id}/andon")
def pull(
    run_id: RowId, request: Request, reason: str = Form(""), csrf: str = Form(""), db: Session = Depends(get_db)
) -> Response:
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


@router.post("/runs/{run_id}/release")
def release(run_id: RowId, request: Request, csrf: str = Form(""), db: Session = Depends(get_db)) -> Response:
    auth.check_csrf(request, csrf)
    user = auth.require_role(request, db, "researcher", "admin")
    run = db.get(Run, run_id)
    if run is None:
        raise HTTPException(status_code=404, detail="no such run")
    andon.release_cord(db, run, user)
    return RedirectResponse("/runs", status_code=303)
