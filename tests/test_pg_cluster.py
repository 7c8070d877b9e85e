"""tests/support/pg_cluster.py itself: a primary streams to its replica, the replica takes
over when promoted, and nothing is left behind."""

from __future__ import annotations

import pytest

from tests.support.pg_cluster import running_pg_cluster

pytestmark = pytest.mark.postgres


def test_a_replica_streams_and_takes_over_after_the_primary_dies() -> None:
    with running_pg_cluster(synchronous="on") as cluster:
        replica = cluster.replica
        assert replica is not None
        cluster.create_database("demo")
        cluster.primary.sql("CREATE TABLE t (v int); INSERT INTO t VALUES (1)", "demo")
        # Synchronous commit: the replica has the row once the primary acknowledged it...
        cluster.primary.sql("INSERT INTO t VALUES (2)", "demo")
        assert replica.in_recovery()
        assert replica.sql("SELECT count(*) FROM t", "demo") in ("1", "2")  # applied lazily
        cluster.primary.kill()
        assert not cluster.primary.running
        replica.promote()
        # ...and after the primary's death and the promotion, it is there.
        assert replica.sql("SELECT count(*) FROM t", "demo") == "2"
        replica.sql("INSERT INTO t VALUES (3)", "demo")
        directory = cluster.directory
    assert not directory.exists()
    assert not cluster.primary.running
    assert not replica.running


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_a_primary_stops_in_each_mode(mode: str) -> None:
    with running_pg_cluster(replica=False) as cluster:
        cluster.primary.stop(mode)  # type: ignore[arg-type]
        assert not cluster.primary.running
        cluster.primary.start()
        assert cluster.primary.sql("SELECT 1") == "1"
