"""Leases and node liveness: the rules, without I/O.

Several ``openmfa run`` processes (nodes) share one database. A duty that must run on one
node at a time (fraud-mail resend, directory sync, retention, push handover) is held through
a *lease row*: a name, the holder, and an expiry the holder pushes forward while it works.
A holder that stops renewing (it died, hung, or lost the database) loses the lease once it
expires; a holder that stops cleanly deletes its rows, so another node takes over at once.

The same rules run in SQL (backend/services/leases.py, backend/services/nodes.py); these
functions are their reference, checked against each other in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final

#: The leases the server uses, one per duty (``openmfa nodes`` lists the ones held).
FRAUD_MAIL: Final = "fraud-mail"
DIRECTORY_SYNC: Final = "directory-sync"
RETENTION: Final = "retention"
PUSH_HANDOVER: Final = "push-handover"
LEASE_NAMES: Final = (FRAUD_MAIL, DIRECTORY_SYNC, RETENTION, PUSH_HANDOVER)

#: A holder renews when a third of the lease's time is gone: two renewals can fail (a slow
#: database, a pause of the event loop) before the lease runs out.
RENEW_FRACTION: Final = 3


@dataclass(frozen=True, slots=True)
class LeaseState:
    """A lease row as the database holds it."""

    name: str
    holder: str
    acquired_at: datetime
    expires_at: datetime


def expired(lease: LeaseState, now: datetime) -> bool:
    """A lease is over from its expiry on (the same instant counts as over)."""
    return lease.expires_at <= now


def can_claim(lease: LeaseState | None, holder: str, now: datetime) -> bool:
    """Whether ``holder`` gets the lease at ``now``: it is free, expired, or already its own."""
    return lease is None or expired(lease, now) or lease.holder == holder


def claimed(
    lease: LeaseState | None, name: str, holder: str, now: datetime, ttl: timedelta
) -> LeaseState | None:
    """The row after ``holder`` claims at ``now`` (None: the claim fails). A holder that
    claims its own lease again keeps its ``acquired_at`` ("held since")."""
    if not can_claim(lease, holder, now):
        return None
    keeps = lease is not None and lease.holder == holder
    since = lease.acquired_at if keeps and lease is not None else now
    return LeaseState(name, holder, since, now + ttl)


def renew_interval(ttl: float) -> float:
    """Seconds between two renewals of a lease of ``ttl`` seconds."""
    if ttl <= 0:
        raise ValueError("a lease's ttl must be positive")
    return ttl / RENEW_FRACTION


class NodeState(StrEnum):
    """What ``openmfa nodes`` says of a node."""

    ALIVE = "alive"  # heart-beating
    STOPPED = "stopped"  # shut down cleanly (its leases were released)
    DEAD = "dead"  # silent for longer than the timeout: killed, hung or cut off


def alive_since(now: datetime, timeout: timedelta) -> datetime:
    """The oldest heartbeat a node may have had and still be alive at ``now``."""
    return now - timeout


def node_state(
    seen_at: datetime, stopped_at: datetime | None, now: datetime, timeout: timedelta
) -> NodeState:
    """A node is alive iff it has not stopped and beat within ``timeout`` of ``now``."""
    if stopped_at is not None:
        return NodeState.STOPPED
    if seen_at >= alive_since(now, timeout):
        return NodeState.ALIVE
    return NodeState.DEAD


#: Rows of stopped and dead nodes are kept this long for ``openmfa nodes``, then pruned.
NODE_ROWS_KEPT: Final = timedelta(days=7)
