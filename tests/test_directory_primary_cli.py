"""``openmfa client add|set|show|list`` with ``--primary ldap --directory NAME``, and
``openmfa user set-password`` refusing a user from a directory, as an operator runs them."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests.support.process import Cli

SECRET = "Asa1-shared-secret-0123456789"
ENV = {"OPENMFA_LOG_FORMAT": "json", "OPENMFA_RADIUS_PORT": "0"}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    Cli(tmp_path, **ENV)("db", "upgrade")
    # A directory row as `openmfa directory add` leaves it (the bind password is not used).
    with sqlite3.connect(tmp_path / "openmfa.db") as db:
        db.execute(
            "INSERT INTO directories (name, name_key, kind, urls, bind_dn, bind_password_enc, "
            "base_dn, user_filter, group_dn, admin_group_dn, attributes, connect_timeout, "
            "search_timeout, page_size, sync_interval, disable_percent, disable_minimum, "
            "created_at, updated_at) VALUES ('Corp', 'corp', 'ad', '[\"ldaps://127.0.0.1:1\"]', "
            "'CN=svc', x'', 'DC=corp', '', '', '', '{}', 1, 1, 500, 3600, 10, 5, "
            "'2026-01-01 00:00:00', '2026-01-01 00:00:00')"
        )
    return tmp_path


def test_client_with_primary_ldap(home: Path) -> None:
    cli = Cli(home, **ENV)
    add = ["client", "add", "asa1", "--address", "10.0.0.0/24", "--secret-stdin"]
    refused = cli(*add, "--primary", "ldap", stdin=SECRET + "\n", check=False)
    assert refused.returncode == 1
    assert "primary ldap needs the directory whose passwords it checks (--directory)" in (
        refused.stderr
    )
    refused = cli(*add, "--primary", "ldap", "--directory", "nope", stdin=SECRET, check=False)
    assert "no directory named 'nope'" in refused.stderr
    refused = cli(*add, "--primary", "local", "--directory", "corp", stdin=SECRET, check=False)
    assert "a directory is only for primary ldap" in refused.stderr

    added = cli(
        *add, "--primary", "ldap", "--directory", "CORP", "--mode", "challenge", stdin=SECRET
    )
    assert added.stdout.splitlines()[0] == (
        "RADIUS client asa1 added: mode challenge, primary ldap (directory Corp), 1 address"
    )
    shown = cli("client", "show", "asa1").stdout
    assert "primary:               ldap" in shown
    assert "directory:             Corp" in shown
    described = json.loads(cli("client", "show", "asa1", "--json").stdout)
    assert (described["primary"], described["directory"]) == ("ldap", "Corp")
    assert "ldap (Corp)" in cli("client", "list").stdout

    changed = cli("client", "set", "asa1", "--primary", "local").stdout.strip()
    assert changed == "RADIUS client asa1 changed: primary, directory"
    described = json.loads(cli("client", "show", "asa1", "--json").stdout)
    assert (described["primary"], described["directory"]) == ("local", None)


def test_set_password_refuses_directory_users_before_reading_it(home: Path) -> None:
    cli = Cli(home, **ENV)
    cli("user", "add", "alice")
    with sqlite3.connect(home / "openmfa.db") as db:
        db.execute("UPDATE users SET directory_id = 1, external_id = 'g-1' WHERE name = 'alice'")
    # Nothing on stdin: a local user would be refused for that, a directory user first.
    result = cli("user", "set-password", "alice", "--password-stdin", stdin="", check=False)
    assert result.returncode == 1
    assert "alice comes from the directory 'Corp'" in result.stderr
    assert "change it there" in result.stderr
    assert "no password on standard input" not in result.stderr
    cli("user", "add", "lena")
    cli("user", "set-password", "lena", "--password-stdin", stdin="a local password\n")
