"""Bridges that survive a backend node's death (issue 18, item 4), with real processes.

Two ``openmfa run`` nodes on one fresh PostgreSQL database, two standalone bridges
(``openmfa radius --backend A --backend B`` and the other way round), the APNs fake counting
pushes, and a gateway sending real Access-Requests -- and, failing over as a RADIUS server
group does, the *same* packet to the second bridge. Node A is killed with SIGKILL under a
held push: the push must still end in Access-Accept from both bridges once the phone
approves through node B, with one challenge and one push; traffic goes on through B while A
is down, and A is used again once its health check passes after a restart.
"""

from __future__ import annotations

import logging
import time

import httpx
import pytest

from radius_bridge.protocol import packet as codec
from tests.support.cluster import (
    ApnsService,
    Gateway,
    Node,
    NodeCluster,
    Phone,
    StandaloneBridge,
    query,
)
from tests.support.process import wait_for

pytestmark = pytest.mark.postgres
log = logging.getLogger(__name__)


def sample(url: str, name: str, labels: dict[str, str]) -> float | None:
    """The value of ``name{labels}`` at a Prometheus endpoint (labels matched exactly as a
    subset), None when absent."""
    try:
        text = httpx.get(url, timeout=5).text
    except httpx.TransportError:
        return None
    wanted = {f'{key}="{value}"' for key, value in labels.items()}
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        head, value = line.rsplit(" ", 1)
        if wanted <= set(head[len(name) + 1 : -1].split(",")):
            return float(value)
    return None


def backend_up(bridge: StandaloneBridge, node: Node) -> float | None:
    url = f"http://127.0.0.1:{bridge.metrics_port}/metrics"
    return sample(url, "openmfa_radius_backend_up", {"backend": node.url})


def starts_on(node: Node) -> float:
    """Authentications started through ``node`` since its process started."""
    url = f"http://127.0.0.1:{node.metrics_port}/metrics"
    labels = {"route": "/gateway/v1/authentications", "method": "POST", "status": "201"}
    return sample(url, "openmfa_http_requests_total", labels) or 0.0


def long_polls_on(node: Node) -> float:
    """Gateway long-polls waiting on ``node`` now."""
    url = f"http://127.0.0.1:{node.metrics_port}/metrics"
    text = httpx.get(url, timeout=5).text
    for line in text.splitlines():
        if line.startswith("openmfa_long_polls_held "):
            return float(line.split()[1])
    return 0.0


def challenges_of(cluster: NodeCluster, user: str) -> list[dict[str, object]]:
    return query(
        cluster.database_url,
        "SELECT c.id, c.idempotency_key, c.idempotency_scope FROM challenges c"
        " JOIN users u ON u.id = c.user_id WHERE u.name_key = $1 ORDER BY c.created_at",
        user,
    )


def approve_through(via: httpx.Client, phone: Phone) -> str:
    wait_for(lambda: bool(phone.pending(via)), 20, f"the push for {phone.user} on the phone")
    [challenge_id] = phone.pending(via)
    assert phone.answer(via, challenge_id) == "approved"
    return challenge_id


def test_a_node_killed_under_a_held_push_and_a_gateway_failing_over_to_another_bridge(
    cluster: NodeCluster, apns: ApnsService
) -> None:
    node_a, node_b = cluster.nodes
    held_phone, later_phone, back_phone = cluster.phones(3)
    one = cluster.bridge("one", [node_a, node_b])  # prefers A
    two = cluster.bridge("two", [node_b, node_a])  # prefers B
    with (
        Gateway(sockets=1) as gateway,
        Gateway(sockets=1) as failover,  # the gateway's retry to its second RADIUS server
        httpx.Client(base_url=node_b.url, timeout=10) as via_b,
    ):
        # -- a push held through bridge one, on node A (its preferred backend) -------------
        request = gateway.request(held_phone.user)
        gateway.send(request, one.udp)
        wait_for(lambda: bool(held_phone.pending(via_b)), 20, "the push to reach the phone")
        wait_for(lambda: one.held() == 1, 10, "bridge one to hold the request")
        assert starts_on(node_a) == 1
        [challenge] = challenges_of(cluster, held_phone.user)
        challenge_id = str(challenge["id"])
        assert challenge["idempotency_scope"] == "bridge"
        wait_for(lambda: apns.sent()[challenge_id] == 1, 20, "the push to be sent")

        # -- the same packet to bridge two: it joins the authentication, no second push ----
        failover.socks[0].sendto(request.data, ("127.0.0.1", two.udp))
        wait_for(lambda: two.held() == 1, 10, "bridge two to hold the copy")
        assert starts_on(node_b) == 1  # it did start, through B: idempotently
        assert len(challenges_of(cluster, held_phone.user)) == 1

        # -- node A dies; bridge one re-attaches its long-poll on node B ----------------------
        wait_for(lambda: long_polls_on(node_b) == 1, 10, "bridge two's long-poll on node B")
        node_a.kill9()
        killed = time.monotonic()
        wait_for(
            lambda: long_polls_on(node_b) == 2,
            # Generous for a loaded machine; re-attached later than the cut grace (5 s),
            # the failmode would have answered, which the reply checks below would catch.
            15,
            "bridge one's long-poll to be re-attached on node B",
            every=0.01,
            detail=lambda: (
                f"{long_polls_on(node_b)} long-polls on B; bridge one: {one.log[-2000:]}"
            ),
        )
        reattached = time.monotonic() - killed
        wait_for(
            lambda: backend_up(one, node_a) == 0,
            10,
            "bridge one to mark node A down",
            detail=lambda: one.log[-2000:],
        )
        assert gateway.reply(request) is None  # still held: no failmode answer
        assert held_phone.answer(via_b, challenge_id) == "approved"
        wait_for(
            lambda: gateway.reply(request) is not None and failover.reply(request) is not None,
            15,
            "both bridges to answer the held request",
            detail=lambda: one.log[-2000:],
        )
        assert gateway.reply(request) == codec.ACCESS_ACCEPT
        assert failover.reply(request) == codec.ACCESS_ACCEPT
        assert len(challenges_of(cluster, held_phone.user)) == 1
        assert apns.received()[challenge_id] == 1

        # -- with A down, everything through bridge one is served by B -----------------------
        later = gateway.request(later_phone.user)
        gateway.send(later, one.udp)
        approve_through(via_b, later_phone)
        wait_for(lambda: gateway.reply(later) is not None, 15, "the answer through node B")
        assert gateway.reply(later) == codec.ACCESS_ACCEPT

        # -- A restarted: its health check brings it back, and bridge one prefers it again ---
        node_a.start()
        wait_for(lambda: backend_up(one, node_a) == 1, 15, "bridge one to see node A up")
        back = gateway.request(back_phone.user)
        gateway.send(back, one.udp)
        # Through A, where the long-poll is: waking a waiter on another node is the outcome
        # bus's part (tests/test_cluster_bus.py), not the bridge's.
        with httpx.Client(base_url=node_a.url, timeout=10) as via_a:
            approve_through(via_a, back_phone)
        wait_for(lambda: gateway.reply(back) is not None, 15, "the answer after A's restart")
        assert gateway.reply(back) == codec.ACCESS_ACCEPT
        assert starts_on(node_a) == 1  # the restarted process started it

    log.info("kill -9 of node A -> held push re-attached on node B: %.0f ms", reattached * 1000)
    for bridge in (one, two):
        assert "Traceback" not in bridge.log
    assert "re-attaching" in one.log
