"""The HTTP server under abuse, as an attacker meets it: a real ``openmfa run`` on a loopback
port, raw sockets, and its own log read back.

Header size and count limits (431), a deadline for requests that never finish arriving (408 or
close), a cap on connections (503), long-polls that outlive that deadline, a client that goes
away mid-body, ``/metrics`` off the public port, log lines that cannot be forged, library
loggers that never write secrets at ``debug``, and a second ``openmfa run`` on busy ports.
Waits are bounded reads and polls on what can be observed, never sleeps.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from backend.authenticator.client import AppClient
from tests.support.bridge import pyrad_dictionary
from tests.support.freeradius import free_udp_port
from tests.support.process import Cli, ServerProcess, free_port, request_consumed, wait_for

REQUEST_TIMEOUT = 2  # seconds: the deadline the servers below are given for a request to arrive
PASSWORD = "correct horse battery staple"
SECRET = "hardening-test-secret"


@dataclass
class Live:
    server: ServerProcess
    cli: Cli
    metrics_port: int


def _env(port: int, **extra: str) -> dict[str, str]:
    return {
        "OPENMFA_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "OPENMFA_HTTP_REQUEST_TIMEOUT_SECONDS": str(REQUEST_TIMEOUT),
        **extra,
    }


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """``openmfa run`` with JSON logs at debug level and a metrics listener."""
    home = tmp_path_factory.mktemp("home")
    port, metrics_port = free_port(), free_port()
    env = _env(
        port,
        OPENMFA_LOG_FORMAT="json",
        OPENMFA_LOG_LEVEL="debug",
        OPENMFA_METRICS_LISTEN=f"127.0.0.1:{metrics_port}",
    )
    cli = Cli(home, **env)
    cli("db", "upgrade")
    with ServerProcess(home, port, env) as server:
        yield Live(server, cli, metrics_port)


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=30)


def _read_to_eof(sock: socket.socket, deadline: float) -> bytes:
    """Everything the server sends until it closes; fails if it has not closed by
    ``deadline`` (``time.monotonic()``)."""
    raw = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"the server did not close the connection; read {raw[:200]!r}")
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return raw
        except TimeoutError:
            continue
        if not chunk:
            return raw
        raw += chunk


def _status(raw: bytes) -> int | None:
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", raw)
    return int(match.group(1)) if match else None


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/PID/status")


def _log_lines(server: ServerProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in server.log.splitlines() if line.startswith("{")]


# -- finding 7: header limits, deadlines, connection cap ------------------------------------------


def test_a_64_mb_header_is_refused_with_431_without_being_read(live: Live) -> None:
    assert live.server.process is not None
    pid = live.server.process.pid
    peak_before = _peak_rss_kib(pid)

    def send_all(sock: socket.socket) -> None:
        chunk = b"a" * 65536
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
            for _ in range(1024):  # 64 MiB
                sock.sendall(chunk)
            sock.sendall(b"\r\n\r\n")
        except OSError:
            pass  # the server closed on us: expected

    # The kernel hands over what the server sent before it reports the reset, so the answer
    # is read on this thread while another one keeps sending.
    with _connect(live.server.port) as sock, ThreadPoolExecutor(max_workers=1) as pool:
        sock.settimeout(20)
        began = time.monotonic()
        sender = pool.submit(send_all, sock)
        answer = sock.recv(4096)
        took = time.monotonic() - began
        with contextlib.suppress(OSError):  # already reset by the server
            sock.shutdown(socket.SHUT_RDWR)
        sender.result(timeout=20)
    assert _status(answer) == 431, answer[:200]
    assert took < 10, took
    grown_mib = (_peak_rss_kib(pid) - peak_before) / 1024
    assert grown_mib < 16, f"the server's peak memory grew by {grown_mib:.1f} MiB"
    assert httpx.get(live.server.url + "/healthz", timeout=5).status_code == 200


def test_too_many_headers_are_refused_with_431(live: Live) -> None:
    headers = "".join(f"X-H{i}: v\r\n" for i in range(101))
    with _connect(live.server.port) as sock:
        sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())
        answer = _read_to_eof(sock, time.monotonic() + 10)
    assert _status(answer) == 431, answer[:200]


def test_a_long_url_counts_towards_the_header_limit(live: Live) -> None:
    with _connect(live.server.port) as sock:
        sock.sendall(b"GET /healthz?" + b"q" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = _read_to_eof(sock, time.monotonic() + 10)
    assert _status(answer) == 431, answer[:200]


def test_a_head_just_under_the_limit_is_served(live: Live) -> None:
    response = httpx.get(
        live.server.url + "/healthz", headers={"x-padding": "p" * 15000}, timeout=10
    )
    assert response.status_code == 200


def test_300_unfinished_heads_are_closed_after_the_deadline(live: Live) -> None:
    sockets = [_connect(live.server.port) for _ in range(300)]
    idle = [_connect(live.server.port) for _ in range(20)]  # never send a byte
    try:
        began = time.monotonic()
        for sock in sockets:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        deadline = began + REQUEST_TIMEOUT + 20
        answers = [_read_to_eof(sock, deadline) for sock in sockets]
        silent = [_read_to_eof(sock, deadline) for sock in idle]
        closed_after = time.monotonic() - began
    finally:
        for sock in sockets + idle:
            sock.close()
    assert closed_after >= REQUEST_TIMEOUT * 0.9, closed_after
    assert {_status(answer) for answer in answers} == {408}
    assert silent == [b""] * len(idle)  # nothing was asked: closed without an answer
    assert httpx.get(live.server.url + "/healthz", timeout=5).status_code == 200


def test_a_head_sent_a_byte_at_a_time_cannot_keep_the_connection(live: Live) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Drip: " + b"d" * 400
    answer: bytes | None = None
    with _connect(live.server.port) as sock:
        began = time.monotonic()
        for byte in head:  # one byte per 50 ms: 20 s for the whole head
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                answer = b""
                break
            sock.settimeout(0.05)
            try:
                answer = sock.recv(4096)  # the server spoke (408) or closed (b"")
                break
            except TimeoutError:
                continue
        took = time.monotonic() - began
    assert answer is not None, "the whole head dribbled in without the server closing"
    assert _status(answer) in (408, None), answer[:200]
    assert took < REQUEST_TIMEOUT + 5, took


def test_a_body_that_never_arrives_gets_408(live: Live) -> None:
    with _connect(live.server.port) as sock:
        sock.sendall(
            b"POST /pipush/v1/push HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n"
            b"a=1"
        )
        answer = _read_to_eof(sock, time.monotonic() + REQUEST_TIMEOUT + 20)
    assert _status(answer) == 408, answer[:200]


def _pending_push(live: Live, user: str) -> tuple[str, str]:
    """A user with an app, a gateway token and a pending push: (auth id, token)."""
    live.cli("user", "add", user)
    created = live.cli("activation", "create", user).stdout
    match = re.search(r"^uri:\s+(\S+)$", created, re.MULTILINE)
    assert match, created
    AppClient().activate(match.group(1))
    token = live.cli("token", "create", f"gw-{user}").stdout.strip()
    with httpx.Client(
        base_url=live.server.url, headers={"authorization": f"Bearer {token}"}, timeout=10
    ) as gateway:
        started = gateway.post(
            "/gateway/v1/authentications",
            json={"user": user, "method": "push", "context": {"client_name": "vpn"}},
        )
    assert started.status_code == 201, started.text
    return str(started.json()["id"]), token


def test_a_long_poll_outlives_the_request_deadline(live: Live) -> None:
    auth_id, token = _pending_push(live, "lena")
    wait = REQUEST_TIMEOUT * 2
    with _connect(live.server.port) as sock:
        began = time.monotonic()
        sock.sendall(
            f"GET /gateway/v1/authentications/{auth_id}?wait={wait} HTTP/1.1\r\n"
            f"Host: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
        )
        sock.settimeout(wait + 20)
        reader = sock.makefile("rb")
        status_line = reader.readline()
        took = time.monotonic() - began
        head = [status_line]
        while (line := reader.readline()) not in (b"\r\n", b""):
            head.append(line)
        length = next(
            int(h.split(b":")[1]) for h in head if h.lower().startswith(b"content-length:")
        )
        body = json.loads(reader.read(length))
        # The connection outlived the deadline: a next request on it is served.
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        second = reader.read()
        reader.close()
    assert _status(status_line) == 200, head
    assert body["state"] == "pending"
    assert took >= wait * 0.9, took
    assert _status(second) == 200, second[:200]


def test_a_request_pipelined_behind_a_long_poll_waits_for_it(live: Live) -> None:
    """While the server does not read (the request before is still being answered), the
    wait is the server's: the deadline does not cut the connection."""
    auth_id, token = _pending_push(live, "nora")
    wait = REQUEST_TIMEOUT * 2
    with _connect(live.server.port) as sock:
        sock.sendall(
            f"GET /gateway/v1/authentications/{auth_id}?wait={wait} HTTP/1.1\r\n"
            f"Host: x\r\nAuthorization: Bearer {token}\r\n\r\n"
            "POST /pipush/v1/push HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 3\r\n\r\n".encode()
        )
        wait_for(
            lambda: request_consumed(live.server.port, sock.getsockname()[1]),
            10,
            "the server to read both heads",
        )
        sock.sendall(b"a=1")  # the body arrives at once, but the server reads it only later
        answers = _read_to_eof(sock, time.monotonic() + wait + 20)
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", answers)
    assert statuses[0] == b"200", answers[:300]
    assert len(statuses) == 2, answers
    assert statuses[1] != b"408", answers


# -- finding 12: a client that goes away mid-body ------------------------------------------------


def _abandon_mid_body(live: Live, path: str, marker: str) -> None:
    """Send a request whose body never ends and go away; return once it was logged."""
    with _connect(live.server.port) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nX-Request-ID: {marker}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\n"
            "0123456789".encode()
        )
        wait_for(
            lambda: request_consumed(live.server.port, sock.getsockname()[1]),
            10,
            "the server to read the partial body",
        )
    wait_for(
        lambda: any(
            e.get("request_id") == marker and e["logger"] == "openmfa.access"
            for e in _log_lines(live.server)
        ),
        10,
        "the access log line of the abandoned request",
    )


@pytest.mark.parametrize("path", ["/pipush/v1/push", "/app/v1/activate"])
def test_a_client_gone_mid_body_is_one_debug_line_not_a_500(live: Live, path: str) -> None:
    marker = f"gone-{path.replace('/', '-')}"
    _abandon_mid_body(live, path, marker)
    mine = [e for e in _log_lines(live.server) if e.get("request_id") == marker]
    assert [e["level"] for e in mine if e["level"] not in ("debug", "info")] == []
    assert not any("exception" in e for e in mine)
    gone = [e for e in mine if e["logger"] != "openmfa.access"]
    assert [e["level"] for e in gone] == ["debug"], gone
    assert "Traceback" not in live.server.log
    access = next(e for e in mine if e["logger"] == "openmfa.access")
    assert access["status"] != 500


# -- finding 14a: /metrics ------------------------------------------------------------------------


def test_metrics_are_not_on_the_public_port_but_on_their_own_listener(live: Live) -> None:
    assert httpx.get(live.server.url + "/metrics", timeout=5).status_code == 404
    scraped = httpx.get(f"http://127.0.0.1:{live.metrics_port}/metrics", timeout=5)
    assert scraped.status_code == 200
    assert "openmfa_http_refused_total" in scraped.text
    assert httpx.get(f"http://127.0.0.1:{live.metrics_port}/healthz", timeout=5).status_code == 404


def test_refusals_are_counted_and_logged_once_a_minute_not_each_time(live: Live) -> None:
    def refused(reason: str) -> float:
        text = httpx.get(f"http://127.0.0.1:{live.metrics_port}/metrics", timeout=5).text
        match = re.search(rf'openmfa_http_refused_total{{reason="{reason}"}} ([0-9.]+)', text)
        assert match, text
        return float(match.group(1))

    before = refused("bad-request")
    for _ in range(5):
        with _connect(live.server.port) as sock:
            sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            assert _status(_read_to_eof(sock, time.monotonic() + 10)) == 400
    assert refused("bad-request") == before + 5
    lines = [
        e
        for e in _log_lines(live.server)
        if e.get("reason") == "bad-request" and e["level"] != "debug"
    ]
    assert len(lines) <= 1, lines
    assert "Invalid HTTP request received" not in live.server.log


@pytest.mark.parametrize("value", ["localhost:9108", "127.0.0.1", "127.0.0.1:0", "1.2.3.4:x"])
def test_metrics_listen_is_an_ip_and_a_port(tmp_path: Path, value: str) -> None:
    from backend.config import load_settings
    from backend.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="metrics_listen"):
        load_settings(home=tmp_path, metrics_listen=value)
    assert load_settings(home=tmp_path, metrics_listen="[::1]:9108").metrics_address == (
        "::1",
        9108,
    )


# -- finding 20 and color_message: what the log must never hold ----------------------------------


def test_debug_logging_never_writes_hashes_passwords_or_csrf_secrets(live: Live) -> None:
    live.cli("user", "add", "mona", "--password-stdin", stdin=PASSWORD + "\n")
    with httpx.Client(base_url=live.server.url, timeout=10, follow_redirects=False) as browser:
        form = browser.get("/portal/sign-in")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert csrf is not None
        signed_in = browser.post(
            "/portal/sign-in",
            data={"csrf_token": csrf.group(1), "username": "mona", "password": PASSWORD},
        )
        assert signed_in.status_code == 303, signed_in.text
        cookies = [value for value in browser.cookies.values() if len(value) >= 16]
    _abandon_mid_body(live, "/app/v1/activate", "gone-debug-check")  # one debug line for sure
    log = live.server.log
    assert '"level": "debug"' in log  # the level really is debug
    assert "$argon2id$" not in log
    assert PASSWORD not in log
    assert csrf.group(1) not in log
    for value in cookies:
        assert value not in log
    assert "SELECT" not in log
    assert "INSERT" not in log


def test_json_logs_carry_no_color_message_and_no_escape_sequences(live: Live) -> None:
    log = live.server.log
    assert "Uvicorn running" in log or "Application startup complete" in log
    assert "color_message" not in log
    assert "\\u001b[" not in log
    assert "\x1b[" not in log


# -- finding 13: forged log lines (text format), the connection cap, busy ports ------------------


@dataclass
class TextLive:
    server: ServerProcess
    cli: Cli
    udp: int
    bootstrap: str


@pytest.fixture(scope="module")
def text_live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TextLive]:
    """``openmfa run`` with text logs, RADIUS on, a small connection cap and no administrator
    (so it printed a bootstrap link)."""
    home = tmp_path_factory.mktemp("texthome")
    port, udp = free_port(), free_udp_port()
    env = _env(
        port,
        OPENMFA_LOG_FORMAT="text",
        OPENMFA_RADIUS_PORT=str(udp),
        OPENMFA_HTTP_MAX_CONNECTIONS="40",
    )
    cli = Cli(home, **env)
    cli("db", "upgrade")
    with ServerProcess(home, port, env) as server:
        banner = server.stdout_path.read_text()
        match = re.search(r"(http://\S+/admin/bootstrap/\S+)", banner)
        assert match, banner
        yield TextLive(server, cli, udp, match.group(1))


def _forged(log: str) -> list[str]:
    return [line for line in log.splitlines() if line.startswith("FAKE")]


def test_a_newline_in_a_path_writes_one_text_log_line(text_live: TextLive) -> None:
    response = httpx.get(text_live.server.url + "/x%0aFAKE LINE%0d%1b[31m%e2%80%a8", timeout=5)
    assert response.status_code == 404
    wait_for(lambda: "FAKE LINE" in text_live.server.log, 10, "the access log line")
    log = text_live.server.log
    assert _forged(log) == []
    line = next(line for line in log.splitlines() if "FAKE LINE" in line)
    assert line.startswith("info ")
    for control in ("\x1b", "\u2028", "\r"):
        assert control not in log


def test_a_newline_in_a_radius_user_name_writes_one_text_log_line(text_live: TextLive) -> None:
    from pyrad import client as pyrad_client
    from pyrad import packet as pyrad_packet

    text_live.cli(
        "client", "add", "vpn", "--address", "127.0.0.1", "--secret-stdin", stdin=SECRET + "\n"
    )
    client = pyrad_client.Client(
        server="127.0.0.1",
        authport=text_live.udp,
        secret=SECRET.encode(),
        dict=pyrad_dictionary(),
        retries=1,
        timeout=3,
        enforce_ma=True,
    )

    def attempt() -> bool:
        request = client.CreateAuthPacket(
            code=pyrad_packet.AccessRequest, User_Name="alice\nFAKE RADIUS LINE"
        )
        try:
            client.SendPacket(request)
        except pyrad_client.Timeout:  # no answer (a drop) is also an outcome here
            pass
        finally:
            client._CloseSocket()
        return "FAKE RADIUS LINE" in text_live.server.log

    wait_for(attempt, 20, "a log line naming the forged user", every=0.5)
    assert _forged(text_live.server.log) == []


def test_connections_beyond_the_cap_get_503(text_live: TextLive) -> None:
    held = [_connect(text_live.server.port) for _ in range(40)]
    try:
        # The server has accepted them all once /healthz on a fresh connection is refused.
        with _connect(text_live.server.port) as extra:
            extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = _read_to_eof(extra, time.monotonic() + 10)
        assert _status(answer) == 503, answer[:200]
    finally:
        for sock in held:
            sock.close()
    wait_for(
        lambda: httpx.get(text_live.server.url + "/healthz", timeout=5).status_code == 200,
        10,
        "the server to take connections again",
    )


def test_a_second_run_on_busy_ports_fails_before_touching_the_database(
    text_live: TextLive, tmp_path: Path
) -> None:
    env = {**text_live.cli.env, "OPENMFA_RADIUS_PORT": str(text_live.udp)}
    busy_http = Cli(text_live.cli.home, **env)
    for args in (
        ("run", "--host", "127.0.0.1", "--port", str(text_live.server.port)),
        ("run", "--host", "127.0.0.1", "--port", str(free_port())),  # only UDP is busy
    ):
        result = busy_http(*args, check=False, timeout=30)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("openmfa: error: "), lines
        assert "port" in lines[0]
        assert "bootstrap" not in result.stdout
    # The link the running server printed still works.
    page = httpx.get(text_live.bootstrap, timeout=5)
    assert page.status_code == 200, page.text[:300]
