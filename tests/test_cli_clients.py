"""``openmfa client ...`` and ``openmfa token create --scope`` as an operator runs them: real
subprocesses on a real data directory, and one ``openmfa run`` that must see the changes."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.support.process import Cli, ServerProcess, free_port

SECRET = "Asa1-shared-secret-0123456789"
UPSTREAM_SECRET = "nps-upstream-secret-9876543210"
# The in-process bridge (when `openmfa run` has one) stays off: these tests need no UDP port.
ENV = {"OPENMFA_LOG_FORMAT": "json", "OPENMFA_RADIUS_PORT": "0"}


def run_all(
    cli: Cli, commands: Sequence[Sequence[str]], stdin: str | None = None
) -> list[subprocess.CompletedProcess[str]]:
    """Independent commands: in this process one after another (the streams it swaps are the
    process's own), as subprocesses a few at a time (each costs an interpreter start-up)."""
    if cli.in_process:
        return [cli(*args, stdin=stdin, check=False) for args in commands]
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda args: cli(*args, stdin=stdin, check=False), commands))


def database_bytes(home: Path) -> bytes:
    """The SQLite database as stored: the file, its WAL and shared memory."""
    return b"".join(path.read_bytes() for path in sorted(home.glob("openmfa.db*")))


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("home")
    Cli(path, **ENV)("db", "upgrade")
    return path


@pytest.fixture
def cli(home: Path) -> Cli:
    return Cli(home, **ENV)


@pytest.fixture
def upstream_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "nps.secret"
    path.write_text(UPSTREAM_SECRET + "\n", encoding="utf-8")
    return path


def test_the_life_of_a_client(cli: Cli, upstream_file: Path) -> None:
    added = cli(
        "client",
        "add",
        "ASA1",
        "--address",
        "10.0.0.0/24",
        "--address",
        "2001:db8::/64",
        "--secret-stdin",
        "--mode",
        "challenge",
        "--primary",
        "radius",
        "--upstream",
        "nps.example.com:1645",
        "--upstream-secret-file",
        str(upstream_file),
        "--upstream-timeout",
        "5",
        "--push-timeout",
        "40",
        "--prompt",
        "Approve on your phone or type the code",
        "--user-names",
        "map",
        "--realm-map",
        "partner.example={user}.partner",
        "--exempt-user",
        "svc-backup",
        "--exempt-network",
        "192.0.2.0/24",
        "--separator",
        "|",
        "--reply-attribute",
        "Filter-Id=vpn-users",
        "--reply-attribute",
        "Class=vpn",
        stdin=SECRET + "\n",
    )
    assert added.stdout.splitlines() == [
        "RADIUS client ASA1 added: mode challenge, primary radius, 2 addresses",
        "Set the gateway's RADIUS timeout above the push timeout (40 s), e.g. to 45 s or more.",
    ]
    assert added.stderr == ""  # a long secret, Message-Authenticator on: nothing to warn about

    listed, shown, shown_json, listed_json = run_all(
        cli,
        [
            ["client", "list"],
            ["client", "show", "asa1"],
            ["client", "show", "Asa1", "--json"],
            ["client", "list", "--json"],
        ],
    )
    table = listed.stdout.splitlines()
    assert table[0].split() == [
        "NAME",
        "ADDRESSES",
        "MODE",
        "PRIMARY",
        "FAILMODE",
        "UNENROLLED",
        "MSG-AUTH",
    ]
    assert table[1].split() == [
        "ASA1",
        "10.0.0.0/24,2001:db8::/64",
        "challenge",
        "radius",
        "secure",
        "reject",
        "required",
    ]
    lines = dict(line.split(":", 1) for line in shown.stdout.splitlines())
    assert lines["secret"].strip() == f"set ({len(SECRET)} bytes)"
    assert lines["upstream"].strip() == (
        f"nps.example.com:1645, timeout 5 s, secret set ({len(UPSTREAM_SECRET)} bytes)"
    )
    assert lines["user names"].strip() == "map (partner.example -> {user}.partner)"
    assert lines["reply attributes"].strip() == "Filter-Id=vpn-users; Class=vpn"
    assert lines["message-authenticator"].strip() == "required"
    described = json.loads(shown_json.stdout)
    assert json.loads(listed_json.stdout) == [described]
    assert described["secret"] == {"set": True, "bytes": len(SECRET), "short": False}
    assert described["upstream"] == {
        "host": "nps.example.com",
        "port": 1645,
        "timeout": 5.0,
        "secret": {"set": True, "bytes": len(UPSTREAM_SECRET), "short": False},
    }
    assert (described["push_timeout"], described["password_separator"]) == (40.0, "|")
    assert described["exempt_users"] == ["svc-backup"]

    rotated = cli(
        "client", "set", "asa1", "--secret-stdin", "--mode", "push", stdin="new-" + SECRET
    )
    assert rotated.stdout.strip() == "RADIUS client ASA1 changed: secret, mode"
    same = cli("client", "set", "asa1", "--mode", "push")
    assert same.stdout.strip() == "RADIUS client ASA1 unchanged"
    local = cli("client", "set", "asa1", "--primary", "local", "--clear-exempt-users")
    assert local.stdout.strip() == "RADIUS client ASA1 changed: primary, upstream, exempt_users"
    after = json.loads(cli("client", "show", "asa1", "--json").stdout)
    assert (after["primary"], after["upstream"], after["exempt_users"]) == ("local", None, [])
    assert after["secret"]["bytes"] == len("new-" + SECRET)

    removed = cli("client", "remove", "asa1")
    assert removed.stdout.strip() == "RADIUS client asa1 removed"
    gone = cli.fails("client", "show", "asa1")
    assert gone == "openmfa: error: no RADIUS client named 'asa1'\n"

    audit = cli("audit", "--json", "--limit", "1000").stdout
    actions = [(e["action"], e["result"], e["detail"]) for e in json.loads(audit)]
    assert [a for a in actions if a[0].startswith("radius_client.")] == [
        (
            "radius_client.add",
            "ok",
            "ASA1 mode=challenge primary=radius addresses=10.0.0.0/24,2001:db8::/64",
        ),
        ("radius_client.update", "ok", "ASA1: secret, mode"),
        ("radius_client.update", "unchanged", "ASA1"),
        ("radius_client.update", "ok", "ASA1: primary, upstream, exempt_users"),
        ("radius_client.remove", "ok", "ASA1"),
    ]
    outputs = [added, listed, shown, shown_json, listed_json, rotated, same, local, removed]
    stored = database_bytes(cli.home)
    for secret in (SECRET, "new-" + SECRET, UPSTREAM_SECRET):
        for result in outputs:
            assert secret not in result.stdout + result.stderr
        assert secret not in audit
        assert secret.encode() not in stored, "a secret is stored in clear text"


def test_warnings_go_to_stderr_and_the_command_still_succeeds(cli: Cli) -> None:
    short, blast, noted = run_all(
        cli,
        [
            ["client", "add", "short1", "--address", "10.1.0.1", "--secret-stdin"],
            [
                "client",
                "add",
                "old-vpn",
                "--address",
                "10.1.0.2",
                "--secret-stdin",
                "--no-require-message-authenticator",
            ],
            [
                "client",
                "add",
                "hostbits",
                "--address",
                "10.1.1.77/24",
                "--secret-stdin",
                "--exempt-network",
                "192.0.2.9/24",
                "--mode",
                "otp",
            ],
        ],
        stdin="abcdef\n",
    )
    assert short.returncode == 0, short.stderr
    assert short.stderr == (
        "openmfa: warning: the shared secret of short1 is short (6 bytes); "
        "use at least 16 random characters, better 32\n"
    )
    assert blast.returncode == 0, blast.stderr
    assert "BlastRADIUS" in blast.stderr
    assert "CVE-2024-3596" in blast.stderr
    assert "OFF" in cli("client", "list").stdout.split("old-vpn", 1)[1].splitlines()[0]
    assert noted.returncode == 0, noted.stderr
    assert noted.stderr.splitlines()[:2] == [
        "openmfa: note: 10.1.1.77/24 has host bits set; it is taken as 10.1.1.0/24",
        "openmfa: note: 192.0.2.9/24 has host bits set; it is taken as 192.0.2.0/24",
    ]
    assert "timeout" not in noted.stdout  # otp mode holds nothing open
    turned_on = cli("client", "set", "old-vpn", "--require-message-authenticator")
    assert turned_on.stderr == ""
    turned_off = cli("client", "set", "old-vpn", "--no-require-message-authenticator")
    assert "BlastRADIUS" in turned_off.stderr


def test_refusals_exit_1_with_one_clear_line(cli: Cli, upstream_file: Path) -> None:
    """What the command line adds to the rules (tested one by one in test_radius_clients)."""
    cli("client", "add", "taken", "--address", "10.2.0.0/24", "--secret-stdin", stdin=SECRET)
    add = ["client", "add", "c1", "--address", "10.3.0.0/24", "--secret-stdin"]
    long_secret = "s" * 129
    cases: list[tuple[list[str], str | None, str]] = [
        (
            ["client", "add", "TAKEN", "--address", "10.9.0.0/24", "--secret-stdin"],
            SECRET,
            "a RADIUS client named 'TAKEN' already exists",
        ),
        (
            ["client", "add", "c2", "--address", "10.2.0.0/24", "--secret-stdin"],
            SECRET,
            "10.2.0.0/24 is already an address of the client 'taken'",
        ),
        ([*add], "", "no shared secret on standard input"),
        ([*add], long_secret, "the shared secret has 129 bytes; at most 128 are allowed"),
        (
            [*add[:4], "vpn.example.com", "--secret-stdin"],
            SECRET,
            "address 'vpn.example.com' is not an IP address or a network",
        ),
        ([*add, "--primary", "radius", "--upstream", "nps"], SECRET, "--upstream-secret-file"),
        (
            [
                *add,
                "--primary",
                "radius",
                "--upstream",
                "nps:99999",
                "--upstream-secret-file",
                str(upstream_file),
            ],
            SECRET,
            "upstream port",
        ),
        (
            [
                *add,
                "--primary",
                "radius",
                "--upstream",
                "nps",
                "--upstream-secret-file",
                str(upstream_file.with_name("missing")),
            ],
            SECRET,
            "No such file or directory",
        ),
        ([*add, "--reply-attribute", "Frobnicate=1"], SECRET, "unknown reply attribute"),
        ([*add, "--realm-map", "a.example={user}"], SECRET, "only used with user-names map"),
        (["client", "set", "taken"], None, "nothing to change"),
        (["client", "set", "nope", "--mode", "otp"], None, "no RADIUS client named 'nope'"),
        (["client", "remove", "nope"], None, "no RADIUS client named 'nope'"),
    ]
    results = [cli(*args, stdin=stdin, check=False) for args, stdin, _ in cases]
    for (args, _, message), result in zip(cases, results, strict=True):
        assert result.returncode == 1, (args, result)
        assert "Traceback" not in result.stderr, (args, result.stderr)
        assert result.stderr.startswith("openmfa: error: "), (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert long_secret not in result.stderr
    names = [c["name"] for c in json.loads(cli("client", "list", "--json").stdout)]
    assert "c1" not in names
    assert "c2" not in names


def test_bad_usage_exits_2(cli: Cli) -> None:
    commands = [
        ["client"],
        ["client", "add", "c1", "--secret-stdin"],  # no --address
        ["client", "add", "c1", "--address", "10.0.0.1"],  # no --secret-stdin
        ["client", "add", "c1", "--address", "10.0.0.1", "--secret", "s3cret"],
        ["client", "add", "c1", "--address", "10.0.0.1", "--secret-stdin", "--mode", "sms"],
        ["client", "add", "c1", "--address", "10.0.0.1", "--secret-stdin", "--primary", "kerberos"],
        ["client", "add", "c1", "--address", "10.0.0.1", "--secret-stdin", "--push-timeout", "x"],
        ["client", "set", "c1", "--exempt-user", "a", "--clear-exempt-users"],
        ["client", "set", "c1", "--failmode", "open"],
        ["client", "show"],
        ["token", "create", "t1", "--scope", "admin"],
    ]
    for args, result in zip(commands, run_all(cli, commands), strict=True):
        assert result.returncode == 2, (args, result)
        assert "usage: openmfa" in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr


def test_cli_changes_reach_the_running_server(cli: Cli, home: Path) -> None:
    created = run_all(
        cli,
        [
            ["token", "create", "bridge-1", "--scope", "bridge"],
            ["token", "create", "gw-1"],
        ],
    )
    bridge_token, gateway_token = (r.stdout.strip() for r in created)
    assert "(scope bridge) created; it is shown only now." in created[0].stderr
    assert "(scope gateway) created" in created[1].stderr
    tokens = cli("token", "list").stdout.splitlines()
    assert tokens[0].split() == ["NAME", "CREATED", "REVOKED", "SCOPE"]
    scopes = {line.split()[0]: line.split()[-1] for line in tokens[1:]}
    assert (scopes["bridge-1"], scopes["gw-1"]) == ("bridge", "gateway")

    port = free_port()
    with (
        ServerProcess(home, port, ENV) as server,
        httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {bridge_token}"}
        ) as http,
    ):
        first = http.get("/gateway/v1/radius/clients")
        assert first.status_code == 200, first.text
        etag = first.headers["etag"]
        assert (
            http.get("/gateway/v1/radius/clients", headers={"If-None-Match": etag}).status_code
            == 304
        )
        forbidden = httpx.get(
            server.url + "/gateway/v1/radius/clients",
            headers={"Authorization": f"Bearer {gateway_token}"},
        )
        assert forbidden.status_code == 403

        cli("client", "add", "rdgw", "--address", "10.20.0.5", "--secret-stdin", stdin=SECRET)
        changed = http.get("/gateway/v1/radius/clients", headers={"If-None-Match": etag})
        assert changed.status_code == 200
        assert changed.headers["etag"] != etag
        rdgw = next(c for c in changed.json()["clients"] if c["name"] == "rdgw")
        assert (rdgw["addresses"], rdgw["secret"], rdgw["mode"]) == (
            ["10.20.0.5"],
            SECRET,
            "push",
        )
        cli("client", "remove", "rdgw")
        final = http.get("/gateway/v1/radius/clients", headers={"If-None-Match": etag})
        assert all(c["name"] != "rdgw" for c in final.json()["clients"])
        log = server.log
    assert SECRET not in log
    assert bridge_token not in log
    assert "Traceback" not in log
