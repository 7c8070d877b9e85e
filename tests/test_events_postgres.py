"""The outcome bus across nodes on a real PostgreSQL: two buses on one database are two nodes.

A wait on node A wakes from a publish on node B; batches travel as few notifications; a
LISTEN connection killed while a challenge is decided reconnects and wakes its waiter from
the re-read; garbage on the channel is refused without stopping the listener."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import asyncpg
import pytest

from backend import events_postgres
from backend.config import Settings
from backend.errors import DatabaseError
from backend.events import Outcome, OutcomeBus
from backend.events_postgres import CHANNEL, PostgresOutcomeBus
from backend.services import Services
from backend.services.context import Actor
from tests.support.process import free_port, until
from tests.support.tcp_proxy import TcpProxy, tcp_proxy

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.postgres,
    pytest.mark.parametrize("database_url", ["postgres"], indirect=True),
]

Nodes = Callable[..., Awaitable[PostgresOutcomeBus]]  # start(name, **options) -> a node
BOUND = 10.0  # generous upper bound for things that should happen "at once"


def plain(url: str) -> str:
    """The SQLAlchemy URL as asyncpg takes it."""
    return url.replace("postgresql+asyncpg://", "postgresql://")


@pytest.fixture
def dsn(database_url: str) -> str:
    return plain(database_url)


@pytest.fixture
async def admin(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection for the test's own SQL (rows, pg_terminate_backend, NOTIFY)."""
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def nodes(dsn: str) -> AsyncIterator[Nodes]:
    """Start buses (nodes) on the database; all closed at the end."""
    started: list[PostgresOutcomeBus] = []

    async def start(name: str, **options: object) -> PostgresOutcomeBus:
        bus = await PostgresOutcomeBus.open(dsn, f"n_{name}", **options)
        started.append(bus)
        return bus

    try:
        yield start
    finally:
        for bus in started:
            await bus.close()


@contextlib.asynccontextmanager
async def bus_behind_proxy(
    dsn: str, ping_seconds: float
) -> AsyncIterator[tuple[TcpProxy, PostgresOutcomeBus]]:
    """Node A's bus, connected through a TCP proxy in front of the server (so that the test
    can silence the connection), and the proxy; both closed at the end."""
    at = urlsplit(dsn)
    async with tcp_proxy((at.hostname or "127.0.0.1", at.port or 5432)) as proxy:
        via_proxy = dsn.replace(f"{at.hostname}:{at.port}", f"127.0.0.1:{proxy.port}")
        bus = await PostgresOutcomeBus.open(
            via_proxy, "n_a", ping_seconds=ping_seconds, connect_timeout=1.0, first_backoff=0.02
        )
        try:
            yield proxy, bus
        finally:
            await bus.close()


async def pending_challenge(admin: asyncpg.Connection, challenge_id: str) -> None:
    """A pending push challenge row (and its user) written straight into the tables."""
    now = datetime.now(UTC)
    user_id = await admin.fetchval(
        "INSERT INTO users (name, name_key, display_name, email, created_at, is_admin, disabled,"
        " blocked, blocked_reason, pin_failures, otp_failures)"
        " VALUES ($1, $1, '', '', $2, false, false, false, '', 0, 0)"
        " ON CONFLICT (name_key) DO UPDATE SET name = EXCLUDED.name RETURNING id",
        "alice",
        now,
    )
    await admin.execute(
        "INSERT INTO challenges (id, user_id, method, state, created_at, expires_at,"
        " client_name, client_ip, nas_identifier, display)"
        " VALUES ($1, $2, 'push', 'pending', $3, $4, '', '', '', '')",
        challenge_id,
        user_id,
        now,
        now + timedelta(minutes=2),
    )


@contextlib.asynccontextmanager
async def connections_refused(dsn: str) -> AsyncIterator[None]:
    """No new connection to the test database while inside (those open stay open)."""
    base, database = dsn.rsplit("/", 1)
    # Not from a session on the database itself: PostgreSQL refuses that.
    conn = await asyncpg.connect(f"{base}/postgres")
    try:
        await conn.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS false')
        try:
            yield
        finally:
            await conn.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS true')
    finally:
        await conn.close()


def test_satisfies_the_protocol(dsn: str) -> None:
    bus: OutcomeBus = PostgresOutcomeBus(dsn, "n_x")
    assert bus is not None


async def test_a_wait_on_one_node_wakes_from_a_publish_on_another(nodes: Nodes) -> None:
    a, b = await nodes("a"), await nodes("b")
    waiter = asyncio.create_task(a.wait("ch_1", within=30))
    await until(lambda: a.waiting == 1, "the waiter to park")

    at = datetime(2026, 12, 6, 12, 0, 1, 250000, tzinfo=UTC)
    await b.publish(Outcome("ch_1", "approved", at))

    assert await asyncio.wait_for(waiter, BOUND) == Outcome("ch_1", "approved", at)
    assert a.counts["outcomes-received"] == 1
    # B heard its own notification and skipped it without parsing.
    await until(lambda: b.counts["notifications-own"] == 1, "B's own notification")
    assert b.counts["outcomes-received"] == 0


async def test_the_publishing_node_wakes_its_own_waiters_without_a_round_trip(nodes: Nodes) -> None:
    a = await nodes("a")
    waiter = asyncio.create_task(a.wait("ch_1", within=30))
    await until(lambda: a.waiting == 1, "the waiter to park")
    await a.publish(Outcome("ch_1", "denied"))
    assert await asyncio.wait_for(waiter, BOUND) == Outcome("ch_1", "denied")
    # Woken by publish itself, before its NOTIFY went round through the server.
    assert a.counts["notifications-own"] == 0
    await until(lambda: a.counts["notifications-own"] == 1, "A's own notification")
    assert a.counts["outcomes-received"] == 0


async def test_watch_across_nodes(nodes: Nodes) -> None:
    a, b = await nodes("a"), await nodes("b")
    seen: list[Outcome] = []
    unwatch_first = a.watch("ch_1", seen.append)
    a.watch("ch_2", seen.append)
    unwatch_first()

    await b.publish(Outcome("ch_1", "approved"))
    await b.publish(Outcome("ch_2", "fraud"))

    await until(lambda: seen == [Outcome("ch_2", "fraud")], "the watcher of ch_2")
    await until(lambda: a.counts["outcomes-received"] == 2, "both outcomes on A")
    assert seen == [Outcome("ch_2", "fraud")]  # the unwatched one never fired
    # A watch after the outcome arrived fires at once (the bus remembers it).
    late: list[Outcome] = []
    a.watch("ch_1", late.append)
    assert late == [Outcome("ch_1", "approved")]


async def test_a_batch_of_a_thousand_wakes_all_in_few_notifications(nodes: Nodes) -> None:
    a, b = await nodes("a"), await nodes("b")
    ids = [f"ch_{i:022d}" for i in range(1000)]
    waiters = [asyncio.create_task(a.wait(i, within=60)) for i in ids]
    await until(lambda: a.waiting == 1000, "1,000 waiters to park")

    for challenge_id in ids:  # as ChallengeService announces a sync's cancellations
        await b.publish(Outcome(challenge_id, "cancelled"))
    results = await asyncio.wait_for(asyncio.gather(*waiters), BOUND)

    assert [r.challenge_id for r in results if r is not None] == ids
    assert {r.state for r in results if r is not None} == {"cancelled"}
    assert b.counts["outcomes-sent"] == 1000
    assert b.counts["notifications-sent"] <= 12  # ~110 outcomes per payload
    assert a.waiting == 0


async def test_garbage_on_the_channel_is_refused_and_the_listener_goes_on(
    nodes: Nodes, admin: asyncpg.Connection
) -> None:
    a, b = await nodes("a"), await nodes("b")
    waiter = asyncio.create_task(a.wait("ch_1", within=30))
    await until(lambda: a.waiting == 1, "the waiter to park")
    for junk in ["", "hello world", "n_x\nch_1 pending -", "n_x\nch_1 approved now", "\x01" * 7000]:
        await admin.execute("SELECT pg_notify($1, $2)", CHANNEL, junk)
    await until(lambda: a.counts["notifications-received"] == 5, "the junk to arrive")
    assert a.counts["rejected"] >= 5
    assert not waiter.done()

    await b.publish(Outcome("ch_1", "approved"))
    assert await asyncio.wait_for(waiter, BOUND) == Outcome("ch_1", "approved")


async def test_a_lost_listen_connection_re_reads_what_it_holds(
    nodes: Nodes,
    admin: asyncpg.Connection,
    dsn: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Answers committed and published while A cannot listen: A's waiters still wake, from
    the re-read after the reconnect (in chunks); one log line for the outage, not one per
    retry."""
    monkeypatch.setattr(events_postgres, "REREAD_CHUNK", 2)
    a = await nodes("a", first_backoff=0.02, max_backoff=0.1)
    b = await nodes("b")
    ids = [f"ch_gap{i}" for i in range(5)]
    for challenge_id in ids:
        await pending_challenge(admin, challenge_id)
    waiters = {i: asyncio.create_task(a.wait(i, within=60)) for i in ids}
    await until(lambda: a.waiting == 5, "the waiters to park")
    decided = ids[0::2]  # three of five, in different chunks

    # Keep A out: no new connections to the database, then kill A's LISTEN connection.
    with caplog.at_level(logging.WARNING, logger="openmfa.bus"):
        async with connections_refused(dsn):
            pid = a.listen_pid
            assert pid is not None
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
            await until(lambda: not a.connected, "A to notice the lost connection")

            # Decided while A is away: committed, then published on B.
            answered = datetime.now(UTC)
            for challenge_id in decided:
                await admin.execute(
                    "UPDATE challenges SET state = 'approved', answered_at = $2 WHERE id = $1",
                    challenge_id,
                    answered,
                )
                await b.publish(Outcome(challenge_id, "approved", answered))
            await until(lambda: b.counts["outcomes-sent"] == 3, "B's notifications")
            # A keeps trying, with backoff, while the database refuses it.
            await until(lambda: a.counts["connect-failures"] >= 3, "A's retries")
            assert not any(w.done() for w in waiters.values())
            assert a.counts["notifications-received"] == 0
            assert a.counts["reconnects"] == 0

        for challenge_id in decided:
            outcome = await asyncio.wait_for(waiters[challenge_id], BOUND)
            assert outcome == Outcome(challenge_id, "approved", answered)
    assert a.counts["reconnects"] == 1
    assert a.counts["outcomes-reread"] == 3  # from the rows, not from notifications
    assert a.counts["outcomes-received"] == 0
    still = [i for i in ids if i not in decided]
    assert not any(waiters[i].done() for i in still)  # pending in the database: waiting
    messages = [r.getMessage() for r in caplog.records]
    assert sum("lost its PostgreSQL connection" in m for m in messages) == 1, messages
    assert sum("reconnected after" in m for m in messages) == 1, messages

    # Listening again: the next answer arrives as a notification.
    await b.publish(Outcome(still[0], "denied"))
    assert await asyncio.wait_for(waiters[still[0]], BOUND) == Outcome(still[0], "denied")
    assert a.counts["outcomes-received"] == 1


async def test_a_connection_gone_silent_is_noticed_by_the_ping(
    nodes: Nodes, admin: asyncpg.Connection, dsn: str
) -> None:
    """A cut that closes nothing (a partition, a firewall dropping the idle flow): the ping
    fails, A reconnects and re-reads; its waiter wakes with the answer decided meanwhile."""
    async with bus_behind_proxy(dsn, ping_seconds=0.2) as (proxy, a):
        b = await nodes("b")
        await pending_challenge(admin, "ch_silent")
        waiter = asyncio.create_task(a.wait("ch_silent", within=60))
        await until(lambda: a.waiting == 1, "the waiter to park")

        assert proxy.silence() == 1
        await admin.execute("UPDATE challenges SET state = 'denied' WHERE id = 'ch_silent'")
        await b.publish(Outcome("ch_silent", "denied"))

        assert await asyncio.wait_for(waiter, BOUND) == Outcome("ch_silent", "denied")
        assert a.counts["reconnects"] == 1
        assert a.counts["outcomes-reread"] == 1
        assert a.counts["outcomes-received"] == 0


async def test_a_notify_stuck_on_a_silent_connection_is_resent_after_a_reconnect(
    nodes: Nodes, dsn: str
) -> None:
    # No ping within the test: only the NOTIFY's own timeout can notice the cut.
    async with bus_behind_proxy(dsn, ping_seconds=600) as (proxy, a):
        b = await nodes("b")
        waiter = asyncio.create_task(b.wait("ch_1", within=60))
        await until(lambda: b.waiting == 1, "the waiter to park")

        assert proxy.silence() == 1
        await a.publish(Outcome("ch_1", "approved"))

        assert await asyncio.wait_for(waiter, BOUND) == Outcome("ch_1", "approved")
        assert a.counts["reconnects"] == 1
        assert a.counts["send-errors"] == 0


async def test_outcomes_published_while_down_go_out_after_the_reconnect(
    nodes: Nodes, admin: asyncpg.Connection, dsn: str
) -> None:
    a = await nodes("a", first_backoff=0.05, max_backoff=0.2)
    b = await nodes("b")
    waiter = asyncio.create_task(b.wait("ch_1", within=60))
    await until(lambda: b.waiting == 1, "the waiter to park")
    async with connections_refused(dsn):
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", a.listen_pid)
        await until(lambda: not a.connected, "A to notice the lost connection")
        await a.publish(Outcome("ch_1", "approved"))
        assert a.pending == 1  # queued, not lost
    assert await asyncio.wait_for(waiter, BOUND) == Outcome("ch_1", "approved")
    assert a.pending == 0


async def test_close_wakes_waiters_with_none_and_later_outcomes_still_go_out(nodes: Nodes) -> None:
    a, b = await nodes("a"), await nodes("b")
    waiter = asyncio.create_task(a.wait("ch_1", within=30))
    remote = asyncio.create_task(b.wait("ch_2", within=30))
    await until(lambda: a.waiting == 1 and b.waiting == 1, "the waiters to park")

    await a.close()
    assert await asyncio.wait_for(waiter, BOUND) is None
    assert not a.connected
    assert await a.wait("ch_3", within=5) is None  # closed: no new waits

    # `openmfa run` closes the bus at the stop signal and still serves answers in flight:
    # their outcomes reach the other nodes on a short-lived connection.
    await a.publish(Outcome("ch_2", "approved"))
    assert await asyncio.wait_for(remote, BOUND) == Outcome("ch_2", "approved")
    await a.close()  # again: harmless


async def test_start_fails_cleanly_when_postgres_does_not_answer(database_url: str) -> None:
    started = time.monotonic()
    with pytest.raises(DatabaseError, match="could not LISTEN"):
        await PostgresOutcomeBus.open(
            f"postgresql://postgres@127.0.0.1:{free_port()}/none", "n_x", connect_timeout=1.0
        )
    assert time.monotonic() - started < BOUND


async def test_services_on_postgres_announce_to_other_nodes_even_when_closing_at_once(
    nodes: Nodes, admin: asyncpg.Connection, settings: Settings
) -> None:
    """What `openmfa user disable` does: open services (no push, no mail), end a user's
    pending challenges, close. The servers' waiters wake: the close sends what is queued."""
    other = await nodes("server")
    await pending_challenge(admin, "ch_cli")
    waiter = asyncio.create_task(other.wait("ch_cli", within=60))
    await until(lambda: other.waiting == 1, "the waiter to park")

    services = await Services.open(settings, push=False, notify=False)
    try:
        assert isinstance(services.bus, PostgresOutcomeBus)
        assert services.bus.node_id == services.node_id
        assert (
            await services.challenges.cancel_pending_for_user(
                Actor("cli:test"), "alice", "disabled"
            )
            == 1
        )
    finally:
        await services.close()

    outcome = await asyncio.wait_for(waiter, BOUND)
    assert outcome is not None
    assert (outcome.challenge_id, outcome.state) == ("ch_cli", "cancelled")
