"""RADIUS over TLS (RadSec, RFC 6614): TCP listeners beside the UDP sockets.

Each accepted connection is one RADIUS client:

* **Mutual TLS.** TLS 1.2 or newer, Python's default cipher choice, a client certificate
  required and verified against ``client_ca_file``. A connection whose handshake does not
  finish within ``handshake_timeout`` seconds is dropped by the loop.
* **Bound by certificate.** The SHA-256 digest of the peer's certificate picks the one
  RADIUS client it is bound to (``radsec_fingerprints`` in the clients document). A
  certificate bound to no client, or a peer outside that client's addresses, is closed
  before a single packet is read and reported to the handler (which audits it).
* **The fixed secret.** Authenticators and Message-Authenticator use ``radsec`` (RFC 6614
  section 2.3): the client's own secret, if it has one, is for UDP only.
* **Many requests at once.** Packets are cut out of the stream by
  :class:`~radius_bridge.protocol.stream.StreamFramer` and handed to the handler one by one;
  answers are written as they are decided, in any order. At most ``max_in_flight`` requests
  per connection are in progress; beyond that reading pauses (TCP backpressure on the
  gateway) until one is answered. A bad length closes the connection (RFC 6614 section 2.5).
* **Idle timeout.** A connection that carries nothing for ``idle_timeout`` seconds and has
  nothing in progress is closed; Status-Server (RFC 5997) keeps it open.
* **Bounded.** At most ``max_connections`` connections at once; one more is closed at once.

The handler (the runner) decides everything about packets; this module keeps no request
state beyond counting what is in flight.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol, cast

from radius_bridge.config import ListenAddress
from radius_bridge.model import ClientConfig
from radius_bridge.protocol.stream import FramingError, StreamFramer
from radius_vocabulary.certs import certificate_fingerprint, format_fingerprint

log = logging.getLogger("openmfa.radius")

#: RFC 6614 section 2.3: the shared secret on a RadSec connection.
RADSEC_SECRET: Final = b"radsec"
DEFAULT_PORT: Final = 2083


class TlsSetupError(Exception):
    """The certificate, key or client CA cannot be loaded."""


@dataclass(frozen=True, slots=True)
class RadsecLimits:
    """Timeouts and bounds of the RadSec listener."""

    handshake_timeout: float = 10.0
    idle_timeout: float = 120.0
    max_connections: int = 256
    max_in_flight: int = 256


class StreamHandler(Protocol):
    """What a connection feeds (the runner)."""

    def radsec_client(
        self, digest: bytes, peer: tuple[Any, ...], subject: str
    ) -> ClientConfig | None:
        """The client this certificate is bound to (secret already ``radsec``), or None:
        refused, and the handler has recorded why."""

    def stream_received(
        self, data: bytes, client: ClientConfig, connection: RadsecConnection
    ) -> asyncio.Future[Any] | None:
        """One whole packet from ``connection``: the task deciding it, or None when nothing
        is in progress for it any more (answered at once, absorbed or dropped)."""

    def radsec_refused(self, peer: tuple[Any, ...], why: str) -> None:
        """A TLS handshake failed (no certificate, another CA, a timeout): report it."""

    def radsec_event(self, event: str) -> None:
        """Count a connection event: accepted, over-limit, bad-length, idle-closed, closed."""


def server_context(cert_file: Path, key_file: Path, client_ca_file: Path) -> ssl.SSLContext:
    """A TLS server context demanding a client certificate signed by ``client_ca_file``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    # No session tickets: a resumed session would skip showing the certificate we bind to.
    context.options |= ssl.OP_NO_TICKET
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise TlsSetupError(f"cannot load the RadSec certificate / key: {exc}") from exc
    try:
        context.load_verify_locations(cafile=client_ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise TlsSetupError(f"cannot load the RadSec client CA file: {exc}") from exc
    return context


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc.strerror or "TLS error").lower().replace("_", " ")
    if isinstance(exc, TimeoutError) or "longer than" in str(exc):
        # asyncio and uvloop abort a slow handshake with ConnectionAbortedError
        return "timeout: no handshake within the handshake timeout"
    return type(exc).__name__


def _subject(certificate: dict[str, Any] | None) -> str:
    if not certificate:
        return ""
    parts = []
    for rdn in certificate.get("subject", ()):
        for key, value in rdn:
            parts.append(f"{key}={value}")
    return ", ".join(parts)[:200]


class RadsecConnection(asyncio.Protocol):
    """One accepted TLS connection, bound to one RADIUS client."""

    def __init__(self, server: RadsecServer, peer: tuple[str, int]) -> None:
        self.server = server
        self.framer = StreamFramer()
        self.transport: asyncio.Transport | None = None
        self.client: ClientConfig | None = None
        self.digest = b""  # the peer certificate's SHA-256, once the handshake is done
        self.peer = peer
        self.in_flight = 0
        self._queue: deque[bytes] = deque()
        self._paused = False
        self._idle: asyncio.TimerHandle | None = None
        self._counted = False

    # -- asyncio ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Called once the TLS handshake is done: the chain verified against the client CA.
        self.transport = cast(asyncio.Transport, transport)
        server = self.server
        server.connections.add(self)
        self._counted = True
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if not der:  # CERT_REQUIRED makes this unreachable; fail closed anyway
            self.transport.abort()
            server.handler.radsec_refused(self.peer, "no client certificate")
            return
        digest = certificate_fingerprint(der)
        self.digest = digest
        client = server.handler.radsec_client(digest, self.peer, _subject(ssl_object.getpeercert()))
        if client is None:
            self.transport.abort()  # before reading any packet
            return
        self.client = client
        server.handler.radsec_event("accepted")
        self._touch()

    def data_received(self, data: bytes) -> None:
        if self.client is None or self.transport is None:
            return  # refused: nothing it sends is read
        self._touch()
        try:
            packets = self.framer.feed(data)
        except FramingError as exc:
            log.warning(
                "RadSec client %s (%s): %s; closing the connection",
                self.client.name,
                self.peer[0],
                exc,
            )
            self.server.handler.radsec_event("bad-length")
            self.transport.abort()
            return
        self._queue.extend(packets)
        self._drain()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._queue.clear()
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self._counted:
            self._counted = False
            self.server.connections.discard(self)
            self.server.slots -= 1
            if self.client is not None:
                self.server.handler.radsec_event("closed")

    # -- requests ----------------------------------------------------------------------------

    def _drain(self) -> None:
        limit = self.server.limits.max_in_flight
        handler = self.server.handler
        while self._queue and self.in_flight < limit and self.transport is not None:
            assert self.client is not None  # noqa: S101 - only accepted connections queue
            task = handler.stream_received(self._queue.popleft(), self.client, self)
            if task is not None and not task.done():
                self.in_flight += 1
                task.add_done_callback(self._finished)
        if self.transport is None:
            return
        # Backpressure: stop reading while the bound is reached; the kernel's buffers fill
        # and the gateway's writes block instead of our memory growing.
        if self._queue and not self._paused:
            self._paused = True
            self.transport.pause_reading()
        elif not self._queue and self._paused:
            self._paused = False
            self.transport.resume_reading()

    def _finished(self, _: asyncio.Future[Any]) -> None:
        self.in_flight -= 1
        self._touch()
        if self._queue:
            self._drain()

    def send(self, data: bytes, peer: object = None) -> None:
        """Write one answer (dropped once the connection is gone)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    # -- idle timeout --------------------------------------------------------------------------

    def _touch(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self.transport is None:
            return  # closed: a request finishing late must not arm a timer
        loop = asyncio.get_running_loop()
        self._idle = loop.call_later(self.server.limits.idle_timeout, self._idle_check)

    def _idle_check(self) -> None:
        self._idle = None
        if self.transport is None:
            return
        if self.in_flight:
            self._touch()  # a held push is not idleness
            return
        self.server.handler.radsec_event("idle-closed")
        self.transport.close()

    def close(self) -> None:
        """Close at once (shutdown)."""
        if self.transport is not None:
            self.transport.abort()


class RadsecServer:
    """One listening TCP socket serving RadSec.

    The accept loop is ours rather than ``loop.create_server(ssl=...)``'s: each accepted
    socket goes through ``loop.connect_accepted_socket(ssl=...)``, which raises when the
    handshake fails, so a certificate from another CA (or none, or a stalled handshake) is
    seen and reported instead of vanishing into the loop's debug log. Handshakes in progress
    count against ``max_connections`` like established connections.
    """

    def __init__(
        self,
        handler: StreamHandler,
        address: ListenAddress,
        context: ssl.SSLContext,
        limits: RadsecLimits,
    ) -> None:
        self.handler = handler
        self.address = address
        self.context = context
        self.limits = limits
        self.connections: set[RadsecConnection] = set()
        #: Accepted sockets: handshaking or established (bounded by max_connections).
        self.slots = 0
        self._socket: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._handshakes: set[asyncio.Task[None]] = set()

    async def start(self, sock: socket.socket | None = None) -> None:
        """Listen (on ``sock`` when pre-bound). Raises OSError when it cannot bind."""
        sock = sock if sock is not None else make_socket(self.address)
        try:
            sock.listen(min(self.limits.max_connections, socket.SOMAXCONN))
        except BaseException:
            sock.close()
            raise
        self._socket = sock
        self._accepting = asyncio.get_running_loop().create_task(
            self._accept_loop(sock), name=f"radsec-accept-{self.address}"
        )

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, peer = await loop.sock_accept(listener)
            except OSError as exc:  # EMFILE and the like: keep serving the open connections
                log.warning("RadSec: cannot accept a connection: %s", exc)
                await asyncio.sleep(0.1)
                continue
            if self.slots >= self.limits.max_connections:
                self.handler.radsec_event("over-limit")
                conn.close()
                continue
            self.slots += 1
            task = loop.create_task(self._handshake(conn, (str(peer[0]), int(peer[1]))))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(
                lambda: RadsecConnection(self, peer),
                conn,
                ssl=self.context,
                ssl_handshake_timeout=self.limits.handshake_timeout,
            )
        except asyncio.CancelledError:
            self.slots -= 1
            conn.close()
            raise
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            self.slots -= 1
            conn.close()
            self.handler.radsec_refused(peer, _reason(exc))

    @property
    def bound(self) -> ListenAddress:
        """The address actually bound (the real port when 0 was asked for)."""
        if self._socket is None:
            return self.address
        return ListenAddress(self.address.host, int(self._socket.getsockname()[1]))

    async def close(self) -> None:
        """Stop accepting and close every connection."""
        if self._accepting is not None:
            self._accepting.cancel()
            await asyncio.gather(self._accepting, return_exceptions=True)
            self._accepting = None
        for task in list(self._handshakes):
            task.cancel()
        if self._handshakes:
            await asyncio.gather(*self._handshakes, return_exceptions=True)
        for connection in list(self.connections):
            connection.close()
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def make_socket(address: ListenAddress) -> socket.socket:
    """A bound, listening-ready TCP socket for ``address`` (IPv6 sockets IPv6-only, as the
    UDP ones, so ``[::]:2083`` and ``0.0.0.0:2083`` can both be bound)."""
    family = socket.AF_INET6 if address.family_v6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address.host, address.port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def refusal_detail(digest: bytes, peer: tuple[Any, ...], subject: str, why: str) -> str:
    """The audit text for a refused connection: who tried, with which certificate."""
    return (
        f"RadSec connection from {peer[0]} refused: {why} "
        f"(certificate {format_fingerprint(digest)}, subject {subject or '-'})"
    )
