"""Directory sync: read a directory page by page, plan with the pure planner, apply in batches.

:mod:`backend.directory.planner` decides; this module reads, looks up and writes:

* one ``directory_syncs`` row per run (``running`` -> ``done`` / ``stopped`` / ``failed``; a
  dry run gets one too, marked, so the console can show the last dry run);
* two real syncs of one directory never run at once: the run is claimed in one transaction
  that locks the directory's row and checks for a running one (:class:`Conflict` otherwise);
* each page is applied in one transaction (bulk statements; audit rows in one insert);
  disables wait until the whole answer is read, because only then is it known whether the
  sync stays under the directory's threshold (:class:`SyncStopped` above it, unless forced);
* disabling a user does what an administrator's disable does: pending sign-ins cancelled,
  web sessions ended (devices kept); it is recorded as ``disabled_by = "directory"`` with the
  reason, so that only such users are enabled again when they come back;
* memory stays flat: across pages only the set of external ids seen is kept, and the users
  tied to the directory are streamed in batches for the final "gone" step.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, Protocol

from sqlalchemy import Row, bindparam, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from backend.directory import planner
from backend.directory.entries import DirectoryEntry
from backend.directory.planner import (
    BY_DIRECTORY,
    Change,
    Create,
    Disable,
    Dropped,
    Enable,
    Error,
    LocalUser,
    NameClash,
    Rename,
    Update,
)
from backend.directory.reader import DirectoryReader
from backend.domain.leases import DIRECTORY_SYNC
from backend.domain.names import object_name
from backend.domain.notices import AccountChange
from backend.errors import (
    BadRequest,
    Conflict,
    NotFound,
    OpenMFAError,
    SyncStopped,
)
from backend.events import Outcome
from backend.notify.mail import MailError, MailSender
from backend.services.audit import AuditLog
from backend.services.challenges import ChallengeService
from backend.services.context import Actor, Clock
from backend.services.invitations import InvitationService
from backend.services.leases import Leases
from backend.services.notices import AccountNotices
from backend.services.users import UserService
from backend.store.database import Database
from backend.store.queries import effective_policy
from backend.store.tables import directories_t, directory_syncs_t, radius_clients_t, users_t
from backend.tasks import stop_task

log = logging.getLogger("openmfa.directory")

#: Names listed per kind in a report (the counts are always complete).
REPORT_NAMES: Final = 200
#: Users disabled per transaction (each also cancels sign-ins and ends sessions).
DISABLE_BATCH: Final = 200
#: Tied users read per query in the final "gone" step.
GONE_BATCH: Final = 1000
#: Without leases (a service built bare, in tests): a run still marked running after this
#: long died with its process; it no longer blocks.
STALE_RUN: Final = timedelta(hours=1)
#: What an orphaned run's report says: its process died and nobody renews its lease.
ORPHANED: Final = "failed: interrupted: the node running it stopped"


def run_lease(directory_id: int) -> str:
    """The lease a real sync of one directory holds while it runs (``directory-sync:<id>``),
    held by the node, or by ``cli:<host>:<pid>`` for ``openmfa directory sync``."""
    return f"{DIRECTORY_SYNC}:{directory_id}"


_KINDS: Final = ("created", "updated", "renamed", "disabled", "enabled", "clashes", "errors")


class ReaderSource(Protocol):
    """Where the sync gets a directory's reader (``services.directories``)."""

    async def reader(self, directory_id: int) -> DirectoryReader:
        """The shared, cached reader of one directory; callers never close it."""
        ...


class Inviter(Protocol):
    """Invites a new directory user by e-mail (the ``directory_invite_new_users`` policy)."""

    async def invite(self, actor: Actor, user_name: str) -> str | None:
        """Create an invitation for the user and e-mail it: None, or why not."""
        ...


@dataclass(frozen=True, slots=True)
class SyncProgress:
    """How far a running sync is, for the CLI's progress line."""

    directory: str
    pages: int
    entries: int
    created: int
    updated: int
    renamed: int
    enabled: int
    pending_disables: int
    errors: int


@dataclass(frozen=True, slots=True)
class SyncReport:
    """One ``directory_syncs`` row: the summary of a sync (or dry run) and its details."""

    id: int
    directory: str
    actor: str
    dry_run: bool
    state: str  # running, done, stopped (threshold), failed
    started_at: datetime
    finished_at: datetime | None
    created: int
    updated: int
    renamed: int
    disabled: int
    enabled: int
    unchanged: int
    errors: int
    message: str
    details: dict[str, Any]

    @property
    def duration(self) -> float | None:
        """Seconds from start to finish (None while running)."""
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


@dataclass(slots=True)
class _Tally:
    """Counts and the bounded name lists of one run."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_KINDS, 0))
    names: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in _KINDS})
    unchanged: int = 0
    pages: int = 0
    entries: int = 0
    dropped: list[str] = field(default_factory=list)
    invited: int = 0
    invite_failures: list[str] = field(default_factory=list)

    def add(self, kind: str, text: str) -> None:
        self.counts[kind] += 1
        if len(self.names[kind]) < REPORT_NAMES:
            self.names[kind].append(text)

    def details(self, extra: dict[str, Any]) -> dict[str, Any]:
        return {
            **{kind: self.names[kind] for kind in _KINDS},
            "clash_count": self.counts["clashes"],
            "error_count": self.counts["errors"],
            "dropped": self.dropped[:REPORT_NAMES],
            "pages": self.pages,
            "entries": self.entries,
            "invited": self.invited,
            "invite_failures": self.invite_failures[:REPORT_NAMES],
            **extra,
        }


@dataclass(frozen=True, slots=True)
class _Directory:
    id: int
    name: str
    manage_admin: bool
    disable_percent: int
    disable_minimum: int


class DirectorySyncService:
    """Run syncs (on demand and scheduled) and read their reports."""

    def __init__(
        self,
        db: Database,
        audit: AuditLog,
        clock: Clock,
        challenges: ChallengeService,
        notices: AccountNotices,
        readers: ReaderSource,
        inviter: Inviter | None = None,
        leases: Leases | None = None,
        lease_ttl: float = 20.0,
    ) -> None:
        self._db = db
        self._audit = audit
        self._clock = clock
        self._challenges = challenges
        self._notices = notices
        self.readers = readers  # replaced by the directory service once it is built
        self._inviter = inviter
        # A real run holds run_lease(directory) and renews it; a running row whose lease
        # nobody holds any more is an orphan of a dead process (see _running).
        self._leases = leases
        self._lease_ttl = lease_ttl

    # -- reading reports ------------------------------------------------------------------------

    async def last(self, name: str, *, dry_run: bool | None = None) -> SyncReport | None:
        """The latest run of directory ``name`` (only dry or only real runs if asked)."""
        async with self._db.read() as conn:
            directory = await _directory(conn, name)
            stmt = _reports(directory.id).limit(1)
            if dry_run is not None:
                stmt = stmt.where(directory_syncs_t.c.dry_run.is_(dry_run))
            row = (await conn.execute(stmt)).first()
        return None if row is None else _report(row, directory.name)

    async def history(self, name: str, limit: int = 20) -> list[SyncReport]:
        """The latest ``limit`` runs of directory ``name``, newest first."""
        if not 1 <= limit <= 500:
            raise BadRequest("limit must be from 1 to 500")
        async with self._db.read() as conn:
            directory = await _directory(conn, name)
            rows = (await conn.execute(_reports(directory.id).limit(limit))).all()
        return [_report(row, directory.name) for row in rows]

    async def scheduled(self) -> list[tuple[str, int]]:
        """Every directory with a schedule: (name, interval in seconds), by name."""
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    select(directories_t.c.name, directories_t.c.sync_interval)
                    .where(directories_t.c.sync_interval > 0)
                    .order_by(directories_t.c.name_key)
                )
            ).all()
        return [(str(row.name), int(row.sync_interval)) for row in rows]

    # -- running --------------------------------------------------------------------------------

    async def run(
        self,
        actor: Actor,
        name: str,
        *,
        dry_run: bool = False,
        force: bool = False,
        progress: Callable[[SyncProgress], None] | None = None,
    ) -> SyncReport:
        """Sync directory ``name`` now: its report.

        Raises :class:`Conflict` while another sync of it runs, :class:`SyncStopped` (the
        report kept, state ``stopped``, no one disabled) when it would disable more users than
        the threshold allows and ``force`` is false, and the reader's errors
        (:class:`~backend.errors.DirectoryUnavailable`, ...) with the report marked failed. A
        dry run plans the same and writes nothing but its report; above the threshold it
        returns a report in state ``stopped`` instead of raising.
        """
        started = self._clock()
        try:
            directory, sync_id = await self._claim(actor, name, dry_run, started)
        except Conflict as exc:  # audited after the claim's rollback
            await self._audit.record(actor, "directory.sync", "refused", detail=exc.detail)
            raise
        lease = None if dry_run or self._leases is None else run_lease(directory.id)
        renewal = (
            None
            if lease is None
            else asyncio.get_running_loop().create_task(self._renew(lease), name="sync-lease")
        )
        try:
            tally = _Tally()
            clock_start = time.monotonic()
            try:
                # Counted before the read: users this run creates do not raise its own limit.
                tied = await self._count_tied(directory.id)
                reader = await self.readers.reader(directory.id)
                exempt = await self._exempt_names()
                disables = await self._read_and_apply(
                    actor, directory, reader, dry_run, exempt, tally, progress
                )
                limit = planner.disable_limit(
                    tied, directory.disable_percent, directory.disable_minimum
                )
                extra: dict[str, Any] = {"tied": tied, "disable_limit": limit, "forced": force}
                if len(disables) > limit and not force:
                    for change in disables[:REPORT_NAMES]:
                        tally.names["disabled"].append(f"{change.name} ({change.reason})")
                    message = (
                        f"stopped: would disable {len(disables)} of {tied} users, more than the "
                        f"limit of {limit} ({directory.disable_percent}% and at least "
                        f"{directory.disable_minimum}); nobody was disabled. Check the directory "
                        "(filter, group, a DC answering empty) or run again with --force"
                    )
                    extra["would_disable"] = len(disables)
                    report = await self._finish(
                        sync_id, directory, "stopped", message, tally, extra, clock_start
                    )
                    if not dry_run:
                        await self._audit.record(
                            actor,
                            "directory.sync",
                            "stopped",
                            detail=f"{directory.name}: {message}",
                        )
                        raise SyncStopped(message, report=report)
                    return report
                if dry_run:
                    for change in disables:
                        tally.add("disabled", f"{change.name} ({change.reason})")
                else:
                    await self._disable(actor, directory, disables, tally)
                    await self._invite(actor, tally)
                message = _summary_line(tally, dry_run)
                report = await self._finish(
                    sync_id, directory, "done", message, tally, extra, clock_start
                )
                if not dry_run:
                    await self._audit.record(
                        actor, "directory.sync", "ok", detail=f"{directory.name}: {message}"
                    )
                return report
            except SyncStopped:
                raise
            except BaseException as exc:
                if isinstance(exc, asyncio.CancelledError):
                    message = "interrupted (the server stopped)"
                elif isinstance(exc, OpenMFAError):
                    message = exc.detail
                else:
                    message = type(exc).__name__
                if not isinstance(exc, OpenMFAError | asyncio.CancelledError):
                    log.exception("directory sync of %s failed", directory.name)
                report = await self._finish(
                    sync_id, directory, "failed", f"failed: {message}", tally, {}, clock_start
                )
                if not dry_run:
                    await self._audit.record(
                        actor, "directory.sync", "failed", detail=f"{directory.name}: {message}"
                    )
                raise
        finally:
            await stop_task(renewal)
            if lease is not None and self._leases is not None:
                try:
                    await self._leases.release(lease)
                except Exception:  # it runs out on its own
                    log.warning("directory sync: could not release %s", lease, exc_info=True)

    async def _renew(self, lease: str) -> None:
        """Keep a run's lease while it runs: every third of the lease's time."""
        if self._leases is None:
            return
        while True:
            await asyncio.sleep(self._lease_ttl / 3)  # the renewal's period
            try:
                if not await self._leases.renew(lease, self._lease_ttl):
                    log.warning("directory sync: lease %s lost while the sync runs", lease)
            except Exception:
                log.warning("directory sync: could not renew %s", lease, exc_info=True)

    async def _claim(
        self, actor: Actor, name: str, dry_run: bool, started: datetime
    ) -> tuple[_Directory, int]:
        """The directory, and a new ``running`` row; refused while a real sync runs."""
        async with self._db.write() as conn:
            # The row lock (PostgreSQL) or the one writer (SQLite) serialises claims, so the
            # running check and the insert below cannot interleave with another claim.
            directory = await _directory(conn, name, lock=True)
            if not dry_run:
                running = await self._running(conn, directory, started)
                lease = run_lease(directory.id)
                if (
                    running is None
                    and self._leases is not None
                    and not await self._leases.claim_in(conn, lease, self._lease_ttl)
                ):
                    running = ("another process", started)  # between its claim and its row
                if running is not None:
                    by, since = running
                    raise Conflict(
                        f"a sync of {directory.name} is already running (started "
                        f"{since:%Y-%m-%d %H:%M:%S} UTC by {by}); "
                        "wait for it to finish"
                    )
            inserted = await conn.execute(
                insert(directory_syncs_t)
                .values(
                    directory_id=directory.id,
                    actor=actor.name[:128],
                    dry_run=dry_run,
                    state="running",
                    started_at=started,
                    report="{}",
                )
                .returning(directory_syncs_t.c.id)
            )
            return directory, int(inserted.scalar_one())

    async def _running(
        self, conn: AsyncConnection, directory: _Directory, now: datetime
    ) -> tuple[str, datetime] | None:
        """The real run of ``directory`` still going (actor, start), if any. Runs left
        ``running`` by a process that died (nobody holds their lease, and they are older
        than the lease's ttl) are marked failed here, so they block nothing."""
        t = directory_syncs_t
        rows = (
            await conn.execute(
                select(t.c.id, t.c.actor, t.c.started_at).where(
                    t.c.directory_id == directory.id,
                    t.c.state == "running",
                    t.c.dry_run.is_(False),
                )
            )
        ).all()
        if not rows:
            return None
        if self._leases is None:
            live = [r for r in rows if r.started_at > now - STALE_RUN]
            return (str(live[0].actor), live[0].started_at) if live else None
        if await self._leases.holder_in(conn, run_lease(directory.id)) is not None:
            return str(rows[0].actor), rows[0].started_at
        too_young = now - timedelta(seconds=self._lease_ttl)
        orphans = [r for r in rows if r.started_at <= too_young]
        if orphans:
            await conn.execute(
                update(t)
                .where(t.c.id.in_([r.id for r in orphans]))
                .values(state="failed", finished_at=now, message=ORPHANED)
            )
            for row in orphans:
                await self._audit.add(
                    conn,
                    Actor("system:directory-sync"),
                    "directory.sync",
                    "failed",
                    detail=f"{directory.name}: run {row.id} by {row.actor} {ORPHANED}",
                )
            log.warning(
                "directory %s: %d orphaned run(s) marked failed", directory.name, len(orphans)
            )
        young = [r for r in rows if r.started_at > too_young]
        return (str(young[0].actor), young[0].started_at) if young else None

    async def fail_orphaned(self) -> int:
        """Mark failed every run left ``running`` by a dead process, in every directory (the
        holder of the scheduling lease does it when it takes over): how many."""
        t = directory_syncs_t
        async with self._db.read() as conn:
            names = (
                await conn.execute(
                    select(directories_t.c.name)
                    .join(t, t.c.directory_id == directories_t.c.id)
                    .where(t.c.state == "running", t.c.dry_run.is_(False))
                    .distinct()
                )
            ).all()
        failed = 0
        for (name,) in names:
            async with self._db.write() as conn:
                directory = await _directory(conn, str(name), lock=True)
                before = await self._count_running(conn, directory.id)
                await self._running(conn, directory, self._clock())
                failed += before - await self._count_running(conn, directory.id)
        return failed

    async def _count_running(self, conn: AsyncConnection, directory_id: int) -> int:
        t = directory_syncs_t
        return int(
            await conn.scalar(
                select(func.count()).where(
                    t.c.directory_id == directory_id,
                    t.c.state == "running",
                    t.c.dry_run.is_(False),
                )
            )
            or 0
        )

    async def _read_and_apply(
        self,
        actor: Actor,
        directory: _Directory,
        reader: DirectoryReader,
        dry_run: bool,
        exempt: frozenset[str],
        tally: _Tally,
        progress: Callable[[SyncProgress], None] | None,
    ) -> list[Disable]:
        """Every page planned (and applied unless dry): the disables, still to do."""
        seen: set[str] = set()
        disables: list[Disable] = []
        pages = reader.user_pages()
        try:
            async for entries in pages:
                tally.pages += 1
                tally.entries += len(entries)
                async with self._db.read() as conn:
                    tied, holders = await _lookups(conn, directory.id, entries)
                plan = planner.plan_page(
                    entries,
                    tied,
                    holders,
                    directory_id=directory.id,
                    seen=seen,
                    manage_admin=directory.manage_admin,
                )
                seen.update(plan.seen)
                changes = _refuse_exempt_renames(plan.changes, exempt)
                tally.unchanged += plan.unchanged
                if not dry_run:
                    await self._apply_page(actor, directory, changes)
                _count(tally, changes, disables)
                if progress is not None:
                    progress(_progress(directory.name, tally, len(disables)))
        finally:
            # A failed page (the database, a bad answer) stops the read: release the
            # reader's connection now, not when the generator is collected.
            close = getattr(pages, "aclose", None)
            if close is not None:
                await close()
        # The users tied to the directory that the answer did not contain are gone.
        after = 0
        while True:
            async with self._db.read() as conn:
                batch = await _tied_batch(conn, directory.id, after)
            if not batch:
                break
            after = batch[-1].id
            gone = planner.plan_gone(batch, seen)
            if not dry_run:
                await self._apply_page(actor, directory, gone)
            _count(tally, gone, disables)
        return disables

    async def _apply_page(
        self, actor: Actor, directory: _Directory, changes: Sequence[Change]
    ) -> None:
        """Renames, updates, creates and enables of one page, in one transaction."""
        renames = [c for c in changes if isinstance(c, Rename)]
        updates = [c for c in changes if isinstance(c, Update)]
        creates = [c for c in changes if isinstance(c, Create)]
        enables = [c for c in changes if isinstance(c, Enable)]
        if not (renames or updates or creates or enables):
            return
        where = f"directory {directory.name}"
        audit: list[tuple[str, str, str, str]] = []
        now = self._clock()
        async with self._db.write() as conn:
            if renames:
                # Two steps, so that names swapped within a page never collide: first a
                # placeholder no user name can be ("~" is not allowed in names), then the name.
                await conn.execute(
                    update(users_t)
                    .where(users_t.c.id == bindparam("uid"))
                    .values(name_key=bindparam("placeholder")),
                    [{"uid": c.user_id, "placeholder": f"~{c.user_id}"} for c in renames],
                )
                await conn.execute(
                    update(users_t)
                    .where(users_t.c.id == bindparam("uid"))
                    .values(name=bindparam("new_name"), name_key=bindparam("new_key")),
                    [
                        {"uid": c.user_id, "new_name": c.new, "new_key": c.new.casefold()}
                        for c in renames
                    ],
                )
                audit += [
                    ("user.rename", "ok", c.new.casefold(), f"from {c.old} ({where})")
                    for c in renames
                ]
            if updates:
                await conn.execute(
                    update(users_t)
                    .where(users_t.c.id == bindparam("uid"))
                    .values(
                        email=bindparam("p_email"),
                        display_name=bindparam("p_display_name"),
                        phone=bindparam("p_phone"),
                        is_admin=bindparam("p_admin"),
                        directory_dn=bindparam("p_dn"),
                    ),
                    [_profile_params(c.user_id, c.profile) for c in updates],
                )
                reasons = [c for c in updates if c.disabled_reason is not None]
                if reasons:
                    await conn.execute(
                        update(users_t)
                        .where(
                            users_t.c.id == bindparam("uid"),
                            users_t.c.disabled_by == BY_DIRECTORY,
                        )
                        .values(disabled_reason=bindparam("reason")),
                        [{"uid": c.user_id, "reason": c.disabled_reason} for c in reasons],
                    )
                audit += [
                    ("user.update", "ok", c.name.casefold(), f"{' '.join(c.fields)} ({where})")
                    for c in updates
                ]
            if creates:
                await conn.execute(
                    insert(users_t),
                    [
                        {
                            "name_key": c.name.casefold(),
                            "name": c.name,
                            "display_name": c.profile.display_name,
                            "email": c.profile.email,
                            "phone": c.profile.phone,
                            "is_admin": c.profile.is_admin,
                            "directory_id": directory.id,
                            "external_id": c.external_id,
                            "directory_dn": c.profile.directory_dn,
                            "password_hash": None,
                            "created_at": now,
                        }
                        for c in creates
                    ],
                )
                audit += [
                    (
                        "user.add",
                        "ok",
                        c.name.casefold(),
                        where + (" admin" if c.profile.is_admin else ""),
                    )
                    for c in creates
                ]
            if enables:
                # Only a sync's own disable is undone: an administrator's stays.
                await conn.execute(
                    update(users_t)
                    .where(
                        users_t.c.id.in_([c.user_id for c in enables]),
                        users_t.c.disabled_by == BY_DIRECTORY,
                    )
                    .values(disabled=False, disabled_by="", disabled_reason="")
                )
                audit += [("user.enable", "ok", c.name.casefold(), where) for c in enables]
            await self._audit.add_many(conn, actor, audit)

    async def _disable(
        self, actor: Actor, directory: _Directory, disables: list[Disable], tally: _Tally
    ) -> None:
        """Disable in batches; each user's pending sign-ins cancelled, web sessions ended."""
        for start in range(0, len(disables), DISABLE_BATCH):
            batch = disables[start : start + DISABLE_BATCH]
            outcomes: list[Outcome] = []
            async with self._db.write() as conn:
                for change in batch:
                    done = await conn.execute(
                        update(users_t)
                        .where(users_t.c.id == change.user_id, users_t.c.disabled.is_(False))
                        .values(
                            disabled=True, disabled_by=BY_DIRECTORY, disabled_reason=change.reason
                        )
                    )
                    if done.rowcount != 1:
                        continue  # disabled meanwhile (by an administrator): leave it be
                    key = change.name.casefold()
                    await self._audit.add(
                        conn,
                        actor,
                        "user.disable",
                        "ok",
                        key,
                        f"{change.reason} (directory {directory.name})",
                    )
                    outcomes += await self._challenges.cancel_pending_in(
                        conn, actor, change.user_id, key, f"user disabled: {change.reason}"
                    )
                    await self._notices.changed_in(
                        conn, actor, change.user_id, AccountChange.DISABLED
                    )
                    tally.add("disabled", f"{change.name} ({change.reason})")
            await self._challenges.announce(outcomes)

    async def _invite(self, actor: Actor, tally: _Tally) -> None:
        """E-mail an invitation to each new user, where the policy says so."""
        if self._inviter is None or not tally.counts["created"]:
            return
        async with self._db.read() as conn:
            policy = await effective_policy(conn, None)
        if not policy.directory_invite_new_users:
            return
        # Only the listed names (the first REPORT_NAMES): an initial sync of thousands does
        # not send thousands of mails in one go; the report says how many were invited.
        for name in tally.names["created"]:
            try:
                problem = await self._inviter.invite(actor, name)
            except OpenMFAError as exc:  # disabled or renamed meanwhile
                problem = exc.detail
            if problem is None:
                tally.invited += 1
            else:
                tally.invite_failures.append(f"{name}: {problem}")

    async def _finish(
        self,
        sync_id: int,
        directory: _Directory,
        state: str,
        message: str,
        tally: _Tally,
        extra: dict[str, Any],
        clock_start: float,
    ) -> SyncReport:
        extra = {**extra, "seconds": round(time.monotonic() - clock_start, 3)}
        async with self._db.write() as conn:
            await conn.execute(
                update(directory_syncs_t)
                .where(directory_syncs_t.c.id == sync_id)
                .values(
                    state=state,
                    finished_at=self._clock(),
                    created=tally.counts["created"],
                    updated=tally.counts["updated"],
                    renamed=tally.counts["renamed"],
                    disabled=tally.counts["disabled"],
                    enabled=tally.counts["enabled"],
                    unchanged=tally.unchanged,
                    errors=tally.counts["errors"] + tally.counts["clashes"],
                    message=message[:1024],
                    report=json.dumps(tally.details(extra)),
                )
            )
            row = (
                await conn.execute(
                    select(directory_syncs_t).where(directory_syncs_t.c.id == sync_id)
                )
            ).one()
        return _report(row, directory.name)

    async def _exempt_names(self) -> frozenset[str]:
        """Names RADIUS clients exempt: such a user is not renamed (see AccountService)."""
        async with self._db.read() as conn:
            rows = (await conn.execute(select(radius_clients_t.c.exempt_users))).all()
        return frozenset(name for row in rows for name in json.loads(row.exempt_users or "[]"))

    async def _count_tied(self, directory_id: int) -> int:
        async with self._db.read() as conn:
            stmt = select(func.count()).where(users_t.c.directory_id == directory_id)
            return int((await conn.execute(stmt)).scalar_one())


def _refuse_exempt_renames(changes: Iterable[Change], exempt: frozenset[str]) -> list[Change]:
    """A rename of a user a RADIUS client exempts by name becomes an error (the exemption
    would pass to whoever takes the old name next)."""
    changes = list(changes)
    refused = {
        c.user_id: c.old for c in changes if isinstance(c, Rename) and c.old.casefold() in exempt
    }
    kept: list[Change] = []
    for change in changes:
        if isinstance(change, Update | Disable | Enable) and change.user_id in refused:
            change = dataclasses.replace(change, name=refused[change.user_id])  # not renamed
        if isinstance(change, Rename) and change.user_id in refused:
            kept.append(
                Error(
                    "",
                    "",
                    change.new,
                    f"not renamed from {change.old}: a RADIUS client exempts {change.old} by "
                    "name; take it off that list (openmfa client set NAME --exempt-user ...)",
                )
            )
            continue
        kept.append(change)
    return kept


def _count(tally: _Tally, changes: Iterable[Change], disables: list[Disable]) -> None:
    for change in changes:
        if isinstance(change, Create):
            tally.add("created", change.name)
        elif isinstance(change, Update):
            tally.add("updated", f"{change.name}: {' '.join(change.fields)}")
        elif isinstance(change, Rename):
            tally.add("renamed", f"{change.old} -> {change.new}")
        elif isinstance(change, Enable):
            tally.add("enabled", change.name)
        elif isinstance(change, Disable):
            disables.append(change)
        elif isinstance(change, NameClash):
            tally.add("clashes", f"{change.name}: held by {change.holder}")
        elif isinstance(change, Error):
            tally.add(
                "errors", f"{change.name or change.dn or change.external_id}: {change.reason}"
            )
        elif isinstance(change, Dropped) and len(tally.dropped) < REPORT_NAMES:
            tally.dropped.append(f"{change.name}: {change.reason}")


def _progress(name: str, tally: _Tally, pending: int) -> SyncProgress:
    c = tally.counts
    return SyncProgress(
        name,
        tally.pages,
        tally.entries,
        c["created"],
        c["updated"],
        c["renamed"],
        c["enabled"],
        pending,
        c["errors"] + c["clashes"],
    )


def _summary_line(tally: _Tally, dry_run: bool) -> str:
    c = tally.counts
    verb = "would be " if dry_run else ""
    return (
        f"{'dry run: ' if dry_run else ''}{c['created']} {verb}created, {c['updated']} updated, "
        f"{c['renamed']} renamed, {c['disabled']} disabled, {c['enabled']} enabled, "
        f"{tally.unchanged} unchanged, {c['errors'] + c['clashes']} errors"
    )


def _profile_params(user_id: int, profile: planner.Profile) -> dict[str, object]:
    return {
        "uid": user_id,
        "p_email": profile.email,
        "p_display_name": profile.display_name,
        "p_phone": profile.phone,
        "p_admin": profile.is_admin,
        "p_dn": profile.directory_dn,
    }


async def _directory(conn: AsyncConnection, name: str, lock: bool = False) -> _Directory:
    object_name(name, "directory")
    stmt = select(
        directories_t.c.id,
        directories_t.c.name,
        directories_t.c.admin_group_dn,
        directories_t.c.disable_percent,
        directories_t.c.disable_minimum,
    ).where(directories_t.c.name_key == name.casefold())
    if lock:
        stmt = stmt.with_for_update()
    row = (await conn.execute(stmt)).first()
    if row is None:
        raise NotFound(f"no directory named {name!r} (openmfa directory list)")
    return _Directory(
        int(row.id),
        str(row.name),
        bool(row.admin_group_dn),
        int(row.disable_percent),
        int(row.disable_minimum),
    )


_USER_COLUMNS = (
    users_t.c.id,
    users_t.c.name,
    users_t.c.email,
    users_t.c.display_name,
    users_t.c.phone,
    users_t.c.is_admin,
    users_t.c.disabled,
    users_t.c.disabled_by,
    users_t.c.disabled_reason,
    users_t.c.directory_id,
    users_t.c.external_id,
    users_t.c.directory_dn,
)


def _local_user(row: Any, directory_name: str = "") -> LocalUser:
    return LocalUser(
        id=int(row.id),
        name=str(row.name),
        email=str(row.email or ""),
        display_name=str(row.display_name or ""),
        phone=str(row.phone or ""),
        is_admin=bool(row.is_admin),
        disabled=bool(row.disabled),
        disabled_by=str(row.disabled_by or ""),
        disabled_reason=str(row.disabled_reason or ""),
        directory_id=None if row.directory_id is None else int(row.directory_id),
        directory_name=directory_name,
        external_id=None if row.external_id is None else str(row.external_id),
        directory_dn=str(row.directory_dn or ""),
    )


async def _lookups(
    conn: AsyncConnection, directory_id: int, entries: Sequence[DirectoryEntry]
) -> tuple[dict[str, LocalUser], dict[str, LocalUser]]:
    """The page's tied users (by external id) and the holders of its names (by name key)."""
    ids = [e.external_id for e in entries if e.external_id]
    keys = [e.name.casefold() for e in entries if e.name]
    tied: dict[str, LocalUser] = {}
    if ids:
        rows = await conn.execute(
            select(*_USER_COLUMNS).where(
                users_t.c.directory_id == directory_id, users_t.c.external_id.in_(ids)
            )
        )
        for row in rows:
            user = _local_user(row)
            tied[str(user.external_id)] = user
    holders: dict[str, LocalUser] = {}
    if keys:
        rows = await conn.execute(
            select(*_USER_COLUMNS, directories_t.c.name.label("directory_name"))
            .select_from(
                users_t.outerjoin(directories_t, directories_t.c.id == users_t.c.directory_id)
            )
            .where(users_t.c.name_key.in_(keys))
        )
        for row in rows:
            user = _local_user(row, str(row.directory_name or ""))
            holders[user.name_key] = user
    return tied, holders


async def _tied_batch(conn: AsyncConnection, directory_id: int, after: int) -> list[LocalUser]:
    rows = await conn.execute(
        select(*_USER_COLUMNS)
        .where(users_t.c.directory_id == directory_id, users_t.c.id > after)
        .order_by(users_t.c.id)
        .limit(GONE_BATCH)
    )
    return [_local_user(row) for row in rows]


def _reports(directory_id: int) -> Any:
    return (
        select(directory_syncs_t)
        .where(directory_syncs_t.c.directory_id == directory_id)
        .order_by(directory_syncs_t.c.started_at.desc(), directory_syncs_t.c.id.desc())
    )


def _report(row: Row[Any], directory: str) -> SyncReport:
    try:
        details = json.loads(row.report or "{}")
    except ValueError:
        details = {}
    return SyncReport(
        id=int(row.id),
        directory=directory,
        actor=str(row.actor),
        dry_run=bool(row.dry_run),
        state=str(row.state),
        started_at=row.started_at,
        finished_at=row.finished_at,
        created=int(row.created),
        updated=int(row.updated),
        renamed=int(row.renamed),
        disabled=int(row.disabled),
        enabled=int(row.enabled),
        unchanged=int(row.unchanged),
        errors=int(row.errors),
        message=str(row.message),
        details=details if isinstance(details, dict) else {},
    )


class MailInviter:
    """Invitations for new directory users, e-mailed like the console's "Invite by e-mail"."""

    def __init__(
        self,
        users: UserService,
        invitations: InvitationService,
        audit: AuditLog,
        sender: MailSender,
        issuer: str,
    ) -> None:
        self._users = users
        self._invitations = invitations
        self._audit = audit
        self._sender = sender
        self._issuer = issuer

    async def invite(self, actor: Actor, user_name: str) -> str | None:
        """Create the invitation and send it: None, or why it was not sent. Earlier links
        stay valid until this one is sent (as in the console)."""
        user = await self._users.get(user_name)
        if not user.email:
            return "no e-mail address"
        offer = await self._invitations.create(actor, user.name, replace=False)
        body = (
            f"Hello {user.display_name or user.name},\n\n"
            f"your account at {self._issuer} was created from your organisation's directory. "
            f"Open this link to set up your sign-in app:\n\n  {offer.url}\n\n"
            f"The link works once and expires {offer.expires_at:%Y-%m-%d %H:%M} UTC. "
            "If you did not expect this, ignore it and tell your IT support.\n"
        )
        try:
            message = self._sender.compose([user.email], f"Your {self._issuer} invitation", body)
            await self._sender.send([user.email], message)
        except MailError as exc:
            await self._audit.record(
                actor, "invitation.mail", "failed", user.name_key, exc.reason[:200]
            )
            return exc.reason
        await self._audit.record(actor, "invitation.mail", "sent", user.name_key, user.email)
        await self._invitations.retire_others(actor, offer)
        return None


#: Seconds after ``openmfa run`` starts before the first scheduled syncs.
FIRST_RUN_DELAY: Final = 15.0
#: How often the schedule rereads the directories (new ones, changed intervals).
SCHEDULE_POLL: Final = 60.0


class SyncSchedule:
    """The scheduled syncs inside ``openmfa run``: each directory every ``sync_interval``
    seconds (0: never), the first shortly after the start.

    One background task; a sync's failure is logged (and kept in its report), never raised,
    so nothing here can stop the server. :meth:`run_due` is one pass over the directories,
    the unit a node lease (issue 18) will wrap.
    """

    def __init__(
        self,
        sync: DirectorySyncService,
        first_delay: float = FIRST_RUN_DELAY,
        poll: float = SCHEDULE_POLL,
    ) -> None:
        self._sync = sync
        self._first_delay = first_delay
        self._poll = poll
        self._due: dict[str, float] = {}  # directory name -> monotonic time of its next run
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def start(self) -> None:
        """Start the background task (one node alone; ``openmfa run`` uses :meth:`run` as
        the leased duty "directory-sync" instead)."""
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="directory-sync")

    async def run(self) -> None:
        """The schedule as a duty (:class:`~backend.tasks.LeasedDuty`, lease
        "directory-sync"): first mark failed the runs a dead node left ``running``, then sync
        on schedule until cancelled (the lease lost or the server stopping)."""
        try:
            failed = await self._sync.fail_orphaned()
        except Exception:  # the database away for a moment: _running does it at the claim
            log.exception("scheduled directory syncs: cannot check for orphaned runs")
        else:
            if failed:
                log.warning("scheduled directory syncs: %d orphaned run(s) marked failed", failed)
        self._due.clear()  # a new holder starts its own schedule, the first run shortly after
        await self._loop()

    async def close(self) -> None:
        """Stop: a sync in progress is interrupted (its report says so)."""
        self._stop.set()
        await stop_task(self._task)
        self._task = None

    async def _loop(self) -> None:
        started = time.monotonic()
        while not self._stop.is_set():
            try:
                wait = await self.run_due(time.monotonic(), started)
            except Exception:  # the database away for a moment: try again at the next poll
                log.exception("scheduled directory syncs: cannot read the directories")
                wait = self._poll
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=wait)

    async def run_due(self, now: float, started: float) -> float:
        """Sync every directory whose time has come: seconds until the next pass."""
        scheduled = dict(await self._sync.scheduled())
        for name in list(self._due):
            if name not in scheduled:  # removed, or its schedule turned off
                del self._due[name]
        for name, interval in scheduled.items():
            due = self._due.setdefault(name, started + self._first_delay)
            if due > now:
                continue
            await self._run_one(name)
            self._due[name] = now + interval  # from the pass's start: no drift per run
        upcoming = [due - now for due in self._due.values()]
        return max(0.0, min([self._poll, *upcoming]))

    async def _run_one(self, name: str) -> None:
        actor = Actor(f"directory:{name}", "schedule")
        try:
            report = await self._sync.run(actor, name)
        except Conflict as exc:
            log.info("scheduled sync of %s skipped: %s", name, exc.detail)
        except SyncStopped as exc:
            log.warning("scheduled sync of %s stopped: %s", name, exc.detail)
        except OpenMFAError as exc:
            log.error("scheduled sync of %s failed: %s", name, exc.detail)
        except Exception:
            log.exception("scheduled sync of %s failed", name)
        else:
            log.info("scheduled sync of %s: %s", name, report.message)
