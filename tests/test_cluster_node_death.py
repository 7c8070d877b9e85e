"""Several nodes, real processes (issue 18): ``kill -9`` of a node while it holds pushes.

Two ``openmfa run`` nodes on one fresh PostgreSQL database, both sending pushes to the APNs
fake; one standalone bridge (``openmfa radius --backend A --backend B``) in front of them and a
gateway (UDP) in front of the bridge. A node is killed with SIGKILL while pushes it started
are held; the phones answer through the other node. Every held request must get its
Access-Accept, and no challenge may be pushed (answered 200 by the fake) twice.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from radius_bridge.protocol import packet as codec
from tests.support.cluster import ApnsService, Gateway, NodeCluster, Phone, query
from tests.support.process import wait_for

pytestmark = pytest.mark.postgres

# Sign-ins not yet pushed at any moment. A push start costs a node ~10 ms of CPU on
# PostgreSQL (measured: 24-29/s sequential on this shared 2-core machine); a burst of 1,000
# would overrun the bridge's 10-s start timeout and be answered by the failmode, which is
# not what this test is about.
WINDOW = 16


def node_id(cluster: NodeCluster, name: str) -> str:
    """The id the running node ``name`` registered (its latest row)."""
    rows = query(
        cluster.database_url,
        "SELECT id FROM nodes WHERE name = $1 AND stopped_at IS NULL ORDER BY started_at DESC",
        name,
    )
    assert rows, f"node {name} has no row in nodes"
    return str(rows[0]["id"])


def pushes_of(cluster: NodeCluster, node: str) -> int:
    """Push challenges whose delivery ``node`` owns."""
    rows = query(
        cluster.database_url, "SELECT count(*) AS n FROM challenges WHERE push_node = $1", node
    )
    return int(rows[0]["n"])


def answer_all(url: str, phones: Sequence[Phone], challenge_of: dict[str, str]) -> None:
    """Every phone approves its challenge through the node at ``url`` (4 at a time)."""

    def answer(chunk: Sequence[Phone]) -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            for phone in chunk:
                phone.answer(http, challenge_of[phone.push_token])

    chunks = [phones[i::4] for i in range(4)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        for future in [pool.submit(answer, chunk) for chunk in chunks]:
            future.result(timeout=120)


def test_kill_9_of_a_node_holding_1000_pushes(cluster: NodeCluster, apns: ApnsService) -> None:
    held = int(os.environ.get("CLUSTER_HELD", "1000"))
    node_a, node_b = cluster.nodes
    phones = cluster.phones(held)
    bridge = cluster.bridge("one", backends=[node_a, node_b])
    with Gateway(sockets=4) as gateway:
        requests = [gateway.request(phone.user) for phone in phones]
        began = time.monotonic()
        gateway.send_windowed(
            requests, bridge.udp, lambda: len(apns.received()), WINDOW, timeout=240
        )
        wait_for(
            lambda: len(apns.sent()) >= held,
            90,
            f"{held} pushes to reach the APNs fake",
            every=0.2,
            detail=lambda: f"{len(apns.sent())} sent, {gateway.codes()} answered",
        )
        wait_for(lambda: bridge.held() >= held, 30, f"the bridge to hold {held} requests")
        started = time.monotonic() - began
        assert gateway.collect() == 0, gateway.codes()

        # Delivery is recorded (push_sent_at) before the node dies: nobody may send again.
        wait_for(
            lambda: (
                not query(
                    cluster.database_url,
                    "SELECT 1 FROM challenges"
                    " WHERE method = 'push' AND push_sent_at IS NULL LIMIT 1",
                )
            ),
            15,
            "every push's delivery to be recorded",
        )
        owner_a = pushes_of(cluster, node_id(cluster, "node-a"))
        assert owner_a > 0, "the bridge started no push through node A"
        node_a.kill9()
        killed = time.monotonic()

        answer_all(node_b.url, phones, apns.challenge_of())
        wait_for(
            lambda: gateway.collect() >= held,
            60,
            "every held request to be answered",
            every=0.1,
            detail=lambda: f"{gateway.codes()}; bridge log: {bridge.log[-2000:]}",
        )
        finished = time.monotonic() - killed

    assert gateway.codes() == {codec.ACCESS_ACCEPT: held}
    sent = apns.sent()
    assert len(sent) == held
    assert [cid for cid, count in sent.items() if count > 1] == []
    print(  # noqa: T201 - the figure the issue asks for, shown with -s
        f"{held} pushes started and held in {started:.1f} s ({owner_a} through node A); "
        f"after kill -9 of A all answered through B in {finished:.1f} s"
    )


def test_a_node_killed_before_its_pushes_went_out_hands_them_over(
    cluster: NodeCluster, apns: ApnsService
) -> None:
    """The APNs fake holds its answers, so node A's pushes are in flight, unconfirmed, when
    A dies; node B's sweeper must take them over (after A's heartbeat lapses) and send each
    once."""
    count = 20
    node_a, node_b = cluster.nodes
    phones = cluster.phones(count, prefix="h")
    # The bridge prefers its first backend while it is healthy: every start goes to A.
    bridge = cluster.bridge("one", backends=[node_a, node_b])
    apns.hold()
    with Gateway(sockets=1) as gateway:
        requests = [gateway.request(phone.user) for phone in phones]
        gateway.send_all(requests, bridge.udp)
        wait_for(
            lambda: len(apns.received()) >= count,
            30,
            "node A's pushes to reach the fake",
            detail=lambda: f"{len(apns.received())} received",
        )
        assert apns.sent() == {}
        assert pushes_of(cluster, node_id(cluster, "node-a")) == count
        node_a.kill9()
        killed = time.monotonic()
        # Released only once the fake has seen A's connections close: an answer written to
        # a connection it still took for open would count as sent though nobody got it.
        a_connections = apns.connections_of(apns.received())
        wait_for(
            lambda: not (apns.open_connections() & a_connections),
            10,
            "the APNs fake to see node A's connections close",
        )
        apns.release()
        wait_for(
            lambda: len(apns.sent()) >= count,
            30,
            "node B to hand over and send node A's pushes",
            every=0.1,
            detail=lambda: f"{len(apns.sent())} sent; {node_b.log[-2000:]}",
        )
        handed_over = time.monotonic() - killed
        # The bridge has re-attached the held requests on B; the phones answer there.
        answer_all(node_b.url, phones, apns.challenge_of())
        wait_for(
            lambda: gateway.collect() >= count,
            30,
            "every held request to be answered",
            detail=lambda: f"{gateway.codes()}; bridge log: {bridge.log[-2000:]}",
        )

    assert gateway.codes() == {codec.ACCESS_ACCEPT: count}
    sent = apns.sent()
    assert len(sent) == count
    assert [cid for cid, n in sent.items() if n > 1] == []
    print(f"node A's {count} unsent pushes were sent by B {handed_over:.1f} s after kill -9")  # noqa: T201


def test_a_node_drained_with_sigterm_hands_its_held_pushes_over(
    cluster: NodeCluster, apns: ApnsService
) -> None:
    """Maintenance as docs/operations.md describes it: SIGTERM to the node holding pushes.
    It exits cleanly and at once; the bridge re-attaches the held requests on the other
    node, nothing is pushed again, and the approvals given there reach the gateway."""
    count = 20
    node_a, node_b = cluster.nodes
    phones = cluster.phones(count, prefix="m")
    bridge = cluster.bridge("one", backends=[node_a, node_b])
    with Gateway(sockets=1) as gateway:
        requests = [gateway.request(phone.user) for phone in phones]
        gateway.send_all(requests, bridge.udp)
        wait_for(lambda: len(apns.sent()) >= count, 30, "node A's pushes")
        wait_for(lambda: bridge.held() >= count, 15, "every request to be held")
        assert pushes_of(cluster, node_id(cluster, "node-a")) == count
        began = time.monotonic()
        assert node_a.terminate() == 0
        assert time.monotonic() - began < 10, "SIGTERM took longer than the shutdown grace"
        assert "Traceback" not in node_a.log
        answer_all(node_b.url, phones, apns.challenge_of())
        wait_for(
            lambda: gateway.collect() >= count,
            30,
            "every held request to be answered through node B",
            detail=lambda: f"{gateway.codes()}; bridge log: {bridge.log[-2000:]}",
        )
    assert gateway.codes() == {codec.ACCESS_ACCEPT: count}
    assert sorted(apns.received().values()) == [1] * count
    # Stopped, not dead: its row says so and it holds no duty any more.
    [row] = query(cluster.database_url, "SELECT stopped_at FROM nodes WHERE name = 'node-a'")
    assert row["stopped_at"] is not None
    assert not query(
        cluster.database_url,
        "SELECT l.name FROM leases l JOIN nodes n ON n.id = l.node_id WHERE n.name = 'node-a'",
    )
