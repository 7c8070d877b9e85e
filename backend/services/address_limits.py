"""Failed web sign-in steps per source address, counted in the database so every node shares
one count (issue 18): an address that failed on node A is refused on node B too.

One compact row per address (``address_limits``): the failures of its current window and when
that window started. A window starts at the first failure after the previous one ended and
lasts ``window``; the address is refused while ``failures >= limit`` within it, until it ends.
(The in-process limiter this replaces kept a sliding window of timestamps; a fixed window
from the first failure needs no row per failure and blocks the same burst for the same
time. An address spreading its guesses over a window's end may get up to twice the limit in
one window's length; over time the rate is the same.)

Claim, then check (the rule of backend/services/attempts.py): :func:`claim` counts the
attempt *before* the argon2id or code check with one conditional UPSERT that succeeds only
while the address is under its limit, so concurrent guesses on any number of nodes cannot
all pass a read first; :func:`release` takes the count back when the attempt was right. On
PostgreSQL each call is one statement, one round trip; on SQLite a job on the writer thread.
Rows whose window ended are pruned by the retention duty (backend/domain/retention.py).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from backend.store.database import Database
from backend.store.fastpath import Tx

#: Longest address kept (an IPv6 address with a zone fits; longer strings are cut).
ADDRESS_LENGTH = 64

# SQLite's row to insert; PostgreSQL's (below) also relaxes the commit.
_SQLITE_ROW = "VALUES (?, 1, ?)"
# On PostgreSQL every statement here is its own transaction, and a count lost in a crash of
# the database costs nothing that matters, so its commit does not wait for the WAL flush
# (8.6 ms a commit on this machine's disk): ``set_config(..., true)`` is SET LOCAL, for this
# statement's transaction only. The row is visible to every node at commit all the same.
_RELAXED = "(SELECT set_config('synchronous_commit', 'off', true)) AS relaxed"
_PG_ROW = f"SELECT CAST(? AS VARCHAR), 1, CAST(? AS TIMESTAMPTZ) FROM {_RELAXED}"  # noqa: S608
# Count one failure in the address's window, or start a new window with it.
_UPSERT = (
    "INSERT INTO address_limits (address, failures, window_started_at) {row} "
    "ON CONFLICT (address) DO UPDATE SET "
    "failures = CASE WHEN address_limits.window_started_at <= ? THEN 1 "
    "ELSE address_limits.failures + 1 END, "
    "window_started_at = CASE WHEN address_limits.window_started_at <= ? THEN ? "
    "ELSE address_limits.window_started_at END"
)
# The claim: the same UPSERT, only while the window is over or under the limit (SQLite >=
# 3.35, PostgreSQL >= 9.5). In ON CONFLICT's SET and WHERE, ``address_limits.`` is the stored
# row. Parameters: address, now, ended (now - window) x2, now, ended, limit.
_CLAIM_TAIL = (
    " WHERE address_limits.window_started_at <= ? OR address_limits.failures < ? RETURNING failures"
)
_CLAIM = _UPSERT.format(row=_SQLITE_ROW) + _CLAIM_TAIL
# PostgreSQL: the claim and, when it was refused, the window's start, in one statement. The
# second branch reads the statement's snapshot; only a row first inserted by a concurrent
# claim after that snapshot is missed (then the caller waits a whole window: see _until).
_PG_CLAIM = (
    "WITH claimed AS ("  # noqa: S608 - constants only
    + _UPSERT.format(row=_PG_ROW)
    + _CLAIM_TAIL
    + ") SELECT failures, NULL::timestamptz FROM claimed "
    "UNION ALL "
    "SELECT NULL::integer, window_started_at FROM address_limits "
    "WHERE address = ? AND NOT EXISTS (SELECT 1 FROM claimed)"
)
# A failure counted without a claim (a push that was denied or timed out).
_COUNT = _UPSERT.format(row=_SQLITE_ROW)
_PG_COUNT = _UPSERT.format(row=_PG_ROW)
# Only a claim of the current window is given back: once a new window started after the
# claim, its count no longer holds it.
_RELEASE = (
    "UPDATE address_limits SET failures = failures - 1 "
    "WHERE address = ? AND failures > 0 AND window_started_at <= ?"
)
_PG_RELEASE = (
    f"UPDATE address_limits SET failures = failures - 1 FROM {_RELAXED} "  # noqa: S608
    "WHERE address = ? AND failures > 0 AND window_started_at <= ?"
)
_READ = "SELECT failures, window_started_at FROM address_limits WHERE address = ?"


def address_key(address: str) -> str:
    """The key an address is counted under: the address as the request saw it (the TCP peer
    or a trusted proxy's forwarded address), cut to :data:`ADDRESS_LENGTH`."""
    return address[:ADDRESS_LENGTH]


def _until(started: datetime | None, now: datetime, window: timedelta) -> datetime:
    # No row seen (see _PG_CLAIM): a whole window from now, the longest it can be.
    return (started or now) + window


async def claim(
    db: Database, address: str, now: datetime, limit: int, window: timedelta
) -> datetime | None:
    """Count an attempt from ``address`` as a failure *before* it is checked: ``None`` when
    counted (give it back with :func:`release` if it proves right), else until when the
    address must wait."""
    key, ended = address_key(address), now - window
    jobs = db.postgres_jobs
    if jobs is not None:
        rows = await db.run_statement(_PG_CLAIM, key, now, ended, ended, now, ended, limit, key)
        if rows and rows[0][0] is not None:
            return None
        return _until(rows[0][1] if rows else None, now, window)

    def job(tx: Tx) -> datetime | None:
        t_now, t_ended = tx.time(now), tx.time(ended)
        if tx.one(_CLAIM, key, t_now, t_ended, t_ended, t_now, t_ended, limit) is not None:
            return None
        row = tx.one(_READ, key)
        return _until(None if row is None else tx.read_time(row[1]), now, window)

    return await db.run_job(job)


async def release(db: Database, address: str, claimed_at: datetime) -> None:
    """Give back the attempt :func:`claim` counted at ``claimed_at``: it was no failure. When
    it took the last slot, the address may try again at once."""
    key = address_key(address)
    if db.postgres_jobs is not None:
        await db.run_statement(_PG_RELEASE, key, claimed_at)
        return
    await db.run_job(lambda tx: tx.run(_RELEASE, key, tx.time(claimed_at)))


async def count_failure(db: Database, address: str, now: datetime, window: timedelta) -> None:
    """Count one failed step from ``address`` that was not claimed first."""
    key, ended = address_key(address), now - window
    if db.postgres_jobs is not None:
        await db.run_statement(_PG_COUNT, key, now, ended, ended, now)
        return

    def job(tx: Tx) -> None:
        t_now, t_ended = tx.time(now), tx.time(ended)
        tx.run(_COUNT, key, t_now, t_ended, t_ended, t_now)

    await db.run_job(job)


async def blocked_until(
    db: Database, address: str, now: datetime, limit: int, window: timedelta
) -> datetime | None:
    """When ``address`` may try again, or ``None`` if it may now (a read: nothing counted)."""
    key = address_key(address)
    if db.postgres_jobs is not None:
        rows = await db.run_statement(_READ, key)
        found = (int(rows[0][0]), rows[0][1]) if rows else None
    else:

        def job(tx: Tx) -> tuple[int, datetime | None] | None:
            row = tx.one(_READ, key)
            return None if row is None else (int(row[0]), tx.read_time(row[1]))

        found = await db.run_read(job)
    if found is None or found[1] is None:
        return None
    failures, started = found
    if failures < limit or started <= now - window:
        return None
    until: datetime = started + window
    return until
