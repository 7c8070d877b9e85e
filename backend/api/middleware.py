"""Pure ASGI middleware: a request id on every request, and an access log line."""

from __future__ import annotations

import logging
import re
import secrets
import time
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.api.client_address import PEER_KEY
from backend.api.problems import unexpected_error
from backend.logs import request_id_var

if TYPE_CHECKING:
    from backend.metrics import BackendMetrics

_VALID_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# Pages whose last path segment is a one-time credential (an invitation, the first
# administrator's link): the access log names the page, never the token.
_CREDENTIAL_PATHS = re.compile(r"^(/portal/invite/|/admin/bootstrap/)[^/]+")
log = logging.getLogger("openmfa.access")
#: Polls that only say "nothing changed", logged at debug: a bridge asks for its client list
#: every few seconds, and 304 lines at info would bury everything else (17,280 a day each).
_QUIET_POLLS = frozenset({("/gateway/v1/radius/clients", 304)})


def loggable_path(path: str) -> str:
    """``path`` as the access log may show it."""
    return _CREDENTIAL_PATHS.sub(r"\1<token>", path)


def _addresses(scope: Scope) -> dict[str, str]:
    """The client (behind a trusted proxy: the one it forwarded for) and that proxy."""
    client = scope.get("client")
    shown = {"client": str(client[0]) if client else ""}
    peer = scope.get(PEER_KEY)
    if isinstance(peer, str):
        shown["peer"] = peer
    return shown


class RequestIdMiddleware:
    """Accept a sane ``X-Request-ID`` or make one; echo it; log the request when done, and
    count it in ``metrics`` (its start time and status are taken here anyway)."""

    def __init__(self, app: ASGIApp, metrics: BackendMetrics | None = None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _VALID_ID.fullmatch(given) else secrets.token_hex(8)
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500

        responded = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, responded
            if message["type"] == "http.response.start":
                status = message["status"]
                responded = True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            if responded:
                raise
            # A bug escaped the handler. Answer here, while the request id is still set:
            # Starlette's outermost error middleware would answer after it was reset, with
            # no id in the log line, the problem document or the X-Request-ID header.
            response = await unexpected_error(Request(scope, receive), exc)
            await response(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            if self.metrics is not None:
                self.metrics.observe_request(scope, status, elapsed)
            log.log(
                logging.DEBUG if (scope["path"], status) in _QUIET_POLLS else logging.INFO,
                "%s %s %s",
                scope["method"],
                loggable_path(scope["path"]),
                status,
                extra={
                    "status": status,
                    "ms": round(elapsed * 1000, 2),
                    **_addresses(scope),
                },
            )
            request_id_var.reset(token)
