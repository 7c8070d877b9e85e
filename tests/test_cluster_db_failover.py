"""Several nodes, real processes (issue 18): the database primary stops, the replica is
promoted, and service resumes with nothing acknowledged lost.

A PostgreSQL primary with a synchronous streaming replica (tests/support/pg_cluster.py, from
the installed server binaries); two ``openmfa run`` nodes on the libpq multi-host URL
(``target_session_attrs=read-write``), one standalone bridge in front of both, the APNs fake.
Pushes are held through the bridge; half of them are approved before the primary stops (fast
shutdown) and the replica is promoted, half after. Every held request gets its Access-Accept,
and every approval acknowledged before the failover is on the promoted server.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from radius_bridge.protocol import packet as codec
from tests.support.cluster import ApnsService, Gateway, NodeCluster, Phone, query
from tests.support.pg_cluster import running_pg_cluster
from tests.support.process import wait_for

pytestmark = pytest.mark.postgres

COUNT = 10
#: Seconds from the promotion until both nodes serve again (docs/operations.md states it).
RESUME_LIMIT = 30.0


def approve(url: str, phone: Phone, challenge_id: str, within: float) -> None:
    """Approve through the node at ``url``, retrying while the database is unavailable (the
    app's retry after a 503)."""
    last: list[str] = []

    def approved() -> bool:
        with httpx.Client(base_url=url, timeout=10) as http:
            try:
                return phone.answer(http, challenge_id) == "approved"
            except (AssertionError, httpx.TransportError) as exc:
                last[:] = [str(exc)]
                return False

    wait_for(
        approved, within, f"the approval of {challenge_id}", every=0.2, detail=lambda: str(last)
    )


def test_primary_stopped_and_replica_promoted(tmp_path: Path, apns: ApnsService) -> None:
    with running_pg_cluster(synchronous="on") as pg:
        pg.create_database("openmfa")
        url = pg.multi_host_url("openmfa")
        with NodeCluster(
            tmp_path / "cluster", nodes_wanted=2, env=apns.env, database_url=url
        ) as cluster:
            node_a, node_b = cluster.nodes
            phones = cluster.phones(COUNT)
            bridge = cluster.bridge("one", backends=[node_a, node_b])
            with Gateway(sockets=1) as gateway:
                requests = [gateway.request(phone.user) for phone in phones]
                gateway.send_all(requests, bridge.udp)
                wait_for(lambda: len(apns.sent()) >= COUNT, 30, "the pushes")
                wait_for(lambda: bridge.held() >= COUNT, 15, "every request to be held")
                challenge_of = apns.challenge_of()
                before, after = phones[: COUNT // 2], phones[COUNT // 2 :]
                for phone in before:  # acknowledged (200) before the failover
                    approve(node_b.url, phone, challenge_of[phone.push_token], 10)
                wait_for(lambda: gateway.collect() >= len(before), 10, "the first approvals")

                pg.primary.stop("fast")
                assert pg.replica is not None
                pg.replica.promote()
                promoted = time.monotonic()
                for phone in after:
                    approve(node_b.url, phone, challenge_of[phone.push_token], RESUME_LIMIT)
                resumed = time.monotonic() - promoted
                wait_for(
                    lambda: gateway.collect() >= COUNT,
                    RESUME_LIMIT,
                    "every held request to be answered after the failover",
                    detail=lambda: f"{gateway.codes()}; {bridge.log[-3000:]}",
                )
                answered = time.monotonic() - promoted
                wait_for(
                    lambda: node_a.ready() and node_b.ready(), RESUME_LIMIT, "both nodes ready"
                )

            assert gateway.codes() == {codec.ACCESS_ACCEPT: COUNT}
            ids = [challenge_of[phone.push_token] for phone in phones]
            rows = query(
                pg.url("openmfa", pg.replica),
                "SELECT id, state FROM challenges WHERE id = ANY($1::text[])",
                ids,
            )
            assert {row["id"]: row["state"] for row in rows} == dict.fromkeys(ids, "approved")
    print(  # noqa: T201 - the figure docs/operations.md quotes, shown with -s
        f"promotion -> first approval served {resumed:.1f} s (retrying on 503), "
        f"-> every held request answered {answered:.1f} s"
    )
