"""The one place errors become HTTP answers: RFC 9457 ``application/problem+json``.

Every refused request also leaves an audit row (``request.refused``) written here, so no
endpoint has to remember to do it. Under the web pages (``/portal``, ``/admin``) the same
status, title and detail are rendered as an HTML page instead: the pages' middleware puts a
renderer on ``request.state.html_errors`` (see :data:`HtmlErrorPage`), and every handler here
hands its answer to it when one is there. The API never imports the web layer.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from backend.api.client_address import client_address
from backend.errors import DatabaseError, OpenMFAError
from backend.logs import request_id_var
from backend.services.context import Actor

if TYPE_CHECKING:
    from backend.services import Services

PROBLEM_BASE = "https://openmfa.org/problems/"
log = logging.getLogger("openmfa.api")

#: ``(request, status, title, detail, headers) -> response``: an HTML error page.
HtmlErrorPage = Callable[[Request, int, str, str, Mapping[str, str] | None], Awaitable[Response]]


def html_error_page(request: Request) -> HtmlErrorPage | None:
    """The HTML renderer of the web area the request is in, or ``None`` (answer JSON)."""
    page = getattr(request.state, "html_errors", None)
    return page if callable(page) else None


def problem_body(status: int, type_: str, title: str, detail: str) -> dict[str, Any]:
    """A problem document (RFC 9457) with the current request id."""
    return {
        "type": PROBLEM_BASE + type_,
        "title": title,
        "status": status,
        "detail": detail,
        "request_id": request_id_var.get(),
    }


def problem_of(exc: OpenMFAError) -> tuple[int, dict[str, Any]]:
    """(status, problem document) for one of our errors: what HTTP answers and what the
    bridges' wait channel (:mod:`backend.api.channel_v1`) puts in a call's result."""
    return exc.status, problem_body(exc.status, exc.type, exc.title, exc.detail)


async def audit_refusal(
    services: Services, actor: Actor, exc: OpenMFAError, user_name: str, detail: str
) -> None:
    """The ``request.refused`` audit row of a refusal (a failing database is only logged:
    the row could not be written either)."""
    if exc.status >= 500:
        log.error("request failed: %s", exc.detail, extra={"problem": exc.type})
    if isinstance(exc, DatabaseError):
        return
    try:
        await services.audit.record(
            actor, "request.refused", exc.type, user_name=user_name, detail=detail
        )
    except OpenMFAError:
        log.warning("could not audit a refused request", exc_info=True)


def problem_response(
    status: int,
    type_: str,
    title: str,
    detail: str,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """A problem document with the current request id (and any headers the status needs)."""
    body = problem_body(status, type_, title, detail)
    extra = dict(headers or {})
    return JSONResponse(
        body, status_code=status, media_type="application/problem+json", headers=extra or None
    )


def request_actor(request: Request, error: OpenMFAError | None = None) -> Actor:
    """The actor known when the error happened, the one a handler set, or an anonymous one."""
    actor = error.extra.get("actor") if error is not None else None
    if not isinstance(actor, Actor):
        actor = getattr(request.state, "actor", None)
    if isinstance(actor, Actor):
        return actor
    client = client_address(request)
    return Actor("anonymous", client, request_id_var.get())


async def openmfa_error(request: Request, exc: Exception) -> Response:
    """Map our errors to their status and type; audit the refusal."""
    assert isinstance(exc, OpenMFAError)  # noqa: S101 - registered for this class only
    services = getattr(request.app.state, "services", None)
    if services is not None:
        await audit_refusal(
            services,
            request_actor(request, exc),
            exc,
            str(getattr(request.state, "user_name", "")),
            f"{request.method} {request.url.path}: {exc.detail}",
        )
    elif exc.status >= 500:
        log.error("request failed: %s", exc.detail, extra={"problem": exc.type})
    headers: dict[str, str] = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    page = html_error_page(request)
    if page is not None:
        return await page(request, exc.status, exc.title, exc.detail, headers or None)
    if exc.status == 401:  # RFC 9110: a 401 names the scheme the client should use
        scheme = "Bearer" if request.url.path.startswith("/gateway/") else "OpenMFA-V1"
        headers["WWW-Authenticate"] = scheme
    return problem_response(exc.status, exc.type, exc.title, exc.detail, headers or None)


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 / 405 in the same format, keeping its headers (405's ``Allow``)."""
    assert isinstance(exc, HTTPException)  # noqa: S101 - registered for this class only
    type_ = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
    page = html_error_page(request)
    if page is not None:
        return await page(request, exc.status_code, str(exc.detail), "", exc.headers)
    return problem_response(
        exc.status_code, type_, str(exc.detail), str(exc.detail), headers=exc.headers
    )


async def unexpected_error(request: Request, exc: Exception) -> Response:
    """A bug: log it with the traceback, answer 500 without details."""
    log.error("unexpected error", exc_info=exc)
    page = html_error_page(request)
    if page is not None:
        try:
            return await page(request, 500, "Internal error", "an unexpected error occurred", None)
        except Exception:  # the page itself failed: answer in the plain format below
            log.error("the HTML error page failed", exc_info=True)
    return problem_response(500, "internal-error", "Internal error", "an unexpected error occurred")


async def client_gone(request: Request, exc: Exception) -> Response:
    """The client closed the connection before its body arrived whole (Starlette's
    ``ClientDisconnect``): a normal event on any network, not a bug. One debug line, no
    audit row (nobody was refused anything); the answer goes nowhere, and the access log
    shows it as 499, as nginx names a request its client abandoned."""
    log.debug("the client went away before sending the whole request body")
    return Response(status_code=499)
