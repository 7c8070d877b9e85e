"""Lease rows: one holder at a time for a named duty, across every node on the database.

:class:`Leases` is one holder's handle (a node id, or ``cli:<host>:<pid>`` for a command).
Each call is ONE statement in a transaction of its own, atomic on SQLite and PostgreSQL:

* :meth:`Leases.claim` is ``INSERT ... ON CONFLICT (name) DO UPDATE ... WHERE the row is
  expired OR already mine``. On PostgreSQL the conflicting row is locked and the WHERE is
  checked against its newest version, so of any number of concurrent claimers exactly one
  sees its row come back; SQLite runs one writer at a time anyway.
* :meth:`Leases.renew` moves the expiry of a row still held by this holder.
* :meth:`Leases.release` / :meth:`Leases.release_all` delete this holder's rows, so another
  node takes over at its next attempt instead of waiting for the expiry.

Why rows and not ``pg_advisory_lock``: an advisory lock lives on one connection (a pooled
connection, PgBouncer in transaction mode or a database failover loses it silently), nobody
can see who holds it and until when, SQLite has none, and it cannot say "hand over once the
holder stops renewing". The rules themselves are in :mod:`backend.domain.leases`; times come
from the injected clock, so nodes need synchronised clocks (NTP), well within the lease ttl.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import timedelta

from sqlalchemy import case, delete, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from backend.domain.leases import LeaseState
from backend.services.context import Clock
from backend.store.database import Database
from backend.store.tables import leases_t

log = logging.getLogger("openmfa.leases")


def command_holder() -> str:
    """The holder name of an ``openmfa`` command (not a node): ``cli:<host>:<pid>``."""
    return f"cli:{socket.gethostname()[:40]}:{os.getpid()}"[:64]


class Leases:
    """Claim, renew and release named leases as ``holder`` (a node id)."""

    def __init__(self, db: Database, clock: Clock, holder: str) -> None:
        if not holder or len(holder) > 64:
            raise ValueError("a lease holder is 1 to 64 characters")
        self._db = db
        self._clock = clock
        self.holder_id = holder
        #: The leases this holder believes it holds (claimed or renewed, not yet lost or
        #: released): the ``openmfa_node_leases_held`` gauge.
        self.held: set[str] = set()

    async def claim(self, name: str, ttl: float) -> bool:
        """Take lease ``name`` for ``ttl`` seconds if it is free, expired or already ours."""
        async with self._db.write() as conn:
            return await self.claim_in(conn, name, ttl)

    async def claim_in(self, conn: AsyncConnection, name: str, ttl: float) -> bool:
        """:meth:`claim` inside the caller's write transaction ``conn`` (the lease then
        commits, or rolls back, with what the caller writes beside it)."""
        now = self._clock()
        t = leases_t
        values = {
            "name": name,
            "node_id": self.holder_id,
            "acquired_at": now,
            "expires_at": now + timedelta(seconds=ttl),
        }
        dialect = postgresql if not self._db.is_sqlite else sqlite
        stmt = dialect.insert(t).values(**values)
        mine = t.c.node_id == self.holder_id
        upsert = stmt.on_conflict_do_update(
            index_elements=[t.c.name],
            set_={
                "node_id": self.holder_id,
                # "Held since" survives a re-claim by the same holder.
                "acquired_at": case((mine, t.c.acquired_at), else_=stmt.excluded.acquired_at),
                "expires_at": stmt.excluded.expires_at,
            },
            where=or_(t.c.expires_at <= now, mine),
        ).returning(t.c.node_id)
        got = (await conn.execute(upsert)).first() is not None
        if got:
            self.held.add(name)
        else:
            self.held.discard(name)
        return got

    async def renew(self, name: str, ttl: float) -> bool:
        """Push the expiry of lease ``name`` to ``ttl`` seconds from now; False when it is no
        longer ours (another holder took it after it expired, or it was released)."""
        expires = self._clock() + timedelta(seconds=ttl)
        t = leases_t
        async with self._db.write() as conn:
            result = await conn.execute(
                update(t)
                .where(t.c.name == name, t.c.node_id == self.holder_id)
                .values(expires_at=expires)
                .returning(t.c.name)
            )
            kept = result.first() is not None
        if not kept:
            self.held.discard(name)
        return kept

    async def release(self, name: str) -> bool:
        """Give lease ``name`` up now (if ours): another holder may claim it at once."""
        self.held.discard(name)
        t = leases_t
        async with self._db.write() as conn:
            result = await conn.execute(
                delete(t).where(t.c.name == name, t.c.node_id == self.holder_id).returning(t.c.name)
            )
            return result.first() is not None

    async def release_all(self) -> int:
        """Give up every lease of this holder (a clean shutdown): how many there were."""
        self.held.clear()
        t = leases_t
        async with self._db.write() as conn:
            result = await conn.execute(
                delete(t).where(t.c.node_id == self.holder_id).returning(t.c.name)
            )
            return len(result.all())

    async def holder(self, name: str) -> LeaseState | None:
        """Who holds lease ``name`` now (None: free or expired)."""
        async with self._db.read() as conn:
            return await self.holder_in(conn, name)

    async def holder_in(self, conn: AsyncConnection, name: str) -> LeaseState | None:
        """:meth:`holder` inside the caller's transaction ``conn``."""
        t = leases_t
        row = (
            await conn.execute(select(t).where(t.c.name == name, t.c.expires_at > self._clock()))
        ).first()
        if row is None:
            return None
        return LeaseState(row.name, row.node_id, row.acquired_at, row.expires_at)

    async def current(self) -> list[LeaseState]:
        """Every lease held now (not expired), by name."""
        t = leases_t
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    select(t).where(t.c.expires_at > self._clock()).order_by(t.c.name)
                )
            ).all()
        return [LeaseState(r.name, r.node_id, r.acquired_at, r.expires_at) for r in rows]
