"""``openmfa`` as a new operator meets it (issue 13, "followed as a new user would"): every
option explains itself, ``policy set`` names its keys, a typo gets the subcommand's usage and a
suggestion, and users can be deleted and renamed. Real subprocesses on a fresh data directory.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
from pathlib import Path

import pytest

from backend.cli.main import _parser
from backend.domain.policy import KEYS
from tests.support.process import Cli


def actions(
    parser: argparse.ArgumentParser, path: str = "openmfa"
) -> list[tuple[str, argparse.Action]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += actions(sub, f"{path} {name}")
        elif action.option_strings and action.dest != "help":
            found.append((path, action))
    return found


def test_every_option_has_a_help_text() -> None:
    missing = [
        f"{path} {'/'.join(a.option_strings)}" for path, a in actions(_parser()) if not a.help
    ]
    assert missing == []


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    cli = Cli(tmp_path / "home")
    cli("db", "upgrade")
    return cli


def test_help_texts_that_were_missing(cli: Cli) -> None:
    add = cli("user", "add", "--help").stdout
    assert "--email EMAIL" in add
    assert "e-mail address" in add
    assert "--display-name" in add
    assert "name shown" in add
    audit = cli("audit", "--help").stdout
    assert "only this user's entries" in audit
    assert "newest entries" in audit
    assert "JSON" in audit
    answer = cli("device", "answer", "--help").stdout
    assert "the user's approval PIN" in answer


def test_policy_set_lists_its_keys(cli: Cli) -> None:
    text = cli("policy", "set", "--help").stdout
    for key in KEYS.values():
        assert key.name in text
    assert "number_matching_fallback" in text
    error = cli.fails("policy", "set", "--help-me", status=2)
    assert error.startswith("usage: openmfa policy set")


@pytest.mark.parametrize(
    ("args", "usage", "hint"),
    [
        (["user", "add", "carol", "--emial", "x@example.com"], "openmfa user add", "--email"),
        (["user", "add", "carol", "--display_name", "Carol"], "openmfa user add", "--display-name"),
        (["audit", "--limt", "5"], "openmfa audit", "--limit"),
        (["user", "list", "--jsn"], "openmfa user list", "--json"),
        (["policy", "show", "--usr", "carol"], "openmfa policy show", "--user"),
        (["user", "add", "carol", "extra"], "openmfa user add", None),
    ],
)
def test_a_typo_gets_the_subcommands_usage_and_a_suggestion(
    cli: Cli, args: list[str], usage: str, hint: str | None
) -> None:
    error = cli.fails(*args, status=2)
    assert error.startswith(f"usage: {usage}"), error
    assert "unrecognized arguments" in error
    if hint is not None:
        assert f"did you mean {hint}?" in error, error
    assert "COMMAND ..." not in error  # not the top-level usage


def rows(cli: Cli, sql: str, *params: object) -> list[tuple[object, ...]]:
    with sqlite3.connect(cli.home / "openmfa.db") as db:
        result = db.execute(sql, params).fetchall()
    db.close()
    return result


def test_user_delete(cli: Cli) -> None:
    cli("user", "add", "root", "--admin")
    cli("user", "add", "carol", "--email", "carol@example.com")
    cli("activation", "create", "carol", "--oath")
    cli("activation", "create", "carol")
    cli("policy", "set", "require_pin", "true", "--user", "carol")
    (carol_id,) = rows(cli, "SELECT id FROM users WHERE name_key = 'carol'")[0]
    # Not without a confirmation: --yes, or typing the name on a terminal.
    refused = cli.fails("user", "delete", "carol")
    assert "--yes" in refused
    assert cli.fails("user", "delete", "carol", stdin="carol\n")  # stdin is not a terminal
    deleted = cli("user", "delete", "carol", "--yes").stdout
    assert "user carol deleted" in deleted
    assert "1 device" in deleted
    assert "no user named 'carol'" in cli.fails("user", "show", "carol")
    for table in ("devices", "activation_codes", "web_sessions", "invitations"):
        count = f"SELECT count(*) FROM {table} WHERE user_id = ?"  # noqa: S608 (our names)
        assert rows(cli, count, carol_id) == [(0,)]
    assert rows(cli, "SELECT count(*) FROM policies WHERE scope = ?", f"user:{carol_id}") == [(0,)]
    # The audit trail keeps everything, the deletion included.
    trail = json.loads(cli("audit", "--user", "carol", "--json").stdout)
    assert [e["action"] for e in trail][:1] == ["user.add"]
    assert trail[-1]["action"] == "user.delete"
    assert trail[-1]["actor"].startswith("cli:")
    # A new carol starts from nothing: no devices, no overrides.
    cli("user", "add", "carol")
    policy = json.loads(cli("policy", "show", "--user", "carol", "--json").stdout)
    assert {p["key"]: p["source"] for p in policy}["require_pin"] == "default"
    assert "no devices" in cli("user", "show", "carol").stdout


def test_user_delete_refuses_what_would_lose_something(cli: Cli) -> None:
    cli("user", "add", "root", "--admin")
    assert "last administrator" in cli.fails("user", "delete", "root", "--yes")
    cli("user", "add", "svc")
    cli("client", "add", "vpn", "--address", "127.0.0.1", "--secret-stdin",
        "--exempt-user", "svc", stdin="a-long-enough-shared-secret\n")  # fmt: skip
    # A later user of the same name would inherit the exemption.
    assert "exempt on RADIUS client vpn" in cli.fails("user", "delete", "svc", "--yes")
    assert "exempt on RADIUS client vpn" in cli.fails("user", "rename", "svc", "svc2")
    cli("user", "add", "dave")
    (dave_id,) = rows(cli, "SELECT id FROM users WHERE name_key = 'dave'")[0]
    with sqlite3.connect(cli.home / "openmfa.db") as db:
        db.execute(
            "INSERT INTO fraud_reports (user_id, challenge_id, client_name, client_ip, state, "
            "created_at, notify_state, notify_attempts, reviewed_by) "
            "VALUES (?, 'ch_x', 'vpn', '10.0.0.1', 'open', '2026-01-01 00:00:00.000000', "
            "'none', 0, '')",
            (dave_id,),
        )
    db.close()
    assert "open fraud report" in cli.fails("user", "delete", "dave", "--yes")
    assert rows(cli, "SELECT count(*) FROM users") == [(3,)]


def test_user_rename(cli: Cli) -> None:
    cli("user", "add", "root", "--admin")
    cli("user", "add", "carol")
    cli("activation", "create", "carol", "--oath")
    cli("policy", "set", "require_pin", "true", "--user", "carol")
    assert "renamed to dave" in cli("user", "rename", "carol", "dave").stdout
    assert "no user named 'carol'" in cli.fails("user", "show", "carol")
    show = cli("user", "show", "dave").stdout
    assert "name:          dave" in show
    assert "oath" in show  # the device came along
    policy = json.loads(cli("policy", "show", "--user", "dave", "--json").stdout)
    assert {p["key"]: p["source"] for p in policy}["require_pin"] == "user"
    # Only the case changes: allowed (the same user).
    cli("user", "rename", "dave", "Dave")
    assert "name:          Dave" in cli("user", "show", "dave").stdout
    assert "already exists" in cli.fails("user", "rename", "Dave", "ROOT")
    for bad in ("bad name!", "_dave", "", "a" * 129):
        assert "user names are" in cli.fails("user", "rename", "Dave", bad), bad
    assert "no user named 'nobody'" in cli.fails("user", "rename", "nobody", "somebody")
    trail = json.loads(cli("audit", "--action", "user.rename", "--json").stdout)
    assert [(e["user_name"], e["detail"]) for e in trail] == [
        ("dave", "from carol"),
        ("dave", "from dave"),
    ]
