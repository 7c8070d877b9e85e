"""A standalone bridge (``openmfa radius``, a process of its own) whose backend dies under
held pushes (issue 18, item 4).

Real processes: ``openmfa run`` on SQLite, ``openmfa radius`` against it over HTTP, pyrad
clients sending real Access-Requests, the reference phone app answering pushes. The
backend is killed with SIGKILL, so its sockets are closed by the kernel with no goodbye:
the bridge must notice the cut long-polls at once, re-attach for the grace
(``--cut-grace-seconds``), then answer by the client's failmode -- or, when the backend is
back within the grace, deliver the user's approval as if nothing happened.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from pyrad import packet as pyrad_packet

from backend.authenticator.client import AppClient
from tests.support.freeradius import free_udp_port, radclient, radclient_binary
from tests.support.process import EXE, Cli, ServerProcess, free_port, stop_process, wait_for
from tests.test_radius_bridge_process import (
    SECRET,
    add_client,
    bridge_token,
    enrol,
    env_for,
    pyrad_client,
    send,
)

pytestmark = pytest.mark.skipif(
    radclient_binary() is None, reason="radclient not installed (apt-get install freeradius-utils)"
)

#: How much later than the grace the answers may come: the last re-attach attempt, the
#: flow's reject and the UDP reply, on a busy two-core machine.
ANSWER_BOUND = 3.0


class Standalone:
    """``openmfa radius`` as a process, its held-request gauge read from ``/metrics``."""

    def __init__(self, home: Path, backend_url: str, token: str, grace: float) -> None:
        token_file = home / "bridge.token"
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)
        self.udp, self.metrics_port = free_udp_port(), free_port()
        self.log_path = home / "bridge.log"
        command = [
            str(EXE),
            "radius",
            "--backend",
            backend_url,
            "--token-file",
            str(token_file),
            "--listen",
            f"127.0.0.1:{self.udp}",
            "--metrics-listen",
            f"127.0.0.1:{self.metrics_port}",
            "--cut-grace-seconds",
            str(grace),
        ]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"openmfa radius exited:\n{self.log_path.read_text()}")
        return radclient(self.udp, SECRET, {}, code="status", timeout=0.5).code == "Access-Accept"

    def held(self) -> float:
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        for line in text.splitlines():
            if line.startswith("openmfa_radius_held_requests "):
                return float(line.split()[1])
        return 0.0


@contextmanager
def standalone(home: Path, backend_url: str, token: str, grace: float) -> Iterator[Standalone]:
    bridge = Standalone(home, backend_url, token, grace)
    try:
        wait_for(bridge.ready, 20, "openmfa radius to answer Status-Server")
        yield bridge
    finally:
        stop_process(bridge.process, timeout=15)


def timed_send(client: Any, user: str) -> tuple[Any, float]:
    reply = send(client, user)
    return reply, time.monotonic()


def hold(
    pool: ThreadPoolExecutor,
    bridge: Standalone,
    devices: dict[str, AppClient],
    sources: dict[str, str] | None = None,
) -> list[Future[tuple[Any, float]]]:
    """One Access-Request per user (from ``sources[user]``, else 127.0.0.1), each held for
    its push (seen on the phone and held by the bridge)."""
    sources = sources or {}
    futures = [
        pool.submit(
            timed_send, pyrad_client(bridge.udp, sources.get(user, "127.0.0.1"), timeout=90), user
        )
        for user in devices
    ]
    for user, device in devices.items():
        wait_for(lambda d=device: len(d.pending()) == 1, 30, f"the push to reach {user}")  # type: ignore[misc]
    wait_for(lambda: bridge.held() == len(devices), 30, "every request to be held")
    return futures


def setup(tmp_path: Path) -> tuple[int, dict[str, str], Cli, dict[str, AppClient]]:
    port = free_port()
    env = env_for(port)
    cli = Cli(tmp_path, **env)
    cli("db", "upgrade")
    return port, env, cli, {}


def test_a_backend_killed_under_held_pushes_is_answered_by_each_failmode_at_once(
    tmp_path: Path,
) -> None:
    grace = 2.0
    port, env, cli, devices = setup(tmp_path)
    with ServerProcess(tmp_path, port, env) as server:
        add_client(cli, "gw", "127.0.0.1", "--mode", "push", "--failmode", "secure")
        add_client(cli, "safe-gw", "127.0.0.3", "--mode", "push", "--failmode", "safe")
        for n in range(20):
            devices[f"user{n:02d}"] = enrol(cli, f"user{n:02d}")
        # Two more behind a fail-safe gateway: its failmode, not the first one's, applies.
        sources = {"safe0": "127.0.0.3", "safe1": "127.0.0.3"}
        for user in sources:
            devices[user] = enrol(cli, user)
        token = bridge_token(cli, "cut-bridge")
        with (
            standalone(tmp_path, server.url, token, grace) as bridge,
            ThreadPoolExecutor(max_workers=len(devices)) as pool,
        ):
            futures = hold(pool, bridge, devices, sources)
            assert server.process is not None
            server.process.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            server.process.wait(timeout=10)
            answers = [future.result(60) for future in futures]
            latest = max(at for _, at in answers) - killed
            secure, safe = answers[:20], answers[20:]
            assert [reply.code for reply, _ in secure] == [pyrad_packet.AccessReject] * 20
            for reply, _ in secure:
                assert reply["Reply-Message"] == ["Sign-in service unavailable. Try again later"]
            assert [reply.code for reply, _ in safe] == [pyrad_packet.AccessAccept] * 2
            # Retried for the grace (a restart would have passed), then answered at once --
            # not ~52 s later at the end of the push's wait, as before. (The lower bound has
            # room for this process's own lag in taking the kill's timestamp.)
            earliest = min(at for _, at in answers) - killed
            assert earliest >= grace - 0.5, earliest
            assert latest <= grace + ANSWER_BOUND, latest
        log = bridge.log_path.read_text()
        assert "wait channel to" in log  # the held pushes waited on the channel (--channel auto)
        assert "re-attaching" in log
        assert "Traceback" not in log


def test_a_backend_restarted_within_the_grace_passes_unnoticed(tmp_path: Path) -> None:
    grace = 25.0  # room for a cold start of `openmfa run` on a busy machine
    port, env, cli, devices = setup(tmp_path)
    server = ServerProcess(tmp_path, port, env)
    server.start()
    try:
        add_client(cli, "gw", "127.0.0.1", "--mode", "push", "--failmode", "secure")
        devices["erin"] = enrol(cli, "erin")
        token = bridge_token(cli, "cut-bridge")
        with (
            standalone(tmp_path, server.url, token, grace) as bridge,
            ThreadPoolExecutor(max_workers=2) as pool,
        ):
            (held,) = hold(pool, bridge, devices)
            challenge_id = str(devices["erin"].pending()[0]["id"])
            assert server.process is not None
            server.process.send_signal(signal.SIGKILL)
            server.process.wait(timeout=10)
            killed = time.monotonic()
            # Same port, same database.
            server = ServerProcess(tmp_path, port, env)
            server.start()
            assert time.monotonic() - killed < grace, "the restart took longer than the grace"
            assert not held.done()  # the request is still held: no failmode answer
            devices["erin"].answer(challenge_id, "approve")
            reply, _ = held.result(60)
            assert reply.code == pyrad_packet.AccessAccept
    finally:
        server.kill()
