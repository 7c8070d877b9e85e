"""Plain tables and JSON for command output.

Text from the database reaches the terminal only through :func:`clean` (tables do it for
every cell): a user name, display name or audit detail may hold a line break that forges an
extra row, or a terminal escape that rewrites the screen.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

# C0 and C1 controls, DEL, line and paragraph separators, and the bidirectional overrides and
# isolates (they reorder what the terminal shows: "Trojan Source").
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
T = TypeVar("T")

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def clean(value: object) -> str:
    """``value`` as text for a terminal: control characters shown as ``\\n``, ``\\x1b``,
    ``\\u202e``; everything else unchanged."""
    return _UNSAFE.sub(_escape, str(value))


def when(value: datetime | None) -> str:
    """A timestamp as operators read it (UTC, seconds), or a dash."""
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns, two spaces apart; every cell through :func:`clean`."""
    cells = [[clean(c) for c in headers], *[[clean(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines)


def as_json(value: Any) -> str:
    """Pretty JSON, timestamps as ISO 8601."""
    return json.dumps(
        value, indent=2, default=lambda v: v.isoformat() if isinstance(v, datetime) else str(v)
    )


def print_listing(
    json_wanted: bool,
    items: Sequence[T],
    describe: Callable[[T], Any],
    empty: str,
    headers: Sequence[str],
    row: Callable[[T], Sequence[Any]],
) -> int:
    """A ``list`` command's output: JSON (``describe`` of each item), ``empty`` when there is
    nothing (a hint, text the caller made safe), else a table of ``row`` of each; status 0."""
    if json_wanted:
        print(as_json([describe(item) for item in items]))
    elif not items:
        print(empty)
    else:
        print(table(headers, [row(item) for item in items]))
    return 0
