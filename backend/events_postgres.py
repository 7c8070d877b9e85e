"""The outcome bus across nodes: PostgreSQL ``LISTEN``/``NOTIFY`` over the in-process bus.

Every node on one PostgreSQL database runs a :class:`PostgresOutcomeBus`. Waiters and
watchers stay in the node's own :class:`~backend.events.InProcessOutcomeBus` (futures and
callbacks, plus the memory of recent outcomes that closes the read-then-wait race); this
class only carries outcomes between nodes:

* ``publish`` wakes the local waiters at once (the common case, the answer arriving at the
  node that holds the request, costs no round trip), then queues the outcome. One sender task
  drains the queue into as few ``NOTIFY openmfa_outcomes`` payloads as fit (see
  :mod:`backend.events_payload`), all in one statement: a sync that cancels 500 users'
  challenges is a handful of notifications and one round trip.
* A supervisor task holds one dedicated asyncpg connection that ``LISTEN``\\ s (the fastpath
  pool's connections are reset for nothing on release and shared, so they cannot). When that
  connection is lost it reconnects with bounded backoff, ``LISTEN``\\ s again and only *then*
  re-reads from ``challenges`` every challenge id held here, publishing locally the ones
  decided meanwhile: an outcome committed before the ``LISTEN`` is in the row, one committed
  after it arrives as a notification, so no wake-up is lost in the gap. A ping every
  ``ping_seconds`` notices a connection that died without a word (a cut network).
* Outcomes published while the connection is down wait in the queue (bounded) and go out
  after the reconnect; a node's own notifications coming back are skipped by their first line.

Notifications are a wake-up, never the record: the row was committed before ``publish``, and
any waiter that misses a notification (a publisher that died between its commit and its
``NOTIFY``) still reads the row when its wait ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from backend import events_payload as wire
from backend.errors import DatabaseError
from backend.events import InProcessOutcomeBus, Outcome
from backend.store.connect import connect

if TYPE_CHECKING:  # loaded when a bus starts: SQLite set-ups never need it
    import asyncpg

CHANNEL = "openmfa_outcomes"
#: Ids per re-read query after a reconnect (one ``= ANY($1)`` array each).
REREAD_CHUNK = 1_000
log = logging.getLogger("openmfa.bus")

_NOTIFY = "SELECT pg_notify($1, payload) FROM unnest($2::text[]) AS payload"
_REREAD = (
    "SELECT id, state, answered_at FROM challenges"
    " WHERE id = ANY($1::text[]) AND state <> 'pending'"
)


class PostgresOutcomeBus:
    """:class:`~backend.events.OutcomeBus` for several nodes on one PostgreSQL database.

    ``dsn``: a libpq/asyncpg URL (``postgresql://...``), as :class:`~backend.store.fastpath.
    PostgresJobs` uses it. ``node_id``: this process (``Services.node_id``), the first line of
    every payload it sends. Use :meth:`open` (or :meth:`start` after constructing)."""

    def __init__(
        self,
        dsn: str,
        node_id: str,
        local: InProcessOutcomeBus | None = None,
        *,
        first_backoff: float = 0.1,
        max_backoff: float = 5.0,
        ping_seconds: float = 10.0,
        connect_timeout: float = 5.0,
        max_pending: int = 100_000,
        close_grace: float = 2.0,
    ) -> None:
        if not wire.valid_node_id(node_id):
            raise ValueError(f"a node id is 1-64 of A-Z a-z 0-9 _ -, not {node_id!r}")
        self._dsn = dsn
        # The URL asks for a writable server (several hosts: backend/store/urls.py): the
        # LISTEN must be on the server the nodes write to.
        self._wants_primary = _asks_for_primary(dsn)
        self.node_id = node_id
        self._local = local if local is not None else InProcessOutcomeBus()
        self._first_backoff = first_backoff
        self._max_backoff = max_backoff
        self._ping_seconds = ping_seconds
        self._connect_timeout = connect_timeout
        self._max_pending = max_pending
        self._close_grace = close_grace
        self._conn: asyncpg.Connection | None = None
        # One query at a time on the connection (asyncpg refuses overlapping ones): the
        # sender's NOTIFY, the re-read and the ping take turns.
        self._lock = asyncio.Lock()
        self._pending: deque[Outcome] = deque()
        self._sender: asyncio.Task[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._first_connect: asyncio.Future[None] | None = None
        self._closed = False
        self._last_error: BaseException | None = None
        self._outage: float | None = None  # when the current outage began (monotonic)
        #: Plain counters for metrics (backend/metrics.py ``openmfa_bus_*``): notifications
        #: sent / received / own (skipped), outcomes sent / received / reread, rejected lines,
        #: reconnects, send-errors, dropped (queue full, or undeliverable after close).
        self.counts: Counter[str] = Counter()
        #: True while the LISTEN connection is up.
        self.connected = False

    @classmethod
    async def open(cls, dsn: str, node_id: str, **options: Any) -> PostgresOutcomeBus:
        """A started bus (its ``LISTEN`` is active when this returns)."""
        bus = cls(dsn, node_id, **options)
        await bus.start()
        return bus

    async def start(self) -> None:
        """Connect and ``LISTEN``; :class:`DatabaseError` if that fails within
        ``connect_timeout`` (the supervisor is stopped then)."""
        self._first_connect = asyncio.get_running_loop().create_future()
        self._supervisor = asyncio.create_task(self._supervise(), name="outcome-bus-listener")
        try:
            await asyncio.wait_for(asyncio.shield(self._first_connect), self._connect_timeout)
        except TimeoutError:
            await self.close()
            raise DatabaseError(
                f"the outcome bus could not LISTEN on PostgreSQL: {self._last_error}"
            ) from None

    # -- the OutcomeBus interface ---------------------------------------------------------

    async def publish(self, outcome: Outcome) -> None:
        """Wake local waiters now; the other nodes with the next notification."""
        self._local.deliver(outcome)
        if len(self._pending) >= self._max_pending:
            self._pending.popleft()  # their waiters still read the row when their wait ends
            self.counts["dropped"] += 1
        self._pending.append(outcome)
        self._kick()

    async def wait(self, challenge_id: str, within: float) -> Outcome | None:
        """See :meth:`backend.events.OutcomeBus.wait`."""
        return await self._local.wait(challenge_id, within)

    def watch(self, challenge_id: str, on_outcome: Callable[[Outcome], None]) -> Callable[[], None]:
        """See :meth:`backend.events.OutcomeBus.watch`."""
        return self._local.watch(challenge_id, on_outcome)

    def held(self) -> set[str]:
        """The challenge ids waited on or watched on this node."""
        return self._local.held()

    @property
    def waiting(self) -> int:
        """How many waiters and watchers are parked here (metrics)."""
        return self._local.waiting

    @property
    def listen_pid(self) -> int | None:
        """The server process of the LISTEN connection (diagnostics, tests), if connected."""
        conn = self._conn
        return None if conn is None else conn.get_server_pid()

    @property
    def pending(self) -> int:
        """Outcomes published here and not yet sent to the other nodes."""
        return len(self._pending)

    async def close(self) -> None:
        """Wake local waiters with ``None``, send what is queued (bounded), stop listening.

        Safe to call again: ``openmfa run`` closes the bus at the stop signal (to end
        long-polls) and again when the services close. Outcomes published in between
        (answers still being served) go out on a short-lived connection."""
        await self._local.close()
        self._closed = True
        supervisor, self._supervisor = self._supervisor, None
        if self._pending:
            self._kick()
        sender = self._sender
        if sender is not None and not sender.done():
            try:
                await asyncio.wait_for(asyncio.shield(sender), self._close_grace)
            except TimeoutError:
                sender.cancel()
                self.counts["dropped"] += len(self._pending)
                self._pending.clear()
        if supervisor is not None:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
        conn, self._conn = self._conn, None
        self.connected = False
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), self._close_grace)
            except (TimeoutError, OSError):
                conn.terminate()

    # -- sending --------------------------------------------------------------------------

    def _kick(self) -> None:
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send(), name="outcome-bus-sender")

    async def _send(self) -> None:
        """Drain the queue into notifications while there is a connection to send them on."""
        import asyncpg

        while self._pending:
            conn = self._conn
            temporary = conn is None and self._closed
            if temporary:
                try:
                    conn = await connect(self._dsn, host_timeout=self._connect_timeout)
                except Exception as exc:  # refused, hung, no read-write host among several
                    self.counts["dropped"] += len(self._pending)
                    self._pending.clear()
                    log.warning("outcome bus: could not send after close (%s)", exc)
                    return
            if conn is None:
                return  # down: the supervisor kicks the sender again once reconnected
            batch = list(self._pending)
            self._pending.clear()
            payloads = wire.pack(self.node_id, batch)
            try:
                async with self._lock:
                    await conn.execute(_NOTIFY, CHANNEL, payloads, timeout=self._connect_timeout)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                if isinstance(exc, TimeoutError) and not temporary:
                    conn.terminate()  # silent: let the supervisor reconnect and resend
                if conn.is_closed() and not temporary and not self._closed:
                    self._pending.extendleft(reversed(batch))  # resent after the reconnect
                    return
                self.counts["send-errors"] += 1
                log.warning(
                    "outcome bus: %d outcomes not sent to other nodes (%s)", len(batch), exc
                )
            else:
                self.counts["notifications-sent"] += len(payloads)
                self.counts["outcomes-sent"] += len(batch)
            finally:
                if temporary:
                    await conn.close()

    # -- listening ------------------------------------------------------------------------

    async def _supervise(self) -> None:
        """Keep one LISTEN connection up for the life of the bus; log once per outage."""
        delay = 0.0  # the first retry after a loss is at once (a restarted backend)
        while not self._closed:
            listened = self.counts["listens"]
            try:
                await self._listen_once()
                reason = "PostgreSQL closed it"  # returned: lost without an error
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: log once per outage, retry bounded
                self._last_error = exc
                self.counts["connect-failures"] += 1
                reason = f"{type(exc).__name__}: {exc}"
            # (close() cancels this task: no check of _closed needed before logging)
            if self.counts["listens"] != listened:
                delay = 0.0  # it was up: this is a new outage
            if self.counts["listens"] and self._outage is None:
                self._outage = time.monotonic()
                log.warning(
                    "outcome bus: lost its PostgreSQL connection (%s); reconnecting", reason
                )
            await asyncio.sleep(delay)  # the backoff itself: there is nothing to wait for
            delay = min(max(delay * 2, self._first_backoff), self._max_backoff)

    async def _listen_once(self) -> None:
        """Connect, LISTEN, re-read what is held, then hold the connection until it is lost
        (returns) or fails a ping (raises)."""

        conn: asyncpg.Connection = await connect(self._dsn, host_timeout=self._connect_timeout)
        lost = asyncio.Event()
        try:
            conn.add_termination_listener(lambda _conn: lost.set())
            await conn.add_listener(CHANNEL, self._on_notification)
            self._conn = conn
            if self.counts["listens"]:
                self.counts["reconnects"] += 1
            self.counts["listens"] += 1
            # After LISTEN, never before: see the module docstring.
            held, decided = await self._reread(conn)
            self.connected = True
            if self._outage is not None:
                log.warning(
                    "outcome bus: reconnected after %.1f s; re-read %d held challenges, "
                    "%d decided meanwhile",
                    time.monotonic() - self._outage,
                    held,
                    decided,
                )
                self._outage = None
            if self._first_connect is not None and not self._first_connect.done():
                self._first_connect.set_result(None)
            self._kick()  # what was published during the outage
            await self._hold(conn, lost)
        finally:
            self.connected = False
            if self._conn is conn:
                self._conn = None
            if not conn.is_closed():
                conn.terminate()

    async def _hold(self, conn: asyncpg.Connection, lost: asyncio.Event) -> None:
        while not lost.is_set():
            try:
                await asyncio.wait_for(lost.wait(), self._ping_seconds)
                return
            except TimeoutError:
                pass
            async with self._lock:
                read_only = await conn.fetchval(_READ_ONLY, timeout=self._connect_timeout)
            if read_only and self._wants_primary:
                # A fenced old primary keeps its sessions; the nodes' writes went to the
                # promoted server, and so do their NOTIFYs: follow them there.
                raise NotPrimary("the server turned read-only (a failover?); reconnecting")

    async def _reread(self, conn: asyncpg.Connection) -> tuple[int, int]:
        """Publish locally every held challenge that is final in the database; (held,
        decided)."""
        held = sorted(self._local.held())
        decided = 0
        for start in range(0, len(held), REREAD_CHUNK):
            async with self._lock:
                rows = await conn.fetch(
                    _REREAD, held[start : start + REREAD_CHUNK], timeout=self._connect_timeout
                )
            for row in rows:
                self._deliver(Outcome(row["id"], row["state"], _utc(row["answered_at"])))
            decided += len(rows)
        self.counts["outcomes-reread"] += decided
        return len(held), decided

    def _on_notification(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self.counts["notifications-received"] += 1
        if wire.sender(payload) == self.node_id:
            self.counts["notifications-own"] += 1
            return
        parsed = wire.parse(payload)
        if parsed.rejected:
            if not self.counts["rejected"]:
                log.warning("outcome bus: refused a malformed notification line (first of any)")
            self.counts["rejected"] += parsed.rejected
        for outcome in parsed.outcomes:
            self._deliver(outcome)
        self.counts["outcomes-received"] += len(parsed.outcomes)

    def _deliver(self, outcome: Outcome) -> None:
        try:
            self._local.deliver(outcome)
        except Exception:  # a watcher's bug must not stop the feed
            log.exception("outcome bus: a watcher of %s failed", outcome.challenge_id)


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class NotPrimary(Exception):
    """The LISTEN connection's server no longer takes writes."""


#: The ping: does this session's server still take writes?
_READ_ONLY = "SELECT pg_is_in_recovery() OR current_setting('transaction_read_only') = 'on'"


def _asks_for_primary(dsn: str) -> bool:
    query = parse_qs(urlsplit(dsn).query)
    return bool({"read-write", "primary"} & set(query.get("target_session_attrs", [])))
