"""The bridge as operators run it: inside ``openmfa run`` (in-process, over IPv6 here), as
``openmfa radius`` on its own, and through backend outages.

Real processes, real UDP with ``radclient`` and pyrad, clients and users made with the
``openmfa`` commands. Waits are bounded polls on what can be observed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from pyrad import packet as pyrad_packet

from backend.authenticator.client import AppClient
from tests.support.bridge import BridgeThread, bridge_settings, pyrad_dictionary
from tests.support.freeradius import free_udp_port, radclient, radclient_binary
from tests.support.process import EXE, Cli, ServerProcess, free_port, stop_process, wait_for

pytestmark = pytest.mark.skipif(
    radclient_binary() is None, reason="radclient not installed (apt-get install freeradius-utils)"
)

SECRET = "process-test-secret"


def env_for(port: int, **extra: str) -> dict[str, str]:
    return {
        "OPENMFA_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "OPENMFA_LOG_FORMAT": "json",
        **extra,
    }


def enrol(cli: Cli, user: str) -> AppClient:
    """``openmfa user add`` + ``activation create``, activated by the reference app."""
    cli("user", "add", user)
    created = cli("activation", "create", user).stdout
    match = re.search(r"^uri:\s+(\S+)$", created, re.MULTILINE)
    assert match, created
    device = AppClient()
    device.activate(match.group(1))
    return device


def add_client(cli: Cli, name: str, address: str, *options: str, secret: str = SECRET) -> None:
    cli(
        "client", "add", name, "--address", address, "--secret-stdin", *options, stdin=secret + "\n"
    )


def bridge_token(cli: Cli, name: str) -> str:
    return cli("token", "create", name, "--scope", "bridge").stdout.strip()


def pending_one(device: AppClient) -> str:
    wait_for(lambda: len(device.pending()) == 1, 15, "the push to reach the phone")
    return str(device.pending()[0]["id"])


def pyrad_client(port: int, source: str, secret: str = SECRET, timeout: float = 30) -> Any:
    from pyrad.client import Client

    client = Client(
        server="127.0.0.1",
        authport=port,
        secret=secret.encode(),
        dict=pyrad_dictionary(),
        retries=1,
        timeout=timeout,
        enforce_ma=True,
    )
    client.bind((source, 0))
    return client


def send(client: Any, user: str, password: str | None = None) -> Any:
    request = client.CreateAuthPacket(code=pyrad_packet.AccessRequest, User_Name=user)
    if password is not None:
        request["User-Password"] = request.PwCrypt(password)
    try:
        return client.SendPacket(request)
    finally:
        client._CloseSocket()


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=4) as executor:
        yield executor


# -- inside `openmfa run` ----------------------------------------------------------------------


def test_openmfa_run_serves_radius_in_process_over_ipv6(
    tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    port, udp, metrics_port = free_port(), free_udp_port("::1"), free_port()
    env = env_for(
        port,
        OPENMFA_RADIUS_PORT=str(udp),
        OPENMFA_RADIUS_HOST="::1",
        OPENMFA_METRICS_LISTEN=f"127.0.0.1:{metrics_port}",
    )
    cli = Cli(tmp_path, **env)
    cli("db", "upgrade")
    with ServerProcess(tmp_path, port, env) as server:
        add_client(cli, "vpn6", "::1", "--mode", "push")
        device = enrol(cli, "carol")
        # The built-in bridge picks the new client up within its refresh interval.
        wait_for(
            lambda: (
                radclient(udp, SECRET, {}, code="status", host="::1", timeout=0.5).code
                == "Access-Accept"
            ),
            15,
            "the in-process bridge to know the client",
        )
        reply = pool.submit(radclient, udp, SECRET, {"User-Name": "carol"}, host="::1", timeout=30)
        device.answer(pending_one(device), "approve")
        assert reply.result(30).code == "Access-Accept"

        # Metrics on a listener of their own, never on the public port.
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        assert 'openmfa_radius_responses_total{client="vpn6",code="accept"} 1.0' in metrics
        assert "openmfa_radius_held_requests 0.0" in metrics

        # The decision line: structured, with the user, never a secret.
        wait_for(lambda: '"decision": "accept"' in server.log, 5, "the decision log line")
        line = next(
            json.loads(entry)
            for entry in server.log.splitlines()
            if '"decision": "accept"' in entry
        )
        assert (line["client"], line["user"], line["reason"]) == ("vpn6", "carol", "approved")
        assert line["latency_ms"] > 0
        assert SECRET not in server.log

        # SIGTERM while a push is held: a clean, prompt exit (status 0); the held request is
        # left for the gateway to retransmit.
        held = pool.submit(radclient, udp, SECRET, {"User-Name": "carol"}, host="::1", timeout=2)
        pending_one(device)
        began = time.monotonic()
        assert server.terminate() == 0
        assert time.monotonic() - began < 10
        assert held.result(30).code is None
        assert "Traceback" not in server.log


def test_openmfa_run_answers_a_client_added_a_moment_ago(tmp_path: Path) -> None:
    """`openmfa client add`, then at once a request: the built-in bridge used to drop it as
    "unknown client" until its next 5-second refresh."""
    port, udp = free_port(), free_udp_port()
    env = env_for(port, OPENMFA_RADIUS_PORT=str(udp), OPENMFA_RADIUS_HOST="127.0.0.1")
    cli = Cli(tmp_path, **env)
    cli("db", "upgrade")
    with ServerProcess(tmp_path, port, env) as server:
        for name, address in (("edge-a", "127.0.0.1"), ("edge-b", "127.0.0.5")):
            add_client(cli, name, address, "--mode", "otp", "--primary", "none")
            client = pyrad_client(udp, address, timeout=1.5)
            began = time.monotonic()
            reply = client.SendPacket(client.CreateAuthPacket(code=pyrad_packet.StatusServer))
            client._CloseSocket()
            assert reply.code == pyrad_packet.AccessAccept
            assert time.monotonic() - began < 1.5
        assert "unknown client" not in server.log


def test_openmfa_run_refuses_a_taken_radius_port(tmp_path: Path) -> None:
    port = free_port()
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        udp = taken.getsockname()[1]
        env = env_for(port, OPENMFA_RADIUS_PORT=str(udp))
        cli = Cli(tmp_path, **env)
        cli("db", "upgrade")
        result = subprocess.run(
            [str(EXE), "run", "--port", str(port)],
            env=cli.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    assert f"cannot listen for RADIUS on UDP 127.0.0.1:{udp}" in result.stderr
    assert "--radius-port" in result.stderr
    assert "Traceback" not in result.stderr


# -- `openmfa radius` on its own ------------------------------------------------------------------


def test_openmfa_radius_runs_standalone_with_metrics(tmp_path: Path) -> None:
    port = free_port()
    env = env_for(port)
    cli = Cli(tmp_path, **env)
    cli("db", "upgrade")
    with ServerProcess(tmp_path, port, env) as server:
        add_client(cli, "edge", "127.0.0.1", "--mode", "otp", "--primary", "none")
        token_file = tmp_path / "bridge.token"
        token_file.write_text(bridge_token(cli, "edge-bridge") + "\n")
        token_file.chmod(0o644)
        udp, metrics_port = free_udp_port(), free_port()
        command = [
            str(EXE),
            "radius",
            "--backend",
            server.url,
            "--token-file",
            str(token_file),
            "--listen",
            f"127.0.0.1:{udp}",
            "--metrics-listen",
            f"127.0.0.1:{metrics_port}",
            "--refresh-seconds",
            "0.5",
        ]
        # A token file others can read is refused, with one line and no traceback.
        refused = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
        assert refused.returncode == 1
        assert refused.stderr.startswith("openmfa radius: error: token file")
        assert "chmod 600" in refused.stderr
        token_file.chmod(0o600)

        log_path = tmp_path / "bridge.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        try:
            wait_for(
                lambda: (
                    radclient(udp, SECRET, {}, code="status", timeout=0.5).code == "Access-Accept"
                ),
                15,
                "openmfa radius to answer Status-Server",
            )
            # otp mode with the code in the password field (primary none: the gateway
            # checked the password; a code alone is the code).
            device = enrol(cli, "dave")
            code = device.code()
            answer = radclient(udp, SECRET, {"User-Name": "dave", "User-Password": code})
            assert answer.code == "Access-Accept"
            metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
            assert 'openmfa_radius_responses_total{client="edge",code="accept"} 1.0' in metrics
            assert 'openmfa_radius_responses_total{client="edge",code="status"}' in metrics
        finally:
            status = stop_process(process, timeout=15)
        output = log_path.read_text()
        assert status == 0, output
        assert "RADIUS bridge stopped" in output
        assert "Traceback" not in output
        assert token_file.read_text().strip() not in output
        assert SECRET not in output
        assert code not in output

        # Its token revoked, the bridge refuses to start, with one line (issue 13, 15).
        cli("token", "revoke", "edge-bridge")
        revoked = subprocess.run(
            [*command, "--clients-cache", str(tmp_path / "clients.cache")],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert revoked.returncode == 1, revoked.stderr
        assert "refused this bridge's token" in revoked.stderr
        assert "Traceback" not in revoked.stderr


def test_openmfa_radius_reports_bad_settings_in_one_line(tmp_path: Path) -> None:
    def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(EXE), "radius", *args],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, **env},
            check=False,
        )

    no_backend = run()
    assert no_backend.returncode == 1
    assert "backend URL is required" in no_backend.stderr
    bad_listen = run(
        "--backend", "http://127.0.0.1:9", "--listen", "::1:1812", OPENMFA_BRIDGE_TOKEN="omfa_x"
    )
    assert bad_listen.returncode == 1
    assert "IPv6 address in brackets" in bad_listen.stderr
    taken_port = free_port()
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        udp = taken.getsockname()[1]
        busy = run(
            "--backend",
            f"http://127.0.0.1:{taken_port}",
            "--listen",
            f"127.0.0.1:{udp}",
            OPENMFA_BRIDGE_TOKEN="omfa_x",
        )
    assert busy.returncode == 1
    assert f"cannot listen for RADIUS on UDP 127.0.0.1:{udp}" in busy.stderr
    for result in (no_backend, bad_listen, busy):
        assert "Traceback" not in result.stderr


# -- backend outages ------------------------------------------------------------------------------


def test_failmode_and_a_backend_restart(
    tmp_path: Path, pool: ThreadPoolExecutor, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    env = env_for(port)
    cli = Cli(tmp_path, **env)
    cli("db", "upgrade")
    server = ServerProcess(tmp_path, port, env)
    server.start()
    try:
        add_client(cli, "secure-gw", "127.0.0.2", "--mode", "push", "--failmode", "secure")
        add_client(cli, "safe-gw", "127.0.0.3", "--mode", "push", "--failmode", "safe")
        device = enrol(cli, "erin")
        token = bridge_token(cli, "outage-bridge")
        # A grace with room for a cold start of `openmfa run` on a busy machine (the default
        # 5 s was not enough on a two-core machine shared by nine test runs).
        settings = bridge_settings(server.url, token, cut_grace_seconds=25.0)
        with BridgeThread(settings) as bridge:
            udp = bridge.port()
            assert len(bridge.bridge.core.clients) == 2

            # A push held while the backend restarts still gets its answer.
            held = pool.submit(send, pyrad_client(udp, "127.0.0.2"), "erin")
            challenge_id = pending_one(device)
            wait_for(lambda: bridge.held == 1, 10, "the request to be held")
            assert server.terminate() == 0
            server = ServerProcess(tmp_path, port, env)
            server.start()
            device.answer(challenge_id, "approve")
            assert held.result(40).code == pyrad_packet.AccessAccept

            # Backend down: the last good client list stays; each client's failmode applies.
            failures = bridge.metric("openmfa_radius_client_refresh_failures_total")
            assert server.terminate() == 0
            wait_for(
                lambda: bridge.metric("openmfa_radius_client_refresh_failures_total") > failures,
                10,
                "a failed refresh",
            )
            assert len(bridge.bridge.core.clients) == 2
            caplog.set_level(logging.WARNING)
            began = time.monotonic()
            rejected = send(pyrad_client(udp, "127.0.0.2"), "erin")
            assert rejected.code == pyrad_packet.AccessReject
            assert rejected["Reply-Message"] == ["Sign-in service unavailable. Try again later"]
            accepted = send(pyrad_client(udp, "127.0.0.3"), "erin")
            assert accepted.code == pyrad_packet.AccessAccept
            assert time.monotonic() - began < 15  # within the clients' timeouts, no hanging
            # The fail-safe accept could not be audited in the backend: the log has it.
            wait_for(
                lambda: any("radius.failsafe_accept" in r.getMessage() for r in caplog.records),
                15,
                "the undelivered audit record in the log",
            )
            assert (
                bridge.metric(
                    "openmfa_radius_backend_unavailable_total", {"effect": "StartAuthentication"}
                )
                >= 2
            )
    finally:
        server.kill()
