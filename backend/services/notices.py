"""The one place that does what follows a change to an account (see
:mod:`backend.domain.notices` for which change entails what).

Every service method that changes a password, a device, a PIN or an account's access calls
:meth:`AccountNotices.changed` once its own transaction has committed. In one transaction of
its own it ends the user's web sessions (but the acting one) with a ``web.sessions_end`` audit
row, and queues the e-mail to the user (a row of ``account_notices``) where mail is configured
and the user has a valid address; the running server's
:class:`~backend.notify.notices.NoticeMailer` sends it. The action never waits for SMTP and
never fails because of mail.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import delete, insert
from sqlalchemy.ext.asyncio import AsyncConnection

from backend.domain.emails import is_email
from backend.domain.notices import ENDS_SESSIONS, MAILED, AccountChange
from backend.services.audit import AuditLog
from backend.services.context import Actor, Clock
from backend.store.database import Database
from backend.store.queries import load_user_by_id
from backend.store.tables import account_notices_t, web_sessions_t

log = logging.getLogger("openmfa.notify")


class AccountNotices:
    """Ends sessions and queues user e-mails after account changes."""

    def __init__(self, db: Database, audit: AuditLog, clock: Clock, mail: bool) -> None:
        """``mail``: e-mail is configured (``smtp_host``), so notices are queued."""
        self._db = db
        self._audit = audit
        self._clock = clock
        self._mail = mail
        # Set by the process that runs the mail worker: wakes it for a notice just queued.
        self.wake: Callable[[], None] | None = None

    async def changed(
        self, actor: Actor, user_id: int, change: AccountChange, detail: str = ""
    ) -> int:
        """Do what ``change`` to user ``user_id`` entails: how many web sessions ended.

        ``detail`` names the device concerned for the mail (id and name, never a secret).
        """
        async with self._db.write() as conn:
            ended, queued = await self.changed_in(conn, actor, user_id, change, detail)
        if queued and self.wake is not None:
            self.wake()
        return ended

    async def changed_in(
        self,
        conn: AsyncConnection,
        actor: Actor,
        user_id: int,
        change: AccountChange,
        detail: str = "",
    ) -> tuple[int, bool]:
        """:meth:`changed` inside the caller's transaction ``conn`` (for a change made in the
        middle of a larger one, such as a fraud report's block): the sessions ended, and
        whether a notice was queued (the caller then wakes the worker after its commit)."""
        reason = ENDS_SESSIONS.get(change)
        ended = 0
        user = await load_user_by_id(conn, user_id)
        if reason is not None:
            stmt = delete(web_sessions_t).where(web_sessions_t.c.user_id == user_id)
            if actor.session:
                stmt = stmt.where(web_sessions_t.c.id_hash != actor.session)
            ended = int((await conn.execute(stmt)).rowcount or 0)
            if ended:
                await self._audit.add(
                    conn, actor, "web.sessions_end", "ok", user.name_key, f"{ended} ({reason})"
                )
        # An address stored before addresses were validated is never put in a header.
        if change not in MAILED or not self._mail or not user.email or not is_email(user.email):
            return ended, False
        now = self._clock()
        await conn.execute(
            insert(account_notices_t).values(
                user_id=user_id,
                change=change.value,
                recipient=user.email,
                actor=actor.name[:128],
                source=actor.source[:64],
                detail=detail[:512],
                created_at=now,
                state="pending",
                attempts=0,
                next_attempt_at=now,
            )
        )
        return ended, True
