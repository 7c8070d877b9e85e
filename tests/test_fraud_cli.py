"""Fraud reports from the command line, against a real ``openmfa run`` and a local SMTP server:
the reference authenticator answers ``fraud`` through the server (which sends the e-mail), then
``openmfa fraud list`` / ``fraud review`` / ``user unblock`` act on the report.
"""

from __future__ import annotations

import getpass
import json
import re
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.process import Cli, ServerProcess, free_port, wait_for
from tests.support.smtp import SmtpServer

ACTOR = f"cli:{getpass.getuser()}"


@dataclass
class Live:
    server: ServerProcess
    cli: Cli
    smtp: SmtpServer
    files: Path
    gateway: httpx.Client


def env(port: int, smtp_port: int) -> dict[str, str]:
    return {
        "OPENMFA_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "OPENMFA_SMTP_HOST": "127.0.0.1",
        "OPENMFA_SMTP_PORT": str(smtp_port),
        "OPENMFA_SMTP_SECURITY": "none",
        "OPENMFA_MAIL_FROM": "mfa@example.com",
        "OPENMFA_FRAUD_NOTIFY_TO": "soc@example.com",
    }


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    home = tmp_path_factory.mktemp("home")
    files = tmp_path_factory.mktemp("files")
    port = free_port()
    with SmtpServer() as smtp:
        cli = Cli(home, **env(port, smtp.port))
        cli("db", "upgrade")
        token = cli("token", "create", "vpn").stdout.strip()
        with (
            ServerProcess(home, port, env(port, smtp.port)) as server,
            httpx.Client(
                base_url=server.url, headers={"authorization": f"Bearer {token}"}, timeout=30
            ) as gateway,
        ):
            yield Live(server, cli, smtp, files, gateway)


def enrol(live: Live, user: str) -> Path:
    """``user`` with a reference authenticator; its store."""
    live.cli("user", "add", user, "--email", f"{user}@example.com")
    created = live.cli("activation", "create", user).stdout
    uri = re.search(r"^uri:\s+(\S+)$", created, re.MULTILINE)
    assert uri is not None
    store = live.files / f"{user}.json"
    live.cli("device", "activate", uri.group(1), "--store", str(store), "--name", f"{user}-phone")
    return store


def start(live: Live, user: str, client_ip: str = "203.0.113.9") -> dict[str, Any]:
    response = live.gateway.post(
        "/gateway/v1/authentications",
        json={
            "user": user,
            "method": "push",
            "context": {"client_name": "vpn", "client_ip": client_ip, "nas_identifier": "asa1"},
        },
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def reports(live: Live, state: str = "all") -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = json.loads(
        live.cli("fraud", "list", "--state", state, "--json").stdout
    )
    return listed


def notify_state(live: Live, challenge: str) -> str | None:
    """Read straight from the server's SQLite file (read-only): cheaper than a command."""
    database = live.cli.home / "openmfa.db"
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        row = db.execute(
            "SELECT notify_state FROM fraud_reports WHERE challenge_id = ?", (challenge,)
        ).fetchone()
    return None if row is None else str(row[0])


def report_fraud(live: Live, user: str) -> tuple[str, dict[str, Any]]:
    """``user``'s phone answers a push with fraud (through the server); the challenge id and
    the report once its e-mail is sent."""
    store = enrol(live, user)
    challenge = start(live, user)["id"]
    answered = live.cli("device", "answer", challenge, "fraud", "--store", str(store))
    assert answered.stdout.strip() == f"challenge {challenge}: fraud"

    wait_for(lambda: notify_state(live, challenge) == "sent", 30, f"the e-mail about {challenge}")
    (report,) = [r for r in reports(live) if r["challenge_id"] == challenge]
    return challenge, report


def test_a_fraud_answer_is_mailed_listed_and_reviewed(live: Live) -> None:
    cli = live.cli
    challenge, report = report_fraud(live, "alice")

    (mail,) = [
        m for m in live.smtp.messages if m.message["X-OpenMFA-Fraud-Report"] == str(report["id"])
    ]
    assert mail.rcpt_tos == ["soc@example.com"]
    assert f"Sign-in:      {challenge} (push)" in mail.message.get_content()
    varying = {"created_at": None, "notified_at": None, "device_id": None, "started_at": None}
    assert report | varying == {
        "id": report["id"],
        "state": "open",
        "created_at": None,
        "user_name": "alice",
        "user_key": "alice",
        "display_name": "",
        "user_email": "alice@example.com",
        "user_blocked": True,
        "challenge_id": challenge,
        "method": "push",
        "challenge_state": "fraud",
        "started_at": None,
        "answered_by": report["device_id"],
        "device_id": None,
        "device_name": "alice-phone",
        "device_platform": "reference",
        "client_name": "vpn",
        "client_ip": "203.0.113.9",
        "nas_identifier": "asa1",
        "notify_state": "sent",
        "notify_attempts": 1,
        "notified_at": None,
        "reviewed_at": None,
        "reviewed_by": "",
    }
    assert report["device_id"].startswith("dev_")

    table = cli("fraud", "list").stdout.splitlines()
    assert table[0].split() == [
        "ID",
        "FILED",
        "USER",
        "STATE",
        "SIGN-IN",
        "GATEWAY",
        "CLIENT",
        "IP",
        "REPORTED",
        "WITH",
        "E-MAIL",
        "REVIEWED",
    ]
    (row,) = [line for line in table[1:] if challenge in line]
    for cell in ("alice (blocked)", "open", f"{challenge} (fraud)", "vpn", "203.0.113.9"):
        assert cell in row
    assert f"alice-phone ({report['device_id']})" in row
    assert "sent 20" in row

    reviewed = cli("fraud", "review", str(report["id"])).stdout
    assert reviewed == (
        f"fraud report {report['id']} of alice marked reviewed\n"
        "alice is still blocked; `openmfa user unblock alice` once the account is safe\n"
    )
    assert challenge not in cli("fraud", "list").stdout
    (after,) = [r for r in reports(live, "reviewed") if r["id"] == report["id"]]
    assert (after["state"], after["reviewed_by"]) == ("reviewed", ACTOR)
    assert after["reviewed_at"] is not None

    again = cli.fails("fraud", "review", str(report["id"]))
    assert f"fraud report {report['id']} was already reviewed by {ACTOR} at " in again
    assert cli.fails("fraud", "review", "999999") == "openmfa: error: no fraud report 999999\n"
    audit = json.loads(cli("audit", "--action", "cli.refused", "--json").stdout)
    assert any(e["detail"] == "fraud: no fraud report 999999" for e in audit)
    actions = {e["action"] for e in json.loads(cli("audit", "--user", "alice", "--json").stdout)}
    assert {"fraud.report", "fraud.notify", "fraud.review"} <= actions


def test_unblock_after_a_fraud_report_reviews_it_and_pushes_work_again(live: Live) -> None:
    cli = live.cli
    _, report = report_fraud(live, "bob")
    refused = live.gateway.post("/gateway/v1/authentications", json={"user": "bob"})
    assert refused.status_code == 403, refused.text

    unblocked = cli("user", "unblock", "bob").stdout
    assert unblocked == (
        f"open fraud report(s) {report['id']} of bob marked reviewed\nuser bob is now active\n"
    )

    (after,) = [r for r in reports(live) if r["id"] == report["id"]]
    assert (after["state"], after["reviewed_by"], after["user_blocked"]) == (
        "reviewed",
        ACTOR,
        False,
    )
    # Unblocked with no open report left, bob gets pushes again and can approve.
    again = start(live, "bob")
    assert again["method"] == "push"
    store = live.files / "bob.json"
    answered = cli("device", "answer", again["id"], "approve", "--store", str(store))
    assert answered.stdout.strip() == f"challenge {again['id']}: approved"
    assert "marked reviewed" not in cli("user", "unblock", "bob").stdout  # nothing left open


def test_list_states_and_usage_errors(live: Live) -> None:
    cli = live.cli
    assert "usage: openmfa" in cli.fails("fraud", "review", "abc", status=2)
    assert "usage: openmfa" in cli.fails("fraud", "list", "--state", "closed", status=2)
    assert cli.fails("fraud", "list", "--user", "nobody-here").startswith("openmfa: error: ")
    cli("user", "add", "carol")
    assert cli("fraud", "list", "--user", "carol").stdout == "no open fraud reports of carol\n"
    assert cli("fraud", "list", "--user", "carol", "--state", "all").stdout == (
        "no fraud reports of carol\n"
    )
    assert json.loads(cli("fraud", "list", "--user", "carol", "--json").stdout) == []
    usage = cli("fraud", "--help").stdout
    assert "list      list fraud reports" in usage
    assert "review    mark a report reviewed" in usage


def test_run_refuses_a_half_configured_mail_setup(tmp_path: Path) -> None:
    cli = Cli(tmp_path, OPENMFA_FRAUD_NOTIFY_TO="soc@example.com", OPENMFA_RADIUS_PORT="0")
    cli("db", "upgrade")

    error = cli.fails("run", "--port", str(free_port()))

    assert error.startswith("openmfa: error: fraud_notify_to is set but smtp_host is not")
    assert error.count("\n") == 1
