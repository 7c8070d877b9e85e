"""The ``openmfa`` command as an operator uses it: against a real ``openmfa run`` on a loopback
port (commands in this process; the whole life of a user as real subprocesses), QR codes
decoded with ``zbarimg``, codes checked with ``oathtool``.

Most tests share one running server (module scope) and use a user of their own; the tests
that stop a server or need an empty data directory start their own.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import socket
import sqlite3
import stat
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest

from backend.cli.main import _parser
from backend.store import migrations
from tests.support.process import (
    EXE,
    Cli,
    CliProcess,
    ServerProcess,
    free_port,
    request_consumed,
    wait_for,
)

needs_tools = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in ("zbarimg", "oathtool", "rsvg-convert")),
    reason="zbarimg, oathtool and rsvg-convert are needed "
    "(apt-get install zbar-tools oathtool librsvg2-bin)",
)

PIN = "583719"
PASSWORD = "correct horse battery staple"


# -- helpers ------------------------------------------------------------------------------------


@dataclass
class Live:
    """The shared running server, a CLI pointed at its data directory, and a scratch folder."""

    server: ServerProcess
    cli: Cli
    files: Path


def cli_env(port: int) -> dict[str, str]:
    """Environment for the server and the commands: activation URIs point at the server."""
    return {"OPENMFA_PUBLIC_URL": f"http://127.0.0.1:{port}", "OPENMFA_LOG_FORMAT": "json"}


def field(output: str, pattern: str) -> str:
    """The first group of ``pattern`` in a command's output."""
    match = re.search(pattern, output, re.MULTILINE)
    assert match, f"{pattern!r} not in {output!r}"
    return match.group(1)


def zbarimg(image: Path) -> str:
    """What a phone camera reads from the QR code (an SVG is rendered by librsvg first)."""
    if image.suffix == ".svg":
        rendered = image.with_suffix(".svg.png")
        subprocess.run(
            ["rsvg-convert", "--width", "400", "-o", str(rendered), str(image)], check=True
        )
        image = rendered
    result = subprocess.run(
        ["zbarimg", "-q", "--raw", str(image)], capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def oathtool(secret: str) -> str:
    result = subprocess.run(
        ["oathtool", "--totp", "-b", secret], capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def step() -> int:
    return int(time.time() // 30)


def same_step(*producers: Any) -> list[str]:
    """Call each producer in turn within one 30-second step (retry across a boundary)."""
    for _ in range(3):
        before = step()
        values = [str(produce()) for produce in producers]
        if step() == before:
            return values
    raise AssertionError("could not produce the codes within one time step")


def run_all(cli: Cli, commands: Sequence[Sequence[str]]) -> list[subprocess.CompletedProcess[str]]:
    """Independent commands: in this process one after another (the streams it swaps are the
    process's own), as subprocesses a few at a time (each costs an interpreter start-up)."""
    if cli.in_process:
        return [cli(*args, check=False) for args in commands]
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda args: cli(*args, check=False), commands))


def activation_uri(cli: Cli, user: str) -> str:
    return field(cli("activation", "create", user).stdout, r"^uri:\s+(\S+)$")


def enrol(live: Live, user: str) -> Path:
    """Add ``user`` with a reference authenticator; return its store."""
    live.cli("user", "add", user)
    store = live.files / f"{user}.json"
    live.cli("device", "activate", activation_uri(live.cli, user), "--store", str(store))
    return store


class Gateway:
    """The gateway API as a RADIUS bridge calls it."""

    def __init__(self, url: str, token: str, name: str = "") -> None:
        self.token = token
        self.name = name
        self.http = httpx.Client(
            base_url=url, headers={"authorization": f"Bearer {token}"}, timeout=30
        )

    def start(self, user: str, method: str = "push") -> httpx.Response:
        return self.http.post(
            "/gateway/v1/authentications",
            json={"user": user, "method": method, "context": {"client_name": "vpn"}},
        )

    def started(self, user: str) -> str:
        response = self.start(user)
        assert response.status_code == 201, response.text
        auth_id: str = response.json()["id"]
        return auth_id

    def state(self, auth_id: str) -> str:
        response = self.http.get(f"/gateway/v1/authentications/{auth_id}")
        assert response.status_code == 200, response.text
        state: str = response.json()["state"]
        return state

    def verify(self, user: str, code: str) -> dict[str, Any]:
        response = self.http.post("/gateway/v1/otp/verify", json={"user": user, "code": code})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def close(self) -> None:
        self.http.close()


def problem_type(response: httpx.Response) -> str:
    assert response.headers["content-type"].startswith("application/problem+json")
    return str(response.json()["type"]).rsplit("/", 1)[-1]


class LongPoll:
    """A raw ``GET ...?wait=N`` on its own connection, so the test knows the client port and
    can wait until the server has actually read the request before acting."""

    def __init__(self, port: int, auth_id: str, token: str, wait: int) -> None:
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=90)
        self.client_port: int = self.sock.getsockname()[1]
        self.sock.sendall(
            f"GET /gateway/v1/authentications/{auth_id}?wait={wait} HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        self.sent_at = time.monotonic()

    def wait_until_in_flight(self) -> None:
        wait_for(lambda: request_consumed(self.port, self.client_port), 10, "the server to read it")

    def response(self) -> tuple[int, dict[str, Any]]:
        """Read to EOF: the status code and the JSON body."""
        raw = b""
        try:
            while chunk := self.sock.recv(65536):
                raw += chunk
        finally:
            self.sock.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        return status, json.loads(body)


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """``openmfa db upgrade`` then ``openmfa run`` on a free port, for the whole module."""
    home = tmp_path_factory.mktemp("home")
    files = tmp_path_factory.mktemp("files")
    port = free_port()
    cli = Cli(home, **cli_env(port))
    cli("db", "upgrade")
    with ServerProcess(home, port, cli_env(port)) as server:
        yield Live(server, cli, files)


@pytest.fixture
def gateway(live: Live, request: pytest.FixtureRequest) -> Iterator[Gateway]:
    """A fresh API token (made with ``openmfa token create``) and a client using it."""
    name = f"gw-{request.node.name[5:40]}"
    created = live.cli("token", "create", name)
    assert "shown only now" in created.stderr
    client = Gateway(live.server.url, created.stdout.strip(), name)
    try:
        yield client
    finally:
        client.close()


# -- 1. the life of a user, exactly as in the issue ---------------------------------------------


@needs_tools
def test_the_whole_life_of_a_user_from_the_command_line(live: Live, gateway: Gateway) -> None:
    # End to end: the installed script in its own process, as the operator types it.
    cli, files = CliProcess(live.cli.home, **cli_env(live.server.port)), live.files
    gw, token = gateway, gateway.token

    added = cli(
        "user", "add", "alice", "--email", "alice@example.com", "--display-name", "Alice Liddell"
    )
    assert added.stdout.strip() == "user alice added"

    png, svg = files / "alice.png", files / "alice.svg"
    created = cli("activation", "create", "alice", "--qr-png", str(png), "--qr-svg", str(svg))
    code = field(created.stdout, r"^activation code for alice: (\S+)$")
    uri = zbarimg(png)
    assert uri == field(created.stdout, r"^uri:\s+(\S+)$")
    parts = urlsplit(uri)
    assert (parts.scheme, parts.netloc) == ("openmfa", "activate")
    assert parse_qs(parts.query) == {"url": [live.server.url], "code": [code]}
    assert len(code) >= 22  # >= 128 bits in base64url
    assert ET.fromstring(svg.read_text()).tag == "{http://www.w3.org/2000/svg}svg"  # noqa: S314
    assert zbarimg(svg) == uri  # the SVG is the same QR code, not just well-formed XML

    store = files / "alice.json"
    activated = cli("device", "activate", uri, "--store", str(store))
    assert "activated device dev_" in activated.stdout
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    stored = json.loads(store.read_text())
    assert stored["user"] == "alice"
    assert stored["url"] == live.server.url

    # A push started by the gateway shows on the device; approving wakes the gateway's poll.
    auth_id = gw.started("alice")
    pending = cli("device", "pending", "--store", str(store))
    assert auth_id in pending.stdout
    assert [
        c["id"]
        for c in json.loads(cli("device", "pending", "--store", str(store), "--json").stdout)
    ] == [auth_id]

    poll = LongPoll(live.server.port, auth_id, token, wait=25)
    poll.wait_until_in_flight()
    answered = cli("device", "answer", auth_id, "approve", "--store", str(store))
    assert answered.stdout.strip() == f"challenge {auth_id}: approved"
    status, body = poll.response()
    assert (status, body["state"]) == (200, "approved")
    assert time.monotonic() - poll.sent_at < 20  # woken by the answer, not by the 25 s limit
    assert "no pending challenges" in cli("device", "pending", "--store", str(store)).stdout

    # The offline code is the standard TOTP of the seed, and the gateway accepts it.
    shown, expected = same_step(
        lambda: cli("device", "code", "--store", str(store)).stdout.strip(),
        lambda: oathtool(stored["totp_secret"]),
    )
    assert re.fullmatch(r"\d{6}", shown)
    assert shown == expected
    assert gw.verify("alice", shown)["result"] == "accept"
    assert gw.verify("alice", shown)["result"] == "reject"  # a step is accepted only once

    # A standard OATH app: the otpauth:// QR decodes, and its secret gives oathtool's codes.
    oath_png, oath_svg = files / "oath.png", files / "oath.svg"
    oath = cli(
        "activation",
        "create",
        "alice",
        "--oath",
        "--qr-png",
        str(oath_png),
        "--qr-svg",
        str(oath_svg),
    )
    otpauth = zbarimg(oath_png)
    assert otpauth == field(oath.stdout, r"^uri:\s+(\S+)$")
    assert otpauth.startswith("otpauth://totp/OpenMFA:alice?")
    query = parse_qs(urlsplit(otpauth).query)
    secret = query["secret"][0]
    assert secret == field(oath.stdout, r"^secret: (\S+)$")
    assert query["issuer"] == ["OpenMFA"]
    assert query.get("algorithm", ["SHA1"]) == ["SHA1"]
    assert query.get("digits", ["6"]) == ["6"]
    assert query.get("period", ["30"]) == ["30"]
    assert ET.fromstring(oath_svg.read_text()).tag == "{http://www.w3.org/2000/svg}svg"  # noqa: S314
    assert zbarimg(oath_svg) == otpauth
    assert gw.verify("alice", oathtool(secret))["result"] == "accept"

    users = {u["name"]: u for u in json.loads(cli("user", "list", "--json").stdout)}
    alice = users["alice"]
    assert (alice["state"], alice["active_devices"], alice["pending_devices"]) == ("active", 2, 0)
    assert (alice["email"], alice["display_name"]) == ("alice@example.com", "Alice Liddell")
    assert alice["last_sign_in"] is not None
    table = cli("user", "list").stdout
    assert table.splitlines()[0].split()[:3] == ["NAME", "STATE", "DEVICES"]
    assert re.search(r"^alice\s+active\s+2 active, 0 pending\s+\d{4}-\d\d-\d\d ", table, re.M)

    # The audit trail lists what was done, oldest first, and never a secret.
    audit = cli("audit", "--user", "alice", "--json")
    entries = json.loads(audit.stdout)
    actions = [e["action"] for e in entries]
    for action in (
        "user.add",
        "activation.create",
        "device.activate",
        "auth.start",
        "challenge.answer",
        "otp.verify",
        "oath.enrol",
    ):
        assert action in actions, actions
    assert (
        actions.index("user.add")
        < actions.index("device.activate")
        < actions.index("challenge.answer")
    )
    assert {e["user_name"] for e in entries} == {"alice"}
    assert [e["result"] for e in entries if e["action"] == "otp.verify"].count("accept") == 2
    text_audit = cli("audit", "--user", "alice", "--since", "1h").stdout
    secrets = [code, token, stored["totp_secret"], stored["private_key"], secret]
    for where, text in (
        ("audit --json", audit.stdout),
        ("audit", text_audit),
        ("server log", live.server.log),
    ):
        for value in secrets:
            assert value not in text, f"a secret appears in the {where}"
    assert "Traceback" not in live.server.log


def test_openmfa_run_sets_its_start_up_heap_aside_from_garbage_collection(live: Live) -> None:
    """Full collections walking the start-up heap paused every request (docs/performance.md)."""
    frozen = field(live.server.log, r"start-up heap set aside from garbage collection: (\d+)")
    assert int(frozen) > 10_000  # the modules, SQLAlchemy's and pydantic's structures


# -- 2. the running server sees CLI changes at once ---------------------------------------------


def test_cli_changes_reach_the_running_server_without_a_restart(
    live: Live, gateway: Gateway
) -> None:
    cli, gw = live.cli, gateway
    assert live.server.process is not None
    pid = live.server.process.pid
    store = enrol(live, "bob")

    cli("user", "block", "bob", "--reason", "lost phone")
    blocked = gw.start("bob")
    assert (blocked.status_code, problem_type(blocked)) == (403, "user-blocked")
    cli("user", "unblock", "bob")
    auth_id = gw.started("bob")

    cli("policy", "set", "require_pin", "true")
    try:
        refused = cli.fails("device", "answer", auth_id, "approve", "--store", str(store))
        assert "pin-required" in refused
        assert gw.state(auth_id) == "pending"
        cli("user", "set-pin", "bob", "--pin-stdin", stdin=PIN + "\n")
        wrong = cli.fails(
            "device", "answer", auth_id, "approve", "--store", str(store), "--pin", "000000"
        )
        assert "wrong-pin" in wrong
        cli("device", "answer", auth_id, "approve", "--store", str(store), "--pin", PIN)
        assert gw.state(auth_id) == "approved"
    finally:
        cli("policy", "unset", "require_pin")

    cli("user", "disable", "bob")
    disabled = gw.start("bob")
    assert (disabled.status_code, problem_type(disabled)) == (403, "user-disabled")
    cli("user", "enable", "bob")
    assert gw.start("bob").status_code == 201

    assert cli("token", "revoke", gw.name).stdout.strip() == f"API token {gw.name} revoked"
    revoked = gw.start("bob")
    assert (revoked.status_code, problem_type(revoked)) == (401, "unauthorized")
    assert re.search(rf"^{gw.name}\s+\S+ \S+ UTC\s+\d{{4}}-", cli("token", "list").stdout, re.M)

    assert live.server.running()
    assert live.server.process.pid == pid
    assert PIN not in live.server.log


# -- 3. users, passwords, PINs, policies --------------------------------------------------------


def test_user_states_passwords_and_pins(live: Live) -> None:
    cli = live.cli
    cli("user", "add", "carol", "--password-stdin", stdin=PASSWORD + "\n")

    refusals = [
        (["user", "add", "CAROL"], None, "a user named 'CAROL' already exists"),
        (["user", "set-password", "carol", "--password-stdin"], "short\n", "8 characters"),
        (["user", "set-password", "carol", "--password-stdin"], "", "no password on standard"),
        (["user", "set-pin", "carol", "--pin-stdin"], "1234\n", "too easy to guess"),
        (["user", "set-pin", "carol", "--pin-stdin"], "\n", "no PIN on standard input"),
    ]
    messages = [cli.fails(*args, stdin=stdin) for args, stdin, _ in refusals]
    for (_, _, expected), message in zip(refusals, messages, strict=True):
        assert expected in message

    def listed(name: str) -> dict[str, Any]:
        users = {u["name"]: u for u in json.loads(cli("user", "list", "--json").stdout)}
        return dict(users[name])

    carol = listed("carol")
    assert (carol["state"], carol["active_devices"], carol["pending_devices"]) == ("active", 0, 0)
    assert carol["last_sign_in"] is None
    for action, expected in (
        ("disable", "disabled"),
        ("enable", "active"),
        ("block", "blocked"),
        ("unblock", "active"),
    ):
        done = cli("user", action, "Carol")  # names match case-insensitively
        assert done.stdout.strip() == f"user carol is now {expected}"
        if action == "block":
            assert listed("carol")["state"] == "blocked"

    changed = cli("user", "set-password", "carol", "--password-stdin", stdin="another " + PASSWORD)
    assert changed.stdout.strip() == "password of carol changed"
    shown = cli("user", "show", "carol").stdout
    assert "password:      set" in shown
    assert "PIN:           not set" in shown  # the refused PINs were not stored
    cli("user", "set-pin", "carol", "--pin-stdin", stdin=PIN + "\n")
    assert "PIN:           set" in cli("user", "show", "carol").stdout

    audit = cli("audit", "--user", "carol", "--json").stdout
    actions = [e["action"] for e in json.loads(audit)]
    for action in (
        "user.add",
        "user.disable",
        "user.enable",
        "user.block",
        "user.unblock",
        "user.set_pin",
    ):
        assert action in actions, actions
    for secret in (PASSWORD, PIN):
        assert secret not in audit
        assert secret not in live.server.log


def test_policies_global_and_per_user(live: Live) -> None:
    cli = live.cli

    def shown(*args: str) -> dict[str, tuple[str, str]]:
        lines = json.loads(cli("policy", "show", "--json", *args).stdout)
        return {p["key"]: (p["value"], p["source"]) for p in lines}

    # Independent commands first, side by side: refusals, the table, and a user for overrides.
    refusals = [
        (["policy", "set", "no_such_key", "1"], "unknown policy key 'no_such_key'; known keys:"),
        (["policy", "set", "require_pin", "maybe"], "invalid value 'maybe' for require_pin"),
        (
            ["policy", "set", "otp_max_failures", "0"],
            "invalid value '0' for otp_max_failures: expected a whole number from 1 to 100",
        ),
        (["policy", "set", "pin_min_length", "6", "--user", "nobody"], "no user named 'nobody'"),
        (["policy", "show", "--user", "nobody"], "no user named 'nobody'"),
    ]
    results = run_all(
        cli, [["user", "add", "dave"], ["policy", "show"], *(args for args, _ in refusals)]
    )
    assert results[0].returncode == 0, results[0]
    for (args, message), result in zip(refusals, results[2:], strict=True):
        assert result.returncode == 1, (args, result)
        assert result.stderr.startswith("openmfa: error: "), result.stderr
        assert message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    assert "require_pin" in results[2].stderr  # the unknown-key message lists the known keys

    defaults = shown()  # nothing refused was stored
    assert set(defaults) >= {"require_pin", "pin_min_length", "otp_max_failures"}
    assert {source for _, source in defaults.values()} == {"default"}
    assert defaults["require_pin"] == ("false", "default")
    assert defaults["otp_max_failures"] == ("5", "default")
    table = results[1].stdout.splitlines()
    assert table[0].split() == ["KEY", "VALUE", "FROM", "MEANING"]
    assert len(table) == len(defaults) + 1

    assert cli("policy", "set", "otp_max_failures", "3").stdout.strip() == (
        "otp_max_failures = 3 (global)"
    )
    try:
        cli("policy", "set", "pin_min_length", "6", "--user", "DAVE")
        everyone = shown()
        assert everyone["otp_max_failures"] == ("3", "global")
        assert everyone["pin_min_length"] == ("4", "default")
        dave = shown("--user", "dave")
        assert dave["otp_max_failures"] == ("3", "global")
        assert dave["pin_min_length"] == ("6", "user")
    finally:
        cli("policy", "unset", "otp_max_failures")
    assert shown() == defaults


# -- 4. help, usage errors, and errors without tracebacks ---------------------------------------


def command_paths() -> list[list[str]]:
    """Every command and subcommand of the argparse tree."""
    paths: list[list[str]] = []

    def walk(parser: argparse.ArgumentParser, path: list[str]) -> None:
        paths.append(path)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, [*path, name])

    walk(_parser(), [])
    return paths


def test_help_works_for_every_command(tmp_path: Path) -> None:
    paths = command_paths()
    names = {" ".join(p) for p in paths}
    assert {
        "run",
        "db upgrade",
        "user add",
        "user set-pin",
        "activation create",
        "policy set",
        "token revoke",
        "audit",
        "device activate",
        "device answer",
        "device code",
    } <= names
    assert len(paths) >= 30
    cli = Cli(tmp_path / "no-home-needed")
    results = run_all(cli, [[*p, "--help"] for p in paths])
    for path, result in zip(paths, results, strict=True):
        assert result.returncode == 0, (path, result.stderr)
        assert result.stdout.startswith(" ".join(["usage: openmfa", *path])), (path, result.stdout)
        assert result.stderr == ""
    assert not (tmp_path / "no-home-needed").exists()  # --help touches nothing


def test_bad_usage_exits_2(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    commands = [
        [],
        ["frobnicate"],
        ["user"],
        ["user", "frob"],
        ["user", "add"],
        ["user", "set-password", "alice"],
        ["user", "set-pin", "alice"],
        ["activation", "create", "alice", "--ttl", "soon"],
        ["device", "answer", "ch_x", "maybe", "--store", "x.json"],
        ["device", "answer", "ch_x", "approve"],
        ["audit", "--since", "yesterday"],
        ["run", "--port", "eighty"],
        ["--no-such-option", "user", "list"],
    ]
    for args, result in zip(commands, run_all(cli, commands), strict=True):
        assert result.returncode == 2, (args, result)
        assert "usage: openmfa" in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr


def test_errors_exit_1_with_one_clear_line(live: Live) -> None:
    cli, files = live.cli, live.files
    cli("user", "add", "frank")
    used_uri = activation_uri(cli, "frank")
    cli("device", "activate", used_uri, "--store", str(files / "frank.json"))
    expired_uri = activation_uri(cli, "frank")
    expired_code = parse_qs(urlsplit(expired_uri).query)["code"][0]
    # The shortest lifetime is a minute; age the row instead of waiting for it.
    with sqlite3.connect(live.cli.home / "openmfa.db", timeout=10) as db:
        db.execute(
            "UPDATE activation_codes SET expires_at = '2000-01-01 00:00:00.000000' "
            "WHERE code_hash = ?",
            (hashlib.sha256(expired_code.encode()).hexdigest(),),
        )
        assert db.total_changes == 1
    db.close()
    unreachable = f"http://127.0.0.1:{free_port()}"
    far_store = files / "far.json"
    far_store.write_text(
        json.dumps({**json.loads((files / "frank.json").read_text()), "url": unreachable})
    )
    unknown_uri = f"openmfa://activate?url={quote(live.server.url, safe='')}&code=nope"
    cases: list[tuple[list[str], str]] = [
        (["user", "block", "nobody"], "no user named 'nobody'"),
        (["activation", "create", "nobody"], "no user named 'nobody'"),
        (["user", "add", "FRANK"], "a user named 'FRANK' already exists"),
        (["user", "add", "bad name!"], "user names are"),
        (["activation", "create", "frank", "--ttl", "5s"], "from 1 minute to 7 days"),
        (["device", "activate", used_uri, "--store", str(files / "u.json")], "already used"),
        (["device", "activate", expired_uri, "--store", str(files / "e.json")], "expired"),
        (
            ["device", "activate", unknown_uri, "--store", str(files / "k.json")],
            "activation-code-invalid",
        ),
        (
            ["device", "activate", "https://example.com/", "--store", str(files / "n.json")],
            "not an OpenMFA activation URI",
        ),
        (
            ["device", "activate", used_uri, "--store", str(files / "frank.json")],
            "exists; pass --force",
        ),
        (
            [
                "device",
                "activate",
                activation_uri(cli, "frank"),
                "--store",
                str(files / "missing-dir" / "x.json"),
            ],
            "directory does not exist",
        ),
        (["device", "code", "--store", str(files / "missing.json")], "no authenticator store"),
        (["device", "pending", "--store", str(files / "missing.json")], "no authenticator store"),
        (
            [
                "device",
                "activate",
                f"openmfa://activate?url={quote(unreachable, safe='')}&code=x",
                "--store",
                str(files / "r.json"),
            ],
            f"cannot reach the OpenMFA server at {unreachable}",
        ),
        (["device", "pending", "--store", str(far_store)], "cannot reach the OpenMFA server"),
        (
            ["activation", "create", "frank", "--qr-png", str(files / "nope" / "q.png")],
            "directory does not exist",
        ),
        (["token", "revoke", "no-such-token"], "no-such-token"),
    ]
    results = run_all(cli, [args for args, _ in cases])
    for (args, message), result in zip(cases, results, strict=True):
        assert result.returncode == 1, (args, result)
        assert "Traceback" not in result.stderr, (args, result.stderr)
        assert result.stderr.startswith("openmfa: error: "), (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
    for name in ("u.json", "e.json", "k.json", "n.json", "r.json"):
        assert not (files / name).exists()
    refused = json.loads(cli("audit", "--action", "cli.refused", "--json").stdout)
    assert any("nobody" in e["detail"] for e in refused)


@pytest.mark.parametrize(
    "args", [["audit", "--json"], ["policy", "show"], ["--help"]], ids=["long", "short", "help"]
)
def test_a_reader_that_goes_away_gets_no_traceback(live: Live, args: list[str]) -> None:
    # Block-buffered stdout, as in a real pipeline: short output only fails when flushed.
    env = {k: v for k, v in live.cli.env.items() if k != "PYTHONUNBUFFERED"}
    process = subprocess.Popen(
        [str(EXE), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    assert process.stdout is not None
    assert process.stderr is not None
    process.stdout.close()  # like `openmfa ... | head -0`
    try:
        assert process.wait(timeout=60) == 1
        assert process.stderr.read() == b""
    finally:
        process.stderr.close()


# -- 5. the database and the server key ---------------------------------------------------------


def test_db_upgrade_is_required_idempotent_and_the_key_is_guarded(tmp_path: Path) -> None:
    home = tmp_path / "home"
    port = free_port()
    cli = Cli(home, **cli_env(port))

    before = run_all(cli, [["user", "list"], ["run", "--port", str(port)]])
    for result in before:
        assert result.returncode == 1, result
        assert result.stderr.startswith("openmfa: error: ")
        assert "run `openmfa db upgrade`" in result.stderr
        assert "Traceback" not in result.stderr
    assert "OpenMFA" not in before[1].stdout  # refused before the banner, nothing served

    head = migrations.head_revision()
    for _ in range(2):
        upgraded = cli("db", "upgrade")
        assert upgraded.stdout.startswith(f"database at {head}")
    assert cli("db", "current").stdout.strip() == head
    assert stat.S_IMODE(home.stat().st_mode) == 0o700

    cli("user", "add", "gina")
    assert (home / "openmfa.db").is_file()
    for path in home.glob("openmfa.db*"):  # -wal and -shm too, while they exist
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    key = home / "server.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert "gina" in cli("user", "list").stdout
    key.unlink()
    after = run_all(cli, [["user", "list"], ["run", "--port", str(port)]])
    for result in after:
        assert result.returncode == 1, result
        assert result.stderr.startswith("openmfa: error: the server key")
        assert "docs/operations.md" in result.stderr
        assert "Traceback" not in result.stderr
    assert not key.exists()  # never silently replaced by a new key


@pytest.mark.postgres
def test_db_upgrade_never_prints_the_database_password(tmp_path: Path, postgres_url: str) -> None:
    # The test server trusts local connections, so any password is accepted and ignored.
    with_password = postgres_url.replace("://postgres@", "://postgres:s3cret-Pa55@", 1)
    assert with_password != postgres_url
    cli = Cli(tmp_path, OPENMFA_DATABASE_URL=with_password)
    upgraded = cli("db", "upgrade")
    assert "s3cret-Pa55" not in upgraded.stdout + upgraded.stderr
    assert "postgres:***@127.0.0.1" in upgraded.stdout
    assert cli("db", "current").stdout.strip() == migrations.head_revision()


# -- 6. clean shutdown --------------------------------------------------------------------------


def test_sigterm_answers_long_polls_and_exits_0_promptly(tmp_path: Path) -> None:
    home, files = tmp_path / "home", tmp_path / "files"
    files.mkdir()
    port = free_port()
    cli = Cli(home, **cli_env(port))
    cli("db", "upgrade")
    cli("user", "add", "hana")
    with ServerProcess(home, port, cli_env(port)) as server:
        uri = activation_uri(cli, "hana")
        cli("device", "activate", uri, "--store", str(files / "hana.json"))
        token = cli("token", "create", "bridge").stdout.strip()
        gw = Gateway(server.url, token)
        try:
            auth_id = gw.started("hana")
        finally:
            gw.close()

        poll = LongPoll(port, auth_id, token, wait=50)
        poll.wait_until_in_flight()
        stopped_at = time.monotonic()
        assert server.process is not None
        server.process.terminate()  # SIGTERM
        status, body = poll.response()
        answered_after = time.monotonic() - stopped_at
        assert (status, body["id"], body["state"]) == (200, auth_id, "pending")
        assert answered_after < 5, answered_after
        assert server.process.wait(timeout=15) == 0
        exited_after = time.monotonic() - stopped_at
        assert exited_after < 10, exited_after
        log = server.log
        assert "Application shutdown complete" in log
        assert "Traceback" not in log
        assert token not in log
