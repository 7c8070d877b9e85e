"""The mail worker for account notices (table ``account_notices``, written by
:class:`backend.services.notices.AccountNotices`).

Built from the fraud mailer's parts: the same :class:`~backend.notify.mail.MailSender` (one
attempt per send, failures classified as worth retrying or not), the same backoff
(:data:`~backend.notify.fraud.RETRY_DELAYS`: five attempts over about four minutes; a 5xx
reply ends it at once) and the same audit trail (one ``notice.mail`` row per attempt:
``sent``, ``retry`` or ``failed``). What differs is where the queue lives: fraud reports are
filed by the server itself, but a notice may be written by an ``openmfa`` command, which runs
no worker. So the queue is the table: the worker claims due rows (``next_attempt_at`` moved
past the claim, in one conditional UPDATE each, so two nodes never send one notice twice),
is woken at once for a notice this process queued, and looks for others every
:data:`POLL_SECONDS`. A retry is a row due later, so a restart loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from backend.domain.notices import MAILED, AccountChange, compose_notice
from backend.notify.fraud import RETRY_DELAYS
from backend.notify.mail import MailError, MailSender
from backend.services.audit import AuditLog
from backend.services.context import Actor, Clock
from backend.store.database import Database
from backend.store.queries import user_name_of
from backend.store.tables import account_notices_t, users_t
from backend.tasks import finish_within

log = logging.getLogger("openmfa.notify")

ACTOR = Actor("system:mail")
#: How often the worker looks for notices written by other processes.
POLL_SECONDS = 5.0
#: A claimed notice is due again after this long if its worker died in the middle.
CLAIM = timedelta(minutes=5)
BATCH = 20


class NoticeMailer:
    """Sends the queued account notices in the background."""

    def __init__(
        self,
        db: Database,
        audit: AuditLog,
        clock: Clock,
        sender: MailSender,
        *,
        issuer: str = "OpenMFA",
        retry_delays: Sequence[float] = RETRY_DELAYS,
        poll_seconds: float = POLL_SECONDS,
        close_grace: float = 5.0,
    ) -> None:
        self._db = db
        self._audit = audit
        self._clock = clock
        self._sender = sender
        self._issuer = issuer
        self._delays = tuple(retry_delays)
        self._poll = poll_seconds
        self._close_grace = close_grace
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.counts: Counter[str] = Counter()  # attempts by result, for metrics

    @property
    def attempts(self) -> int:
        """How many times one notice is tried at most."""
        return len(self._delays) + 1

    def wake(self) -> None:
        """Look for due notices now (one was just queued)."""
        self._wake.set()

    async def start(self) -> None:
        """Run the worker (it sends whatever earlier processes left due first)."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="notice-mail")

    async def close(self) -> None:
        """Stop: a send in progress gets ``close_grace`` seconds; what is left stays due."""
        self._closed = True
        self._wake.set()
        if self._task is None:
            return
        await finish_within(
            [self._task],
            self._close_grace,
            log,
            "account notice e-mail cut short at shutdown; sent at the next start",
        )

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                while await self.send_due() == BATCH:
                    pass
            except asyncio.CancelledError:
                raise
            except Exception:
                # A database failure: the notices stay due and the next round tries again.
                log.exception("account notices: sending stopped; retried in %g s", self._poll)
            if self._stopping():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll)

    def _stopping(self) -> bool:
        return self._closed

    async def send_due(self) -> int:
        """Claim the notices due now and try each once: how many were claimed."""
        if self._stopping():
            return 0
        claimed = await self._claim()
        for row in claimed:
            if self._stopping():
                break  # still claimed: due again once CLAIM has passed
            await self._attempt(row)
        return len(claimed)

    async def _claim(self) -> list[Any]:
        now = self._clock()
        n = account_notices_t.c
        async with self._db.write() as conn:
            due = (
                await conn.execute(
                    select(n.id)
                    .where(n.state == "pending", n.next_attempt_at <= now)
                    .order_by(n.next_attempt_at, n.id)
                    .limit(BATCH)
                )
            ).all()
            claimed = []
            for (notice_id,) in due:
                row = (
                    await conn.execute(
                        update(account_notices_t)
                        .where(n.id == notice_id, n.state == "pending", n.next_attempt_at <= now)
                        .values(next_attempt_at=now + CLAIM)
                        .returning(*account_notices_t.c)
                    )
                ).first()
                if row is not None:
                    display = (
                        await conn.execute(
                            select(users_t.c.name, users_t.c.display_name).where(
                                users_t.c.id == row.user_id
                            )
                        )
                    ).first()
                    claimed.append((row, display))
        return claimed

    async def _attempt(self, claimed: Any) -> None:
        row, user = claimed
        attempt = int(row.attempts) + 1
        try:
            change = AccountChange(row.change)
            if change not in MAILED:
                raise ValueError(row.change)
        except ValueError:
            await self._record(row, attempt, "failed", f"unknown change {row.change!r}")
            return
        subject, text = compose_notice(
            change,
            user_name=user.name if user else "",
            display_name=user.display_name if user else "",
            when=row.created_at,
            actor=row.actor,
            source=row.source,
            detail=row.detail,
            issuer=self._issuer,
        )
        try:
            message = self._sender.compose(
                [row.recipient], subject, text, {"X-OpenMFA-Notice": row.change}
            )
            reply = await self._sender.send([row.recipient], message)
        except MailError as exc:
            if exc.permanent or attempt >= self.attempts:
                await self._record(row, attempt, "failed", exc.reason)
            else:
                delay = self._delays[attempt - 1]
                await self._record(
                    row, attempt, "retry", f"{exc.reason}; next attempt in {delay:g} s", delay
                )
            return
        await self._record(row, attempt, "sent", reply)

    async def _record(
        self, row: Any, attempt: int, result: str, detail: str, delay: float = 0.0
    ) -> None:
        self.counts[result] += 1
        now = self._clock()
        values: dict[str, object] = {"attempts": attempt}
        if result == "sent":
            values |= {"state": "sent", "sent_at": now}
        elif result == "failed":
            values["state"] = "failed"
        else:
            values["next_attempt_at"] = now + timedelta(seconds=delay)
        text = (
            f"notice {row.id} ({row.change}) attempt {attempt}/{self.attempts} "
            f"to {row.recipient}: {detail}"
        )
        async with self._db.write() as conn:
            await conn.execute(
                update(account_notices_t).where(account_notices_t.c.id == row.id).values(**values)
            )
            name = await user_name_of(conn, row.user_id)
            await self._audit.add(conn, ACTOR, "notice.mail", result, name, text[:1024])
        level = logging.INFO if result == "sent" else logging.WARNING
        log.log(level, "account notice e-mail %s: %s", result, text)


def status_line(sender: MailSender | None, enabled: bool = True) -> str:
    """What happens to account notices, for the start-up log."""
    if not enabled:
        return "users are not e-mailed about changes to their sign-in methods (notify_users off)"
    if sender is None:
        return "users are not e-mailed about changes to their sign-in methods (no smtp_host)"
    return f"users are e-mailed about changes to their sign-in methods via {sender.describe()}"
