"""Sign-in history: the authentications (challenges) of one user or of everyone, newest first.

The user portal's "My sign-ins" and the admin console's per-user history read it. One row per
challenge: push and code challenges started by gateways, the admin console's push sign-in and
the portal's test pushes. A code checked by the gateway API's one-call path starts no
challenge; it is in the audit log (``otp.verify``), not here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, exists, or_, select

from backend.errors import BadRequest, NotFound
from backend.services.context import Clock
from backend.store.database import Database
from backend.store.queries import load_user
from backend.store.tables import challenges_t, fraud_reports_t, users_t

MAX_LIMIT = 500


@dataclass(frozen=True, slots=True)
class SignInRow:
    """One authentication as people read it. ``state``: pending, approved, denied, fraud,
    expired or cancelled; ``number``: the number-matching number, if one was shown."""

    challenge_id: str
    at: datetime
    client_name: str
    client_ip: str
    nas_identifier: str
    method: str
    state: str
    number: int | None
    fraud_reported: bool
    # Whose sign-in it was (what a list of everyone's needs; the same user for one user's).
    user_name: str = ""


class SignInService:
    """Reads the sign-in history (it changes nothing)."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def recent(
        self, user_name: str | None = None, limit: int = 50, before_id: str | None = None
    ) -> list[SignInRow]:
        """Up to ``limit`` sign-ins of ``user_name`` (``None``: of every user), newest first.

        ``before_id`` pages on: only sign-ins older than that one (the last row of the previous
        page). It must be one of the listed user's challenges, else :class:`NotFound`. A
        pending challenge whose time is up reads ``expired`` (it is settled so when next read
        through :meth:`ChallengeService.get`; this read writes nothing).
        """
        if not 1 <= limit <= MAX_LIMIT:
            raise BadRequest(f"limit must be from 1 to {MAX_LIMIT}")
        c = challenges_t.c
        reported = exists().where(fraud_reports_t.c.challenge_id == c.id)
        stmt = (
            select(
                c.id,
                c.created_at,
                c.client_name,
                c.client_ip,
                c.nas_identifier,
                c.method,
                c.state,
                c.number,
                c.expires_at,
                reported.label("fraud_reported"),
                users_t.c.name,
            )
            .join(users_t, users_t.c.id == c.user_id)
            # The id breaks ties between sign-ins started in the same instant.
            .order_by(c.created_at.desc(), c.id.desc())
            .limit(limit)
        )
        async with self._db.read() as conn:
            user_id: int | None = None
            if user_name is not None:
                user_id = (await load_user(conn, user_name)).id
                stmt = stmt.where(c.user_id == user_id)
            if before_id is not None:
                anchor = (
                    await conn.execute(
                        select(c.created_at, c.user_id).where(c.id == before_id[:64])
                    )
                ).first()
                if anchor is None or (user_id is not None and anchor.user_id != user_id):
                    raise NotFound("no such sign-in")
                stmt = stmt.where(
                    or_(
                        c.created_at < anchor.created_at,
                        and_(c.created_at == anchor.created_at, c.id < before_id[:64]),
                    )
                )
            rows = (await conn.execute(stmt)).all()
        now = self._clock()
        return [
            SignInRow(
                challenge_id=row.id,
                at=row.created_at,
                client_name=row.client_name,
                client_ip=row.client_ip,
                nas_identifier=row.nas_identifier,
                method=row.method,
                state="expired" if row.state == "pending" and row.expires_at <= now else row.state,
                number=row.number,
                fraud_reported=bool(row.fraud_reported),
                user_name=row.name,
            )
            for row in rows
        ]
