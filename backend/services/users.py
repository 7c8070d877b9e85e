"""Users: accounts, state (active / disabled / blocked), password and PIN."""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Select, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from backend.domain.devices import LIVE_STATES
from backend.domain.emails import email_problem
from backend.domain.names import user_key
from backend.domain.notices import AccountChange
from backend.domain.policy import check_pin
from backend.domain.stepup import FactorAction, Proof
from backend.errors import BadRequest, Conflict, OtpLocked, PinLocked, PinRequired, WrongPin
from backend.passwords import PasswordHasher
from backend.services.audit import AuditLog
from backend.services.context import Actor, Clock, SignInContext
from backend.services.factors import FactorGuard
from backend.services.notices import AccountNotices
from backend.services.otp import check_may_sign_in, count_failure
from backend.store.database import Database
from backend.store.fastpath import Tx
from backend.store.queries import UserRecord, effective_policy, load_user, user_from_row
from backend.store.tables import devices_t, users_t

MIN_PASSWORD = 8
MAX_PASSWORD = 1024


@dataclass(frozen=True, slots=True)
class PasswordResult:
    """``accepted``, or why not: ``wrong-password`` or ``no-password`` (none is set)."""

    accepted: bool
    reason: Literal["ok", "wrong-password", "no-password"]
    user_name: str


@dataclass(frozen=True, slots=True)
class UserSummary:
    user: UserRecord
    active_devices: int
    pending_devices: int


def check_password(password: str) -> None:
    """Length rules for local passwords."""
    if len(password) < MIN_PASSWORD:
        raise BadRequest(f"a password has at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise BadRequest(f"a password has at most {MAX_PASSWORD} characters")


class UserService:
    """Create, list and change users; every change audited."""

    def __init__(
        self,
        db: Database,
        hasher: PasswordHasher,
        audit: AuditLog,
        clock: Clock,
        factors: FactorGuard,
        notices: AccountNotices | None = None,
    ) -> None:
        self._db = db
        self._factors = factors
        self._hasher = hasher
        self._audit = audit
        self._clock = clock
        self._notices = notices

    async def add(
        self,
        actor: Actor,
        name: str,
        email: str = "",
        display_name: str = "",
        password: str | None = None,
        is_admin: bool = False,
    ) -> UserRecord:
        """Create a user; :class:`Conflict` if the name (in any case) exists."""
        key = user_key(name)
        problem = email_problem(email) if email else None
        if problem is not None:
            await self._audit.record(actor, "user.add", "refused", key, f"e-mail: {problem}")
            raise BadRequest(f"the e-mail address is not valid: {problem}")
        if len(display_name) > 256:
            raise BadRequest("the display name has at most 256 characters")
        password_hash = None
        if password is not None:
            check_password(password)
            password_hash = await self._hasher.hash(password)
        try:
            async with self._db.write() as conn:
                await conn.execute(
                    insert(users_t).values(
                        name_key=key,
                        name=name,
                        display_name=display_name,
                        email=email,
                        is_admin=is_admin,
                        password_hash=password_hash,
                        created_at=self._clock(),
                    )
                )
                await self._audit.add(
                    conn, actor, "user.add", "ok", key, "admin" if is_admin else ""
                )
                return await load_user(conn, name)
        except IntegrityError as exc:
            raise Conflict(f"a user named {name!r} already exists") from exc

    async def get(self, name: str) -> UserRecord:
        """One user; :class:`UnknownUser` if there is none."""
        async with self._db.read() as conn:
            return await load_user(conn, name)

    async def list(self) -> list[UserSummary]:
        """All users with their device counts, by name."""
        return await self._summaries(_summaries_query())

    async def search(
        self, query: str = "", limit: int = 50, after: str | None = None
    ) -> builtins.list[UserSummary]:
        """Users whose name, display name or e-mail contains ``query`` (any case), by name,
        with their device counts; at most ``limit``, starting after the user whose
        ``name_key`` is ``after`` (keyset paging on the unique, indexed ``name_key``)."""
        if not 1 <= limit <= 500:
            raise BadRequest("limit must be from 1 to 500")
        query = query.strip()
        if len(query) > 320:
            raise BadRequest("the search has at most 320 characters")
        stmt = _summaries_query().limit(limit)
        if query:
            # autoescape: a % or _ typed into the search box matches itself, not anything.
            stmt = stmt.where(
                or_(
                    users_t.c.name.icontains(query, autoescape=True),
                    users_t.c.display_name.icontains(query, autoescape=True),
                    users_t.c.email.icontains(query, autoescape=True),
                )
            )
        if after:
            stmt = stmt.where(users_t.c.name_key > after)
        return await self._summaries(stmt)

    async def _summaries(self, stmt: Select[Any]) -> builtins.list[UserSummary]:
        async with self._db.read() as conn:
            rows = (await conn.execute(stmt)).all()
        return [
            UserSummary(
                user_from_row(row), int(row.active_devices or 0), int(row.pending_devices or 0)
            )
            for row in rows
        ]

    async def reset_devices(self, actor: Actor, proof: Proof, name: str) -> tuple[str, ...]:
        """Remove every live device of a user (lost phone, new start): the ids removed.

        One transaction and one audit row (``user.reset_devices``, naming the devices); the
        user then has to activate an authenticator again.
        """
        await self._factors.require(actor, proof, FactorAction.RESET_DEVICES, name)
        async with self._db.write() as conn:
            user = await load_user(conn, name)
            rows = (
                await conn.execute(
                    update(devices_t)
                    .where(devices_t.c.user_id == user.id, devices_t.c.state.in_(LIVE_STATES))
                    .values(state="removed")
                    .returning(devices_t.c.id)
                )
            ).all()
            removed = tuple(sorted(str(row.id) for row in rows))
            await self._audit.add(
                conn,
                actor,
                "user.reset_devices",
                "ok",
                user.name_key,
                f"removed {len(removed)}: {' '.join(removed)}".strip(),
            )
        return removed

    async def _change(
        self, actor: Actor, name: str, action: str, detail: str = "", **values: object
    ) -> UserRecord:
        async with self._db.write() as conn:
            user = await load_user(conn, name)
            await conn.execute(update(users_t).where(users_t.c.id == user.id).values(**values))
            await self._audit.add(conn, actor, action, "ok", user.name_key, detail)
            return await load_user(conn, name)

    async def set_disabled(self, actor: Actor, name: str, disabled: bool) -> UserRecord:
        """Disable (no sign-in at all) or enable a user."""
        return await self._change(
            actor, name, "user.disable" if disabled else "user.enable", disabled=disabled
        )

    async def set_blocked(
        self, actor: Actor, name: str, blocked: bool, reason: str = ""
    ) -> UserRecord:
        """Block (no new challenges, e.g. after fraud) or unblock a user."""
        if blocked:
            return await self._change(
                actor,
                name,
                "user.block",
                reason,
                blocked=True,
                blocked_reason=reason[:256] or "blocked by an administrator",
            )
        return await self._change(actor, name, "user.unblock", blocked=False, blocked_reason="")

    async def set_password(self, actor: Actor, name: str, password: str) -> None:
        """Replace the local password (argon2id); the user's web sessions end."""
        check_password(password)
        password_hash = await self._hasher.hash(password)
        user = await self._change(actor, name, "user.set_password", password_hash=password_hash)
        if self._notices is not None:
            await self._notices.changed(actor, user.id, AccountChange.PASSWORD_SET)

    async def set_pin(self, actor: Actor, proof: Proof, name: str, pin: str) -> None:
        """Set the approval PIN after checking it against the user's policy."""
        await self._factors.require(actor, proof, FactorAction.SET_PIN, name)
        async with self._db.read() as conn:
            user = await load_user(conn, name)
            policy = await effective_policy(conn, user.id)
        check_pin(pin, policy)
        pin_hash = await self._hasher.hash(pin)
        await self._change(
            actor, name, "user.set_pin", pin_hash=pin_hash, pin_failures=0, pin_locked_until=None
        )
        if self._notices is not None:
            await self._notices.changed(actor, user.id, AccountChange.PIN_SET)

    async def verify_pin(self, actor: Actor, user: UserRecord, pin: str | None) -> None:
        """Check an approval PIN: lockout first, then argon2id; failures counted and committed."""
        now = self._clock()
        if user.pin_locked_until is not None and user.pin_locked_until > now:
            raise PinLocked(
                f"try again after {user.pin_locked_until.isoformat(timespec='seconds')}"
            )
        if user.pin_hash is None:
            raise PinRequired(
                "approvals need a PIN but none is set; set one (openmfa user set-pin) first"
            )
        matches, new_hash = await self._hasher.verify(user.pin_hash, pin or "")
        async with self._db.write() as conn:
            if matches:
                values: dict[str, object] = {"pin_failures": 0, "pin_locked_until": None}
                if new_hash is not None:
                    values["pin_hash"] = new_hash
                await conn.execute(update(users_t).where(users_t.c.id == user.id).values(**values))
                return
            policy = await effective_policy(conn, user.id)
            failures = (
                await conn.execute(
                    update(users_t)
                    .where(users_t.c.id == user.id)
                    .values(pin_failures=users_t.c.pin_failures + 1)
                    .returning(users_t.c.pin_failures)
                )
            ).scalar_one()
            locked_until: datetime | None = None
            if failures >= policy.pin_max_failures:
                locked_until = now + timedelta(seconds=policy.pin_lockout_seconds)
                await conn.execute(
                    update(users_t)
                    .where(users_t.c.id == user.id)
                    .values(pin_failures=0, pin_locked_until=locked_until)
                )
            await self._audit.add(
                conn,
                actor,
                "pin.verify",
                "locked" if locked_until else "wrong",
                user.name_key,
                f"failures={failures}",
            )
        if locked_until is not None:
            raise PinLocked("too many wrong PINs; approvals are locked for a while")
        raise WrongPin()

    async def verify_password(
        self, actor: Actor, name: str, password: str, context: SignInContext | None = None
    ) -> PasswordResult:
        """Check a local password (primary authentication ``local`` of a RADIUS client).

        Refuses unknown, disabled, blocked and locked users like a code check does. A wrong
        password counts toward the same lockout as wrong codes (``otp_max_failures``), so
        guessing passwords through the bridge is as limited as guessing codes. A right one
        does *not* reset that count: only a right code does; otherwise an attacker
        who knows the password could guess codes for ever with ``password,code``.
        """
        now = self._clock()
        where = "" if context is None else f"{context.client_name} {context.client_ip}".strip()
        async with self._db.read() as conn:
            user = await load_user(conn, name)
            row = (
                await conn.execute(select(users_t.c.password_hash).where(users_t.c.id == user.id))
            ).first()
        check_may_sign_in(user)
        if user.otp_locked_until is not None and user.otp_locked_until > now:
            raise OtpLocked(
                "too many wrong passwords or codes; sign-ins are locked until "
                + user.otp_locked_until.isoformat(timespec="seconds")
            )
        stored = None if row is None else row.password_hash
        if stored is None:
            await self._audit.record(
                actor, "password.verify", "reject", user.name_key, f"no-password {where}".strip()
            )
            return PasswordResult(False, "no-password", user.name)
        matches, new_hash = await self._hasher.verify(stored, password)
        if matches:
            async with self._db.write() as conn:
                if new_hash is not None:  # the hashing parameters were raised since
                    await conn.execute(
                        update(users_t)
                        .where(users_t.c.id == user.id, users_t.c.password_hash == stored)
                        .values(password_hash=new_hash)
                    )
                await self._audit.add(
                    conn, actor, "password.verify", "accept", user.name_key, f"ok {where}".strip()
                )
            return PasswordResult(True, "ok", user.name)

        audited_at = self._clock()

        def count(tx: Tx) -> None:
            failures, locked = count_failure(tx, now, user.id)
            self._audit.add_job(
                tx,
                actor,
                audited_at,
                "password.verify",
                "locked" if locked else "reject",
                user.name_key,
                f"wrong-password failures={failures} {where}".strip(),
            )

        await self._db.run_job(count)
        return PasswordResult(False, "wrong-password", user.name)


def _summaries_query() -> Select[Any]:
    """Users with their active and pending device counts, by name."""
    active = func.count(devices_t.c.id).filter(devices_t.c.state == "active")
    pending = func.count(devices_t.c.id).filter(devices_t.c.state == "pending")
    return (
        select(users_t, active.label("active_devices"), pending.label("pending_devices"))
        .select_from(users_t.outerjoin(devices_t, devices_t.c.user_id == users_t.c.id))
        .group_by(users_t.c.id)
        .order_by(users_t.c.name_key)
    )
