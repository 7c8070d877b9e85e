"""The client's address for every reader: audit rows, sign-in limits, the portal, the gateway
API's actors and the access log all call :func:`client_address`.

Behind a reverse proxy every request comes from the proxy. :class:`ForwardedClientMiddleware`
(installed only when ``trusted_proxies`` is set) replaces the ASGI scope's client with the
address the proxy forwarded for, when, and only when, the TCP peer is one of those proxies
(:mod:`backend.domain.forwarded` decides); the peer stays in the scope as ``openmfa.peer``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from backend.domain.forwarded import HeaderKind, Network
from backend.domain.forwarded import client_address as resolve

log = logging.getLogger("openmfa.http")

#: The scope key holding the TCP peer's address when the client came from a header.
PEER_KEY = "openmfa.peer"


def client_address(request: HTTPConnection) -> str:
    """The client's address: the TCP peer, or behind a trusted proxy the address it
    forwarded for (``""`` when unknown)."""
    return request.client.host if request.client else ""


class ForwardedClientMiddleware:
    """Take the client's address from the forwarding header of a trusted proxy."""

    def __init__(
        self, app: ASGIApp, trusted: Sequence[Network], header: HeaderKind = "x-forwarded-for"
    ) -> None:
        self.app = app
        self.trusted = tuple(trusted)
        self.kind: HeaderKind = header
        self.header = header.encode("ascii")
        self._last_logged = -120.0
        self._unlogged = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if scope["type"] == "http" and client:
            peer = str(client[0])
            values = [v.decode("latin-1") for k, v in scope["headers"] if k == self.header]
            found = resolve(peer, values, self.kind, self.trusted)
            if found.problem is not None:
                self._warn(peer, found.problem)
            if found.address != peer:
                scope = {**scope, "client": (found.address, 0), PEER_KEY: peer}
        await self.app(scope, receive, send)

    def _warn(self, peer: str, problem: str) -> None:
        # Once a minute at most: a proxy that writes a header we cannot read does so on
        # every request, and one line says what to fix.
        now = time.monotonic()
        if now - self._last_logged < 60:
            self._unlogged += 1
            return
        more, self._unlogged, self._last_logged = self._unlogged, 0, now
        log.warning(
            "a trusted proxy (%s) sent %s; its own address is used as the client's%s",
            peer,
            problem,
            f" ({more} more such requests since the last line)" if more else "",
        )
