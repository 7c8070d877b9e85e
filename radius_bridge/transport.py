"""UDP sockets for RADIUS: one :class:`RadiusProtocol` per listen address, IPv4 or IPv6.

Deliberately thin, in the way uvicorn's protocol classes sit on h11: the protocol hands each
datagram, synchronously, to a :class:`DatagramHandler` (the runner, which feeds the sans-IO
core) and offers ``send``; it keeps no per-request state and never awaits.

Sockets are made here rather than by ``create_datagram_endpoint(local_addr=...)`` so that:

* neither ``SO_REUSEADDR`` nor ``SO_REUSEPORT`` is set: on Linux both let a second process
  bind the same UDP address and silently take a share of the requests;
* an IPv6 socket is ``IPV6_V6ONLY``, so ``[::]:1812`` and ``0.0.0.0:1812`` can both be bound,
  and IPv4 peers never show up as mapped IPv6 addresses;
* the receive buffer is enlarged: a burst of requests (a gateway reconnecting thousands of
  VPN users) must queue in the kernel rather than be dropped while the loop is busy.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any, Protocol, cast

from radius_bridge.config import ListenAddress

log = logging.getLogger("openmfa.radius")

Peer = tuple[Any, ...]
"""A socket address as asyncio reports it: (host, port) or (host, port, flow, scope)."""


class DatagramHandler(Protocol):
    """What the protocol feeds: called once per datagram, on the event loop."""

    def datagram_received(self, data: bytes, peer: Peer, endpoint: RadiusProtocol) -> None:
        """Handle one datagram from ``peer`` that arrived on ``endpoint``."""


class RadiusProtocol(asyncio.DatagramProtocol):
    """One listening UDP socket."""

    def __init__(self, handler: DatagramHandler, address: ListenAddress) -> None:
        self.handler = handler
        self.address = address
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport does not subclass asyncio.DatagramTransport: cast, no check.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Peer) -> None:
        self.handler.datagram_received(data, addr, self)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for replies we sent (a gateway that went away): nothing to do.
        log.debug("UDP error on %s: %s", self.address, exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def send(self, data: bytes, peer: Peer) -> None:
        """Send ``data`` to ``peer`` (dropped silently once the socket is closed)."""
        if self.transport is not None:
            self.transport.sendto(data, peer)

    @property
    def bound(self) -> ListenAddress:
        """The address actually bound (the real port when 0 was asked for)."""
        if self.transport is None:
            return self.address
        name = self.transport.get_extra_info("sockname")
        return ListenAddress(self.address.host, int(name[1]))

    def close(self) -> None:
        """Stop receiving and close the socket."""
        if self.transport is not None:
            self.transport.close()


def make_socket(address: ListenAddress, receive_buffer: int) -> socket.socket:
    """A bound, non-blocking UDP socket for ``address`` (see the module docstring)."""
    family = socket.AF_INET6 if address.family_v6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if receive_buffer > 0:
            # The kernel caps this at net.core.rmem_max; a smaller buffer still works.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.bind((address.host, address.port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def listen(
    address: ListenAddress, handler: DatagramHandler, receive_buffer: int = 4 << 20
) -> RadiusProtocol:
    """Bind ``address`` and start feeding ``handler``. Raises OSError when it cannot bind."""
    loop = asyncio.get_running_loop()
    sock = make_socket(address, receive_buffer)
    try:
        _, protocol = await loop.create_datagram_endpoint(
            lambda: RadiusProtocol(handler, address), sock=sock
        )
    except BaseException:
        sock.close()
        raise
    return protocol
