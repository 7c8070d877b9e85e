"""Fraud reports: what administrators list and review, and the user's own "this wasn't me".

A report is filed by :class:`~backend.services.challenges.ChallengeService` (the app's
``fraud`` answer, or :meth:`FraudService.report_sign_in` from the portal), in the transaction
that blocks the user by policy. It is ``open`` until an administrator reviews it (``openmfa
fraud review ID``) or unblocks the user (``openmfa user unblock NAME`` reviews the user's open
reports too: unblocking says the account is safe again, and an open report would otherwise
keep the user's pushes muted).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from backend.domain.names import user_key
from backend.errors import BadRequest, Conflict, NotFound
from backend.services.audit import AuditLog
from backend.services.challenges import ChallengeService
from backend.services.context import Actor, Clock
from backend.store.database import Database
from backend.store.queries import load_user
from backend.store.tables import challenges_t, devices_t, fraud_reports_t, users_t

StateFilter = Literal["open", "reviewed", "all"]
STATE_FILTERS: tuple[StateFilter, ...] = ("open", "reviewed", "all")


@dataclass(frozen=True, slots=True)
class FraudReportView:
    """One report with what an administrator needs to act on it (never a secret)."""

    id: int
    state: str
    created_at: datetime
    user_name: str
    user_key: str
    display_name: str
    user_email: str
    user_blocked: bool
    challenge_id: str
    method: str
    challenge_state: str
    started_at: datetime | None
    answered_by: str
    device_id: str | None
    device_name: str
    device_platform: str
    client_name: str
    client_ip: str
    nas_identifier: str
    notify_state: str
    notify_attempts: int
    notified_at: datetime | None
    reviewed_at: datetime | None
    reviewed_by: str


def _view(row: Any) -> FraudReportView:
    return FraudReportView(
        id=row.id,
        state=row.state,
        created_at=row.created_at,
        user_name=row.user_name,
        user_key=row.user_key,
        display_name=row.display_name,
        user_email=row.user_email,
        user_blocked=row.user_blocked,
        challenge_id=row.challenge_id,
        method=row.method or "",
        challenge_state=row.challenge_state or "",
        started_at=row.started_at,
        answered_by=row.answered_by or "",
        device_id=row.device_id,
        device_name=row.device_name or "",
        device_platform=row.device_platform or "",
        client_name=row.client_name,
        client_ip=row.client_ip,
        nas_identifier=row.nas_identifier or "",
        notify_state=row.notify_state,
        notify_attempts=row.notify_attempts,
        notified_at=row.notified_at,
        reviewed_at=row.reviewed_at,
        reviewed_by=row.reviewed_by,
    )


_SELECT = select(
    fraud_reports_t,
    users_t.c.name.label("user_name"),
    users_t.c.name_key.label("user_key"),
    users_t.c.display_name,
    users_t.c.email.label("user_email"),
    users_t.c.blocked.label("user_blocked"),
    challenges_t.c.method,
    challenges_t.c.state.label("challenge_state"),
    challenges_t.c.created_at.label("started_at"),
    challenges_t.c.answered_by,
    challenges_t.c.nas_identifier,
    devices_t.c.name.label("device_name"),
    devices_t.c.platform.label("device_platform"),
).select_from(
    fraud_reports_t.join(users_t, users_t.c.id == fraud_reports_t.c.user_id)
    .outerjoin(challenges_t, challenges_t.c.id == fraud_reports_t.c.challenge_id)
    .outerjoin(devices_t, devices_t.c.id == fraud_reports_t.c.device_id)
)


class FraudService:
    """List, review and file fraud reports."""

    def __init__(
        self, db: Database, audit: AuditLog, clock: Clock, challenges: ChallengeService
    ) -> None:
        self._db = db
        self._audit = audit
        self._clock = clock
        self._challenges = challenges

    async def list(
        self, state: StateFilter = "open", user_name: str | None = None, limit: int = 1000
    ) -> list[FraudReportView]:
        """Reports in ``state`` (``all`` for every one), newest first."""
        if state not in STATE_FILTERS:
            raise BadRequest(f"state must be one of {', '.join(STATE_FILTERS)}")
        if limit < 1:
            raise BadRequest("limit must be at least 1")
        stmt = _SELECT.order_by(fraud_reports_t.c.id.desc()).limit(limit)
        if state != "all":
            stmt = stmt.where(fraud_reports_t.c.state == state)
        async with self._db.read() as conn:
            if user_name is not None:
                user = await load_user(conn, user_name)
                stmt = stmt.where(fraud_reports_t.c.user_id == user.id)
            rows = (await conn.execute(stmt)).all()
        return [_view(row) for row in rows]

    async def get(self, report_id: int) -> FraudReportView:
        """One report; :class:`NotFound` for an unknown id."""
        async with self._db.read() as conn:
            return await load_report(conn, report_id)

    async def review(self, actor: Actor, report_id: int) -> FraudReportView:
        """Mark an open report reviewed (by ``actor``, now). Blocking is left as it is: unblock
        the user separately once the account is safe."""
        async with self._db.write() as conn:
            report = await load_report(conn, report_id)
            if report.state != "open":
                raise Conflict(
                    f"fraud report {report_id} was already reviewed by {report.reviewed_by} "
                    f"at {report.reviewed_at:%Y-%m-%d %H:%M:%S} UTC"
                    if report.reviewed_at
                    else f"fraud report {report_id} is {report.state}, not open"
                )
            await self._mark_reviewed(conn, actor, [report_id])
            await self._audit.add(
                conn,
                actor,
                "fraud.review",
                "reviewed",
                user_key(report.user_name),
                f"report {report_id} ({report.challenge_id})",
            )
            return await load_report(conn, report_id)

    async def review_open_for_user(self, actor: Actor, user_name: str, why: str) -> tuple[int, ...]:
        """Mark every open report of a user reviewed (when an administrator unblocks them);
        the ids, oldest first. Audited one row per report."""
        async with self._db.write() as conn:
            user = await load_user(conn, user_name)
            ids = tuple(
                int(row.id)
                for row in (
                    await conn.execute(
                        select(fraud_reports_t.c.id)
                        .where(
                            fraud_reports_t.c.user_id == user.id,
                            fraud_reports_t.c.state == "open",
                        )
                        .order_by(fraud_reports_t.c.id)
                    )
                ).all()
            )
            if ids:
                await self._mark_reviewed(conn, actor, ids)
            for report_id in ids:
                await self._audit.add(
                    conn,
                    actor,
                    "fraud.review",
                    "reviewed",
                    user.name_key,
                    f"report {report_id} {why}",
                )
        return ids

    async def report_sign_in(
        self, actor: Actor, user_name: str, challenge_id: str
    ) -> FraudReportView:
        """The user's "this wasn't me" on one of their own sign-ins, through the same path as
        the app's ``fraud`` answer (block by policy, cancel pending, report, e-mail); see
        :meth:`ChallengeService.report_sign_in`. Reporting it again returns the same report."""
        report_id = await self._challenges.report_sign_in(actor, user_name, challenge_id)
        return await self.get(report_id)

    async def _mark_reviewed(self, conn: AsyncConnection, actor: Actor, ids: Sequence[int]) -> None:
        await conn.execute(
            update(fraud_reports_t)
            .where(fraud_reports_t.c.id.in_(ids), fraud_reports_t.c.state == "open")
            .values(state="reviewed", reviewed_at=self._clock(), reviewed_by=actor.name[:128])
        )


async def load_report(conn: AsyncConnection, report_id: int) -> FraudReportView:
    """One report with its user, sign-in and device; :class:`NotFound` for an unknown id."""
    if not 1 <= report_id < 2**63:  # beyond a 64-bit row id the database would refuse the query
        raise NotFound(f"no fraud report {report_id}")
    row = (await conn.execute(_SELECT.where(fraud_reports_t.c.id == report_id))).first()
    if row is None:
        raise NotFound(f"no fraud report {report_id}")
    return _view(row)
