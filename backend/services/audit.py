"""The audit trail: one row per authentication, answer, activation, admin action and refusal."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from backend.services.context import Actor, Clock
from backend.store.database import Database
from backend.store.fastpath import Tx
from backend.store.tables import audit_t


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    user_name: str
    source: str
    action: str
    result: str
    detail: str
    request_id: str


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class AuditLog:
    """Writes audit rows inside the caller's transaction, or in one of its own."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def add(
        self,
        conn: AsyncConnection,
        actor: Actor,
        action: str,
        result: str,
        user_name: str = "",
        detail: str = "",
    ) -> None:
        """Add a row to the transaction ``conn`` belongs to (committed with it)."""
        await conn.execute(
            insert(audit_t).values(
                at=self._clock(),
                actor=_clip(actor.name, 128),
                user_name=_clip(user_name, 128),
                source=_clip(actor.source, 64),
                action=action,
                result=result,
                detail=_clip(detail, 1024),
                request_id=actor.request_id[:64],
            )
        )

    async def add_many(
        self,
        conn: AsyncConnection,
        actor: Actor,
        rows: list[tuple[str, str, str, str]],
    ) -> None:
        """Rows of (action, result, user name, detail) in one statement, in ``conn``'s
        transaction: a directory sync audits thousands of changes at once."""
        if not rows:
            return
        at = self._clock()
        await conn.execute(
            insert(audit_t),
            [
                {
                    "at": at,
                    "actor": _clip(actor.name, 128),
                    "user_name": _clip(user_name, 128),
                    "source": _clip(actor.source, 64),
                    "action": action,
                    "result": result,
                    "detail": _clip(detail, 1024),
                    "request_id": actor.request_id[:64],
                }
                for action, result, user_name, detail in rows
            ],
        )

    def add_job(
        self,
        tx: Tx,
        actor: Actor,
        at: datetime,
        action: str,
        result: str,
        user_name: str = "",
        detail: str = "",
    ) -> None:
        """The same row, written by a raw-SQL job (hot paths)."""
        tx.run(
            "INSERT INTO audit_events (at, actor, user_name, source, action, result, detail, "
            "request_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            tx.time(at),
            _clip(actor.name, 128),
            _clip(user_name, 128),
            _clip(actor.source, 64),
            action,
            result,
            _clip(detail, 1024),
            actor.request_id[:64],
        )

    async def record(
        self, actor: Actor, action: str, result: str, user_name: str = "", detail: str = ""
    ) -> None:
        """Write one row in a transaction of its own (used for refusals, after a rollback)."""
        async with self._db.write() as conn:
            await self.add(conn, actor, action, result, user_name, detail)

    async def query(
        self,
        user_name: str | None = None,
        since: datetime | None = None,
        action: str | None = None,
        limit: int = 100,
        *,
        result: str | None = None,
        until: datetime | None = None,
        before_id: int | None = None,
    ) -> list[AuditEntry]:
        """Newest first. ``action`` ending in ``*`` matches a prefix (``user.*``); ``since``
        is inclusive, ``until`` exclusive; ``before_id`` continues a page (keyset paging on
        the primary key: stable while new rows arrive, and no OFFSET scan)."""
        stmt = _filtered(user_name, since, action, result, until, before_id)
        async with self._db.read() as conn:
            rows = (await conn.execute(stmt.limit(limit))).all()
        return [_entry(row) for row in rows]

    async def export(
        self,
        user_name: str | None = None,
        since: datetime | None = None,
        action: str | None = None,
        *,
        result: str | None = None,
        until: datetime | None = None,
        batch: int = 1000,
    ) -> AsyncIterator[list[AuditEntry]]:
        """Every matching row, newest first, in batches of ``batch`` (one short read
        transaction each, so a long download holds no transaction open)."""
        before_id: int | None = None
        while True:
            rows = await self.query(
                user_name,
                since,
                action,
                batch,
                result=result,
                until=until,
                before_id=before_id,
            )
            if not rows:
                return
            yield rows
            if len(rows) < batch:
                return
            before_id = rows[-1].id


def _filtered(
    user_name: str | None,
    since: datetime | None,
    action: str | None,
    result: str | None,
    until: datetime | None,
    before_id: int | None,
) -> Select[Any]:
    stmt = select(audit_t).order_by(audit_t.c.id.desc())
    if user_name:
        stmt = stmt.where(audit_t.c.user_name == user_name.casefold())
    if since is not None:
        stmt = stmt.where(audit_t.c.at >= since)
    if until is not None:
        stmt = stmt.where(audit_t.c.at < until)
    if action and action.endswith("*"):
        stmt = stmt.where(audit_t.c.action.startswith(action[:-1], autoescape=True))
    elif action:
        stmt = stmt.where(audit_t.c.action == action)
    if result:
        stmt = stmt.where(audit_t.c.result == result)
    if before_id is not None:
        stmt = stmt.where(audit_t.c.id < before_id)
    return stmt


def _entry(row: Any) -> AuditEntry:
    return AuditEntry(
        id=row.id,
        at=row.at,
        actor=row.actor,
        user_name=row.user_name,
        source=row.source,
        action=row.action,
        result=row.result,
        detail=row.detail,
        request_id=row.request_id,
    )
