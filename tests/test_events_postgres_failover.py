"""The outcome bus follows a database failover: its LISTEN moves to the promoted server.

A failover tool may fence the old primary (read-only) rather than stop it. Sessions already
open on it stay open, so without a check the bus would go on listening there while every node
writes, and notifies, on the promoted server: answers through other nodes would no longer wake
the waiters of this one."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest

from backend.events import Outcome
from backend.events_postgres import PostgresOutcomeBus
from backend.store import migrations
from backend.store.urls import asyncpg_dsn
from tests.support.pg_cluster import running_pg_cluster
from tests.support.process import until

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]
BOUND = 20.0


async def test_the_bus_leaves_a_fenced_primary_for_the_promoted_replica() -> None:
    with running_pg_cluster() as cluster:
        cluster.create_database("bus")
        # Alembic runs its own event loop: not on this one.
        with ThreadPoolExecutor(max_workers=1) as pool:
            pool.submit(migrations.upgrade, cluster.url("bus")).result()
        replica = cluster.replica
        assert replica is not None
        node_a = await PostgresOutcomeBus.open(
            asyncpg_dsn(cluster.multi_host_url("bus")), "n_a", ping_seconds=0.1
        )
        try:
            cluster.fence_primary()
            replica.promote()
            await until(
                lambda: node_a.counts["reconnects"] >= 1 and node_a.connected,
                "node A's LISTEN to move to the promoted server",
                BOUND,
            )
            node_b = await PostgresOutcomeBus.open(asyncpg_dsn(cluster.url("bus", replica)), "n_b")
            try:
                waiting = asyncio.create_task(node_a.wait("ch_failover", BOUND))
                await until(lambda: "ch_failover" in node_a.held(), "node A to wait", BOUND)
                await node_b.publish(Outcome("ch_failover", "approved"))
                outcome = await waiting
            finally:
                await node_b.close()
        finally:
            await node_a.close()
    assert outcome is not None
    assert outcome.state == "approved"
