"""Retention: from the settings and the time, what each pruned table keeps.

Pure: no I/O. :func:`plan` turns a :class:`RetentionPolicy` and ``now`` into one
:class:`Cutoff` per table; the executor (backend/services/retention.py) deletes what is
older, in small batches. Keeping the decision here lets a lease (issue 18) wrap the
executor without touching the rules, and lets the rules be tested without a database.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from backend.domain.leases import NODE_ROWS_KEPT

#: The pruned tables, in the order a pass visits them (nonces before their challenges).
TABLES: Final = (
    "pipush_nonces",
    "challenges",
    "audit_events",
    "used_nonces",
    "activation_codes",
    "invitations",
    "web_sessions",
    "account_notices",
    "directory_syncs",
    "nodes",
    "address_limits",
)


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How long each kind of row is kept; 0 days: kept for ever (``expired_days``: removed
    as soon as it has expired), 0 ``directory_syncs``: every report kept."""

    challenge_days: int
    audit_days: int
    expired_days: int
    notice_days: int
    directory_syncs: int
    web_session_max_hours: int
    #: The web sign-in address window: an address row whose window ended says nothing.
    address_window_seconds: int = 900

    def __post_init__(self) -> None:
        for name in ("challenge_days", "audit_days", "expired_days", "notice_days"):
            if not 0 <= getattr(self, name) <= 36500:
                raise ValueError(f"{name} must be from 0 to 36500")
        if self.directory_syncs < 0 or self.web_session_max_hours < 1:
            raise ValueError("directory_syncs must be 0 or more, web_session_max_hours 1 or more")
        if self.address_window_seconds < 1:
            raise ValueError("address_window_seconds must be 1 or more")


@dataclass(frozen=True, slots=True)
class Cutoff:
    """One table's rule. ``before``: rows whose age column is older go (None: nothing goes by
    age); ``keep_last``: for directory syncs, the newest this many per directory stay."""

    table: str
    before: datetime | None = None
    keep_last: int = 0

    @property
    def prunes(self) -> bool:
        """False when the settings keep this table's rows for ever."""
        return self.before is not None or self.keep_last > 0


def _days_ago(now: datetime, days: int) -> datetime | None:
    return now - timedelta(days=days) if days else None


def plan(policy: RetentionPolicy, now: datetime) -> tuple[Cutoff, ...]:
    """One cutoff per table in :data:`TABLES`, for a pass at ``now`` (aware UTC).

    Finished challenges go by ``created_at``; expired things by ``expires_at`` (a replay
    nonce is kept at least until it expires, whatever ``expired_days`` says, since it is
    what refuses the replay); web sessions by ``last_seen_at``, past the longest a session
    can live, so a live one is never cut; node rows by their last heartbeat, a week on.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    expired = now - timedelta(days=policy.expired_days)
    challenges = _days_ago(now, policy.challenge_days)
    rules = {
        # A challenge's nonces go with it; an expired nonce of a kept challenge is useless too.
        "pipush_nonces": Cutoff("pipush_nonces", expired),
        "challenges": Cutoff("challenges", challenges),
        "audit_events": Cutoff("audit_events", _days_ago(now, policy.audit_days)),
        "used_nonces": Cutoff("used_nonces", expired),
        "activation_codes": Cutoff("activation_codes", expired),
        "invitations": Cutoff("invitations", expired),
        "web_sessions": Cutoff(
            "web_sessions", expired - timedelta(hours=policy.web_session_max_hours)
        ),
        "account_notices": Cutoff("account_notices", _days_ago(now, policy.notice_days)),
        "directory_syncs": Cutoff("directory_syncs", keep_last=policy.directory_syncs),
        # Stopped or dead nodes (no heartbeat since): kept a week for `openmfa nodes`.
        "nodes": Cutoff("nodes", now - NODE_ROWS_KEPT),
        # Whatever the settings keep: a row whose window ended is reset by the next failure.
        "address_limits": Cutoff(
            "address_limits", now - timedelta(seconds=policy.address_window_seconds)
        ),
    }
    return tuple(rules[name] for name in TABLES)
