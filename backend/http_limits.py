"""uvicorn's httptools protocol with the limits it lacks: the size and count of a request's
headers (431), a deadline for a request to arrive (408), and a cap on connections (503).

Without them one request with a 64 MiB header was read into memory and answered, and
connections that never finished their headers were held for ever (issue 13, finding 7).
httptools (llhttp) has no header limit of its own and uvicorn arms no timer before a
connection's first response, so both are added here, around the parser:

* the head (request line and headers) is counted as it arrives, read by read, so a head
  that never ends is refused once it passes the limit, holding at most two reads more;
* the deadline runs from the opening of the connection (for its first request) or from a
  request's first byte (for later ones on a kept-alive connection) to the end of the
  request's body. It never touches the response: a long-poll (``?wait=55``) has arrived
  whole before it starts waiting, so it is not affected. A timer runs only while a request
  is incomplete after a read, so the usual request costs none;
* the cap refuses a connection as soon as it is accepted, before anything is read.

Each refusal is counted in :class:`HttpMetrics` and logged once a minute at most per reason:
an attack must not turn into a flood of log lines (or of audit rows, which is why none are
written for these).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
from prometheus_client import CollectorRegistry, Counter
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

log = logging.getLogger("openmfa.http")

#: Why a connection was refused, as counted and logged.
REASONS = (
    "header-too-large",
    "too-many-headers",
    "request-timeout",
    "too-many-connections",
    "bad-request",
)


@dataclass(frozen=True)
class HttpLimits:
    """What one server process accepts (``http_*`` settings, docs/configuration.md)."""

    max_header_bytes: int = 16384
    max_headers: int = 100
    request_timeout_seconds: float = 10.0
    max_connections: int = 30000


class HttpMetrics:
    """The HTTP server's counters, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.refused = Counter(
            "openmfa_http_refused",
            "Connections refused or cut by the HTTP server's limits, by reason",
            ["reason"],
            registry=self.registry,
        )
        for reason in REASONS:
            self.refused.labels(reason)
        self._last_logged: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    def count(self, reason: str, detail: str) -> None:
        """Count a refusal; log it unless one of its kind was logged in the last minute."""
        self.refused.labels(reason).inc()
        now = time.monotonic()
        if now - self._last_logged.get(reason, -120.0) < 60:
            self._unlogged[reason] = self._unlogged.get(reason, 0) + 1
            return
        self._last_logged[reason] = now
        more = self._unlogged.pop(reason, 0)
        log.warning(
            "HTTP request refused (%s): %s%s",
            reason,
            detail,
            f" ({more} more since the last such line)" if more else "",
            extra={"reason": reason},
        )


def _canned(status: int, phrase: str) -> bytes:
    body = phrase.encode("ascii")
    return (
        f"HTTP/1.1 {status} {phrase}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode("ascii") + body


_TOO_LARGE = _canned(431, "Request Header Fields Too Large")
_TIMEOUT = _canned(408, "Request Timeout")
_BUSY = _canned(503, "Service Unavailable")


class _HeadRefused(Exception):
    """Raised from a parser callback to stop parsing a head that broke a limit."""


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """The protocol class uvicorn runs; :func:`protocol_class` binds the limits."""

    limits: ClassVar[HttpLimits] = HttpLimits()
    metrics: ClassVar[HttpMetrics | None] = None

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._refused = False
        self._in_head = False  # between a request's first byte and the end of its headers
        self._head_bytes = 0  # bytes received since the head began (an upper bound of it)
        self._head_size = 0  # the head as parsed so far: URL and complete headers
        self._header_count = 0
        self._head_refusal: str | None = None
        # When the request still arriving began (or the connection opened); None between
        # requests. A timer runs only while a request is incomplete after a read: the usual
        # request arrives in one read and costs no timer at all.
        self._pending_since: float | None = None
        self._deadline: asyncio.TimerHandle | None = None

    # -- connection ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            self.transport = transport
            self._refused = True
            transport.write(_BUSY)
            transport.close()
            self._count("too-many-connections", f"{len(self.connections)} connections open")
            return
        super().connection_made(transport)
        self._pending_since = self.loop.time()
        self._arm_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._unset_keepalive_if_required()
        if self._in_head:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:  # a callback's error too (_HeadRefused)
            if self._head_refusal is not None:
                self._refuse_head()
                return
            # uvicorn logs each of these at warning: a flood of garbage would flood the log.
            self._count("bad-request", "not a valid HTTP/1.1 request")
            self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:  # (uvicorn warns each time: curl --http2 asks for h2c on every request)
                log.debug("an Upgrade request was served as plain HTTP/1.1")
            return
        if self._in_head and self._head_bytes > self.limits.max_header_bytes:
            self._head_refusal = "header-too-large"
            self._refuse_head()
        elif self._pending_since is not None and self._deadline is None:
            self._arm_deadline()

    # -- parser callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        # Counted from the next chunk on: the part of this one before the head began may
        # be the previous request's body. One chunk more is the price of never refusing a
        # head that fits.
        self._head_bytes = 0
        self._head_size = 0
        self._header_count = 0
        if self._pending_since is None:
            self._pending_since = self.loop.time()

    def on_url(self, url: bytes) -> None:
        self._grow_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            self._head_refusal = "too-many-headers"
            raise _HeadRefused
        self._grow_head(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._pending_since = None
        self._cancel_deadline()
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        # The connection now belongs to the WebSocket protocol (the bridges' wait channel):
        # this request deadline must not hang it up later; the WebSocket pings instead.
        self._pending_since = None
        self._cancel_deadline()
        super().handle_websocket_upgrade()

    def _grow_head(self, size: int) -> None:
        self._head_size += size
        if self._head_size > self.limits.max_header_bytes:
            self._head_refusal = "header-too-large"
            raise _HeadRefused

    # -- refusals -----------------------------------------------------------------------------

    def _refuse_head(self) -> None:
        reason = self._head_refusal or "header-too-large"
        self._stop(_TOO_LARGE)
        limits = self.limits
        self._count(
            reason, f"limits are {limits.max_header_bytes} bytes and {limits.max_headers} headers"
        )

    def _arm_deadline(self) -> None:
        self._cancel_deadline()
        began = self.loop.time() if self._pending_since is None else self._pending_since
        self._deadline = self.loop.call_at(
            began + self.limits.request_timeout_seconds, self._deadline_passed
        )

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _deadline_passed(self) -> None:
        self._deadline = None
        if self.transport is None or self.transport.is_closing():
            return
        if self.flow is not None and self.flow.read_paused:
            # We stopped reading (a pipelined request waits for the answer before it, or the
            # application has not taken the body read so far): the wait is ours, not the
            # client's. Count again from now.
            self._pending_since = self.loop.time()
            self._arm_deadline()
            return
        cycle = self.cycle
        if self._in_head:  # a head began but did not end
            answer: bytes | None = _TIMEOUT
        elif cycle is not None and cycle.more_body and not cycle.response_started:
            answer = _TIMEOUT  # the head came, the body did not
        else:
            answer = None  # nothing asked (or already answered): just hang up
        self._stop(answer)
        if answer is not None:
            self._count(
                "request-timeout",
                f"not received within {self.limits.request_timeout_seconds:g} s",
            )

    def _stop(self, answer: bytes | None) -> None:
        """Answer ``answer`` (if any) in place of the application and close."""
        self._refused = True
        self._cancel_deadline()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # The application (reading a body) sees the client gone; what it still sends
            # is dropped.
            cycle.disconnected = True
            cycle.message_event.set()
            if cycle.response_started:
                answer = None
        if answer is not None:
            self.transport.write(answer)
        self.transport.close()

    def _count(self, reason: str, detail: str) -> None:
        if self.metrics is not None:
            self.metrics.count(reason, detail)


def protocol_class(limits: HttpLimits, metrics: HttpMetrics) -> type[LimitedHttpToolsProtocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` with ``limits`` and ``metrics``."""
    return type(
        "LimitedHttpToolsProtocol",
        (LimitedHttpToolsProtocol,),
        {"limits": limits, "metrics": metrics},
    )
