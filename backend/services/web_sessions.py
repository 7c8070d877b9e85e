"""Server-side sessions of the user portal and the admin console (table ``web_sessions``).

The browser holds a random cookie value; the table holds its SHA-256 digest, the kind
(``portal`` or ``admin``), the signed-in user (none yet for the anonymous session a sign-in
form runs in), the CSRF secret of the session's forms, and for admins whether the second
factor was checked. A session ends after ``idle`` without a request and at the latest
``lifetime`` after it began; signing in always starts a new session (a new cookie value), so a
value planted in a browser before sign-in is worthless after it.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, insert, or_, select, update

from backend.crypto import token_digest
from backend.errors import BadRequest
from backend.services.context import Clock
from backend.store.database import Database
from backend.store.queries import UserRecord, load_user_by_id
from backend.store.tables import web_sessions_t

KINDS = ("portal", "admin")
_COOKIE_VALUE = re.compile(r"[A-Za-z0-9_-]{20,64}")
# last_seen_at is written at most this often: a page view should not always cost a write.
TOUCH_EVERY = timedelta(seconds=60)
MAX_FLASHES = 5


@dataclass(frozen=True, slots=True)
class Flash:
    """A one-time message for the next page: ``category`` is info, success, warning or error."""

    category: str
    message: str


@dataclass(frozen=True, slots=True)
class WebSessionRecord:
    id_hash: str
    kind: str
    user: UserRecord | None
    csrf_secret: str
    second_factor_done: bool
    challenge_id: str | None
    has_flash: bool
    created_at: datetime
    last_seen_at: datetime
    # Portal: when this session last proved a live factor (step-up), and until when the
    # invitation it accepted lets it enrol a first one (backend/domain/stepup.py).
    stepped_up_at: datetime | None = None
    enrol_until: datetime | None = None


class WebSessionService:
    """Create, find, rotate and end web sessions."""

    def __init__(self, db: Database, clock: Clock, idle: timedelta, lifetime: timedelta) -> None:
        self._db = db
        self._clock = clock
        self.idle = idle
        self.lifetime = lifetime

    async def create(
        self,
        kind: str,
        source: str = "",
        user_id: int | None = None,
        second_factor_done: bool = False,
        created_at: datetime | None = None,
    ) -> tuple[str, WebSessionRecord]:
        """A new session: the cookie value (returned once, never stored) and the record."""
        if kind not in KINDS:
            raise BadRequest(f"a web session is one of {', '.join(KINDS)}, not {kind!r}")
        cookie = secrets.token_urlsafe(32)
        now = self._clock()
        values = {
            "id_hash": token_digest(cookie),
            "kind": kind,
            "user_id": user_id,
            "csrf_secret": secrets.token_urlsafe(32),
            "second_factor_done": second_factor_done,
            "challenge_id": None,
            "flash": "",
            "source": source[:64],
            "created_at": created_at or now,
            "last_seen_at": now,
        }
        async with self._db.write() as conn:
            await conn.execute(insert(web_sessions_t).values(**values))
            user = None if user_id is None else await load_user_by_id(conn, user_id)
        record = WebSessionRecord(
            id_hash=str(values["id_hash"]),
            kind=kind,
            user=user,
            csrf_secret=str(values["csrf_secret"]),
            second_factor_done=second_factor_done,
            challenge_id=None,
            has_flash=False,
            created_at=created_at or now,
            last_seen_at=now,
        )
        return cookie, record

    async def load(self, kind: str, cookie: str | None) -> WebSessionRecord | None:
        """The live session of this kind behind ``cookie``; ``None`` if unknown or timed out
        (a timed-out row is deleted). Refreshes ``last_seen_at``."""
        if not cookie or not _COOKIE_VALUE.fullmatch(cookie):
            return None
        digest = token_digest(cookie)
        now = self._clock()
        async with self._db.read() as conn:
            row = (
                await conn.execute(
                    select(web_sessions_t).where(
                        web_sessions_t.c.id_hash == digest, web_sessions_t.c.kind == kind
                    )
                )
            ).first()
            user = None
            if row is not None and row.user_id is not None:
                user = await load_user_by_id(conn, row.user_id)
        if row is None:
            return None
        if self._expired(row.created_at, row.last_seen_at, now):
            await self.destroy(digest)
            return None
        last_seen = row.last_seen_at
        if now - last_seen >= TOUCH_EVERY:
            async with self._db.write() as conn:
                await conn.execute(
                    update(web_sessions_t)
                    .where(web_sessions_t.c.id_hash == digest)
                    .values(last_seen_at=now)
                )
            last_seen = now
        return WebSessionRecord(
            id_hash=digest,
            kind=row.kind,
            user=user,
            csrf_secret=row.csrf_secret,
            second_factor_done=bool(row.second_factor_done),
            challenge_id=row.challenge_id,
            has_flash=bool(row.flash),
            created_at=row.created_at,
            last_seen_at=last_seen,
            stepped_up_at=row.stepped_up_at,
            enrol_until=row.enrol_until,
        )

    def _expired(self, created_at: datetime, last_seen_at: datetime, now: datetime) -> bool:
        return now - last_seen_at >= self.idle or now - created_at >= self.lifetime

    async def rotate(
        self,
        kind: str,
        old: WebSessionRecord | None,
        user_id: int,
        second_factor_done: bool = False,
        source: str = "",
        keep_started: bool = False,
    ) -> tuple[str, WebSessionRecord]:
        """Sign in: end ``old`` (if any) and start a new session for ``user_id``.

        ``keep_started``: the absolute timeout keeps counting from ``old``'s start (a second
        sign-in step does not extend the session's life).
        """
        started = old.created_at if old is not None and keep_started else None
        if old is not None:
            await self.destroy(old.id_hash)
        await self.purge_expired()
        return await self.create(kind, source, user_id, second_factor_done, created_at=started)

    async def set_challenge(self, record: WebSessionRecord, challenge_id: str | None) -> None:
        """Remember (or forget) the push challenge an admin sign-in waits for."""
        async with self._db.write() as conn:
            await conn.execute(
                update(web_sessions_t)
                .where(web_sessions_t.c.id_hash == record.id_hash)
                .values(challenge_id=challenge_id)
            )

    async def mark_stepped_up(self, record: WebSessionRecord) -> datetime:
        """The session just proved a live factor (and no longer waits for a push): when."""
        now = self._clock()
        async with self._db.write() as conn:
            await conn.execute(
                update(web_sessions_t)
                .where(web_sessions_t.c.id_hash == record.id_hash)
                .values(stepped_up_at=now, challenge_id=None)
            )
        return now

    async def grant_enrolment(self, record: WebSessionRecord, until: datetime) -> None:
        """Let this session (and no other) enrol a first factor until ``until``: what
        accepting an invitation does."""
        async with self._db.write() as conn:
            await conn.execute(
                update(web_sessions_t)
                .where(web_sessions_t.c.id_hash == record.id_hash)
                .values(enrol_until=until)
            )

    async def destroy(self, id_hash: str) -> None:
        """End one session (sign-out)."""
        async with self._db.write() as conn:
            await conn.execute(delete(web_sessions_t).where(web_sessions_t.c.id_hash == id_hash))

    async def purge_expired(self) -> int:
        """Delete timed-out sessions (run at each sign-in): how many."""
        now = self._clock()
        stmt = delete(web_sessions_t).where(
            or_(
                web_sessions_t.c.last_seen_at <= now - self.idle,
                web_sessions_t.c.created_at <= now - self.lifetime,
            )
        )
        async with self._db.write() as conn:
            return int((await conn.execute(stmt)).rowcount or 0)

    async def add_flash(self, id_hash: str, category: str, message: str) -> None:
        """Queue a message for the next page this session shows."""
        async with self._db.write() as conn:
            row = (
                await conn.execute(
                    select(web_sessions_t.c.flash).where(web_sessions_t.c.id_hash == id_hash)
                )
            ).first()
            if row is None:
                return
            queued = json.loads(row.flash) if row.flash else []
            queued = [*queued, [category, message[:512]]][-MAX_FLASHES:]
            await conn.execute(
                update(web_sessions_t)
                .where(web_sessions_t.c.id_hash == id_hash)
                .values(flash=json.dumps(queued))
            )

    async def take_flash(self, id_hash: str) -> list[Flash]:
        """The queued messages, removed from the session."""
        async with self._db.write() as conn:
            row = (
                await conn.execute(
                    select(web_sessions_t.c.flash).where(web_sessions_t.c.id_hash == id_hash)
                )
            ).first()
            if row is None or not row.flash:
                return []
            await conn.execute(
                update(web_sessions_t).where(web_sessions_t.c.id_hash == id_hash).values(flash="")
            )
        return [Flash(str(category), str(message)) for category, message in json.loads(row.flash)]
