"""The two static files: the pages' script and style sheet (served from the templates folder)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

TEMPLATES = Path(__file__).resolve().parent / "templates"
router = APIRouter()


@router.get("/static/label.js")
def script() -> FileResponse:
    return FileResponse(TEMPLATES / "label.js", media_type="text/javascript")


@router.get("/static/label.css")
def style() -> FileResponse:
    return FileResponse(TEMPLATES / "label.css", media_type="text/css")
