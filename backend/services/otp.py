"""Offline codes (TOTP): verification with replay protection and lockout. The hot path.

One write transaction per attempt: read the user and their seeds, compare, then either claim
the time step with a conditional UPDATE (``last_step < step``: atomic on SQLite and PostgreSQL,
so two concurrent requests with the same code cannot both win) or count the failure; the audit
row goes into the same commit, so no answer is given before its record is durable.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from backend.crypto import SecretBox
from backend.domain import totp
from backend.errors import OtpLocked, UserBlocked, UserDisabled, UserNotEnrolled
from backend.services.audit import AuditLog
from backend.services.context import Actor, Clock, SignInContext
from backend.services.devices import LIVE_STATES
from backend.store.database import Database
from backend.store.queries import UserRecord, effective_policy, load_user
from backend.store.tables import devices_t, users_t


@dataclass(frozen=True, slots=True)
class OtpResult:
    """``accepted`` with the device whose code matched, or the reason for refusing."""

    accepted: bool
    reason: str
    user_name: str
    device_id: str | None = None


def check_may_sign_in(user: UserRecord) -> None:
    """Disabled and blocked users get their own, distinct refusal."""
    if user.disabled:
        raise UserDisabled()
    if user.blocked:
        raise UserBlocked(user.blocked_reason or None)


class OtpService:
    """Verifies six-digit codes from our app or any OATH app."""

    def __init__(self, db: Database, box: SecretBox, audit: AuditLog, clock: Clock) -> None:
        self._db = db
        self._box = box
        self._audit = audit
        self._clock = clock

    async def verify(
        self, actor: Actor, user_name: str, code: str, context: SignInContext
    ) -> OtpResult:
        """Check ``code`` for ``user_name``; raises for unknown, disabled, blocked, locked users."""
        async with self._db.write() as conn:
            user = await load_user(conn, user_name)
            return await self.verify_in(conn, actor, user, code, context)

    async def verify_in(
        self,
        conn: AsyncConnection,
        actor: Actor,
        user: UserRecord,
        code: str,
        context: SignInContext,
    ) -> OtpResult:
        """The same inside the caller's write transaction (challenge answered by code)."""
        now = self._clock()
        check_may_sign_in(user)
        if user.otp_locked_until is not None and user.otp_locked_until > now:
            raise OtpLocked(
                f"codes are locked until {user.otp_locked_until.isoformat(timespec='seconds')}"
            )
        rows = (
            await conn.execute(
                select(devices_t.c.id, devices_t.c.seed_enc).where(
                    devices_t.c.user_id == user.id, devices_t.c.state.in_(LIVE_STATES)
                )
            )
        ).all()
        if not rows:
            raise UserNotEnrolled()
        where = f"{context.client_name} {context.client_ip}".strip()
        for device_id, seed_enc in rows:
            seed = self._box.open(seed_enc, f"seed:{device_id}").decode()
            step = totp.matching_step(seed, code, now)
            if step is None:
                continue
            claimed = await conn.execute(
                update(devices_t)
                .where(
                    devices_t.c.id == device_id,
                    or_(devices_t.c.last_step.is_(None), devices_t.c.last_step < step),
                )
                .values(last_step=step, last_used_at=now, state="active")
            )
            if claimed.rowcount != 1:
                return await self._fail(conn, actor, user, "replayed", where)
            await conn.execute(
                update(devices_t)
                .where(devices_t.c.id == device_id, devices_t.c.activated_at.is_(None))
                .values(activated_at=now)
            )
            await conn.execute(
                update(users_t)
                .where(users_t.c.id == user.id)
                .values(otp_failures=0, last_sign_in_at=now)
            )
            await self._audit.add(
                conn, actor, "otp.verify", "accept", user.name_key, f"{device_id} {where}"
            )
            return OtpResult(True, "ok", user.name, device_id)
        reason = "wrong-code" if totp.is_well_formed(code) else "malformed-code"
        return await self._fail(conn, actor, user, reason, where)

    async def _fail(
        self, conn: AsyncConnection, actor: Actor, user: UserRecord, reason: str, where: str
    ) -> OtpResult:
        policy = await effective_policy(conn, user.id)
        failures = (
            await conn.execute(
                update(users_t)
                .where(users_t.c.id == user.id)
                .values(otp_failures=users_t.c.otp_failures + 1)
                .returning(users_t.c.otp_failures)
            )
        ).scalar_one()
        if failures >= policy.otp_max_failures:
            locked_until = self._clock() + timedelta(seconds=policy.otp_lockout_seconds)
            await conn.execute(
                update(users_t)
                .where(users_t.c.id == user.id)
                .values(otp_failures=0, otp_locked_until=locked_until)
            )
            reason = "locked"
        await self._audit.add(
            conn, actor, "otp.verify", "reject", user.name_key, f"{reason} {where}"
        )
        return OtpResult(False, reason, user.name)
