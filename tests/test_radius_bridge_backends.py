"""A bridge with several backends (issue 18, item 4), in this process: the real bridge on its
own loop, a live backend over real HTTP, and backend URLs where nothing listens (a node that
is down). The scenarios with several real ``openmfa run`` nodes on PostgreSQL, killed under
held pushes, are in tests/test_radius_bridge_nodes.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from pyrad import packet as pyrad_packet

from radius_bridge.backend_client import BackendClient
from radius_bridge.model import Outcome, Result, WaitOutcome
from tests.support.api import ADMIN, ApiHarness
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


# -- a node that goes silent under a held long-poll ---------------------------------------------


class SilentNode:
    """A backend node on real TCP that answers ``/readyz`` while ``healthy`` and otherwise
    nothing at all: it takes every request and never answers, as a node whose host froze or
    whose network path died (no reset, no close) does."""

    def __init__(self) -> None:
        self.healthy = True
        self.held = 0  # gateway requests taken (and never answered)
        self.polled = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if head.startswith(b"GET /readyz ") and self.healthy:
                    body = b'{"status":"ok"}'
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                        b"content-length: %d\r\n\r\n%s" % (len(body), body)
                    )
                    continue
                if not head.startswith(b"GET /readyz "):
                    self.held += 1
                    self.polled.set()
                await reader.read()  # silence until the caller gives up

    async def close(self) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_long_poll_on_a_node_gone_silent_moves_to_another_node(api: ApiHarness) -> None:
    """No reset, no close: only the health check can tell. Once it marks the silent node
    down, the long-poll held there is cut and re-attached on the other node by its id, and
    the approval reaches it -- not at the end of the long-poll slice (here 25 s)."""
    api.add_user("alice")
    phone = api.device("alice")
    token = api.run(api.services.tokens.create(ADMIN, "bridge", scope="bridge"))
    started = api.client(headers={"Authorization": f"Bearer {token}"}).post(
        "/gateway/v1/authentications", json={"user": "alice", "method": "push"}
    )
    challenge_id = started.json()["id"]

    async def scenario() -> tuple[Result, float, int]:
        silent = SilentNode()
        marked_down = asyncio.Event()
        client = BackendClient(
            [await silent.start(), api.url],
            token,
            long_poll_seconds=25,
            cut_grace=5,
            check_seconds=0.2,
            check_timeout=0.5,
            on_health=lambda url, up: None if up else marked_down.set(),
        )
        try:
            client.start()
            loop = asyncio.get_running_loop()
            wait = loop.create_task(client.perform(WaitOutcome(challenge_id, 40), loop.time() + 60))
            await asyncio.wait_for(silent.polled.wait(), 10)  # on the preferred node
            silent.healthy = False
            went_silent = loop.time()
            await asyncio.wait_for(marked_down.wait(), 10)
            await asyncio.to_thread(phone.answer, challenge_id, "approve")
            result = await asyncio.wait_for(wait, 10)
            return result, loop.time() - went_silent, silent.held
        finally:
            await client.aclose()
            await silent.close()

    result, took, held = asyncio.run(scenario())
    assert result == Outcome("approved")
    assert took < 5, took
    assert held == 1  # re-attached on the live node, not on the silent one again
