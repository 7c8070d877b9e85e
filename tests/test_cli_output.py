"""What ``openmfa`` prints cannot be forged (issue 13, finding 13): a user name, display name,
e-mail, block reason or audit detail holding a line break, a carriage return or a terminal
escape shows up escaped in every table and line, and ``--json`` stays JSON with the text as it
is stored."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from backend.cli.output import clean, table
from tests.support.process import Cli

FORGED = "x\n2026-01-01 00:00:00 UTC  cli:root  alice  local  user.unblock  ok"
ESCAPES = "\x1b[2J\x1b]0;pwned\x07\rover\u202egnp.exe\x85\u2028"


def test_clean_escapes_every_control_character() -> None:
    assert clean("a\nb\rc\td") == "a\\nb\\rc\\td"
    assert clean("\x1b[31mred") == "\\x1b[31mred"
    assert clean("\x00\x7f\x85\x9b") == "\\x00\\x7f\\x85\\x9b"
    assert clean("bidi \u202e and \u2066 lines \u2028\u2029") == (
        "bidi \\u202e and \\u2066 lines \\u2028\\u2029"
    )
    for kept in ("alice", "Zoë Ünal", "DOMAIN\\alice", "名前", "a  b"):
        assert clean(kept) == kept


def test_a_table_cell_never_breaks_a_line_or_reaches_the_terminal() -> None:
    out = table(["NAME", "DETAIL"], [["alice", FORGED], ["bob", ESCAPES]])
    lines = out.split("\n")
    assert len(lines) == 3
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in out.replace("\n", ""))
    assert "\\n2026-01-01" in lines[1]
    assert "\\x1b[2J" in lines[2]
    # Columns stay aligned on the escaped text.
    assert lines[0].index("DETAIL") == lines[1].index("x\\n") == lines[2].index("\\x1b")


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    cli = Cli(tmp_path / "home")
    cli("db", "upgrade")
    cli("user", "add", "mallory", "--email", "mallory@example.com")
    # Stored as an attacker (or a bug in an input check) would leave it: the output must hold
    # whatever the database holds.
    with sqlite3.connect(cli.home / "openmfa.db") as db:
        db.execute(
            "UPDATE users SET display_name = ?, blocked = 1, blocked_reason = ? "
            "WHERE name = 'mallory'",
            (FORGED, ESCAPES),
        )
        db.execute(
            "INSERT INTO audit_events (at, actor, user_name, source, action, result, detail, "
            "request_id) VALUES ('2026-01-01 00:00:00.000000', 'radius:vpn', 'mallory', "
            "'10.0.0.1', 'web.sign_in', 'reject', ?, '')",
            (FORGED + ESCAPES,),
        )
    db.close()
    return cli


def assert_clean(output: str, lines: int | None = None) -> None:
    body = output.rstrip("\n")
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in body.replace("\n", ""))
    assert "\u202e" not in body
    assert "\u2028" not in body
    assert "\n2026-01-01 00:00:00 UTC  cli:root" not in body
    if lines is not None:
        assert len(body.split("\n")) == lines, body


def test_cli_tables_and_lines_escape_control_characters(cli: Cli) -> None:
    users = cli("user", "list").stdout
    assert_clean(users, lines=2)
    assert "x\\n2026-01-01" in users
    show = cli("user", "show", "mallory").stdout
    assert_clean(show)
    assert "display name:  x\\n2026-01-01" in show
    assert "\\x1b[2J" in show
    audit = cli("audit", "--user", "mallory").stdout
    assert_clean(audit, lines=3)  # header, user.add, the forged row
    assert "x\\n2026-01-01 00:00:00 UTC" in audit


def test_json_output_keeps_the_stored_text(cli: Cli) -> None:
    users = json.loads(cli("user", "list", "--json").stdout)
    assert users[0]["display_name"] == FORGED
    entries = json.loads(cli("audit", "--user", "mallory", "--json").stdout)
    assert entries[-1]["detail"] == FORGED + ESCAPES
    assert "\x1b" not in cli("audit", "--json").stdout  # JSON escapes it as \u001b


def test_an_error_line_stays_one_line(cli: Cli) -> None:
    error = cli.fails("user", "show", "no\nbody\x1b[2J")
    assert "\x1b" not in error
    assert len(error.strip().splitlines()) == 1
