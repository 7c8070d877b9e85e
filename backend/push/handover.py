"""Hand the pushes of a dead node over to this one (docs/push.md, "Several nodes").

The node that starts a push challenge records itself as its ``push_node`` and its dispatcher
records ``push_sent_at`` once every device's push has finished (delivered, invalid token,
given up, or the challenge is no longer pending). A node that dies in between leaves pending
challenges with ``push_sent_at`` NULL behind; so does a command (``openmfa``), which starts a
challenge with no dispatcher at all (``push_node`` NULL).

:class:`PushHandover` finds them: one pass claims up to :data:`BATCH` pending, unexpired push
challenges with ``push_sent_at`` NULL whose ``push_node`` is NULL or not alive (its ``nodes``
row stopped, silent for ``node_timeout_seconds``, or missing) by setting ``push_node`` to this
node in one transaction, and hands them to this node's dispatcher
(:meth:`~backend.push.dispatcher.PushDispatcher.take_over`). The claim is a conditional
UPDATE, so two sweepers never both take a challenge: on PostgreSQL the candidates are locked
``FOR UPDATE SKIP LOCKED`` (a concurrent sweeper takes the others), on SQLite the one writer
serialises the passes. A node never takes its own challenges back: they are being delivered
here already.

Run it as the ``push-handover`` leased duty (:meth:`PushHandover.leased`): one node sweeps
at a time, every :data:`INTERVAL` seconds; the claim itself stays safe without the lease.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import Counter
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from backend.domain.leases import PUSH_HANDOVER, alive_since
from backend.store.database import Database
from backend.store.fastpath import Tx
from backend.tasks import LeaseClaims, LeasedDuty

if TYPE_CHECKING:  # push sits below the services; they hand it what it needs
    from backend.push.dispatcher import PushDispatcher
    from backend.services.audit import AuditLog
    from backend.services.context import Actor, Clock

log = logging.getLogger("openmfa.push")

BATCH = 500  # challenges per claim (the dispatcher loads them in batches of the same size)
INTERVAL = 2.0  # seconds between passes
LEASE = PUSH_HANDOVER  # the leased duty's name (``openmfa nodes`` shows its holder)

# A challenge nobody is delivering: pending, unexpired, push, not recorded sent, and its node
# is not this one and not alive (stopped, silent too long, or without a row). Parameters:
# now, this node, the oldest heartbeat that still counts as alive.
_ORPHANED = (
    "challenges.method = 'push' AND challenges.state = 'pending' "
    "AND challenges.expires_at > ? AND challenges.push_sent_at IS NULL "
    "AND (challenges.push_node IS NULL OR (challenges.push_node <> ? AND NOT EXISTS ("
    "SELECT 1 FROM nodes WHERE nodes.id = challenges.push_node "
    "AND nodes.stopped_at IS NULL AND nodes.seen_at >= ?)))"
)
# PostgreSQL: lock the candidates, skipping those a concurrent pass has locked, and return
# each claimed id with the node it was taken from. A row locked FOR UPDATE was re-checked
# against the condition as it was locking it (READ COMMITTED rechecks a row changed
# meanwhile) and nobody changes it until this commits, so the UPDATE joins by primary key
# only (repeating the condition there made the planner join by a scan: 360 ms for 500).
# Parameters: the condition's, then this node.
_CLAIM_POSTGRES = (
    f"WITH picked AS (SELECT id, push_node FROM challenges WHERE {_ORPHANED} "  # noqa: S608 - constants only
    f"ORDER BY expires_at LIMIT {BATCH} FOR UPDATE SKIP LOCKED) "
    "UPDATE challenges SET push_node = ? FROM picked WHERE challenges.id = picked.id "
    "RETURNING challenges.id, picked.push_node"
)
# SQLite: the one writer runs the SELECT and the UPDATE with nothing in between.
_PICK_SQLITE = (
    f"SELECT id, push_node FROM challenges WHERE {_ORPHANED} "  # noqa: S608 - constants only
    f"ORDER BY expires_at LIMIT {BATCH}"
)


class PushHandover:
    """Claims the pushes dead nodes (and commands) left unsent; see the module docstring."""

    def __init__(
        self,
        db: Database,
        dispatcher: PushDispatcher,
        audit: AuditLog,
        clock: Clock,
        actor: Actor,
        node_id: str,
        node_timeout_seconds: float,
        interval: float = INTERVAL,
    ) -> None:
        self._db = db
        self._dispatcher = dispatcher
        self._audit = audit
        self._clock = clock
        self._actor = actor  # who the audit rows name
        self._node_id = node_id
        self._timeout = timedelta(seconds=node_timeout_seconds)
        self._interval = interval

    async def run_once(self) -> list[str]:
        """One pass: claim what is orphaned (up to :data:`BATCH`), hand it to the dispatcher,
        audit ``push.handover`` per node taken from; the ids claimed."""
        if self._dispatcher.closing or not self._dispatcher.can_send:
            return []  # nothing could be sent from here: leave them to a node that can
        now = self._clock()
        claimed = await self._db.run_job(
            functools.partial(self._claim, now=now, since=alive_since(now, self._timeout))
        )
        ids = [challenge_id for challenge_id, _ in claimed]
        if ids:
            self._dispatcher.take_over(ids)
            log.info("push: took over %d push challenge(s) from %s", len(ids), _origins(claimed))
        return ids

    async def run_forever(self) -> None:
        """A pass every ``interval`` seconds until cancelled (the leased duty's body). A
        failed pass is logged, never raised: the next one tries again."""
        while True:
            try:
                while len(await self.run_once()) == BATCH:
                    pass  # a full batch: more may wait, take them now
            except Exception:  # the database away for a moment: try at the next pass
                log.exception("push: the handover pass failed")
            await asyncio.sleep(self._interval)

    def leased(self, leases: LeaseClaims, ttl: float, retry: float | None = None) -> LeasedDuty:
        """The ``push-handover`` duty: :meth:`run_forever` on the one node holding the lease.
        ``ttl``: the node timeout fits (a sweeper that dies is replaced about when the
        pushes it was sending become claimable); ``retry``: how often the others try."""
        return LeasedDuty(LEASE, leases, self.run_forever, ttl=ttl, retry=retry, log=log)

    def _claim(self, tx: Tx, now: datetime, since: datetime) -> list[tuple[str, str]]:
        # ``since``: the oldest heartbeat of a live node (the rule of backend.domain.leases,
        # as backend.services.nodes.alive_node_clause applies it).
        condition = (tx.time(now), self._node_id, tx.time(since))
        if self._db.is_sqlite:
            picked = [(str(row[0]), row[1] or "") for row in tx.all(_PICK_SQLITE, *condition)]
            if picked:
                marks = ", ".join(["?"] * len(picked))
                tx.run(
                    f"UPDATE challenges SET push_node = ? WHERE id IN ({marks}) AND {_ORPHANED}",  # noqa: S608  # only ? marks are formatted in
                    self._node_id,
                    *(challenge_id for challenge_id, _ in picked),
                    *condition,
                )
        else:
            rows = tx.all(_CLAIM_POSTGRES, *condition, self._node_id)
            picked = [(str(row[0]), row[1] or "") for row in rows]
        for origin, count in Counter(origin for _, origin in picked).items():
            self._audit.add_job(
                tx,
                self._actor,
                now,
                "push.handover",
                "ok",
                "",
                f"{count} from {origin or '-'} to {self._node_id}",
            )
        return picked


def _origins(claimed: list[tuple[str, str]]) -> str:
    counts = Counter(origin or "no node (a command)" for _, origin in claimed)
    return ", ".join(f"{origin} ({n})" for origin, n in sorted(counts.items()))
