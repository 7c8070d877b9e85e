"""Pruning old rows: the thin executor of backend/domain/retention.py's plan.

Each table is pruned in batches of ``retention_batch_size`` rows: one short transaction per
batch (a ``DELETE ... WHERE key IN (SELECT key ... LIMIT n)``) and a pause between batches,
so the sign-in paths, which write the same tables, never wait behind a long delete. A pass
(:meth:`Pruner.run`) is the unit a node lease (issue 18) will later wrap; :class:`PruneDuty`
runs one every ``retention_interval_minutes`` inside ``openmfa run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Final

from sqlalchemy import ColumnElement, Select, and_, delete, func, or_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from backend.config import Settings
from backend.domain.challenge import ChallengeState
from backend.domain.retention import Cutoff, RetentionPolicy, plan
from backend.services.audit import AuditLog
from backend.services.context import Actor, Clock
from backend.store.database import Database
from backend.store.tables import (
    account_notices_t,
    activation_codes_t,
    address_limits_t,
    audit_t,
    challenges_t,
    directory_syncs_t,
    invitations_t,
    nodes_t,
    pipush_nonces_t,
    used_nonces_t,
    web_sessions_t,
)
from backend.tasks import stop_task

log = logging.getLogger(__name__)

#: Seconds after ``openmfa run`` starts before the first pruning pass.
FIRST_PASS_DELAY: Final = 60.0


def policy_from(settings: Settings) -> RetentionPolicy:
    """The retention settings as the planner's input."""
    return RetentionPolicy(
        challenge_days=settings.retention_challenge_days,
        audit_days=settings.retention_audit_days,
        expired_days=settings.retention_expired_days,
        notice_days=settings.retention_notice_days,
        directory_syncs=settings.retention_directory_syncs,
        web_session_max_hours=settings.web_session_max_hours,
        address_window_seconds=settings.web_sign_in_address_window_seconds,
    )


def _condition(cutoff: Cutoff) -> ColumnElement[bool] | None:
    """Which rows of a time-based table are past ``cutoff``; None when none are."""
    before = cutoff.before
    if before is None:
        return None
    match cutoff.table:
        case "challenges":
            # A pending challenge stays until it has expired longer ago than the cutoff:
            # one that is live (or was left pending by a dead node) is never cut.
            return and_(
                challenges_t.c.created_at < before,
                or_(
                    challenges_t.c.state != ChallengeState.PENDING.value,
                    challenges_t.c.expires_at < before,
                ),
            )
        case "pipush_nonces":
            return pipush_nonces_t.c.expires_at < before
        case "audit_events":
            return audit_t.c.at < before
        case "used_nonces":
            return used_nonces_t.c.expires_at < before
        case "activation_codes":
            return activation_codes_t.c.expires_at < before
        case "invitations":
            return invitations_t.c.expires_at < before
        case "web_sessions":
            return web_sessions_t.c.last_seen_at < before
        case "nodes":
            # A live node beats every few seconds: only stopped or dead ones get this old.
            return nodes_t.c.seen_at < before
        case "account_notices":
            return and_(
                account_notices_t.c.created_at < before,
                account_notices_t.c.state != "pending",  # still to be sent: never pruned
            )
        case "address_limits":
            return address_limits_t.c.window_started_at < before
    raise ValueError(f"no rule for table {cutoff.table!r}")


def _keys(table: str) -> tuple[ColumnElement[Any], ...]:
    """The primary-key columns a batch selects and deletes by."""
    t = {
        "challenges": challenges_t,
        "pipush_nonces": pipush_nonces_t,
        "audit_events": audit_t,
        "used_nonces": used_nonces_t,
        "activation_codes": activation_codes_t,
        "invitations": invitations_t,
        "web_sessions": web_sessions_t,
        "account_notices": account_notices_t,
        "directory_syncs": directory_syncs_t,
        "nodes": nodes_t,
        "address_limits": address_limits_t,
    }[table]
    return tuple(t.primary_key.columns)


class Pruner:
    """Runs a pruning pass: counts (dry run) or deletes, table by table, in batches."""

    def __init__(
        self,
        db: Database,
        audit: AuditLog,
        clock: Clock,
        policy: RetentionPolicy,
        batch_size: int = 1000,
        pause: float = 0.05,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be 1 or more")
        self._db = db
        self._audit = audit
        self._clock = clock
        self._policy = policy
        self._batch = batch_size
        self._pause = pause
        self._sleep = sleep
        #: Rows deleted per statement in the last pass (for tests and figures).
        self.largest_batch = 0

    @classmethod
    def from_settings(
        cls, db: Database, audit: AuditLog, clock: Clock, settings: Settings
    ) -> Pruner:
        """A pruner with the retention settings."""
        return cls(
            db,
            audit,
            clock,
            policy_from(settings),
            settings.retention_batch_size,
            settings.retention_batch_pause_seconds,
        )

    def plan(self, now: datetime | None = None) -> tuple[Cutoff, ...]:
        """The cutoffs a pass at ``now`` (default: the clock) applies."""
        return plan(self._policy, now or self._clock())

    async def run(self, actor: Actor, dry_run: bool = False) -> dict[str, int]:
        """One pass: rows removed per table (dry run: rows that would be). A real pass that
        removed anything is audited (``retention.prune``, with the counts)."""
        self.largest_batch = 0
        counts: dict[str, int] = {}
        for cutoff in self.plan():
            if not cutoff.prunes:
                counts[cutoff.table] = 0
            elif cutoff.table == "directory_syncs":
                counts[cutoff.table] = await self._directory_syncs(cutoff.keep_last, dry_run)
            else:
                counts[cutoff.table] = await self._by_age(cutoff, dry_run)
        if not dry_run and any(counts.values()):
            detail = ", ".join(f"{name} {n}" for name, n in counts.items() if n)
            await self._audit.record(actor, "retention.prune", "ok", "", detail)
        return counts

    async def _by_age(self, cutoff: Cutoff, dry_run: bool) -> int:
        where = _condition(cutoff)
        if where is None:
            return 0
        keys = _keys(cutoff.table)
        table = keys[0].table
        if dry_run:
            async with self._db.read() as conn:
                return int(
                    (await conn.scalar(select(func.count()).select_from(table).where(where))) or 0
                )
        chosen = select(*keys).where(where).limit(self._batch)
        return await self._batches(keys, lambda: chosen, where)

    async def _directory_syncs(self, keep_last: int, dry_run: bool) -> int:
        t = directory_syncs_t
        async with self._db.read() as conn:
            directories = (await conn.scalars(select(t.c.directory_id).distinct())).all()
        total = 0
        for directory_id in directories:
            # Past the newest ``keep_last`` of this directory, and not one still running.
            older = (
                select(t.c.id)
                .where(t.c.directory_id == directory_id, t.c.state != "running")
                .order_by(t.c.started_at.desc(), t.c.id.desc())
                .offset(keep_last)
            )
            if dry_run:
                async with self._db.read() as conn:
                    found = (await conn.scalars(older)).all()
                total += len(found)
                continue

            def chosen(older: Select[tuple[int]] = older) -> Select[tuple[int]]:
                # Recomputed per batch: the offset counts the rows that are left.
                return older.limit(self._batch)

            total += await self._batches((t.c.id,), chosen)
        return total

    async def _batches(
        self,
        keys: tuple[ColumnElement[Any], ...],
        chosen: Callable[[], Select[Any]],
        where: ColumnElement[bool] | None = None,
    ) -> int:
        total = 0
        while True:
            async with self._db.write() as conn:
                selected, removed = await self._delete_batch(conn, keys, chosen(), where)
            total += removed  # fewer than selected when another node pruned them first
            self.largest_batch = max(self.largest_batch, selected)
            if selected < self._batch:
                return total
            await self._sleep(self._pause)  # let the hot paths in between batches

    async def _delete_batch(
        self,
        conn: AsyncConnection,
        keys: tuple[ColumnElement[Any], ...],
        chosen: Select[Any],
        where: ColumnElement[bool] | None = None,
    ) -> tuple[int, int]:
        """Delete one batch: (rows selected, rows deleted). ``where`` is checked again by
        the delete: a row written since it was selected (an address that failed again and
        started a new window) no longer matches and stays."""
        # The keys first, then a delete by primary key: the cheapest plan on both databases,
        # and the batch's size is exactly what was selected.
        rows = (await conn.execute(chosen)).all()
        if not rows:
            return 0, 0
        target = keys[0].table
        if len(keys) == 1:
            stmt = delete(target).where(keys[0].in_([r[0] for r in rows]))
        else:
            stmt = delete(target).where(tuple_(*keys).in_([tuple(r) for r in rows]))
        if where is not None:
            stmt = stmt.where(where)
        removed = (await conn.execute(stmt)).rowcount
        return len(rows), int(removed if removed is not None and removed >= 0 else len(rows))


class PruneDuty:
    """The pruning pass inside ``openmfa run``: first shortly after the start, then every
    ``interval`` seconds. A failed pass is logged, never raised, so it cannot stop the server."""

    def __init__(
        self, pruner: Pruner, interval: float, first_delay: float = FIRST_PASS_DELAY
    ) -> None:
        self._pruner = pruner
        self._interval = interval
        self._first_delay = first_delay
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._passed = asyncio.Event()
        #: Rows removed per table by the last pass that finished (None: none has yet).
        self.last_pass: dict[str, int] | None = None

    async def wait_pass(self) -> dict[str, int]:
        """Wait for the next pass to finish (or the last one, if one finished since the
        previous call): its counts. For ``openmfa nodes``-style reports and for tests."""
        await self._passed.wait()
        self._passed.clear()
        return self.last_pass or {}  # set before the event, so never empty here

    async def start(self) -> None:
        """Start the background task (none when the interval is 0). ``openmfa run`` runs
        :meth:`run` as the leased duty "retention" instead, on one node at a time."""
        if self._interval > 0:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="retention")

    async def run(self) -> None:
        """The schedule as a duty (:class:`~backend.tasks.LeasedDuty`): passes until
        cancelled; returns at once when the interval is 0 (pruning off)."""
        if self._interval > 0:
            await self._loop()

    async def close(self) -> None:
        """Stop; a batch in progress is rolled back (the next pass does it again)."""
        self._stop.set()
        await stop_task(self._task)
        self._task = None

    async def _loop(self) -> None:
        wait = self._first_delay
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=wait)
            if self._stop.is_set():
                return
            try:
                counts = await self._pruner.run(Actor("retention", "schedule"))
            except Exception:  # the database away for a moment: try at the next interval
                log.exception("retention: the pruning pass failed")
            else:
                if any(counts.values()):
                    log.info("retention: pruned %s", counts)
                self.last_pass = counts
                self._passed.set()
            wait = self._interval
