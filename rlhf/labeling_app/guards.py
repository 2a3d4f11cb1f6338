"""Input guards every route shares: a request-body size limit applied before any form is parsed, form text
free of control characters, row ids that fit the id columns' SQL INTEGER, and clear answers (not HTTP 500)
for a path naming no row and for a write that lost a race on a unique constraint."""

from __future__ import annotations

import unicodedata
from typing import Annotated

from fastapi import HTTPException, Path, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from sqlalchemy.exc import IntegrityError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_ROW_ID = 2**31 - 1  # the id columns are SQL INTEGER: 32 bits on PostgreSQL (SQLite's are 64)
RowId = Annotated[int, Path(ge=1, le=MAX_ROW_ID)]
"""A path parameter naming a table row: 1..MAX_ROW_ID (anything else is answered 404, as a missing row)."""

FREE_TEXT_FIELDS = frozenset({"note", "reason", "text"})
"""Form fields of free text, where tab, newline and carriage return are allowed."""
LINE_BREAKS = frozenset("\t\n\r")
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


class BodyTooLarge(HTTPException):
    def __init__(self, max_bytes: int):
        super().__init__(status_code=413, detail=f"request body over the limit of {max_bytes} bytes")


class BodySizeLimit:
    """Pure ASGI middleware: a request whose Content-Length is over ``max_bytes`` gets HTTP 413 before any of
    its body is read; a body without a length (chunked) is counted as it streams in and refused (413) as
    soon as it passes the limit, so no route reads or spools more than ``max_bytes``."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = declared_length(scope)
        if declared is None:
            await PlainTextResponse("bad Content-Length header", status_code=400)(scope, receive, send)
            return
        if declared > self.max_bytes:
            await self.refuse(scope, receive, send)
            return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge:  # raised where no exception handler turned it into a response
            if started:
                raise
            await self.refuse(scope, receive, send)

    async def refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse({"detail": BodyTooLarge(self.max_bytes).detail}, status_code=413)
        response.headers["Connection"] = "close"
        await response(scope, receive, send)


def declared_length(scope: Scope) -> int | None:
    """The Content-Length header's value (0 when absent), or None when it is not a non-negative integer."""
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else None
    return 0


def control_character(value: str, free_text: bool) -> str | None:
    """The first control character in ``value`` as 'U+XXXX at position N' (tab, newline and carriage return
    are allowed in free text), or None."""
    for position, char in enumerate(value):
        if unicodedata.category(char) == "Cc" and not (free_text and char in LINE_BREAKS):
            return f"U+{ord(char):04X} at position {position}"
    return None


async def refuse_control_characters(request: Request) -> None:
    """An app-wide dependency: a form (of any route, login included) with a control character in a field name
    or a text value is refused with 422 before the route runs; PostgreSQL cannot store NUL, and no field needs
    one. The parsed form is cached on the request, so the route reads it again for free."""
    content_type = request.headers.get("content-type", "").lower()
    if request.method != "POST" or not content_type.startswith(FORM_TYPES):
        return
    form = await request.form()
    for key, value in form.multi_items():
        found = control_character(key, free_text=False)
        if found is None and isinstance(value, str):
            found = control_character(value, free_text=key in FREE_TEXT_FIELDS)
        if found is not None:
            allowed = " (only tab, newline and carriage return are allowed here)" if key in FREE_TEXT_FIELDS else ""
            raise HTTPException(
                status_code=422, detail=f"form field {key[:40]!r}: control character {found} is not allowed{allowed}"
            )


async def path_not_found(request: Request, error: RequestValidationError) -> Response:
    """A path parameter that cannot name a row (not a number, or outside 1..MAX_ROW_ID) is 404, like an id that
    names no row; other validation errors keep FastAPI's 422."""
    if error.errors() and all(item.get("loc", ("",))[0] == "path" for item in error.errors()):
        return JSONResponse({"detail": "not found"}, status_code=404)
    return await request_validation_exception_handler(request, error)


def is_unique_violation(error: IntegrityError) -> bool:
    """True for a unique-constraint violation (PostgreSQL SQLSTATE 23505, SQLite 'UNIQUE constraint failed')."""
    return getattr(error.orig, "sqlstate", None) == "23505" or "UNIQUE constraint failed" in str(error.orig)


async def conflict(_request: Request, error: IntegrityError) -> Response:
    """A write that lost a race on a unique constraint (two admins adding the same user or the same
    instructions version at once) is 409 with what to do, not a server error; other integrity errors
    (a bug, not a race) stay server errors."""
    if not is_unique_violation(error):
        raise error
    text = str(error.orig).lower()
    if "users" in text and "name" in text:
        detail = "a user with this name was just added; choose another name"
    else:
        detail = "this change conflicts with one made at the same moment; reload the page and try again"
    return JSONResponse({"detail": detail}, status_code=409)
