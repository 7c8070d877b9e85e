"""The per-address web sign-in limit in the database (backend/services/address_limits.py), on
SQLite and PostgreSQL: claimed before the check, given back when right, one window per
address, shared by every container (node) on the database, and atomic under concurrency."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from backend.services import Services, address_limits
from backend.services.context import Actor
from backend.services.retention import Pruner, policy_from
from tests.support.clock import FakeClock

pytestmark = pytest.mark.anyio
WINDOW = timedelta(minutes=15)
LIMIT = 3
HERE = "192.0.2.7"


async def test_an_address_is_refused_after_its_limit_until_the_window_ends(
    services: Services, clock: FakeClock
) -> None:
    db, start = services.db, clock()
    for n in range(LIMIT):
        clock.advance(10)
        assert await address_limits.claim(db, HERE, clock(), LIMIT, WINDOW) is None, n
    clock.advance(10)
    until = start + timedelta(seconds=10) + WINDOW  # from the window's first failure
    assert await address_limits.claim(db, HERE, clock(), LIMIT, WINDOW) == until
    assert await address_limits.blocked_until(db, HERE, clock(), LIMIT, WINDOW) == until
    assert await address_limits.blocked_until(db, "192.0.2.8", clock(), LIMIT, WINDOW) is None
    clock.now = until
    assert await address_limits.blocked_until(db, HERE, clock(), LIMIT, WINDOW) is None
    assert await address_limits.claim(db, HERE, clock(), LIMIT, WINDOW) is None  # a new window


async def test_a_refused_claim_is_not_counted_and_a_released_one_frees_its_slot(
    services: Services, clock: FakeClock
) -> None:
    db = services.db
    claims = []
    for _ in range(LIMIT):
        clock.advance(1)
        assert await address_limits.claim(db, HERE, clock(), LIMIT, WINDOW) is None
        claims.append(clock())
    for _ in range(5):  # waiting: nothing more is counted
        assert await address_limits.claim(db, HERE, clock(), LIMIT, WINDOW) is not None
    await address_limits.release(db, HERE, claims[-1])  # the last slot proved right
    assert await address_limits.blocked_until(db, HERE, clock(), LIMIT, WINDOW) is None
    assert await address_limits.claim(db, HERE, clock(), LIMIT, WINDOW) is None
    assert await address_limits.claim(db, HERE, clock(), LIMIT, WINDOW) is not None


async def test_a_release_after_the_window_ended_does_not_touch_the_new_window(
    services: Services, clock: FakeClock
) -> None:
    db = services.db
    old = clock()
    assert await address_limits.claim(db, HERE, old, LIMIT, WINDOW) is None
    clock.advance(WINDOW.total_seconds() + 1)
    for _ in range(LIMIT):
        assert await address_limits.claim(db, HERE, clock(), LIMIT, WINDOW) is None
    await address_limits.release(db, HERE, old)  # counted in a window that is over
    assert await address_limits.blocked_until(db, HERE, clock(), LIMIT, WINDOW) is not None


async def test_unclaimed_failures_count_toward_the_same_limit(
    services: Services, clock: FakeClock
) -> None:
    db = services.db
    for _ in range(LIMIT - 1):
        await address_limits.count_failure(db, HERE, clock(), WINDOW)
    assert await address_limits.claim(db, HERE, clock(), LIMIT, WINDOW) is None
    assert await address_limits.blocked_until(db, HERE, clock(), LIMIT, WINDOW) is not None


async def test_two_nodes_share_one_count(services: Services, clock: FakeClock) -> None:
    other = await Services.open(services.settings, clock=clock, push=False, notify=False)
    try:
        for node in (services, other, services):
            assert await address_limits.claim(node.db, HERE, clock(), LIMIT, WINDOW) is None
        for node in (other, services):
            assert await address_limits.claim(node.db, HERE, clock(), LIMIT, WINDOW) is not None
    finally:
        await other.close()


async def test_40_concurrent_claims_through_two_nodes_take_exactly_the_limit(
    services: Services, clock: FakeClock
) -> None:
    other = await Services.open(services.settings, clock=clock, push=False, notify=False)
    try:
        nodes = [services, other] * 20
        results = await asyncio.gather(
            *(address_limits.claim(n.db, HERE, clock(), LIMIT, WINDOW) for n in nodes)
        )
    finally:
        await other.close()
    assert sum(r is None for r in results) == LIMIT
    assert {r for r in results if r is not None} == {clock() + WINDOW}


async def test_rows_of_ended_windows_are_pruned(services: Services, clock: FakeClock) -> None:
    db = services.db
    await address_limits.count_failure(db, "198.51.100.1", clock(), WINDOW)
    clock.advance(services.settings.web_sign_in_address_window_seconds + 1)
    await address_limits.count_failure(db, HERE, clock(), WINDOW)
    pruner = Pruner(db, services.audit, clock, policy_from(services.settings))
    counts = await pruner.run(Actor("test"))
    assert counts["address_limits"] == 1
    assert await address_limits.claim(db, HERE, clock(), 2, WINDOW) is None
    assert await address_limits.claim(db, HERE, clock(), 2, WINDOW) is not None  # kept


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_each_call_is_one_statement_on_postgresql(
    services: Services, clock: FakeClock
) -> None:
    other = await Services.open(services.settings, clock=clock, push=False, notify=False)
    jobs = other.db.postgres_jobs
    assert jobs is not None
    log: list[str] = []
    jobs.query_log = log  # before the pool opens: every statement it sends is logged
    db, now = other.db, clock()
    try:
        trips = []
        for call in (
            address_limits.claim(db, HERE, now, 1, WINDOW),
            address_limits.claim(db, HERE, now, 1, WINDOW),  # refused, with its wait
            address_limits.release(db, HERE, now),
            address_limits.count_failure(db, HERE, now, WINDOW),
            address_limits.blocked_until(db, HERE, now, 1, WINDOW),
        ):
            log.clear()
            await call
            trips.append(len(log))
    finally:
        await other.close()
    assert trips == [1, 1, 1, 1, 1], log
