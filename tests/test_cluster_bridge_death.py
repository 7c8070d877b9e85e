"""Several nodes, real processes (issue 18): a bridge dies under held pushes, and the gateway
retries the same packets at its second RADIUS server (the other bridge).

Two ``openmfa run`` nodes on one fresh PostgreSQL database; two standalone bridges, each
relaying to both nodes (``--backend A --backend B``), as the two RADIUS servers of a gateway's
server group. The first bridge is killed with SIGKILL while it holds pushes; the gateway sends
the very same Access-Requests to the second bridge. The start of an authentication is
idempotent across bridges (the key comes from the sign-in: client, user, Calling-Station-Id,
Request Authenticator), so the phones get no second push, and their approvals reach the
second bridge.
"""

from __future__ import annotations

import httpx
import pytest

from radius_bridge.protocol import packet as codec
from tests.support.cluster import ApnsService, Gateway, NodeCluster, query
from tests.support.process import wait_for

pytestmark = pytest.mark.postgres

COUNT = 20


def test_the_gateway_retry_at_the_other_bridge_sends_no_second_push(
    cluster: NodeCluster, apns: ApnsService
) -> None:
    node_a, node_b = cluster.nodes
    phones = cluster.phones(COUNT)
    first = cluster.bridge("first", backends=[node_a, node_b])
    # The second bridge prefers the other node: the retried start lands on B, not A.
    second = cluster.bridge("second", backends=[node_b, node_a])
    with Gateway(sockets=1) as gateway:
        requests = [gateway.request(phone.user) for phone in phones]
        gateway.send_all(requests, first.udp)
        wait_for(lambda: len(apns.sent()) >= COUNT, 30, "the first bridge's pushes")
        wait_for(lambda: first.held() >= COUNT, 10, "the first bridge to hold every request")
        first.kill9()
        assert gateway.collect() == 0

        gateway.send_all(requests, second.udp)  # the same bytes: the gateway's retry
        wait_for(
            lambda: second.held() >= COUNT,
            15,
            "the second bridge to hold the retried requests",
            detail=lambda: f"{gateway.codes()}; {second.log[-2000:]}",
        )
        challenge_of = apns.challenge_of()
        with httpx.Client(base_url=node_a.url, timeout=30) as via_a:
            for phone in phones:
                phone.answer(via_a, challenge_of[phone.push_token])
        wait_for(
            lambda: gateway.collect() >= COUNT,
            15,
            "every retried request to be answered",
            detail=lambda: f"{gateway.codes()}; {second.log[-2000:]}",
        )

    assert gateway.codes() == {codec.ACCESS_ACCEPT: COUNT}
    received = apns.received()
    assert len(received) == COUNT, "a retry started a second authentication"
    assert [cid for cid, n in received.items() if n > 1] == []
    [row] = query(cluster.database_url, "SELECT count(*) AS n FROM challenges")
    assert row["n"] == COUNT
