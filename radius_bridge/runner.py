"""The bridge at run time: UDP sockets -> sans-IO core -> one task per request -> backend.

:class:`Bridge` owns the pieces and their life cycle:

* the :class:`~radius_bridge.protocol.core.BridgeCore` (client table, duplicates, States,
  pending pushes), fed synchronously from every socket's ``datagram_received``;
* one asyncio task per new Access-Request, driving the core's flow generator: each effect
  the flow yields is performed by the :class:`~radius_bridge.backend_client.BackendClient`
  (HTTP) or the :class:`~radius_bridge.upstream.UpstreamClient` (RADIUS), the result sent
  back in, and the final decision encoded by ``core.finish`` and sent to the source;
* the client table, re-read every ``refresh_seconds`` from the backend (ETag) or from the
  clients file (when its mtime / size changes); the last good table stays in use when the
  backend is down or the file is broken, so a backend restart changes nothing for gateways.

Bounds: at most ``max_held`` requests in progress, shared fairly between clients and users
(:class:`~radius_bridge.protocol.shares.HeldShares`: a client flooding takes at most three
quarters, a newcomer always finds room up to its share, one user holds at most 16); a new
request beyond its share is dropped (counted as ``overload``; the gateway retransmits). A
held request costs its task, the flow's generator frame and, standalone, one long-poll on
its own backend connection (see :mod:`radius_bridge.backend_client` for the pools).

Shutdown (:meth:`Bridge.stop`): new datagrams are ignored at once, so nothing new begins. Requests
waiting for a phone are **not answered**: they are cancelled and left to the gateway's
retransmission. Answering would mean rejecting a sign-in the user may be approving right now
or, with failmode ``safe``, accepting it without the second factor because of a planned
restart. Instead the pending authentication stays in the backend, and a retransmission that
reaches the restarted bridge carries the same Request Authenticator, hence the same
idempotency key: it rejoins that authentication, and an approval given meanwhile counts.
Requests busy with a short call (a code check, the password) get ``stop_grace`` seconds to
finish and send their answer, since a code spent in the backend but never answered would be
"replayed" on retry; then the sockets close.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import httpx

from radius_bridge.backend_client import BackendClient, BackendError, CredentialRefused
from radius_bridge.cache import CachedDocument, CacheError, ClientsCache
from radius_bridge.clients import (
    ClientList,
    ClientsError,
    ClientTable,
    parse_clients,
    parse_clients_json,
)
from radius_bridge.config import BridgeSettings, ListenAddress
from radius_bridge.metrics import BridgeMetrics
from radius_bridge.model import (
    Accept,
    AccessRequest,
    Audit,
    Challenge,
    ClientConfig,
    Decision,
    Done,
    Effect,
    Refused,
    Reject,
    Result,
    Unavailable,
    UpstreamAuthenticate,
    UpstreamRelay,
    WaitOutcome,
)
from radius_bridge.names import printable
from radius_bridge.protocol.core import Absorbed, Begin, BridgeCore, Drop, Received, Send
from radius_bridge.protocol.shares import HeldShares
from radius_bridge.radsec import (
    RADSEC_SECRET,
    RadsecConnection,
    RadsecLimits,
    RadsecServer,
    TlsSetupError,
    refusal_detail,
    server_context,
)
from radius_bridge.transport import Peer, RadiusProtocol, listen, make_socket
from radius_bridge.upstream import UpstreamClient

log = logging.getLogger("openmfa.radius")
decisions_log = logging.getLogger("openmfa.radius.decision")

#: Beyond the push timeout, what a request may still spend on the calls around the wait
#: (primary authentication, starting the push): a hard cap against a runaway, never the
#: normal way a request ends (the flow bounds the wait; each call has its own timeout).
EXTRA_TIME = 15.0
#: Undelivered audit records in flight at most; beyond, they go to the log only.
MAX_AUDIT_TASKS = 1000
#: Seconds between housekeeping rounds (expired States, duplicates, pushes).
HOUSEKEEPING_SECONDS = 5.0
#: Log lines about dropped datagrams at most per minute, whatever the core allows per source.
DROP_LOG_BUDGET = 30
#: A datagram from an unknown client re-reads the client list at most this often per
#: source address, and at most RECHECK_BURST times in that span over all addresses ...
RECHECK_SECONDS = 1.0
RECHECK_BURST = 4
#: ... and at most this many such datagrams wait for it (the rest are dropped as before).
RECHECK_QUEUE = 64
#: A refused RadSec connection is audited at most once per this many seconds (per address,
#: certificate and reason):
#: a scanner or a misconfigured gateway reconnecting in a loop must not flood the audit log.
RADSEC_AUDIT_SECONDS = 60.0

Replier = RadiusProtocol | RadsecConnection
"""Where an answer goes: a UDP socket (to the datagram's source) or a RadSec connection."""


@dataclass(slots=True)
class _Held:
    """A request in progress: what shutdown needs to know about it."""

    request: AccessRequest
    task: asyncio.Task[None] | None = None
    waiting: bool = False  # in a long-poll for the phone (safe to cancel at shutdown)


class StartupError(Exception):
    """The bridge could not start (a listen address cannot be bound)."""


class Bridge:
    """A running RADIUS bridge; ``await start()`` ... ``await stop()``."""

    def __init__(
        self,
        settings: BridgeSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        metrics: BridgeMetrics | None = None,
        core: BridgeCore | None = None,
        clock: Callable[[], float] | None = None,
        stop_grace: float = 2.0,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or BridgeMetrics()
        self.core = core or BridgeCore(ClientTable(()))
        self._clock_override = clock
        self.stop_grace = stop_grace
        self.backend = BackendClient(
            settings.base_urls,
            settings.token,
            transport=transport,
            http_timeout=settings.http_timeout,
            long_poll_seconds=settings.long_poll_seconds,
            backend_connections=settings.backend_connections,
            max_long_polls=settings.max_held,
            cut_grace=settings.cut_grace_seconds,
            on_unavailable=self._count_unavailable,
            on_credential_refused=self._credential_refused,
            on_health=self._backend_health,
            on_failover=self._backend_failover,
            # Real sockets: waits and checks over the wait channel while it is open (an
            # injected transport -- in-process ASGI, a mock -- keeps plain HTTP).
            channels=settings.channel == "auto" and transport is None,
            on_channel=self._channel_state,
        )
        self.upstream = UpstreamClient(dictionary=self.core.dictionary)
        self.cache = (
            None
            if settings.clients_cache is None
            else ClientsCache(settings.clients_cache, settings.token)
        )
        self.endpoints: list[RadiusProtocol] = []
        self.radsec: list[RadsecServer] = []
        self._radsec_audited: dict[str, float] = {}
        self.revision: str | None = None
        self.client_errors: tuple[str, ...] = ()
        self._held: dict[int, _Held] = {}
        self.shares = HeldShares(settings.max_held)
        self._audits: set[asyncio.Task[None]] = set()
        self._background: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._file_stamp: tuple[int, int, int] | None = None
        self._drop_log_window = (0.0, 0)
        self._failing_since: float | None = None
        self._failure_logged = 0.0
        self._refusal_logged: float | None = None
        self._recheck: asyncio.Task[None] | None = None
        self._refresh_lock = asyncio.Lock()
        # When each unknown source address last made the list be re-read, and when the last
        # RECHECK_BURST re-reads began (bridge clock).
        self._rechecked: dict[str, float] = {}
        self._recheck_times: list[float] = []
        self._recheck_queue: list[tuple[bytes, Peer, RadiusProtocol, bool]] = []
        self.table_loaded = asyncio.Event()

    # -- life cycle -------------------------------------------------------------------------

    def clock(self) -> float:
        """The core's and the flows' clock (the loop's monotonic clock unless overridden)."""
        if self._clock_override is not None:
            return self._clock_override()
        assert self._loop is not None  # noqa: S101 - only called while running
        return self._loop.time()

    async def start(
        self,
        sockets: dict[ListenAddress, Any] | None = None,
        radsec_sockets: dict[ListenAddress, socket.socket] | None = None,
    ) -> None:
        """Bind the listen addresses (or use pre-bound ``sockets``, ``radsec_sockets``), load
        the client table once, and start refreshing it. Raises :class:`StartupError` if
        nothing can bind."""
        self._loop = asyncio.get_running_loop()
        await self._bind(sockets or {})
        await self._bind_radsec(radsec_sockets or {})
        self.backend.start()
        if not await self.refresh_clients() and not self.table_loaded.is_set():
            if self.core.credential_refused is not None:
                # A revoked token: the cache sealed with it was deleted; serving it would
                # be exactly what revoking was meant to stop.
                await self._close_endpoints()
                await self.backend.aclose()
                await self.upstream.aclose()
                raise StartupError(
                    f"{self.core.credential_refused}; not serving the cached client list. "
                    "Create a new token (openmfa token create NAME --scope bridge)"
                )
            self._load_cache()
        self._background.append(asyncio.create_task(self._refresh_loop(), name="radius-refresh"))
        self._background.append(
            asyncio.create_task(self._housekeeping_loop(), name="radius-housekeeping")
        )
        log.info(
            "RADIUS bridge listening on %s",
            ", ".join(str(e.bound) for e in self.endpoints),
            extra={"listen": [str(e.bound) for e in self.endpoints]},
        )
        if self.radsec:
            log.info(
                "RadSec (RADIUS over TLS) listening on TCP %s",
                ", ".join(str(r.bound) for r in self.radsec),
                extra={"radsec_listen": [str(r.bound) for r in self.radsec]},
            )

    async def _bind(self, sockets: dict[ListenAddress, Any]) -> None:
        loop = asyncio.get_running_loop()
        failures: list[str] = []
        for address in self.settings.listen:
            try:
                sock = sockets.get(address)
                if sock is not None:
                    _, protocol = await loop.create_datagram_endpoint(
                        lambda a=address: RadiusProtocol(self, a),  # type: ignore[misc]
                        sock=sock,
                    )
                else:
                    protocol = await listen(address, self, self.settings.receive_buffer_bytes)
            except OSError as exc:
                if self.settings.listen_is_default:
                    # A default address (IPv6 on a host without it): go on with the others.
                    log.warning("not listening on %s: %s", address, exc.strerror or exc)
                    failures.append(f"{address}: {exc.strerror or exc}")
                    continue
                await self._close_endpoints()
                raise StartupError(
                    f"cannot listen for RADIUS on UDP {address}: {exc.strerror or exc}"
                ) from exc
            self.endpoints.append(protocol)
        if not self.endpoints:
            raise StartupError("cannot listen for RADIUS: " + "; ".join(failures))

    async def _bind_radsec(self, sockets: dict[ListenAddress, socket.socket]) -> None:
        settings = self.settings
        if not settings.radsec_listen:
            return
        try:
            context = radsec_context(settings)
        except TlsSetupError as exc:
            await self._close_endpoints()
            raise StartupError(str(exc)) from exc
        limits = radsec_limits(settings)
        for address in settings.radsec_listen:
            server = RadsecServer(self, address, context, limits)
            try:
                await server.start(sockets.get(address))
            except OSError as exc:
                await self._close_endpoints()
                raise StartupError(
                    f"cannot listen for RadSec on TCP {address}: {exc.strerror or exc}"
                ) from exc
            self.radsec.append(server)

    async def _close_endpoints(self) -> None:
        for endpoint in self.endpoints:
            endpoint.close()
        self.endpoints.clear()
        for server in self.radsec:
            await server.close()
        self.radsec.clear()

    async def stop(self) -> None:
        """Stop (see the module docstring for what happens to held requests)."""
        if self._stopping:
            return
        # New datagrams are ignored from here on; the sockets stay open until the busy
        # requests below have sent their answers.
        self._stopping = True
        for task in self._background:
            task.cancel()
        if self._recheck is not None:
            self._recheck.cancel()
        # Long-polls first: cancelling them is always safe (see the module docstring).
        for held in list(self._held.values()):
            if held.waiting and held.task is not None:
                held.task.cancel()
        busy = [h.task for h in self._held.values() if h.task is not None and not h.task.done()]
        if busy:
            _, late = await asyncio.wait(busy, timeout=self.stop_grace)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=1.0)
        await self._close_endpoints()
        if self._audits:
            await asyncio.wait(self._audits, timeout=self.stop_grace)
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.backend.aclose()
        await self.upstream.aclose()
        log.info("RADIUS bridge stopped")

    @property
    def held(self) -> int:
        """Requests in progress now."""
        return len(self._held)

    # -- datagrams ------------------------------------------------------------------------------

    def datagram_received(
        self,
        data: bytes,
        peer: Peer,
        endpoint: RadiusProtocol,
        *,
        replayed: bool = False,
        log_drop: bool = False,
    ) -> None:
        """Called by each socket for each datagram: classify, then act (never awaits).
        ``replayed``: again after a client-list recheck; ``log_drop``: the first pass was
        due a log line should it be dropped now (the core will not say so twice)."""
        arrived = time.perf_counter()
        if self._stopping:
            return
        out = self.core.receive(data, peer, self.clock())
        if (
            isinstance(out, Drop)
            and out.reason == "unknown-client"
            and not replayed
            and self._recheck_clients(data, peer, endpoint, out.log)
        ):
            return
        self._act(out, peer, endpoint, arrived, log_drop)

    def _act(
        self,
        out: Received,
        peer: Peer,
        endpoint: Replier,
        arrived: float,
        log_drop: bool = False,
        client: ClientConfig | None = None,
    ) -> asyncio.Task[None] | None:
        """Carry out what the core decided for one packet; the task deciding a new request.
        ``client``: the RadSec connection's client (UDP finds it by address)."""
        if isinstance(out, Begin):
            request = out.request
            if not self.shares.claim(request.client.name, request.share_user):
                # Beyond the client's (or this user's) share of max_held: the gateway
                # retransmits, and other clients keep their room (protocol.shares).
                self.core.abandon(request)
                self.metrics.drops.labels("overload").inc()
                self._log_drop(
                    f"client {request.client.name}: more than its share of "
                    f"{self.settings.max_held} requests in progress"
                )
                return None
            held = _Held(request)
            key = id(held)
            self._held[key] = held
            self.metrics.held.set(len(self._held))
            held.task = asyncio.get_running_loop().create_task(
                self._decide(held, key, endpoint, peer, arrived)
            )
            return held.task
        name = client.name if client is not None else None
        if isinstance(out, Send):
            endpoint.send(out.data, peer)
            if out.reason == "status-server":
                self.metrics.requests.labels(name or self._client_name(peer), "status").inc()
            else:
                self.metrics.duplicates.labels("cached").inc()
        elif isinstance(out, Absorbed):
            self.metrics.duplicates.labels("absorbed").inc()
        elif isinstance(out, Drop):
            self.metrics.drops.labels(out.reason).inc()
            if out.reason == "bad-message-authenticator":
                self.metrics.wrong_secret.labels(name or self._client_name(peer)).inc()
            if out.log or log_drop:
                self._log_drop(out.detail, out.reason)
        return None

    # -- RadSec connections (radius_bridge.radsec calls these) ----------------------------------

    def radsec_client(
        self, digest: bytes, peer: tuple[Any, ...], subject: str
    ) -> ClientConfig | None:
        """The client a verified peer certificate is bound to, with the fixed secret
        ``radsec``; None (audited) for a certificate bound to no client, or a peer outside
        the bound client's addresses."""
        if self._stopping:
            return None
        client = self.core.clients.by_certificate(digest)
        if client is None:
            self._radsec_refusal(
                peer, refusal_detail(digest, peer, subject, "certificate bound to no RADIUS client")
            )
            return None
        if not _address_allowed(client, str(peer[0])):
            self._radsec_refusal(
                peer,
                refusal_detail(
                    digest, peer, subject, f"address outside client {client.name}'s addresses"
                ),
            )
            return None
        return dataclasses.replace(client, secret=RADSEC_SECRET)

    def radsec_refused(self, peer: tuple[Any, ...], why: str) -> None:
        """A RadSec handshake failed (no or untrusted certificate, timeout): audited."""
        self._radsec_refusal(
            peer, f"RadSec connection from {peer[0]} refused: TLS handshake failed ({why})"
        )

    def _radsec_refusal(self, peer: tuple[Any, ...], detail: str) -> None:
        self.metrics.radsec_connections.labels("refused").inc()
        host = str(peer[0])
        now = time.monotonic()
        # Keyed by the whole text (address, certificate, reason): each distinct refusal is
        # recorded, a gateway retrying the same one in a loop once a minute.
        last = self._radsec_audited.get(detail)
        if last is not None and now - last < RADSEC_AUDIT_SECONDS:
            return
        if len(self._radsec_audited) >= RECHECK_QUEUE * 16:
            self._radsec_audited = {
                h: t for h, t in self._radsec_audited.items() if now - t < RADSEC_AUDIT_SECONDS
            }
        self._radsec_audited[detail] = now
        log.warning("%s", detail, extra={"peer": host, "reason": "radsec-refused"})
        self._send_audit(Audit("radius.radsec_refused", "", detail))

    def stream_received(
        self, data: bytes, client: ClientConfig, connection: RadsecConnection
    ) -> asyncio.Task[None] | None:
        """One packet from a RadSec connection (see :meth:`datagram_received`)."""
        if self._stopping:
            return None
        arrived = time.perf_counter()
        out = self.core.receive_for(client, data, connection.peer, self.clock())
        return self._act(out, connection.peer, connection, arrived, client=client)

    def radsec_event(self, event: str) -> None:
        """Count what happens to RadSec connections (and how many are open)."""
        self.metrics.radsec_connections.labels(event).inc()
        self.metrics.radsec_open.set(sum(len(s.connections) for s in self.radsec))

    def _recheck_clients(
        self, data: bytes, peer: Peer, endpoint: RadiusProtocol, log_drop: bool
    ) -> bool:
        """A datagram from an unknown client: perhaps one added a moment ago (``openmfa
        client add`` right before the gateway's first request). Re-read the client list now
        -- at most once per ``RECHECK_SECONDS`` for one address and ``RECHECK_BURST`` times
        for all (two gateways added a moment apart are both answered), a revision check
        that costs a 304 when nothing changed -- and replay the datagram against it. True
        when the datagram was kept for that replay (at most ``RECHECK_QUEUE`` wait), False to
        drop it now."""
        if self._recheck is not None:
            if len(self._recheck_queue) >= RECHECK_QUEUE:
                return False
            self._recheck_queue.append((data, peer, endpoint, log_drop))
            return True
        now = self.clock()
        since = now - RECHECK_SECONDS
        self._recheck_times = [t for t in self._recheck_times if t > since]
        if len(self._recheck_times) >= RECHECK_BURST or self._rechecked.get(peer[0], since) > since:
            return False
        if len(self._rechecked) >= RECHECK_QUEUE:  # spoofed sources: keep the map small
            self._rechecked = {a: t for a, t in self._rechecked.items() if t > since}
        self._rechecked[peer[0]] = now
        self._recheck_times.append(now)
        self._recheck_queue = [(data, peer, endpoint, log_drop)]
        self._recheck = asyncio.get_running_loop().create_task(self._recheck_then_replay())
        return True

    async def _recheck_then_replay(self) -> None:
        try:
            await self.refresh_clients()
        except Exception:  # a bug must not lose the datagrams for good
            log.exception("re-reading the RADIUS clients failed")
        finally:
            queued, self._recheck_queue = self._recheck_queue, []
            self._recheck = None
        for data, peer, endpoint, log_drop in queued:
            self.datagram_received(data, peer, endpoint, replayed=True, log_drop=log_drop)

    def _client_name(self, peer: Peer) -> str:
        client = self.core.clients.match(peer[0])
        return client.name if client is not None else "unknown"

    def _log_drop(self, detail: str, reason: str = "overload") -> None:
        # The core limits lines per source; this caps them overall, so spoofed sources from a
        # whole network cannot flood the log either.
        now = time.monotonic()
        start, count = self._drop_log_window
        if now - start >= 60:
            start, count = now, 0
        if count < DROP_LOG_BUDGET:
            log.warning("dropped a RADIUS datagram: %s", detail, extra={"reason": reason})
        self._drop_log_window = (start, count + 1)

    # -- one request --------------------------------------------------------------------------

    async def _decide(
        self, held: _Held, key: int, endpoint: Replier, peer: Peer, arrived: float
    ) -> None:
        request = held.request
        client = request.client
        loop = asyncio.get_running_loop()
        upstream_time = client.upstream.timeout if client.upstream is not None else 0.0
        deadline = (
            loop.time()
            + client.push_timeout
            + 2 * self.settings.http_timeout
            + upstream_time
            + EXTRA_TIME
        )
        flow = self.core.authenticate(request, self.clock)
        decision: Decision | None = None
        try:
            result: Result | None = None
            while True:
                try:
                    effect = flow.send(result)  # type: ignore[arg-type]
                except StopIteration as stop:
                    decision = stop.value
                    break
                if isinstance(effect, UpstreamAuthenticate | UpstreamRelay | Audit):
                    result = await self._perform(effect, request, deadline)
                else:
                    # Directly, not through _perform: one frame less per held request.
                    held.waiting = isinstance(effect, WaitOutcome)
                    result = await self.backend.perform(effect, deadline)
                    held.waiting = False
        except asyncio.CancelledError:
            flow.close()  # releases the flow's hold on a pending push
            self.core.abandon(request)
            raise
        except Exception:
            log.exception("the decision flow failed", extra={"client": client.name})
            flow.close()
            decision = Reject("internal-error")
        finally:
            self._held.pop(key, None)
            self.shares.release(client.name, request.share_user)
            self.metrics.held.set(len(self._held))
        assert decision is not None  # noqa: S101 - set on every path that gets here
        try:
            data = self.core.finish(request, decision, self.clock())
        except Exception:
            # Never expected (the core turns encoding problems into a Reject); if it does
            # happen, the retransmission must start over rather than be absorbed.
            log.exception("encoding the answer failed", extra={"client": client.name})
            self.core.abandon(request)
            return
        endpoint.send(data, peer)
        self._record(request, decision, arrived, data)

    async def _perform(self, effect: Effect, request: AccessRequest, deadline: float) -> Result:
        if isinstance(effect, UpstreamAuthenticate):
            upstream = request.client.upstream
            if upstream is None:
                return Unavailable("primary radius without an upstream server")
            return await self.upstream.authenticate(
                upstream, effect.user_name, effect.password, deadline
            )
        if isinstance(effect, UpstreamRelay):
            upstream = request.client.upstream
            if upstream is None:
                return Unavailable("primary radius without an upstream server")
            return await self.upstream.relay(upstream, effect.attributes, deadline)
        if isinstance(effect, Audit):
            # Fire and forget: an exemption or a fail-safe accept must not wait on (or fail
            # with) the backend it is reported to.
            self._send_audit(effect)
            return Done()
        return await self.backend.perform(effect, deadline)

    def _send_audit(self, effect: Audit) -> None:
        if len(self._audits) >= MAX_AUDIT_TASKS:
            self._audit_lost(effect, "too many audit records in flight")
            return
        loop = asyncio.get_running_loop()

        async def deliver() -> None:
            result = await self.backend.perform(
                effect, loop.time() + 3 * self.settings.http_timeout
            )
            if isinstance(result, Unavailable | Refused):
                self._audit_lost(effect, result.detail)

        task = loop.create_task(deliver())
        self._audits.add(task)
        task.add_done_callback(self._audits.discard)

    @staticmethod
    def _audit_lost(effect: Audit, why: str) -> None:
        # The log line is then the only record: it carries everything the audit row would.
        log.error(
            "audit record not delivered to the backend (%s): %s %s: %s",
            why,
            effect.action,
            effect.user,
            effect.detail,
            extra={"action": effect.action, "user": effect.user},
        )

    def _record(
        self, request: AccessRequest, decision: Decision, arrived: float, data: bytes
    ) -> None:
        took = time.perf_counter() - arrived
        if isinstance(decision, Accept):
            kind = "accept"
        elif isinstance(decision, Challenge):
            kind = "challenge"
        else:
            kind = "reject"
        # The wire says what was sent (an Accept whose attributes could not be encoded went
        # out as a Reject).
        sent = {2: "accept", 3: "reject", 11: "challenge"}.get(data[0], kind)
        self.metrics.requests.labels(request.client.name, sent).inc()
        self.metrics.latency.labels(sent).observe(took)
        # Escaped: a User-Name is whatever the gateway sent (a refused "alice\n" included).
        user = printable(request.user or request.user_name)
        decisions_log.info(
            "%s %s for %s at %s: %s",
            "RADIUS",
            sent,
            user,
            request.client.name,
            decision.reason,
            extra={
                "client": request.client.name,
                "peer": request.source[0],
                "user": user,
                "decision": sent,
                "reason": decision.reason,
                "latency_ms": round(took * 1000, 1),
            },
        )

    def _backend_health(self, url: str, up: bool) -> None:
        self.metrics.backend_up.labels(url).set(1 if up else 0)

    def _channel_state(self, url: str, is_open: bool) -> None:
        self.metrics.channel_open.labels(url).set(1 if is_open else 0)

    def _backend_failover(self, url: str) -> None:
        self.metrics.backend_failovers.labels(url).inc()

    def _count_unavailable(self, effect: str) -> None:
        self.metrics.backend_errors.labels(effect).inc()

    def _credential_refused(self, why: str) -> None:
        """The backend refused this bridge's token (revoked, wrong scope): reject every
        request from now on, whatever the failmode, and delete the clients cache sealed
        with that token. Loud (ERROR, once a minute): nobody can sign in through here."""
        self.core.credential_refused = why
        if self.cache is not None:
            try:
                self.cache.discard()
            except CacheError as exc:
                log.error("%s", exc)
        now = time.monotonic()
        if self._refusal_logged is None or now - self._refusal_logged >= 60:
            self._refusal_logged = now
            log.error(
                "%s: every RADIUS request is rejected until the bridge has a valid token "
                "(openmfa token create NAME --scope bridge, then restart the bridge)",
                why,
            )

    # -- the client table ------------------------------------------------------------------------

    async def refresh_clients(self) -> bool:
        """Re-read the client list once; True when a new table was installed."""
        # One at a time (the periodic refresh and an unknown client's recheck): a slow
        # fetch finishing last must not install an older list over a newer one.
        async with self._refresh_lock:
            return await self._refresh_clients()

    async def _refresh_clients(self) -> bool:
        try:
            if self.settings.clients_file is not None:
                loaded = self._read_clients_file()
            else:
                document = await self.backend.fetch_clients(self.revision)
                loaded = None if document is None else parse_clients(document.data)
                if document is not None:  # parsed: a document the bridge cannot use is not kept
                    self._save_cache(document)
        except CredentialRefused as exc:
            self.metrics.client_refresh_failures.inc()
            self._credential_refused(str(exc))
            return False
        except (BackendError, ClientsError, OSError) as exc:
            self.metrics.client_refresh_failures.inc()
            now = time.monotonic()
            # The first failure, then one line a minute: a backend down for an hour must
            # not write 720 identical lines.
            if self._failing_since is None or now - self._failure_logged >= 60:
                self._failure_logged = now
                level = logging.WARNING if self.table_loaded.is_set() else logging.ERROR
                log.log(
                    level,
                    "cannot refresh the RADIUS clients (%s); %s",
                    exc,
                    "keeping the last good list"
                    if self.table_loaded.is_set()
                    else "no clients yet: every request is dropped",
                )
            if self._failing_since is None:
                self._failing_since = now
            return False
        if self.core.credential_refused is not None and self.settings.clients_file is None:
            log.warning("the backend accepts this bridge's token again")
            self.core.credential_refused = None
            self._refusal_logged = None
        if self._failing_since is not None:
            log.info(
                "the RADIUS client list can be read again (after %.0f s)",
                time.monotonic() - self._failing_since,
            )
            self._failing_since = None
        self.metrics.client_table_age.set(time.time())
        if loaded is None:
            return False
        self._install(loaded)
        return True

    def _save_cache(self, document: CachedDocument) -> None:
        if self.cache is None:
            return
        try:
            self.cache.save(document)
        except CacheError as exc:
            log.warning("%s; a restart while the backend is down will find no clients", exc)

    def _load_cache(self) -> None:
        """Serve from the cached client list until the backend can be reached."""
        if self.cache is None:
            return
        try:
            cached = self.cache.load()
            if cached is None:
                return
            loaded = parse_clients(cached.data)
        except (CacheError, ClientsError) as exc:
            log.warning("the RADIUS clients cache cannot be used: %s", exc)
            return
        log.warning(
            "the backend cannot be reached: serving the cached RADIUS client list "
            "(revision %s) until it can",
            cached.revision,
        )
        self._install(loaded)
        # Keep asking for changes since that revision; the backend's list replaces it.
        self.revision = cached.revision

    def _read_clients_file(self) -> ClientList | None:
        path = self.settings.clients_file
        assert path is not None  # noqa: S101 - only called with a file configured
        info = os.stat(path)
        stamp = (info.st_mtime_ns, info.st_size, info.st_ino)
        if stamp == self._file_stamp:
            return None
        # Noted before parsing: a broken file is reported once, not on every refresh, and
        # read again once it changes.
        self._file_stamp = stamp
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        return parse_clients_json(text)

    def _install(self, loaded: ClientList) -> None:
        self.core.clients = loaded.table
        self._rebind_radsec(loaded.table)
        self.revision = loaded.revision
        self.metrics.clients.set(len(loaded.clients))
        if loaded.errors != self.client_errors:
            for error in loaded.errors:
                log.error("RADIUS client left out: %s", error)
        self.client_errors = loaded.errors
        for client in loaded.clients:
            if not client.require_message_authenticator:
                log.warning(
                    "RADIUS client %s does not require Message-Authenticator: it is open to "
                    "BlastRADIUS (CVE-2024-3596) forgeries",
                    client.name,
                )
        log.info(
            "RADIUS client list loaded: %d clients (revision %s)",
            len(loaded.clients),
            loaded.revision,
            extra={"clients": len(loaded.clients), "revision": loaded.revision},
        )
        self.table_loaded.set()

    def _rebind_radsec(self, table: ClientTable) -> None:
        """A new client list: each RadSec connection takes its client's new settings, or is
        closed when its certificate is no longer bound to that client (removed, unbound,
        moved to another client) or its address left the client's networks. Requests in
        progress on a closed connection finish, but their answers are not sent."""
        for server in self.radsec:
            for connection in list(server.connections):
                current = connection.client
                if current is None:
                    continue
                client = table.by_certificate(connection.digest)
                if (
                    client is None
                    or client.name != current.name
                    or not _address_allowed(client, connection.peer[0])
                ):
                    log.warning(
                        "closing the RadSec connection of client %s from %s: its certificate "
                        "is no longer bound to it",
                        current.name,
                        connection.peer[0],
                        extra={"client": current.name, "peer": connection.peer[0]},
                    )
                    self.metrics.radsec_connections.labels("unbound").inc()
                    connection.close()
                else:
                    connection.client = dataclasses.replace(client, secret=RADSEC_SECRET)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.refresh_seconds)
            try:
                await self.refresh_clients()
            except Exception:  # a bug must not stop refreshing for good
                log.exception("refreshing the RADIUS clients failed")

    async def _housekeeping_loop(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_SECONDS)
            self.core.expire(self.clock())


def _address_allowed(client: ClientConfig, host: str) -> bool:
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in client.networks)


def radsec_context(settings: BridgeSettings) -> Any:
    """The TLS server context for RadSec. Raises TlsSetupError."""
    assert settings.radsec_cert_file is not None  # noqa: S101 - checked by the settings
    assert settings.radsec_key_file is not None  # noqa: S101
    assert settings.radsec_client_ca_file is not None  # noqa: S101
    return server_context(
        settings.radsec_cert_file, settings.radsec_key_file, settings.radsec_client_ca_file
    )


def radsec_limits(settings: BridgeSettings) -> RadsecLimits:
    """The RadSec timeouts and bounds from the settings."""
    return RadsecLimits(
        handshake_timeout=settings.radsec_handshake_timeout,
        idle_timeout=settings.radsec_idle_timeout,
        max_connections=settings.radsec_max_connections,
        max_in_flight=settings.radsec_max_in_flight,
    )


def _bind_all(
    addresses: Iterable[ListenAddress], make: Callable[[ListenAddress], socket.socket], what: str
) -> dict[ListenAddress, socket.socket]:
    """``make`` a socket for every address; on the first failure close those made and raise
    StartupError naming the address (``what``: "RADIUS on UDP", "RadSec on TCP")."""
    bound: dict[ListenAddress, socket.socket] = {}
    for address in addresses:
        try:
            bound[address] = make(address)
        except OSError as exc:
            for sock in bound.values():
                sock.close()
            raise StartupError(
                f"cannot listen for {what} {address}: {exc.strerror or exc}"
            ) from exc
    return bound


def bind_radsec_sockets(settings: BridgeSettings) -> dict[ListenAddress, socket.socket]:
    """Bind every RadSec address now (see :func:`bind_sockets`). Raises StartupError."""
    from radius_bridge.radsec import make_socket as make_tcp_socket

    return _bind_all(settings.radsec_listen, make_tcp_socket, "RadSec on TCP")


def bind_sockets(settings: BridgeSettings) -> dict[ListenAddress, socket.socket]:
    """Bind every listen address now (before an event loop runs), so ``openmfa run`` can
    refuse to start with one clear message when a port is taken. Raises StartupError."""
    return _bind_all(
        settings.listen,
        lambda address: make_socket(address, settings.receive_buffer_bytes),
        "RADIUS on UDP",
    )
