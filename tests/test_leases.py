"""Leases and nodes (issue 18, docs/operations.md "Several nodes"): the pure rules, lease rows
on SQLite and PostgreSQL (claim, renew, expiry, hand-over, release, 40 concurrent claimers
through two connection pools), node registries heart-beating, dying and stopping, and
:class:`~backend.tasks.LeasedDuty` running a duty on one node only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select

from backend.domain.leases import (
    LeaseState,
    NodeState,
    can_claim,
    claimed,
    node_state,
    renew_interval,
)
from backend.services.leases import Leases
from backend.services.nodes import NodeRegistry, list_nodes
from backend.store.database import Database
from backend.store.tables import leases_t, nodes_t
from backend.tasks import LeasedDuty
from tests.support.clock import FakeClock

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
HOLDERS = st.sampled_from(["n_a", "n_b", "cli:h:1"])
OFFSETS = st.integers(min_value=-100, max_value=100)


class CountedLeases(Leases):
    """The real :class:`Leases`, counting the claims and renewals a duty makes, so a test
    can wait for "b tried again while a renewed" instead of sleeping through it."""

    def __init__(self, db: Database, clock: Callable[[], datetime], holder: str) -> None:
        super().__init__(db, clock, holder)
        self.claims = 0
        self.renewals = 0
        self._changed = asyncio.Condition()

    async def claim(self, name: str, ttl: float) -> bool:
        got = await super().claim(name, ttl)
        await self._count("claims")
        return got

    async def renew(self, name: str, ttl: float) -> bool:
        kept = await super().renew(name, ttl)
        await self._count("renewals")
        return kept

    async def _count(self, what: str) -> None:
        async with self._changed:
            setattr(self, what, getattr(self, what) + 1)
            self._changed.notify_all()

    async def until(self, condition: Callable[[], bool]) -> None:
        """Until ``condition`` holds (checked after every claim and renewal), 10 s at most."""
        async with asyncio.timeout(10), self._changed:
            await self._changed.wait_for(condition)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- the rules (pure) ---------------------------------------------------------------------------


@given(current=st.none() | st.tuples(HOLDERS, OFFSETS, OFFSETS), me=HOLDERS, ttl=st.integers(1, 60))
def test_a_claim_succeeds_only_when_free_expired_or_mine(
    current: tuple[str, int, int] | None, me: str, ttl: int
) -> None:
    lease = (
        None
        if current is None
        else LeaseState(
            "x", current[0], T0 + timedelta(seconds=current[1]), T0 + timedelta(seconds=current[2])
        )
    )
    after = claimed(lease, "x", me, T0, timedelta(seconds=ttl))
    ok = lease is None or lease.expires_at <= T0 or lease.holder == me
    assert can_claim(lease, me, T0) is ok
    assert (after is not None) is ok
    if after is not None:
        assert after.holder == me
        assert after.expires_at == T0 + timedelta(seconds=ttl)
        # "Held since" survives the holder's own re-claim, and only that.
        kept = lease is not None and lease.holder == me
        assert after.acquired_at == (lease.acquired_at if kept and lease else T0)


@given(seen=OFFSETS, stopped=st.none() | OFFSETS, timeout=st.integers(2, 60))
def test_a_node_is_alive_iff_not_stopped_and_seen_within_the_timeout(
    seen: int, stopped: int | None, timeout: int
) -> None:
    state = node_state(
        T0 + timedelta(seconds=seen),
        None if stopped is None else T0 + timedelta(seconds=stopped),
        T0,
        timedelta(seconds=timeout),
    )
    if stopped is not None:
        assert state is NodeState.STOPPED
    else:
        assert (state is NodeState.ALIVE) is (seen >= -timeout)


def test_a_lease_is_renewed_three_times_per_ttl() -> None:
    assert renew_interval(21) == 7
    with pytest.raises(ValueError, match="positive"):
        renew_interval(0)


# -- lease rows ---------------------------------------------------------------------------------


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    try:
        yield database
    finally:
        await database.dispose()


async def test_claim_renew_expire_and_hand_over(db: Database) -> None:
    clock = FakeClock(T0)
    a, b = Leases(db, clock, "n_a"), Leases(db, clock, "n_b")
    assert await a.claim("retention", 20)
    assert not await b.claim("retention", 20)  # held
    assert await a.claim("retention", 20)  # mine again: the same row
    holder = await b.holder("retention")
    assert holder is not None
    assert holder.holder == "n_a"
    assert holder.acquired_at == T0

    clock.advance(15)
    assert await a.renew("retention", 20)  # now expires at T0 + 35 s
    clock.advance(15)
    assert not await b.claim("retention", 20)  # would have expired without the renewal
    clock.advance(5)  # T0 + 35: over
    assert await b.holder("retention") is None
    assert await b.claim("retention", 20)
    assert not await a.renew("retention", 20)  # lost: a must stop its duty
    assert a.held == set()
    assert b.held == {"retention"}
    holder = await a.holder("retention")
    assert holder is not None
    assert holder.holder == "n_b"
    assert holder.acquired_at == T0 + timedelta(seconds=35)


async def test_release_hands_over_at_once_and_only_the_holder_releases(db: Database) -> None:
    clock = FakeClock(T0)
    a, b = Leases(db, clock, "n_a"), Leases(db, clock, "n_b")
    assert await a.claim("fraud-mail", 60)
    assert await a.claim("retention", 60)
    assert not await b.release("fraud-mail")  # not b's
    assert not await b.claim("fraud-mail", 60)
    assert await a.release("fraud-mail")
    assert await b.claim("fraud-mail", 60)  # no wait for the expiry
    assert await a.release_all() == 1  # retention; fraud-mail is b's now
    assert [lease.name for lease in await b.current()] == ["fraud-mail"]


async def test_forty_concurrent_claimers_through_two_pools_get_one_holder(
    database_url: str,
) -> None:
    clock = FakeClock(T0)
    first, second = Database(database_url), Database(database_url)
    try:
        claimers = [Leases(first if i % 2 else second, clock, f"n_{i:02d}") for i in range(40)]
        results = await asyncio.gather(*(c.claim("push-handover", 20) for c in claimers))
        assert sum(results) == 1
        winner = claimers[results.index(True)].holder_id
        async with first.read() as conn:
            rows = (await conn.execute(select(leases_t))).all()
        assert [(r.name, r.node_id) for r in rows] == [("push-handover", winner)]
        # And again once it has expired: still exactly one.
        clock.advance(21)
        results = await asyncio.gather(*(c.claim("push-handover", 20) for c in claimers))
        assert sum(results) == 1
    finally:
        await first.dispose()
        await second.dispose()


# -- nodes --------------------------------------------------------------------------------------


async def test_two_nodes_a_silent_one_dies_and_loses_its_lease_a_stopped_one_releases(
    db: Database,
) -> None:
    clock = FakeClock(T0)
    a = NodeRegistry(db, clock, "n_a", "alpha", heartbeat=5, timeout=20)
    b = NodeRegistry(db, clock, "n_b", "", heartbeat=5, timeout=20)
    await a.start()
    await b.start()
    try:
        assert await a.leases.claim("directory-sync", 20)
        nodes = {n.id: n for n in await a.list()}
        assert nodes["n_a"].alive
        assert nodes["n_a"].leases == ("directory-sync",)
        assert nodes["n_a"].name == "alpha"
        assert nodes["n_b"].name == b.host
        async with db.read() as conn:
            assert await a.alive_ids(conn) == {"n_a", "n_b"}

        # a stops beating (killed): b goes on; a's lease still runs until T0 + 20.
        for _ in range(3):
            clock.advance(5)
            await b.beat()
            assert not await b.leases.claim("directory-sync", 20)
        clock.advance(6)
        await b.beat()
        nodes = {n.id: n for n in await b.list()}
        assert nodes["n_a"].state is NodeState.DEAD
        assert nodes["n_a"].leases == ()
        async with db.read() as conn:
            assert await b.alive_ids(conn) == {"n_b"}
        assert await b.leases.claim("directory-sync", 20)  # ...now it is b's

        # b stops cleanly: stopped, and its lease free at once for a third node.
        await b.close()
        c = Leases(db, clock, "n_c")
        assert await c.claim("directory-sync", 20)
        nodes = {n.id: n for n in await list_nodes(db, clock(), timedelta(seconds=20))}
        assert nodes["n_b"].state is NodeState.STOPPED
        assert [n.id for n in await list_nodes(db, clock(), timedelta(seconds=20))][-1] == "n_b"
    finally:
        await a.close()
        await b.close()
    async with db.read() as conn:
        stopped = (await conn.execute(select(nodes_t.c.id, nodes_t.c.stopped_at))).all()
    assert all(row.stopped_at is not None for row in stopped)


# -- LeasedDuty ---------------------------------------------------------------------------------


async def test_a_leased_duty_runs_on_one_node_and_moves_when_it_closes(db: Database) -> None:
    from backend.store.tables import now

    started: list[str] = []
    cancelled: list[str] = []
    running = {"n_a": asyncio.Event(), "n_b": asyncio.Event()}

    def duty_of(node: str) -> LeasedDuty:
        async def loop() -> None:
            started.append(node)
            running[node].set()
            try:
                await asyncio.Event().wait()  # a long-running duty
            except asyncio.CancelledError:
                cancelled.append(node)
                raise

        return LeasedDuty("retention", leases[node], loop, ttl=3, retry=0.05)

    leases = {node: CountedLeases(db, now, node) for node in running}
    a, b = duty_of("n_a"), duty_of("n_b")
    await a.start()
    async with asyncio.timeout(10):
        await running["n_a"].wait()
    await b.start()
    try:
        # a's renewals (every 1 s) keep b out: b tries again and again meanwhile.
        await leases["n_a"].until(lambda: leases["n_a"].renewals >= 2)
        await leases["n_b"].until(lambda: leases["n_b"].claims >= 3)
        assert started == ["n_a"]
        assert not b.holding
        assert a.runs == 1
        await a.close()  # cancels a's duty and releases: b within its retry
        assert cancelled == ["n_a"]
        async with asyncio.timeout(10):
            await running["n_b"].wait()
        assert b.holding
        assert started == ["n_a", "n_b"]
    finally:
        await a.close()
        await b.close()
    assert cancelled == ["n_a", "n_b"]
    assert await Leases(db, now, "x").holder("retention") is None


def parked_until_stopped(stopped: asyncio.Event) -> Callable[[], Awaitable[None]]:
    """A duty's loop that waits until it is cancelled, then sets ``stopped``."""

    async def loop() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()

    return loop


async def test_a_leased_duty_stops_when_its_lease_is_taken(db: Database) -> None:
    clock = FakeClock(T0)
    stopped = asyncio.Event()
    loop = parked_until_stopped(stopped)

    duty = LeasedDuty("retention", Leases(db, clock, "n_a"), loop, ttl=0.3, retry=0.05)
    await duty.start()
    try:
        async with asyncio.timeout(10):
            await duty.wait_held()
        # Its holder's clock jumps past the expiry and another holder takes the row.
        clock.advance(10)
        assert await Leases(db, clock, "n_b").claim("retention", 60)
        async with asyncio.timeout(5):
            await stopped.wait()
        assert duty.lost == 1
        assert not duty.holding
    finally:
        await duty.close()


async def test_a_failing_duty_releases_and_runs_again(db: Database) -> None:
    from backend.store.tables import now

    calls = 0
    second = asyncio.Event()

    async def flaky() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        second.set()

    leases = CountedLeases(db, now, "n_a")
    duty = LeasedDuty("fraud-mail", leases, flaky, ttl=0.6, retry=0.05)
    await duty.start()
    try:
        async with asyncio.timeout(10):
            await second.wait()  # released after the failure, claimed again
        # A pass that returned: the lease is held and renewed, the pass not repeated.
        renewed = leases.renewals
        await leases.until(lambda: leases.renewals >= renewed + 2)
        assert calls == 2
        assert duty.holding
    finally:
        await duty.close()


@pytest.mark.parametrize("holder", ["n_a", "n_b"])
async def test_the_sql_claim_follows_the_domain_rule(db: Database, holder: str) -> None:
    clock = FakeClock(T0)
    for offset in (-5, 0, 5):  # expired, expiring this instant, still running
        async with db.write() as conn:
            await conn.execute(leases_t.delete())
            await conn.execute(
                leases_t.insert().values(
                    name="x",
                    node_id="n_a",
                    acquired_at=T0 - timedelta(seconds=60),
                    expires_at=T0 + timedelta(seconds=offset),
                )
            )
        row = LeaseState("x", "n_a", T0 - timedelta(seconds=60), T0 + timedelta(seconds=offset))
        expected = claimed(row, "x", holder, T0, timedelta(seconds=20))
        got = await Leases(db, clock, holder).claim("x", 20)
        assert got is (expected is not None), offset
        now_held = await Leases(db, clock, holder).holder("x")
        if expected is not None:
            assert now_held == expected


class _CutOff:
    """Real leases whose renewals fail from a point on, as when the database goes away."""

    def __init__(self, leases: Leases) -> None:
        self.leases = leases
        self.cut = False

    async def claim(self, name: str, ttl: float) -> bool:
        if self.cut:
            raise ConnectionError("database unreachable")
        return await self.leases.claim(name, ttl)

    async def renew(self, name: str, ttl: float) -> bool:
        if self.cut:
            raise ConnectionError("database unreachable")
        return await self.leases.renew(name, ttl)

    async def release(self, name: str) -> bool:
        if self.cut:
            raise ConnectionError("database unreachable")
        return await self.leases.release(name)


async def test_a_duty_cut_off_from_the_database_stops_before_its_lease_runs_out(
    db: Database,
) -> None:
    from backend.store.tables import now

    stopped = asyncio.Event()
    loop = parked_until_stopped(stopped)

    leases = _CutOff(Leases(db, now, "n_a"))
    duty = LeasedDuty("retention", leases, loop, ttl=0.9, retry=0.05)
    await duty.start()
    try:
        async with asyncio.timeout(10):
            await duty.wait_held()
        leases.cut = True
        cut_at = asyncio.get_running_loop().time()
        async with asyncio.timeout(5):
            await stopped.wait()
        # Stopped while the row (expiring 0.9 s after the last renewal) still guards it.
        assert asyncio.get_running_loop().time() - cut_at < 0.9
        assert duty.lost == 1
    finally:
        await duty.close()


async def test_one_node_id_for_the_registry_the_bus_and_the_challenges(settings: object) -> None:
    from backend.config import Settings
    from backend.services import Services

    assert isinstance(settings, Settings)
    services = await Services.open(settings, push=False, notify=False, node=True)
    try:
        assert services.nodes is not None
        assert services.leases is not None
        # A push stamped with another id than the registry's would look like a dead node's.
        assert services.nodes.node_id == services.node_id == services.leases.holder_id
        assert services.challenges._node_id == services.node_id  # push_node of its pushes
    finally:
        await services.close()
