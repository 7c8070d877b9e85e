"""Status-Server (RFC 5997) against the RADIUS bridge this server runs: the admin console's
"test" button for a RADIUS client.

The probe is signed with the client's shared secret and carries a Message-Authenticator (RFC
5997 requires one; the bridge drops Status-Server without it). The bridge answers it with an
Access-Accept signed with the secret *of the client it attributes the datagram to by source
address*, so a test of client X proves something only when the datagram comes from one of X's
addresses: :func:`probe_client` checks that first, with the bridge's own matching rules, and
says so instead of sending a packet the bridge would drop.

The packet codec is the bridge's (``radius_bridge.protocol.packet``); the bridge never imports
the backend, the backend may use the bridge's sans-IO parts.
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from backend.config import Settings
from backend.services.radius_clients import RadiusClientService
from radius_bridge.clients import ClientsError, parse_clients
from radius_bridge.protocol import packet as codec

#: How long the page waits for the bridge's answer, at most. Loopback answers take well under
#: a millisecond; seconds of silence mean nothing will come.
TIMEOUT_SECONDS = 3.0
#: The probe is sent again after this share of the timeout (UDP may lose one datagram).
RESEND_AFTER = 0.5
NAS_IDENTIFIER = "openmfa-admin-test"

Outcome = Literal["answered", "off", "unreachable", "no-answer", "not-sendable", "bad-answer"]


@dataclass(frozen=True, slots=True)
class StatusResult:
    """What the test found. ``ok`` only for a verified answer; ``message`` says it in words,
    ``hint`` what to do about it (may be empty)."""

    outcome: Outcome
    message: str
    hint: str = ""
    target: str = ""
    source: str = ""
    round_trip_ms: float | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "answered"


def bridge_target(settings: Settings) -> tuple[str, int] | None:
    """Where the bridge of ``openmfa run`` listens (a wildcard host becomes loopback), or
    ``None`` when RADIUS is off (``radius_port = 0``)."""
    if settings.radius_port == 0:
        return None
    host = settings.resolved_radius_host or "127.0.0.1"
    if host in ("0.0.0.0", ""):  # noqa: S104 - a listen address, reached through loopback
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return host, settings.radius_port


def _family(host: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET


def source_address(host: str, port: int) -> str:
    """The local address a datagram to ``host:port`` leaves from (no packet is sent:
    connecting a UDP socket only picks the route)."""
    with socket.socket(_family(host), socket.SOCK_DGRAM) as sock:
        sock.connect((host, port))
        address: str = sock.getsockname()[0]
    return address


class _Probe(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.answers: asyncio.Queue[bytes | Exception] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.answers.put_nowait(data)

    def error_received(self, exc: Exception) -> None:
        # On a connected UDP socket an ICMP "port unreachable" arrives here.
        self.answers.put_nowait(exc)


async def status_server(
    host: str,
    port: int,
    secret: bytes,
    wait_seconds: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> StatusResult:
    """Send one Status-Server to ``host:port`` (resent once) and wait at most
    ``wait_seconds`` (default :data:`TIMEOUT_SECONDS`) for an answer verifying with ``secret``."""
    timeout = TIMEOUT_SECONDS if wait_seconds is None else wait_seconds
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    identifier = secrets.randbelow(256)
    attributes = codec.encode_attribute(codec.NAS_IDENTIFIER, NAS_IDENTIFIER.encode())
    data = codec.encode_request(identifier, secret, attributes, code=codec.STATUS_SERVER)
    authenticator = data[4:20]
    loop = asyncio.get_running_loop()
    transport, probe = await loop.create_datagram_endpoint(
        _Probe, remote_addr=(host, port), family=_family(host)
    )
    source = str(transport.get_extra_info("sockname")[0])
    started = clock()
    deadline = started + timeout
    resend_at: float | None = started + timeout * RESEND_AFTER
    bad: str | None = None
    try:
        transport.sendto(data)
        while (left := deadline - clock()) > 0:
            wait = left if resend_at is None else max(0.0, min(left, resend_at - clock()))
            try:
                answer = await asyncio.wait_for(probe.answers.get(), wait)
            except TimeoutError:
                if resend_at is not None and clock() >= resend_at:
                    transport.sendto(data)
                    resend_at = None
                continue
            if isinstance(answer, Exception):
                reason = answer.strerror if isinstance(answer, OSError) else None
                return StatusResult(
                    "unreachable",
                    f"Nothing listens on {target}: the RADIUS bridge is not running there "
                    f"({reason or answer}).",
                    "Check that “openmfa run” started its RADIUS bridge (its log says so at "
                    "start) and that radius_host / radius_port are what you expect.",
                    target,
                    source,
                )
            try:
                reply = codec.decode_reply(answer, secret, identifier, authenticator)
            except codec.MalformedPacket as exc:
                bad = exc.reason  # keep waiting: a stray or forged datagram is not the answer
                continue
            elapsed = (clock() - started) * 1000
            kind = {
                codec.ACCESS_ACCEPT: "Access-Accept",
                codec.ACCESS_REJECT: "Access-Reject",
                codec.ACCESS_CHALLENGE: "Access-Challenge",
            }.get(reply.code, f"code {reply.code}")
            if reply.code != codec.ACCESS_ACCEPT:
                return StatusResult(
                    "bad-answer",
                    f"The bridge at {target} answered {kind}, not Access-Accept.",
                    "",
                    target,
                    source,
                    elapsed,
                )
            return StatusResult(
                "answered",
                f"The bridge at {target} answered {kind}, signed with this client's secret, "
                f"in {elapsed:.1f} ms.",
                "",
                target,
                source,
                elapsed,
            )
    finally:
        transport.close()
    if bad is not None:
        return StatusResult(
            "bad-answer",
            f"An answer came from {target} but did not verify ({bad}).",
            "The shared secret the bridge uses for this address differs from the stored one.",
            target,
            source,
        )
    return StatusResult(
        "no-answer",
        f"No answer from {target} within {timeout:g} s.",
        "The bridge drops requests it cannot verify. Either no bridge listens there (a "
        "firewall may hide that), or it has not loaded this client yet (it re-reads the "
        "client list every few seconds: try again), or its copy of the secret differs.",
        target,
        source,
    )


async def probe_client(
    settings: Settings,
    clients: RadiusClientService,
    name: str,
    wait_seconds: float | None = None,
) -> StatusResult:
    """Status-Server to this server's bridge with client ``name``'s secret, after checking
    that the bridge would attribute the datagram to that client at all.
    :class:`~backend.errors.NotFound` for an unknown client."""
    name = (await clients.get(name)).name
    target = bridge_target(settings)
    if target is None:
        return StatusResult(
            "off",
            "The RADIUS bridge is off on this server (radius_port is 0), so there is "
            "nothing to test here.",
            "A standalone bridge (“openmfa radius”) is tested from a gateway or with "
            "radclient: send Status-Server with Message-Authenticator.",
        )
    host, port = target
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        source = await asyncio.to_thread(source_address, host, port)
    except OSError as exc:
        return StatusResult(
            "unreachable", f"Cannot send to {where}: {exc.strerror or exc}.", "", where
        )
    document = await clients.document()
    try:
        table = parse_clients({"revision": document.revision, "clients": document.clients}).table
    except ClientsError:  # pragma: no cover - the backend writes the document itself
        table = None
    owner = table.match(source) if table is not None else None
    secret = next((c.secret for c in table.clients if c.name == name), None) if table else None
    if secret is None:
        return StatusResult(
            "not-sendable", f"The client {name} cannot be tested.", "", where, source
        )
    if owner is None or owner.name != name:
        whose = (
            "no client has that address"
            if owner is None
            else f"the bridge takes it for client {owner.name}"
        )
        return StatusResult(
            "not-sendable",
            f"Not sent: the test would come from {source} and {whose}. The bridge answers "
            f"only datagrams from the client's own addresses, so {name} can only be tested "
            "from one of them.",
            f"To test {name} from this server, add {source} to its addresses; or test from "
            "the gateway itself (its RADIUS test, or radclient with Status-Server).",
            where,
            source,
        )
    return await status_server(host, port, secret, wait_seconds)
