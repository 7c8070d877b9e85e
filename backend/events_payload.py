"""The text of an outcome notification between nodes (PostgreSQL ``NOTIFY`` payloads).

Pure functions, no I/O. A payload is lines of plain text::

    n_Zx3k9aQ2bT1c                                      <- the sending node's id
    ch_4kqG0... approved 2026-12-06T15:44:54.123456+00:00
    ch_9Hd2... cancelled -                               <- one line per outcome

PostgreSQL refuses payloads of 8,000 bytes or more; :func:`pack` fills each up to
:data:`MAX_PAYLOAD_BYTES`, so a directory sync that cancels 500 users' challenges costs a few
notifications, not 500. :func:`parse` trusts nothing: every line must match in full (the
channel is open to any session of the database), a bad line is skipped and counted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from backend.domain.challenge import ChallengeState
from backend.events import Outcome

MAX_PAYLOAD_BYTES = 7_900
_ID = r"[A-Za-z0-9_-]{1,64}"
_FINAL = "|".join(state.value for state in ChallengeState if state.is_final)
_NODE = re.compile(_ID, re.ASCII)
_LINE = re.compile(
    rf"(?P<id>{_ID}) (?P<state>{_FINAL}) "
    r"(?P<at>-|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?(?:[+-]\d\d:\d\d|Z)?)",
    re.ASCII,  # \d is 0-9 only, not every script's digits
)


@dataclass(slots=True)
class Parsed:
    """What one payload said: who sent it, the outcomes, and how many lines were refused."""

    node_id: str | None
    outcomes: list[Outcome] = field(default_factory=list)
    rejected: int = 0


def valid_node_id(node_id: str) -> bool:
    """Whether ``node_id`` can head a payload (receivers refuse payloads whose first line
    is not one)."""
    return _NODE.fullmatch(node_id) is not None


def line(outcome: Outcome) -> str:
    """One outcome as a payload line."""
    at = "-" if outcome.answered_at is None else outcome.answered_at.astimezone(UTC).isoformat()
    return f"{outcome.challenge_id} {outcome.state} {at}"


def pack(node_id: str, outcomes: Iterable[Outcome]) -> list[str]:
    """The outcomes as few payloads as fit :data:`MAX_PAYLOAD_BYTES` each, in order.

    An outcome that cannot be carried (an id or state that :func:`parse` would refuse) is
    left out: the receivers' waiters then learn the state by reading the row when their
    wait ends, as they would without a bus."""
    payloads: list[str] = []
    lines = [node_id]
    size = len(node_id.encode())
    for outcome in outcomes:
        text = line(outcome)
        if _LINE.fullmatch(text) is None:
            continue
        extra = len(text) + 1  # ASCII only (fullmatch above), plus the newline
        if len(lines) > 1 and size + extra > MAX_PAYLOAD_BYTES:
            payloads.append("\n".join(lines))
            lines, size = [node_id], len(node_id.encode())
        lines.append(text)
        size += extra
    if len(lines) > 1:
        payloads.append("\n".join(lines))
    return payloads


def sender(payload: str) -> str:
    """The first line (the sending node's id, if the payload is well formed): cheap, so a
    node can skip its own notifications without parsing them."""
    return payload.split("\n", 1)[0]


def parse(payload: str) -> Parsed:
    """The outcomes of a payload; never raises on bad input."""
    head, _, rest = payload.partition("\n")
    if _NODE.fullmatch(head) is None:
        return Parsed(None, rejected=1 + rest.count("\n") + (1 if rest else 0))
    parsed = Parsed(head)
    for text in rest.split("\n") if rest else ():
        outcome = _outcome(text)
        if outcome is None:
            parsed.rejected += 1
        else:
            parsed.outcomes.append(outcome)
    return parsed


def _outcome(text: str) -> Outcome | None:
    match = _LINE.fullmatch(text)
    if match is None:
        return None
    at_text = match["at"]
    answered_at = None
    if at_text != "-":
        try:
            answered_at = datetime.fromisoformat(at_text)
        except ValueError:  # the pattern allows a few impossible dates (2026-13-45)
            return None
        if answered_at.tzinfo is None:
            answered_at = answered_at.replace(tzinfo=UTC)
    return Outcome(match["id"], match["state"], answered_at)
