"""Several nodes, real processes (issue 18): an answer committed on one node wakes the RADIUS
request held on another.

Two ``openmfa run`` nodes on one fresh PostgreSQL database; node A's built-in bridge holds the
gateway's Access-Request, the phone answers through node B. Without a cross-node outcome bus
node A learns of the answer only when its long-poll slice ends (tens of seconds).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from radius_bridge.protocol import packet as codec
from tests.support.cluster import Gateway, NodeCluster
from tests.support.process import wait_for

pytestmark = pytest.mark.postgres


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NodeCluster]:
    with NodeCluster(tmp_path, nodes_wanted=2, radius_on=(0,)) as running:
        yield running


def test_an_answer_through_node_b_wakes_the_request_held_on_node_a(cluster: NodeCluster) -> None:
    node_a, node_b = cluster.nodes
    [phone] = cluster.phones(1)
    with Gateway(sockets=1) as gateway, httpx.Client(base_url=node_b.url, timeout=10) as via_b:
        request = gateway.request(phone.user)

        def sent_and_pending() -> bool:
            if gateway.reply(request) is not None:
                raise AssertionError(f"answered before the phone did: {gateway.reply(request)}")
            return bool(phone.pending(via_b))

        gateway.send(request, node_a.radius_port)
        # The built-in bridge loads its client list at start; the push must exist for B.
        wait_for(sent_and_pending, 15, "the push challenge to be visible through node B")
        [challenge_id] = phone.pending(via_b)

        answered = time.monotonic()
        assert phone.answer(via_b, challenge_id) == "approved"
        wait_for(
            lambda: gateway.reply(request) is not None,
            5,
            "node A to answer the held request after node B took the approval",
            every=0.005,
        )
        woke = time.monotonic() - answered
    assert gateway.reply(request) == codec.ACCESS_ACCEPT
    assert woke < 2.0, f"{woke:.3f} s from the answer on B to the Access-Accept from A"
    # Both nodes registered themselves, and are alive.
    assert {row["name"] for row in cluster.alive_nodes()} == {"node-a", "node-b"}
