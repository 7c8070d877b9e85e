"""Deliver push challenges: pick a transport per device, send concurrently, retry, record.

:class:`PushDispatcher` is the :class:`~backend.push.base.PushNotifier` the challenge service
calls once a push challenge has committed. ``challenge_started`` only queues the id and
returns; everything else happens in tracked background tasks:

* A *loader* task reads every queued challenge with its user's eligible devices in one
  SQLAlchemy Core statement (``WHERE id IN (...)``). Ids that arrive while a load runs form
  the next batch, so a burst of a thousand starts costs a handful of queries, not a thousand.
* Each (challenge, device) pair gets a *send* task of its own, so a slow push service or one
  slow device never holds up another device's push. Sends in flight are bounded per transport
  (``push_concurrency`` shared out between the configured transports), so one stalled service
  cannot take every slot either.
* RETRY results are retried with exponential backoff (0.5 s, 1 s, 2 s ... capped, at least the
  service's ``Retry-After``) while the challenge is pending and the next attempt would still
  land before it expires. INVALID_TOKEN marks the device's token invalid (the device is then
  served by polling until the app sends a new token). DELIVERED records ``push_status = "ok"``
  when it was not already.
* Every attempt is audited (``push.send``). Audit rows and device updates are written by a
  *journal* task as raw-SQL jobs (:meth:`backend.store.database.Database.run_job`), many
  attempts per transaction, so recording never slows a send down.
* Once every target of a challenge has *finished* (delivered, invalid token, failed, given
  up, or the challenge is no longer pending) the journal records ``challenges.push_sent_at``
  in the same transaction as the attempts' audit rows. A challenge whose sends were cut by a
  shutdown or a crash keeps ``push_sent_at`` NULL, so a live node's handover
  (:mod:`backend.push.handover`) takes it over; :meth:`PushDispatcher.take_over` then skips
  the devices the earlier node recorded as delivered.

Eligible devices (docs/push.md): ``kind = 'app'``, state pending or active, a push token, a
push status other than ``invalid``, and a platform with a configured transport (``ios`` →
APNs, ``android`` → FCM, ``web`` → Web Push). Every other device is served by polling the
app API's pending list.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, select

from backend.domain.challenge import ChallengeState
from backend.domain.devices import LIVE_STATES
from backend.push.base import PushMessage, PushOutcome, PushResult, PushTransport
from backend.store.database import Database
from backend.store.fastpath import Tx
from backend.store.tables import audit_t, challenges_t, devices_t, users_t

if TYPE_CHECKING:  # push sits below the services; they hand it what it needs
    from backend.services.audit import AuditLog
    from backend.services.context import Actor, Clock

log = logging.getLogger("openmfa.push")

PLATFORM_TRANSPORT = {"ios": "apns", "android": "fcm", "web": "webpush"}
MAX_BATCH = 500  # challenge ids per load query (keeps the IN list well under any limit)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays between attempts: ``initial * 2**n`` up to ``cap`` seconds."""

    initial: float = 0.5
    cap: float = 30.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """The wait before attempt ``attempt + 1`` (``attempt`` counts from 0)."""
        base = min(self.cap, self.initial * float(2 ** min(attempt, 32)))
        if retry_after is not None and math.isfinite(retry_after) and retry_after > base:
            return retry_after
        return base


@dataclass(frozen=True, slots=True)
class _Target:
    """One push to send: a challenge for one device through one transport."""

    challenge_id: str
    display: str
    created_at: datetime
    expires_at: datetime
    user_key: str
    user_name: str
    device_id: str
    token: str
    transport: str
    push_status: str


@dataclass(frozen=True, slots=True)
class _Sent:
    """A challenge whose every target finished: ``push_sent_at`` is recorded with the journal."""

    challenge_id: str
    at: datetime


@dataclass(frozen=True, slots=True)
class _Attempt:
    """A finished attempt, waiting in the journal to be written."""

    target: _Target
    result: PushResult
    milliseconds: float
    at: datetime


class PushDispatcher:
    """Implements :class:`backend.push.base.PushNotifier`."""

    def __init__(
        self,
        db: Database,
        audit: AuditLog,
        clock: Clock,
        actor: Actor,
        transports: Mapping[str, PushTransport],
        concurrency: int = 200,
        backoff: Backoff | None = None,
        send_timeout: float = 30.0,
        drain_seconds: float = 5.0,
    ) -> None:
        self._db = db
        self._audit = audit
        self._clock = clock
        self._actor = actor  # who the audit rows name
        self._transports = dict(transports)
        # A share of the concurrency per transport: a stalled service fills only its own
        # slots, and the others keep sending.
        share = max(1, concurrency // max(1, len(self._transports)))
        self._slots = {name: asyncio.Semaphore(share) for name in self._transports}
        self._backoff = backoff or Backoff()
        self._send_timeout = send_timeout
        self._drain_seconds = drain_seconds
        self._queue: list[str] = []
        self._taken_over: set[str] = set()  # queued by take_over: skip recorded deliveries
        self._loader: asyncio.Task[None] | None = None
        # Targets not yet finished per challenge being delivered here; at 0 it is sent.
        self._open: dict[str, int] = {}
        self._cut: set[str] = set()  # challenges with a target the shutdown cut short
        self._journal: list[_Attempt | _Sent] = []
        self._writer: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = asyncio.Event()  # set once close() has begun
        self.counts: Counter[str] = Counter()  # attempts per outcome, for metrics and tests
        self.by_transport: Counter[tuple[str, str]] = Counter()  # (transport, outcome), metrics
        self.handed_over = 0  # challenges taken over from dead nodes (metrics)

    @property
    def transports(self) -> dict[str, PushTransport]:
        """The configured transports by name ("apns", "fcm")."""
        return dict(self._transports)

    @property
    def closing(self) -> bool:
        """True once :meth:`close` has begun: no challenge is taken any more."""
        return self._closing.is_set()

    # -- PushNotifier -----------------------------------------------------------------------

    def challenge_started(self, challenge_id: str) -> None:
        """Queue the challenge for delivery and return at once."""
        if self.closing or not self._transports:
            return  # nothing could be sent: every device is served by polling
        self._queue.append(challenge_id)
        if self._loader is None or self._loader.done():
            self._loader = self._spawn(self._load_queued())

    def take_over(self, challenge_ids: list[str]) -> None:
        """Deliver challenges another node began and did not finish (it died): like
        :meth:`challenge_started`, except that devices the audit shows that node delivered to
        are skipped. The caller has already made this node their ``push_node``."""
        if self.closing or not self._transports:
            return
        self.handed_over += len(challenge_ids)
        self._taken_over.update(challenge_ids)
        for challenge_id in challenge_ids:
            self.challenge_started(challenge_id)

    @property
    def can_send(self) -> bool:
        """False without a configured transport: every device is then served by polling."""
        return bool(self._transports)

    # -- life cycle -------------------------------------------------------------------------

    async def wait_idle(self) -> None:
        """Return once every queued challenge has been sent (or given up) and recorded."""
        while self._tasks or (self._writer is not None and not self._writer.done()):
            await asyncio.wait({*self._tasks, *([self._writer] if self._writer else [])})

    async def close(self) -> None:
        """Stop taking challenges; let sends in flight finish for up to ``drain_seconds``
        (backoff waits end at once), cancel what is left, and write the journal."""
        if self.closing:
            return
        self._closing.set()
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=self._drain_seconds)
            for task in late:
                task.cancel()
            if late:
                log.warning("push: %d send(s) still running at shutdown were cancelled", len(late))
                await asyncio.wait(late)
        # No send runs any more, so no new journal writer starts: finish the one running (a
        # database write, bounded by the database's own timeouts), then write what is left.
        if self._writer is not None:
            await asyncio.wait({self._writer})
        await self._write_journal()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- loading ----------------------------------------------------------------------------

    async def _load_queued(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            # Already being delivered here (a repeated start): never twice from one node.
            batch = [cid for cid in dict.fromkeys(batch) if cid not in self._open]
            taken_over = self._taken_over.intersection(batch)
            self._taken_over.difference_update(batch)
            try:
                targets = await self._load(batch)
                if taken_over:
                    targets = await self._without_recorded(targets, taken_over)
            except Exception:
                # The challenges stay pending and reachable by polling; say so and go on.
                log.exception("push: could not load %d challenge(s) to deliver", len(batch))
                continue
            per_challenge = Counter(target.challenge_id for target in targets)
            self._open.update(per_challenge)
            now = self._clock()
            # Nothing to send (no eligible device, answered, expired): delivery is over.
            for challenge_id in batch:
                if challenge_id not in per_challenge:
                    self._finished(challenge_id, now)
            for target in targets:
                self._spawn(self._deliver_one(target))

    async def _load(self, challenge_ids: list[str]) -> list[_Target]:
        """The challenges that are still pending, each with its user's eligible devices."""
        c, d, u = challenges_t.c, devices_t.c, users_t.c
        stmt = (
            select(
                c.id,
                c.display,
                c.created_at,
                c.expires_at,
                c.state,
                u.name_key,
                u.name.label("user_name"),
                d.id.label("device_id"),
                d.platform,
                d.push_token,
                d.push_status,
            )
            .join(users_t, u.id == c.user_id)
            .join(
                devices_t,
                and_(
                    d.user_id == c.user_id,
                    d.kind == "app",
                    d.state.in_(LIVE_STATES),
                    d.push_token.is_not(None),
                    d.push_status != "invalid",
                    d.platform.in_([p for p, t in PLATFORM_TRANSPORT.items() if t in self._slots]),
                ),
            )
            .where(c.id.in_(challenge_ids), c.state == ChallengeState.PENDING.value)
        )
        async with self._db.read() as conn:
            rows = (await conn.execute(stmt)).all()
        now = self._clock()
        return [
            _Target(
                challenge_id=row.id,
                display=row.display,
                created_at=row.created_at,
                expires_at=row.expires_at,
                user_key=row.name_key,
                user_name=row.user_name,
                device_id=row.device_id,
                token=row.push_token,
                transport=PLATFORM_TRANSPORT[row.platform],
                push_status=row.push_status,
            )
            for row in rows
            if row.expires_at > now and row.push_token
        ]

    async def _without_recorded(
        self, targets: list[_Target], taken_over: set[str]
    ) -> list[_Target]:
        """``targets`` less the devices a dead node's audit rows show it delivered the same
        challenge to (``push.send`` rows name the challenge and the device first)."""
        users = {t.user_key for t in targets if t.challenge_id in taken_over}
        if not users:
            return targets
        a = audit_t.c
        since = min(t.created_at for t in targets if t.challenge_id in taken_over)
        stmt = select(a.detail).where(
            a.user_name.in_(users),
            a.at >= since,
            a.action == "push.send",
            a.result == PushOutcome.DELIVERED.value,
        )
        async with self._db.read() as conn:
            rows = (await conn.execute(stmt)).all()
        delivered = {tuple(row.detail.split(" ", 2)[:2]) for row in rows}
        kept = [
            t
            for t in targets
            if t.challenge_id not in taken_over or (t.challenge_id, t.device_id) not in delivered
        ]
        if len(kept) < len(targets):
            log.info(
                "push: %d device(s) of taken-over challenges were already delivered to",
                len(targets) - len(kept),
            )
        return kept

    # -- sending ----------------------------------------------------------------------------

    async def _deliver_one(self, target: _Target) -> None:
        """Deliver to one device; once the challenge's last target finished, record it sent.
        A target cut short by the shutdown (or an error) has not finished: its challenge then
        stays unsent, for a live node's handover."""
        finished = False
        try:
            finished = await self._deliver(target)
        finally:
            self._target_ended(target.challenge_id, finished)

    def _target_ended(self, challenge_id: str, finished: bool) -> None:
        if not finished:
            self._cut.add(challenge_id)
        remaining = self._open.get(challenge_id, 1) - 1
        if remaining > 0:
            self._open[challenge_id] = remaining
            return
        self._open.pop(challenge_id, None)
        if challenge_id in self._cut:
            self._cut.discard(challenge_id)
        else:
            self._finished(challenge_id, self._clock())

    def _finished(self, challenge_id: str, at: datetime) -> None:
        self._journal.append(_Sent(challenge_id, at))
        self._ensure_writer()

    async def _deliver(self, target: _Target) -> bool:
        """Send to one device, retrying while it is worth it; record every attempt. True
        when this target is finished, False when the shutdown cut it short."""
        attempt = 0
        while True:
            result = await self._attempt(target)
            if result is None or result.outcome is not PushOutcome.RETRY:
                return True
            delay = self._backoff.delay(attempt, result.retry_after)
            attempt += 1
            remaining = (target.expires_at - self._clock()).total_seconds()
            if delay >= remaining:
                log.info(
                    "push: giving up on %s for device %s: the next attempt would come after "
                    "the challenge expires",
                    target.challenge_id,
                    target.device_id,
                )
                return True
            if await self._closing_within(delay):
                return False  # the device got nothing yet: the challenge is not finished
            if not await self._still_pending(target.challenge_id):
                return True

    async def _attempt(self, target: _Target) -> PushResult | None:
        """One send, recorded; None when the challenge expired while waiting for a slot."""
        transport = self._transports[target.transport]
        message = PushMessage(
            target.challenge_id, target.token, target.display, target.expires_at, target.user_name
        )
        async with self._slots[target.transport]:
            # Never wait on a send beyond the challenge's life: its answer would be moot.
            remaining = (target.expires_at - self._clock()).total_seconds()
            if remaining <= 0:
                log.info(
                    "push: %s expired before its push to device %s could go out",
                    target.challenge_id,
                    target.device_id,
                )
                return None
            started = time.perf_counter()
            try:
                result = await self._send(
                    transport, message, target, min(self._send_timeout, remaining)
                )
            except asyncio.CancelledError:
                # Shutting down past the drain bound: the attempt is still on record.
                cut = PushResult(PushOutcome.FAILED, reason="cancelled-at-shutdown")
                self._note(target, cut, started)
                raise
        self._note(target, result, started)
        return result

    def _note(self, target: _Target, result: PushResult, started: float) -> None:
        """Put an attempt in the journal and make sure a writer is on its way."""
        elapsed = (time.perf_counter() - started) * 1000
        self.counts[result.outcome.value] += 1
        self.by_transport[target.transport, result.outcome.value] += 1
        self._journal.append(_Attempt(target, result, elapsed, self._clock()))
        self._ensure_writer()

    def _ensure_writer(self) -> None:
        if self._writer is None or self._writer.done():
            # Not one of the tracked tasks: close() cancels late sends, never the recording.
            self._writer = asyncio.get_running_loop().create_task(self._write_journal())

    async def _send(
        self, transport: PushTransport, message: PushMessage, target: _Target, bound: float
    ) -> PushResult:
        try:
            async with asyncio.timeout(bound) as deadline:
                return await transport.send(message)
        except TimeoutError:
            if deadline.expired():
                return PushResult(PushOutcome.RETRY, reason="timeout")
            return _broken(transport, target)
        except Exception:
            return _broken(transport, target)

    async def _closing_within(self, seconds: float) -> bool:
        """Wait ``seconds``; True at once if the dispatcher is closing."""
        try:
            await asyncio.wait_for(self._closing.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def _still_pending(self, challenge_id: str) -> bool:
        """One primary-key read before a retry: answered or cancelled challenges get no more."""
        async with self._db.read() as conn:
            row = (
                await conn.execute(
                    select(challenges_t.c.state, challenges_t.c.expires_at).where(
                        challenges_t.c.id == challenge_id
                    )
                )
            ).first()
        return (
            row is not None
            and row.state == ChallengeState.PENDING.value
            and row.expires_at > self._clock()
        )

    # -- recording --------------------------------------------------------------------------

    async def _write_journal(self) -> None:
        while self._journal:
            batch, self._journal = self._journal, []
            try:
                await self._db.run_job(functools.partial(self._record, batch=batch))
            except Exception:
                log.exception("push: could not record %d push attempt(s)", len(batch))

    def _record(self, tx: Tx, batch: list[_Attempt | _Sent]) -> None:
        sent = [item for item in batch if isinstance(item, _Sent)]
        if sent:
            # In the attempts' transaction: "sent" always means "recorded". One statement per
            # batch (a round trip each on PostgreSQL), stamped with its last finish. First,
            # before any device row: an answer locks the challenge row, then the device's,
            # and the other order deadlocks with it on PostgreSQL.
            self._mark_sent(tx, [item.challenge_id for item in sent], max(i.at for i in sent))
        for item in batch:
            if isinstance(item, _Sent):
                continue
            target, result = item.target, item.result
            reason = result.reason or (str(result.status) if result.status else "-")
            self._audit.add_job(
                tx,
                self._actor,
                item.at,
                "push.send",
                result.outcome.value,
                target.user_key,
                f"{target.challenge_id} {target.device_id} {target.transport} "
                f"{round(item.milliseconds)}ms {reason}",
            )
            if result.outcome is PushOutcome.INVALID_TOKEN:
                # Only the token we sent to: a token the app replaced meanwhile is untouched.
                marked = tx.run(
                    "UPDATE devices SET push_status = 'invalid', push_error = ?, "
                    "push_status_at = ? WHERE id = ? AND push_token = ? "
                    "AND push_status <> 'invalid'",
                    reason[:128],
                    tx.time(item.at),
                    target.device_id,
                    target.token,
                )
                if marked:
                    self._audit.add_job(
                        tx,
                        self._actor,
                        item.at,
                        "push.token_invalid",
                        "invalid",
                        target.user_key,
                        f"{target.device_id} {target.transport} {reason}",
                    )
            elif result.outcome is PushOutcome.DELIVERED and target.push_status != "ok":
                tx.run(
                    "UPDATE devices SET push_status = 'ok', push_error = '', push_status_at = ? "
                    "WHERE id = ? AND push_token = ? AND push_status <> 'ok'",
                    tx.time(item.at),
                    target.device_id,
                    target.token,
                )

    def _mark_sent(self, tx: Tx, challenge_ids: list[str], at: datetime) -> None:
        if not self._db.is_sqlite:
            tx.run(
                "UPDATE challenges SET push_sent_at = ? WHERE id = ANY(?::varchar[]) "
                "AND push_sent_at IS NULL",
                tx.time(at),
                challenge_ids,
            )
            return
        for start in range(0, len(challenge_ids), MAX_BATCH):
            chunk = challenge_ids[start : start + MAX_BATCH]
            marks = ", ".join(["?"] * len(chunk))
            tx.run(
                f"UPDATE challenges SET push_sent_at = ? WHERE id IN ({marks}) "  # noqa: S608 - only ? marks
                "AND push_sent_at IS NULL",
                tx.time(at),
                *chunk,
            )


def _broken(transport: PushTransport, target: _Target) -> PushResult:
    """A transport raised where it should have returned a result: a bug, logged, not retried."""
    log.exception(
        "push: the %s transport failed unexpectedly on %s for device %s",
        transport.name,
        target.challenge_id,
        target.device_id,
    )
    return PushResult(PushOutcome.FAILED, reason="transport-error")


async def close_transports(transports: Mapping[str, PushTransport]) -> None:
    """Close every transport; one that fails to close is logged and the rest still close."""
    closing: list[Awaitable[None]] = [t.close() for t in transports.values()]
    for name, outcome in zip(
        transports, await asyncio.gather(*closing, return_exceptions=True), strict=True
    ):
        if isinstance(outcome, BaseException):
            log.error("push: closing the %s transport failed: %r", name, outcome)
