"""Primary authentication against an upstream RADIUS server (``primary = radius``).

The bridge forwards User-Name and the password to the client's upstream (NPS, FreeRADIUS)
and relays what that server granted: Class, Filter-Id, Framed-* and vendor attributes come
back on our final Access-Accept (:func:`radius_bridge.protocol.packet.upstream_answer`).

UDP, as RADIUS clients do it:

* one connected UDP socket per upstream and per 256 requests in flight (the Identifier is one
  octet per socket); a connected socket only ever hands us datagrams from that server;
* a lost datagram is retransmitted **unchanged** (same Identifier, same Request
  Authenticator, RFC 5080 2.2.1), so the upstream's duplicate detection sees one request;
* every reply is verified (Identifier, Response Authenticator, Message-Authenticator) by the
  packet codec; a reply that does not verify is ignored, not taken as a reject -- a forged
  datagram must not be able to decide, nor to end the wait;
* Message-Authenticator on replies is handled like FreeRADIUS 3.2.5's ``auto``: an upstream
  that has signed a reply once must sign every later one; one that never did (FreeRADIUS
  before 3.2.5, NPS without the July 2024 update) is still used, with a warning, since
  refusing it would make primary ``radius`` unusable with the servers operators run. A reply
  carrying Proxy-State -- the BlastRADIUS forgery's vehicle; we never send one -- is always
  refused by the codec;
* all of it within the client's upstream timeout and the request's own deadline; no answer
  by then is :class:`~radius_bridge.model.Unavailable` and the failmode applies.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import cast

from radius_bridge.model import RelayAnswer, Unavailable, Upstream, UpstreamAnswer
from radius_bridge.protocol import packet as codec
from radius_bridge.protocol import relay
from radius_bridge.protocol.salt import SaltError
from radius_vocabulary.dictionary import Dictionary, default_dictionary

log = logging.getLogger("openmfa.radius.upstream")

#: Sends per request at most (the first included), spread over the upstream timeout.
MAX_SENDS = 4
#: Never retransmit more often than this (a slow upstream is not helped by a flood).
MIN_RETRANSMIT_INTERVAL = 1.0
#: Sockets per upstream at most: 64 x 256 = 16,384 requests in flight to one server.
MAX_SOCKETS = 64


class _Socket(asyncio.DatagramProtocol):
    """One connected UDP socket to an upstream, with its 256 identifiers."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.waiting: dict[int, asyncio.Queue[bytes]] = {}
        self._next = secrets.randbelow(256)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport does not subclass asyncio.DatagramTransport: cast, no check.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        # The identifier routes the datagram to its request, which verifies it; an unknown
        # identifier is a late or forged reply.
        if len(data) >= 2:
            queue = self.waiting.get(data[1])
            if queue is not None:
                queue.put_nowait(data)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like: the upstream is down or restarting. The
        # requests keep retransmitting until their timeout, which then reports it.
        log.debug("upstream socket error: %s", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def reserve(self) -> tuple[int, asyncio.Queue[bytes]] | None:
        """A free identifier with the queue its replies go to, or None when all 256 are in
        use. Identifiers rotate, so one is reused as late as possible."""
        if len(self.waiting) >= 256:
            return None
        for _ in range(256):
            candidate = self._next
            self._next = (self._next + 1) & 0xFF
            if candidate not in self.waiting:
                queue: asyncio.Queue[bytes] = asyncio.Queue()
                self.waiting[candidate] = queue
                return candidate, queue
        return None


class UpstreamClient:
    """Sends Access-Requests to upstream RADIUS servers; one per bridge."""

    def __init__(
        self, dictionary: Dictionary | None = None, nas_identifier: str = "openmfa-bridge"
    ) -> None:
        self._dictionary = dictionary or default_dictionary()
        self._nas_identifier = nas_identifier
        self._sockets: dict[tuple[str, int], list[_Socket]] = {}
        self._opening: dict[tuple[str, int], asyncio.Lock] = {}
        # Upstreams seen signing their replies: from then on an unsigned reply is refused.
        self._signing: set[tuple[str, int]] = set()
        self._warned: set[tuple[str, int]] = set()

    def _note_signing(self, key: tuple[str, int], signed: bool, where: str) -> None:
        if signed:
            self._signing.add(key)
        elif key not in self._warned:
            self._warned.add(key)
            log.warning(
                "upstream %s does not sign its replies with Message-Authenticator "
                "(BlastRADIUS, CVE-2024-3596); update it (FreeRADIUS 3.2.5+, NPS with the "
                "July 2024 update). Its replies are still checked by their Response "
                "Authenticator.",
                where,
            )

    async def aclose(self) -> None:
        """Close every socket (requests still waiting time out as Unavailable)."""
        for sockets in self._sockets.values():
            for sock in sockets:
                if sock.transport is not None:
                    sock.transport.close()
        self._sockets.clear()

    async def _socket(self, host: str, port: int) -> tuple[_Socket, int, asyncio.Queue[bytes]]:
        key = (host, port)
        lock = self._opening.setdefault(key, asyncio.Lock())
        async with lock:
            sockets = self._sockets.setdefault(key, [])
            for sock in sockets:
                if sock.transport is None:
                    continue
                reserved = sock.reserve()
                if reserved is not None:
                    return sock, *reserved
            if len(sockets) >= MAX_SOCKETS:
                raise OSError(f"more than {MAX_SOCKETS * 256} requests in flight to {host}")
            loop = asyncio.get_running_loop()
            _, protocol = await loop.create_datagram_endpoint(_Socket, remote_addr=(host, port))
            sockets[:] = [s for s in sockets if s.transport is not None]
            sockets.append(protocol)
            reserved = protocol.reserve()
            assert reserved is not None  # noqa: S101 - a new socket has all 256 free
            return protocol, *reserved

    async def authenticate(
        self, upstream: Upstream, user_name: str, password: bytes, deadline: float
    ) -> UpstreamAnswer | Unavailable:
        """Ask ``upstream`` about ``user_name`` / ``password``; answer by ``deadline``
        (loop clock) and within ``upstream.timeout``."""

        def encode(identifier: int) -> bytes:
            return codec.encode_upstream_request(
                identifier,
                upstream.secret,
                user_name,
                password,
                nas_identifier=self._nas_identifier,
            )

        answer = await self._exchange(upstream, encode, deadline)
        if isinstance(answer, Unavailable):
            return answer
        return codec.upstream_answer(answer[0], self._dictionary)

    async def relay(
        self, upstream: Upstream, attributes: bytes, deadline: float
    ) -> RelayAnswer | Unavailable:
        """Relay a gateway's MS-CHAPv2 / CHAP / EAP request (``attributes`` in wire form,
        :func:`radius_bridge.protocol.relay.upstream_attributes`) to ``upstream`` under a
        new Request Authenticator and Message-Authenticator; the verified reply taken apart
        with its MPPE keys decrypted (:func:`radius_bridge.protocol.relay.interpret`)."""

        def encode(identifier: int) -> bytes:
            return codec.encode_request(identifier, upstream.secret, attributes)

        answer = await self._exchange(upstream, encode, deadline)
        if isinstance(answer, Unavailable):
            return answer
        reply, authenticator = answer
        try:
            return relay.interpret(reply, upstream.secret, authenticator, self._dictionary)
        except SaltError as exc:
            where = f"{upstream.host}:{upstream.port}"
            log.warning("upstream %s sent an MPPE key that does not decrypt: %s", where, exc)
            return Unavailable(f"upstream {where}: MPPE key does not decrypt")

    async def _exchange(
        self, upstream: Upstream, encode: Callable[[int], bytes], deadline: float
    ) -> tuple[codec.Packet, bytes] | Unavailable:
        """Send ``encode(identifier)`` to ``upstream`` (retransmitted unchanged) and return
        the verified reply with our Request Authenticator, or Unavailable."""
        loop = asyncio.get_running_loop()
        stop = min(deadline, loop.time() + upstream.timeout)
        where = f"{upstream.host}:{upstream.port}"
        try:
            sock, identifier, replies = await self._socket(upstream.host, upstream.port)
        except OSError as exc:
            log.warning("cannot reach upstream %s: %s", where, exc)
            return Unavailable(f"upstream {where}: {exc}")
        try:
            datagram = encode(identifier)
        except ValueError as exc:  # a password above 128 octets, a name above 253
            sock.waiting.pop(identifier, None)
            return Unavailable(f"cannot forward to upstream {where}: {exc}")
        authenticator = datagram[4:20]
        interval = max(MIN_RETRANSMIT_INTERVAL, upstream.timeout / MAX_SENDS)
        sends = 0
        try:
            while True:
                now = loop.time()
                if now >= stop:
                    break
                if sends < MAX_SENDS and sock.transport is not None:
                    sock.transport.sendto(datagram)
                    sends += 1
                wake = min(stop, now + interval)
                try:
                    async with asyncio.timeout_at(wake):
                        while True:
                            data = await replies.get()
                            key = (upstream.host, upstream.port)
                            try:
                                reply = codec.decode_reply(
                                    data,
                                    upstream.secret,
                                    identifier,
                                    authenticator,
                                    require_message_authenticator=key in self._signing,
                                )
                            except codec.MalformedPacket as exc:
                                log.warning(
                                    "ignored a reply from upstream %s: %s", where, exc.reason
                                )
                                continue
                            self._note_signing(key, reply.has_message_authenticator, where)
                            return reply, authenticator
                except TimeoutError:
                    continue
        finally:
            sock.waiting.pop(identifier, None)
        log.warning("upstream %s did not answer within %.1f s", where, upstream.timeout)
        return Unavailable(f"upstream {where} did not answer in time")
