"""The one place errors become HTTP answers: RFC 9457 ``application/problem+json``.

Every refused request also leaves an audit row (``request.refused``) written here, so no
endpoint has to remember to do it.
"""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from backend.errors import DatabaseError, OpenMFAError
from backend.logs import request_id_var
from backend.services.context import Actor

PROBLEM_BASE = "https://openmfa.org/problems/"
log = logging.getLogger("openmfa.api")


def problem_response(status: int, type_: str, title: str, detail: str) -> JSONResponse:
    """A problem document with the current request id."""
    body = {
        "type": PROBLEM_BASE + type_,
        "title": title,
        "status": status,
        "detail": detail,
        "request_id": request_id_var.get(),
    }
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(
        body, status_code=status, media_type="application/problem+json", headers=headers
    )


def request_actor(request: Request) -> Actor:
    """The actor a handler set after authenticating, or an anonymous one."""
    actor = getattr(request.state, "actor", None)
    if isinstance(actor, Actor):
        return actor
    client = request.client.host if request.client else ""
    return Actor("anonymous", client, request_id_var.get())


async def openmfa_error(request: Request, exc: Exception) -> Response:
    """Map our errors to their status and type; audit the refusal."""
    assert isinstance(exc, OpenMFAError)  # noqa: S101 - registered for this class only
    if exc.status >= 500:
        log.error("request failed: %s", exc.detail, extra={"problem": exc.type})
    services = getattr(request.app.state, "services", None)
    if services is not None and not isinstance(exc, DatabaseError):
        try:
            await services.audit.record(
                request_actor(request),
                "request.refused",
                exc.type,
                user_name=str(getattr(request.state, "user_name", "")),
                detail=f"{request.method} {request.url.path}: {exc.detail}",
            )
        except OpenMFAError:
            log.warning("could not audit a refused request", exc_info=True)
    return problem_response(exc.status, exc.type, exc.title, exc.detail)


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 / 405 in the same format."""
    assert isinstance(exc, HTTPException)  # noqa: S101 - registered for this class only
    type_ = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
    return problem_response(exc.status_code, type_, str(exc.detail), str(exc.detail))


async def unexpected_error(request: Request, exc: Exception) -> Response:
    """A bug: log it with the traceback, answer 500 without details."""
    log.error("unexpected error", exc_info=exc)
    return problem_response(500, "internal-error", "Internal error", "an unexpected error occurred")
