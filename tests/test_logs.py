"""The log formatters and filter on their own: no forged lines, no terminal escapes, no
uvicorn colour copies, no library chatter below warning (the process-level versions of these
tests are in test_http_hardening.py)."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from backend.logs import JsonFormatter, OwnLoggersOnly, TextFormatter, escape_controls

HOSTILE = "alice\nFAKE LINE\r\x1b[31m\x00\x7f\x85\x9b\u2028\u2029\ttab"


def _record(message: str, name: str = "openmfa.test", **extra: object) -> logging.LogRecord:
    record = logging.LogRecord(name, logging.INFO, __file__, 1, "%s", (message,), None)
    record.__dict__.update(extra)
    return record


@pytest.mark.parametrize(
    "char", [*map(chr, range(0x20)), "\x7f", *map(chr, range(0x80, 0xA0)), "\u2028", "\u2029"]
)
def test_every_control_character_is_escaped(char: str) -> None:
    escaped = escape_controls(f"a{char}b")
    assert escaped.startswith("a\\")
    assert escaped.isprintable()


def test_printable_text_is_left_alone() -> None:
    text = 'Zoë 名前 back\\slash "quoted" 100%'
    assert escape_controls(text) == text


def test_text_lines_cannot_be_forged() -> None:
    line = TextFormatter().format(_record(HOSTILE))
    assert "\n" not in line
    assert line.isprintable()
    assert line.startswith("info    openmfa.test: alice\\nFAKE LINE\\r\\x1b[31m")


def test_a_traceback_stays_indented_under_its_line() -> None:
    try:
        raise ValueError("boom\nerror   openmfa.auth: FAKE")
    except ValueError:
        record = _record("failed")
        record.exc_info = sys.exc_info()
    lines = TextFormatter().format(record).split("\n")
    assert lines[0] == "info    openmfa.test: failed"
    assert all(line.startswith("    ") for line in lines[1:])
    assert any("boom\\nerror   openmfa.auth: FAKE" in line for line in lines)


def test_json_lines_escape_everything_and_drop_color_message() -> None:
    line = JsonFormatter().format(
        _record(HOSTILE, user=HOSTILE, color_message="Started \x1b[36m%d\x1b[0m")
    )
    assert "\n" not in line
    assert line.isascii()
    assert line.isprintable()
    entry = json.loads(line)
    assert entry["message"] == HOSTILE
    assert entry["user"] == HOSTILE
    assert "color_message" not in entry


@pytest.mark.parametrize(
    ("name", "level", "passes"),
    [
        ("openmfa.web", logging.DEBUG, True),
        ("openmfa", logging.INFO, True),
        ("uvicorn.error", logging.INFO, True),
        ("openmfanot", logging.DEBUG, False),
        ("sqlalchemy.engine.Engine", logging.INFO, False),
        ("aiosqlite", logging.DEBUG, False),
        ("hpack.hpack", logging.DEBUG, False),
        ("aiosmtplib", logging.DEBUG, False),
        ("some.new.library", logging.INFO, False),
        ("sqlalchemy.pool", logging.WARNING, True),
        ("some.new.library", logging.ERROR, True),
    ],
)
def test_only_our_loggers_pass_below_warning(name: str, level: int, passes: bool) -> None:
    record = logging.LogRecord(name, level, __file__, 1, "x", (), None)
    assert OwnLoggersOnly().filter(record) is passes
