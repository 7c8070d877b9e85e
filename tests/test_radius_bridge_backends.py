"""A bridge with several backends (issue 18, item 4), in this process: the real bridge on its
own loop, a live backend over real HTTP, and backend URLs where nothing listens (a node that
is down). The scenarios with several real ``openmfa run`` nodes on PostgreSQL, killed under
held pushes, are in tests/test_radius_bridge_nodes.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from pyrad import packet as pyrad_packet

from tests.support.bridge import RadiusLab
from tests.support.process import free_port, wait_for

SECRET = "backends-test-secret"


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=4) as executor:
        yield executor


def push(lab: RadiusLab, pool: ThreadPoolExecutor, user: str, source: str) -> Any:
    """One Access-Request for ``user``, approved on the phone: the reply."""
    device = lab.user(user)
    client = lab.pyrad(source, SECRET, timeout=30)
    request = client.CreateAuthPacket(code=pyrad_packet.AccessRequest, User_Name=user)
    reply = pool.submit(client.SendPacket, request)
    wait_for(lambda: len(device.pending()) == 1, 15, f"the push to reach {user}")
    device.answer(str(device.pending()[0]["id"]), "approve")
    return reply.result(30)


def test_with_the_first_backend_down_at_start_the_second_serves_everything(
    tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # a node that is down: connections refused
    with RadiusLab(tmp_path, backends=lambda live: (dead, live)) as lab:
        lab.client("gw", ["127.0.0.2"], SECRET, mode="push")  # the list came from the second
        for user in ("alice", "bob", "carol"):
            assert push(lab, pool, user, "127.0.0.2").code == pyrad_packet.AccessAccept
        metric = lab.bridge.metric
        assert metric("openmfa_radius_backend_up", {"backend": dead}) == 0
        assert metric("openmfa_radius_backend_up", {"backend": lab.api.url}) == 1
        # Once marked down the dead node is skipped, not tried first by every call: at
        # most the first call (before any mark) moved on from it.
        assert metric("openmfa_radius_backend_failovers_total", {"backend": dead}) <= 1
        assert metric("openmfa_radius_backend_unavailable_total", {"effect": "WaitOutcome"}) == 0
        lab.close_pyrad_clients()


def test_with_every_backend_down_the_failmode_answers(
    tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    """Both URLs refuse connections after the client list is loaded: the start fails on
    both, then the client's failmode (secure: Reject) answers; no hang, no traceback."""
    dead = f"http://127.0.0.1:{free_port()}"
    with RadiusLab(tmp_path, backends=lambda live: (live, dead)) as lab:
        lab.client("gw", ["127.0.0.3"], SECRET, mode="push", failmode="secure")
        lab.user("dave")
        lab.api.server.__exit__(None, None, None)  # the only live node stops
        client = lab.pyrad("127.0.0.3", SECRET, timeout=30)
        request = client.CreateAuthPacket(code=pyrad_packet.AccessRequest, User_Name="dave")
        reply = pool.submit(client.SendPacket, request).result(40)
        assert reply.code == pyrad_packet.AccessReject
        wait_for(
            lambda: lab.bridge.metric("openmfa_radius_backend_up", {"backend": lab.api.url}) == 0,
            10,
            "the stopped backend to be marked down",
        )
        lab.close_pyrad_clients()
