"""The researchers' dashboard (throughput, gold accuracy, agreement), as a page and as JSON."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse
from sqlalchemy.orm import Session

from rlhf.labeling_app import auth
from rlhf.labeling_app.dashboard import dashboard_stats
from rlhf.labeling_app.pages import get_db, page

router = APIRouter()


@router.get("/dashboard")
def dashboard(request: Request, db: Session = Depends(get_db)) -> HTMLResponse:
    user = auth.require_role(request, db, "researcher", "admin")
    return page(request, db, "dashboard.jinja", user, stats=dashboard_stats(db))


@router.get("/api/dashboard")
def dashboard_json(request: Request, db: Session = Depends(get_db)) -> JSONResponse:
    auth.require_role(request, db, "researcher", "admin")
    return JSONResponse(dashboard_stats(db))
