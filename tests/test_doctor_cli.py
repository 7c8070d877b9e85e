"""``openmfa doctor`` as an operator runs it: a real subprocess against real data directories.

One running server (module scope) stands for a healthy set-up; every other test breaks one
thing in a copy of a migrated data directory, points ``public_url`` at that server (so the
reachability check passes) and expects exactly that one check to fail, with its fix.
"""

from __future__ import annotations

import json
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backend.crypto import load_or_create_key
from backend.store import migrations
from tests.fakes.apns import make_apns_key
from tests.support.process import Cli, ServerProcess, free_port
from tests.support.smtp import SmtpServer

SECRET = "kO3v9Zt1yQm8Rw2Lx5Np7Bc4Hd6Fg0Js"  # 32 characters


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def findings(result: Any) -> dict[str, list[dict[str, str]]]:
    """The ``--json`` report by check name."""
    by_check: dict[str, list[dict[str, str]]] = {}
    for finding in json.loads(result.stdout):
        by_check.setdefault(finding["check"], []).append(finding)
    return by_check


def errors(result: Any) -> set[str]:
    return {c for c, fs in findings(result).items() if any(f["level"] == "error" for f in fs)}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated data directory with its server key (created by a first command)."""
    home = tmp_path_factory.mktemp("template") / "home"
    cli = Cli(home)
    cli("db", "upgrade")
    cli("user", "list")  # opens the services once: the server key is created and recorded
    home.chmod(0o700)
    return home


@pytest.fixture(scope="module")
def healthy(template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    """A running server with its built-in RADIUS bridge and one well-configured client;
    the returned CLI has the server's settings in its environment."""
    home = tmp_path_factory.mktemp("healthy") / "home"
    shutil.copytree(template, home)
    port, radius = free_port(), free_udp_port()
    env = {
        "OPENMFA_PORT": str(port),
        "OPENMFA_RADIUS_PORT": str(radius),
        "OPENMFA_PUBLIC_URL": f"http://127.0.0.1:{port}",
    }
    cli = Cli(home, **env)
    cli("client", "add", "vpn", "--address", "10.0.0.0/8", "--secret-stdin", stdin=SECRET + "\n")
    with ServerProcess(home, port, env):
        yield cli


@pytest.fixture
def home(template: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "home"
    shutil.copytree(template, copy)
    return copy


def isolated(healthy: Cli) -> dict[str, str]:
    """``public_url`` is the healthy server; RADIUS off; a free HTTP port of its own."""
    return {
        "OPENMFA_PUBLIC_URL": healthy.env["OPENMFA_PUBLIC_URL"],
        "OPENMFA_RADIUS_PORT": "0",
        "OPENMFA_PORT": str(free_port()),
    }


@pytest.fixture
def cli(home: Path, healthy: Cli) -> Cli:
    """A CLI on a copy of the template, with :func:`isolated` settings."""
    return Cli(home, **isolated(healthy))


def test_a_healthy_set_up_passes(healthy: Cli) -> None:
    result = healthy("doctor")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert any(line.startswith("ok") and "database" in line for line in lines), lines
    report = findings(healthy("doctor", "--json"))
    assert "in use by the running OpenMFA server" in report["radius port"][0]["message"]
    assert "in use by the running OpenMFA server" in report["http port"][0]["message"]
    assert [f["level"] for f in report["radius clients"]] == ["ok"]
    assert report["server key"][0]["level"] == "ok"
    assert "matches the database" in report["server key"][0]["message"]
    assert any(f["level"] == "ok" and "answers" in f["message"] for f in report["public_url"])
    # http:// with no privacyIDEA token: worth fixing, not failing.
    assert [f["level"] for f in report["public_url"]] == ["warning", "ok"]
    assert errors(healthy("doctor", "--json", check=False)) == set()


def test_a_short_secret_and_no_message_authenticator_are_warnings(cli: Cli) -> None:
    cli("client", "add", "old", "--address", "10.1.0.0/16", "--secret-stdin", stdin="short\n")
    cli("client", "set", "old", "--no-require-message-authenticator")
    result = cli("doctor", "--json")
    assert result.returncode == 0
    report = findings(result)["radius clients"]
    assert [f["level"] for f in report] == ["warning", "warning"]
    assert "shorter than 16" in report[0]["message"]
    assert SECRET not in result.stdout
    assert "short\n" not in result.stdout


def test_a_readable_server_key_is_an_error(cli: Cli, home: Path) -> None:
    (home / "server.key").chmod(0o644)
    result = cli("doctor", check=False)
    assert result.returncode == 1
    assert f"fix: chmod 600 {home / 'server.key'}" in result.stdout
    assert errors(cli("doctor", "--json", check=False)) == {"server key"}


def test_the_wrong_server_key_is_an_error(cli: Cli, home: Path) -> None:
    (home / "server.key").unlink()
    load_or_create_key(home / "server.key", create=True)
    result = cli("doctor", "--json", check=False)
    assert result.returncode == 1
    assert errors(result) == {"server key"}
    assert "not the key" in findings(result)["server key"][0]["message"]


def test_a_missing_database_is_an_error_and_nothing_is_created(
    tmp_path: Path, healthy: Cli
) -> None:
    home = tmp_path / "empty"
    home.mkdir(mode=0o700)
    cli = Cli(home, **isolated(healthy))
    result = cli("doctor", check=False)
    assert result.returncode == 1
    assert "fix: run `openmfa db upgrade` to create it" in result.stdout
    assert list(home.iterdir()) == []  # the doctor only looks


def test_an_old_schema_is_an_error(tmp_path: Path, healthy: Cli) -> None:
    home = tmp_path / "old"
    home.mkdir(mode=0o700)
    migrations.upgrade(f"sqlite+aiosqlite:///{home / 'openmfa.db'}", "0007")
    cli = Cli(home, **isolated(healthy))
    result = cli("doctor", "--json", check=False)
    assert result.returncode == 1
    assert errors(result) == {"database"}
    database = findings(result)["database"][0]
    assert "schema 0007" in database["message"]
    assert "db upgrade" in database["fix"]


def test_a_busy_radius_port_is_an_error(cli: Cli) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        port = squatter.getsockname()[1]
        cli.env["OPENMFA_RADIUS_PORT"] = str(port)
        result = cli("doctor", "--json", check=False)
    assert result.returncode == 1
    assert errors(result) == {"radius port"}
    assert "another process" in findings(result)["radius port"][0]["message"]


def test_a_busy_http_port_is_an_error(cli: Cli) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        cli.env["OPENMFA_PORT"] = str(squatter.getsockname()[1])
        result = cli("doctor", "--json", check=False)
    assert result.returncode == 1
    assert errors(result) == {"http port"}
    assert "ss -tlpn" in findings(result)["http port"][0]["fix"]


def test_an_unreachable_public_url_is_an_error(cli: Cli) -> None:
    cli.env["OPENMFA_PUBLIC_URL"] = f"http://127.0.0.1:{free_port()}"
    result = cli("doctor", "--json", check=False)
    assert result.returncode == 1
    assert errors(result) == {"public_url"}


def test_an_unresolvable_public_url_is_a_warning(cli: Cli) -> None:
    cli.env["OPENMFA_PUBLIC_URL"] = "https://openmfa-doctor.invalid"  # never resolves (RFC 2606)
    result = cli("doctor", "--json", check=False)
    assert result.returncode == 0, result.stdout
    assert [f["level"] for f in findings(result)["public_url"]] == ["ok", "warning"]


def test_a_bad_apns_key_file_is_an_error(cli: Cli, home: Path) -> None:
    garbage = home / "AuthKey_BAD.p8"
    garbage.write_text("not a key")
    cli.env |= {
        "OPENMFA_APNS_KEY_FILE": str(garbage),
        "OPENMFA_APNS_KEY_ID": "ABCDEFGHIJ",
        "OPENMFA_APNS_TEAM_ID": "KLMNOPQRST",
        "OPENMFA_APNS_TOPIC": "org.openmfa.test",
    }
    result = cli("doctor", "--json", check=False)
    assert result.returncode == 1
    assert errors(result) == {"push APNs"}


def test_a_good_apns_key_loads_and_its_host_is_resolved(cli: Cli, home: Path) -> None:
    key = make_apns_key(home / "apns")
    cli.env |= {
        "OPENMFA_APNS_KEY_FILE": str(key.p8_path),
        "OPENMFA_APNS_KEY_ID": key.key_id,
        "OPENMFA_APNS_TEAM_ID": key.team_id,
        "OPENMFA_APNS_TOPIC": "org.openmfa.test",
        "OPENMFA_APNS_URL": "https://localhost:4443",
    }
    result = cli("doctor", "--json")
    assert [f["level"] for f in findings(result)["push APNs"]] == ["ok", "ok"]
    assert "localhost resolves" in findings(result)["push APNs"][1]["message"]


def test_smtp_is_probed_when_configured(cli: Cli) -> None:
    cli.env |= {
        "OPENMFA_SMTP_SECURITY": "none",
        "OPENMFA_SMTP_HOST": "127.0.0.1",
        "OPENMFA_MAIL_FROM": "mfa@example.com",
    }
    with SmtpServer() as smtp:
        cli.env["OPENMFA_SMTP_PORT"] = str(smtp.port)
        result = cli("doctor", "--json")
        assert findings(result)["smtp"][0]["level"] == "ok"
        assert smtp.messages == []  # a probe, no mail
    cli.env["OPENMFA_SMTP_PORT"] = str(free_port())
    result = cli("doctor", "--json", check=False)
    assert errors(result) == {"smtp"}


def test_settings_that_do_not_load_are_the_one_error(cli: Cli) -> None:
    cli.env["OPENMFA_PORT"] = "eighty"
    result = cli("doctor", check=False)
    assert result.returncode == 1
    assert result.stdout.startswith("error    settings")
    assert "port" in result.stdout
    assert "Traceback" not in result.stderr
