"""Figures for the admin console's dashboard: the last 24 hours at a glance.

Each figure is one query. Sign-ins are counted from the audit trail, whose ``at`` column is
indexed: every challenge a gateway starts writes one ``auth.start`` row in the transaction
that creates it, every answered one a ``challenge.answer`` row (result ``approved``, ``denied``,
...) in the transaction that decides it, and every fraud report (the app's answer or the
portal's "this wasn't me") one ``fraud.report`` row. So the rows are exact counts that a range
scan on ``at`` finds without reading the (much larger, never purged) challenges table by
time. Held requests, open fraud reports and dead push tokens are read from their own tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, func, or_, select

from backend.domain.challenge import ChallengeState
from backend.domain.devices import LIVE_STATES
from backend.services.context import Clock
from backend.store.database import Database
from backend.store.tables import audit_t, challenges_t, devices_t, fraud_reports_t

HOURS = 24
#: The ``challenge.answer`` results the dashboard counts.
OUTCOMES = ("approved", "denied")


@dataclass(frozen=True, slots=True)
class HourCount:
    """Sign-ins started in the hour beginning at ``start`` (UTC)."""

    start: datetime
    count: int


@dataclass(frozen=True, slots=True)
class Dashboard:
    """What the dashboard shows, as of ``now``."""

    now: datetime
    since: datetime  # the start of the first hour counted
    per_hour: tuple[HourCount, ...]  # oldest first, HOURS of them, the last one still running
    started: int  # sign-ins started since ``since``
    approved: int
    denied: int
    fraud: int  # fraud reports filed
    held: int  # push challenges a gateway is waiting on right now
    open_fraud_reports: int
    invalid_push_tokens: int  # live app devices whose push token the push service refused


def hour_floor(moment: datetime) -> datetime:
    """The start of the hour ``moment`` falls in."""
    return moment.replace(minute=0, second=0, microsecond=0)


class ReportService:
    """Reads the dashboard's figures; writes nothing."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def dashboard(self) -> Dashboard:
        """The figures for the last :data:`HOURS` clock hours (the current one included)."""
        now = self._clock()
        since = hour_floor(now) - timedelta(hours=HOURS - 1)
        starts = [since + timedelta(hours=i) for i in range(HOURS)]
        at = audit_t.c.at
        in_window = at >= since
        # One scan of the window's auth.start rows, counted per hour with FILTER clauses
        # (portable: no date functions, which differ between SQLite and PostgreSQL).
        hourly = select(
            *(
                func.count(audit_t.c.id).filter(at >= start, at < start + timedelta(hours=1))
                for start in starts
            )
        ).where(in_window, audit_t.c.action == "auth.start", audit_t.c.result == "ok")
        outcomes = (
            select(audit_t.c.action, audit_t.c.result, func.count(audit_t.c.id))
            .where(
                in_window,
                or_(
                    and_(audit_t.c.action == "challenge.answer", audit_t.c.result.in_(OUTCOMES)),
                    audit_t.c.action == "fraud.report",
                ),
            )
            .group_by(audit_t.c.action, audit_t.c.result)
        )
        held = select(func.count(challenges_t.c.id)).where(
            challenges_t.c.state == ChallengeState.PENDING.value,
            challenges_t.c.method == "push",
            challenges_t.c.expires_at > now,
        )
        reports = select(func.count(fraud_reports_t.c.id)).where(fraud_reports_t.c.state == "open")
        dead_tokens = select(func.count(devices_t.c.id)).where(
            devices_t.c.push_status == "invalid",
            devices_t.c.state.in_(LIVE_STATES),
        )
        async with self._db.read() as conn:
            counts = (await conn.execute(hourly)).one()
            by_result: dict[str, int] = {}
            for action, result, n in (await conn.execute(outcomes)).all():
                key = "fraud" if action == "fraud.report" else str(result)
                by_result[key] = by_result.get(key, 0) + int(n)
            held_count = int((await conn.execute(held)).scalar_one())
            open_reports = int((await conn.execute(reports)).scalar_one())
            invalid = int((await conn.execute(dead_tokens)).scalar_one())
        per_hour = tuple(
            HourCount(start, int(n or 0)) for start, n in zip(starts, counts, strict=True)
        )
        return Dashboard(
            now=now,
            since=since,
            per_hour=per_hour,
            started=sum(h.count for h in per_hour),
            approved=by_result.get("approved", 0),
            denied=by_result.get("denied", 0),
            fraud=by_result.get("fraud", 0),
            held=held_count,
            open_fraud_reports=open_reports,
            invalid_push_tokens=invalid,
        )
