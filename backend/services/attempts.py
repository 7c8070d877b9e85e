"""Attempt slots for the argon2id checks (PIN, local password), claimed before the check.

A check reads the lockout, spends ~24 ms of argon2id, then counts: read-then-write, so 40
concurrent guesses all passed the read and 40 were checked against a limit of 5. Here the
attempt is counted first, by one conditional UPDATE that only succeeds while the user is not
locked (atomic on SQLite and PostgreSQL alike); only a claimed attempt is checked.

The attempt that takes the last slot sets the lock at once, while it is being checked, so
nothing else gets in meanwhile and no lock is ever lost to a request that was cancelled or a
process that died mid-check: a claimed attempt is a counted failure until it proves right.
Like :func:`backend.services.otp.count_failure`, a lock resets the count to 0 (the counter of
local passwords is the one codes count toward).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from backend.store.fastpath import Tx

Counter = Literal["pin", "otp"]

# (failures, locked until, hash) per counter; fixed names, never user input.
_COLUMNS: dict[Counter, tuple[str, str, str]] = {
    "pin": ("pin_failures", "pin_locked_until", "pin_hash"),
    "otp": ("otp_failures", "otp_locked_until", "password_hash"),
}


@dataclass(frozen=True, slots=True)
class Claimed:
    """An attempt slot: ``failures`` counting this attempt (the limit when it locked),
    ``locked_until`` when this attempt took the last slot and set the lock, and the stored
    hash read in the same statement."""

    failures: int
    locked_until: datetime | None
    stored: str | None


@dataclass(frozen=True, slots=True)
class Locked:
    """No slot: the user is locked until ``until``."""

    until: datetime


def claim(
    tx: Tx,
    counter: Counter,
    user_id: int,
    now: datetime,
    limit: int,
    lockout_seconds: int,
) -> Claimed | Locked:
    """Count one attempt before it is checked, or say until when the user is locked."""
    failures, locked, stored = _COLUMNS[counter]
    lock = now + timedelta(seconds=lockout_seconds)
    row = tx.one(
        f"UPDATE users SET "  # noqa: S608 - column names from _COLUMNS only
        f"{failures} = CASE WHEN {failures} + 1 >= ? THEN 0 ELSE {failures} + 1 END, "
        f"{locked} = CASE WHEN {failures} + 1 >= ? THEN ? ELSE {locked} END "
        f"WHERE id = ? AND ({locked} IS NULL OR {locked} <= ?) "
        f"RETURNING {failures}, {stored}",
        limit,
        limit,
        tx.time(lock),
        user_id,
        tx.time(now),
    )
    if row is None:
        row = tx.one(f"SELECT {locked} FROM users WHERE id = ?", user_id)  # noqa: S608
        until = None if row is None else tx.read_time(row[0])
        return Locked(until or now)
    count = int(row[0])
    if count == 0:  # this attempt took the last slot
        return Claimed(limit, lock, row[1])
    return Claimed(count, None, row[1])


def succeeded(tx: Tx, counter: Counter, user_id: int, new_hash: str | None = None) -> None:
    """A right PIN: the count starts again, and a lock its own attempt set is lifted."""
    failures, locked, stored = _COLUMNS[counter]
    sql = f"UPDATE users SET {failures} = 0, {locked} = NULL"  # noqa: S608
    params: list[object] = []
    if new_hash is not None:
        sql += f", {stored} = ?"
        params.append(new_hash)
    tx.run(sql + " WHERE id = ?", *params, user_id)


def refund(tx: Tx, counter: Counter, user_id: int, slot: Claimed, limit: int) -> None:
    """A right password: it was no failure, so give its slot back (a right password must not
    reset the count: only a right second factor does, see UserService.verify_password)."""
    failures, locked, _ = _COLUMNS[counter]
    if slot.locked_until is None:
        tx.run(
            f"UPDATE users SET {failures} = {failures} - 1 "  # noqa: S608
            f"WHERE id = ? AND {failures} > 0",
            user_id,
        )
        return
    # It took the last slot and locked: lift that lock (only that one), the count back at
    # one below the limit, as if the slot had never been taken.
    tx.run(
        f"UPDATE users SET {failures} = ?, {locked} = NULL "  # noqa: S608
        f"WHERE id = ? AND {locked} = ?",
        max(0, limit - 1),
        user_id,
        tx.time(slot.locked_until),
    )
