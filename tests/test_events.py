"""The in-process outcome bus: wake-ups, no lost wake-up, timeouts, close, no leaks."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest

from backend.events import InProcessOutcomeBus, Outcome, OutcomeBus

pytestmark = pytest.mark.anyio

BOUND = 5.0  # generous upper bound for things that should happen "at once"


async def parked(bus: InProcessOutcomeBus, count: int) -> None:
    """Yield to the loop until ``count`` waiters are parked (bounded, no sleeping)."""
    for _ in range(1000):
        if bus.waiting >= count:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"only {bus.waiting} of {count} waiters parked")


def test_satisfies_the_protocol() -> None:
    bus: OutcomeBus = InProcessOutcomeBus()
    assert bus is not None


async def test_waiter_wakes_on_publish() -> None:
    bus = InProcessOutcomeBus()
    task = asyncio.create_task(bus.wait("ch_1", within=30))
    await parked(bus, 1)
    assert not task.done()

    started = time.monotonic()
    await bus.publish(Outcome("ch_1", "approved"))
    result = await asyncio.wait_for(task, BOUND)

    assert result == Outcome("ch_1", "approved")
    assert time.monotonic() - started < 1.0  # woke at once, not at the 30 s timeout
    assert bus.waiting == 0


async def test_every_waiter_on_a_challenge_wakes_and_others_do_not() -> None:
    bus = InProcessOutcomeBus()
    mine = [asyncio.create_task(bus.wait("ch_1", within=30)) for _ in range(5)]
    other = asyncio.create_task(bus.wait("ch_2", within=30))
    await parked(bus, 6)

    await bus.publish(Outcome("ch_1", "denied"))
    results = await asyncio.wait_for(asyncio.gather(*mine), BOUND)

    assert results == [Outcome("ch_1", "denied")] * 5
    assert not other.done()
    assert bus.waiting == 1
    await bus.publish(Outcome("ch_2", "fraud"))
    assert await asyncio.wait_for(other, BOUND) == Outcome("ch_2", "fraud")
    assert bus.waiting == 0


async def test_publish_before_wait_returns_at_once() -> None:
    """No lost wake-up: the answer arrived between the caller's read and its wait."""
    bus = InProcessOutcomeBus()
    answered_at = datetime(2026, 1, 1, tzinfo=UTC)
    await bus.publish(Outcome("ch_1", "approved", answered_at))

    started = time.monotonic()
    assert await bus.wait("ch_1", within=30) == Outcome("ch_1", "approved", answered_at)
    assert await bus.wait("ch_1", within=0) == Outcome("ch_1", "approved", answered_at)
    assert time.monotonic() - started < 1.0
    assert bus.waiting == 0


async def test_timeout_returns_none_and_leaves_nothing_behind() -> None:
    bus = InProcessOutcomeBus()
    started = time.monotonic()
    assert await bus.wait("ch_1", within=0.05) is None
    elapsed = time.monotonic() - started
    assert 0.04 <= elapsed < BOUND
    assert bus.waiting == 0
    assert bus._waiters == {}


async def test_zero_or_negative_wait_does_not_block() -> None:
    bus = InProcessOutcomeBus()
    assert await asyncio.wait_for(bus.wait("ch_1", within=0), BOUND) is None
    assert await asyncio.wait_for(bus.wait("ch_1", within=-1), BOUND) is None
    assert bus.waiting == 0


async def test_close_wakes_waiters_with_none() -> None:
    bus = InProcessOutcomeBus()
    tasks = [asyncio.create_task(bus.wait(f"ch_{i % 2}", within=30)) for i in range(4)]
    await parked(bus, 4)

    await bus.close()
    results = await asyncio.wait_for(asyncio.gather(*tasks), BOUND)

    assert results == [None] * 4
    assert bus.waiting == 0
    assert bus._waiters == {}


async def test_after_close_waits_return_at_once() -> None:
    bus = InProcessOutcomeBus()
    await bus.close()
    assert await asyncio.wait_for(bus.wait("ch_1", within=30), BOUND) is None
    assert bus.waiting == 0


async def test_a_cancelled_waiter_is_removed() -> None:
    bus = InProcessOutcomeBus()
    task = asyncio.create_task(bus.wait("ch_1", within=30))
    await parked(bus, 1)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert bus.waiting == 0
    assert bus._waiters == {}
    await bus.publish(Outcome("ch_1", "approved"))  # nobody left to wake; must not fail


async def test_many_timeouts_leak_nothing() -> None:
    bus = InProcessOutcomeBus()
    results = await asyncio.gather(*(bus.wait(f"ch_{i}", within=0.01) for i in range(200)))
    assert results == [None] * 200
    assert bus.waiting == 0
    assert bus._waiters == {}


async def test_memory_of_outcomes_is_bounded_by_count() -> None:
    bus = InProcessOutcomeBus(remember=3)
    for i in range(5):
        await bus.publish(Outcome(f"ch_{i}", "approved"))
    assert len(bus._recent) == 3
    assert await bus.wait("ch_0", within=0) is None  # forgotten (oldest first)
    assert await bus.wait("ch_4", within=0) == Outcome("ch_4", "approved")


async def test_memory_of_outcomes_is_bounded_in_time() -> None:
    bus = InProcessOutcomeBus(remember_seconds=0.0)
    await bus.publish(Outcome("ch_1", "approved"))
    # Already older than zero seconds: forgotten, so a waiter waits (and times out).
    assert await bus.wait("ch_1", within=0.01) is None
    assert "ch_1" not in bus._recent


async def test_republish_moves_an_outcome_to_the_newest_end() -> None:
    bus = InProcessOutcomeBus(remember=2)
    await bus.publish(Outcome("ch_1", "approved"))
    await bus.publish(Outcome("ch_2", "approved"))
    await bus.publish(Outcome("ch_1", "expired"))  # ch_1 is now the newest
    await bus.publish(Outcome("ch_3", "denied"))  # evicts ch_2, not ch_1
    assert await bus.wait("ch_1", within=0) == Outcome("ch_1", "expired")
    assert await bus.wait("ch_2", within=0) is None


async def test_waiter_racing_a_publish_never_misses_it() -> None:
    """Many waiters subscribe while the outcome is published; every one gets it."""
    bus = InProcessOutcomeBus()
    go = asyncio.Event()

    async def waiter() -> Outcome | None:
        await go.wait()
        return await bus.wait("ch_1", within=BOUND)

    async def publisher() -> Outcome | None:
        await go.wait()
        await bus.publish(Outcome("ch_1", "approved"))
        return None

    tasks = [asyncio.create_task(waiter()) for _ in range(50)]
    tasks.insert(25, asyncio.create_task(publisher()))
    go.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks), BOUND * 2)
    assert [r for r in results if r is not None] == [Outcome("ch_1", "approved")] * 50
    assert bus.waiting == 0
