"""The audit trail: one row per authentication, answer, activation, admin action and refusal."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, select
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
    ) -> list[AuditEntry]:
        """Newest first."""
        stmt = select(audit_t).order_by(audit_t.c.id.desc()).limit(limit)
        if user_name:
            stmt = stmt.where(audit_t.c.user_name == user_name.casefold())
        if since is not None:
            stmt = stmt.where(audit_t.c.at >= since)
        if action:
            stmt = stmt.where(audit_t.c.action == action)
        async with self._db.read() as conn:
            rows = (await conn.execute(stmt)).all()
        return [
            AuditEntry(
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
            for row in rows
        ]
