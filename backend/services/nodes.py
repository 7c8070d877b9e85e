"""This process among the nodes serving the database: its row in ``nodes`` and heartbeat.

:class:`NodeRegistry` is built only for ``openmfa run`` (``Services.open(node=True)``): it
inserts the node's row, updates ``seen_at`` every ``heartbeat`` seconds, and on a clean
:meth:`~NodeRegistry.close` sets ``stopped_at`` and releases the node's leases so another
node takes its duties over at once. A node that dies simply stops beating; after
``timeout`` seconds it counts as dead (:func:`alive_node_clause`), and its leases run out on
their own.

Other code asks "which nodes are alive" in SQL through :func:`alive_node_clause` /
:func:`alive_node_ids` (the push handover takes over the pushes of nodes not in that set).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Select, and_, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from backend import __version__
from backend.domain.leases import NodeState, alive_since, node_state
from backend.services.context import Clock
from backend.services.leases import Leases
from backend.store.database import Database
from backend.store.tables import leases_t, nodes_t
from backend.tasks import stop_task

log = logging.getLogger("openmfa.nodes")


def alive_node_clause(now: datetime, timeout: timedelta) -> ColumnElement[bool]:
    """SQL condition on ``nodes``: the node is alive at ``now`` (not stopped, beat within
    ``timeout``) — the same rule as :func:`backend.domain.leases.node_state`."""
    return and_(nodes_t.c.stopped_at.is_(None), nodes_t.c.seen_at >= alive_since(now, timeout))


def alive_node_ids(now: datetime, timeout: timedelta) -> Select[tuple[str]]:
    """``SELECT id FROM nodes WHERE alive``: use as ``column.not_in(alive_node_ids(...))``."""
    return select(nodes_t.c.id).where(alive_node_clause(now, timeout))


@dataclass(frozen=True, slots=True)
class NodeView:
    """One node as ``openmfa nodes`` and the console show it."""

    id: str
    name: str
    host: str
    pid: int
    version: str
    started_at: datetime
    seen_at: datetime
    stopped_at: datetime | None
    state: NodeState
    leases: tuple[str, ...]  # the leases (duties) it holds now, by name

    @property
    def alive(self) -> bool:
        """Heart-beating now."""
        return self.state is NodeState.ALIVE


class NodeRegistry:
    """Registers this process as node ``node_id`` and keeps its heartbeat going."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        node_id: str,
        name: str = "",
        heartbeat: float = 5.0,
        timeout: float = 20.0,
    ) -> None:
        if timeout < 2 * heartbeat:
            raise ValueError("timeout must be at least twice the heartbeat")
        self._db = db
        self._clock = clock
        self.node_id = node_id
        self.host = socket.gethostname()[:255]
        self.name = (name or self.host)[:128]
        self.heartbeat = heartbeat
        self.timeout = timedelta(seconds=timeout)
        self.leases = Leases(db, clock, node_id)
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def start(self) -> None:
        """Insert this node's row and start the heartbeat task."""
        at = self._clock()
        async with self._db.write() as conn:
            await conn.execute(
                insert(nodes_t).values(
                    id=self.node_id,
                    name=self.name,
                    host=self.host,
                    pid=os.getpid(),
                    version=__version__[:32],
                    started_at=at,
                    seen_at=at,
                )
            )
        log.info("node %s (%s) registered", self.node_id, self.name)
        self._task = asyncio.get_running_loop().create_task(self._beat_loop(), name="heartbeat")

    async def beat(self) -> None:
        """One heartbeat: ``seen_at`` = now."""
        async with self._db.write() as conn:
            await conn.execute(
                update(nodes_t).where(nodes_t.c.id == self.node_id).values(seen_at=self._clock())
            )

    async def close(self) -> None:
        """Stop beating, mark the row stopped and release this node's leases (the other nodes
        take its duties over at their next attempt, not after the expiry)."""
        self._stop.set()
        await stop_task(self._task)
        self._task = None
        try:
            async with self._db.write() as conn:
                await conn.execute(
                    update(nodes_t)
                    .where(nodes_t.c.id == self.node_id)
                    .values(stopped_at=self._clock())
                )
                await conn.execute(delete(leases_t).where(leases_t.c.node_id == self.node_id))
            self.leases.held.clear()
        except Exception:  # the database gone: the row turns dead and the leases run out
            log.exception("node %s: could not record the stop", self.node_id)

    async def _beat_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self.heartbeat)
            if self._stop.is_set():
                return
            try:
                await self.beat()
            except Exception:  # the database away: the next beat tries again
                log.warning("node %s: heartbeat failed", self.node_id, exc_info=True)

    async def alive_ids(self, conn: AsyncConnection) -> set[str]:
        """Ids of the nodes alive now (this one included while it beats)."""
        rows = await conn.execute(alive_node_ids(self._clock(), self.timeout))
        return {str(row[0]) for row in rows}

    async def list(self) -> list[NodeView]:
        """Every known node (alive first, then newest), with the leases each holds."""
        return await list_nodes(self._db, self._clock(), self.timeout)


async def list_nodes(db: Database, now: datetime, node_timeout: timedelta) -> list[NodeView]:
    """Every node row with its state at ``now`` and the leases it holds (CLI, console)."""
    async with db.read() as conn:
        rows = (await conn.execute(select(nodes_t))).all()
        held = (
            await conn.execute(
                select(leases_t.c.node_id, leases_t.c.name)
                .where(leases_t.c.expires_at > now)
                .order_by(leases_t.c.name)
            )
        ).all()
    by_node: dict[str, list[str]] = {}
    for lease in held:
        by_node.setdefault(str(lease.node_id), []).append(str(lease.name))
    views = [
        NodeView(
            id=row.id,
            name=row.name,
            host=row.host,
            pid=int(row.pid),
            version=row.version,
            started_at=row.started_at,
            seen_at=row.seen_at,
            stopped_at=row.stopped_at,
            state=node_state(row.seen_at, row.stopped_at, now, node_timeout),
            leases=tuple(by_node.get(row.id, ())),
        )
        for row in rows
    ]
    order = {NodeState.ALIVE: 0, NodeState.DEAD: 1, NodeState.STOPPED: 2}
    views.sort(key=lambda v: (order[v.state], -v.started_at.timestamp(), v.id))
    return views
