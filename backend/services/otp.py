"""Offline codes (TOTP): verification with replay protection and lockout. The hot path.

One job per attempt, in one transaction (see :mod:`backend.store.fastpath`): check the gateway
token, read the user and their seeds, compare, then either claim the time step with a
conditional UPDATE (``last_step < step``: atomic on SQLite and PostgreSQL, so two concurrent
requests with the same code cannot both win) or count the failure. The audit row goes into the
same commit, so no answer is given before its record is durable.

On PostgreSQL, where each statement is a network round trip, the same rules run in two:
one read, the comparison here, then one call of the ``openmfa_otp_record`` function
(migration 0013) that decides again under the user's lock and writes (see
:meth:`OtpService._verify_postgres`).
"""

from __future__ import annotations

import json
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from backend.crypto import SecretBox, token_digest
from backend.domain import policy as policy_rules
from backend.domain import totp
from backend.domain.names import user_key
from backend.domain.policy import GLOBAL_SCOPE, user_scope
from backend.errors import (
    AuthenticationRequired,
    OpenMFAError,
    OtpLocked,
    UnknownUser,
    UserBlocked,
    UserDisabled,
    UserNotEnrolled,
)
from backend.services.audit import AuditLog
from backend.services.context import Actor, Clock, SignInContext
from backend.services.tokens import TOKEN_PREFIX
from backend.store.database import Database
from backend.store.fastpath import Tx
from backend.store.queries import UserRecord

#: The advisory-lock class of code checks on PostgreSQL (the second key is the user's).
OTP_LOCK = 0x4F5450  # "OTP"


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


@dataclass(frozen=True, slots=True)
class _Attempt:
    actor: Actor
    user_name: str
    code: str
    context: SignInContext
    now: datetime
    bearer: str | None
    confirm: str | None = None
    live_only: bool = False


class OtpService:
    """Verifies six-digit codes from our app or any OATH app."""

    def __init__(self, db: Database, box: SecretBox, audit: AuditLog, clock: Clock) -> None:
        self._db = db
        self._box = box
        self._audit = audit
        self._clock = clock
        # Code checks by outcome (``accept``, the refusal's reason or error type), read by
        # backend.metrics at scrape time: one increment here is all the hot path pays.
        self.outcomes: Counter[str] = Counter()

    async def verify(
        self,
        actor: Actor,
        user_name: str,
        code: str,
        context: SignInContext,
        bearer: str | None = None,
        *,
        confirm: str | None = None,
        live_only: bool = False,
    ) -> OtpResult:
        """Check ``code`` for ``user_name``; raises for unknown, disabled, blocked, locked users.

        With ``bearer``, the gateway API token is checked in the same transaction (the gateway
        API's one-call path); the acting gateway then becomes the audited actor.

        Which devices' codes count: ``active`` ones, and our app while ``pending`` (its
        activation code was issued under the step-up rule, and its first code completes the
        round trip that activates it). A ``pending`` OATH token counts only as ``confirm``,
        the portal's confirm step for that very token, which is what activates it: a code
        from a seed shown to someone with only the password never passes a gateway.
        ``live_only``: only ``active`` devices (a step-up or the admin console's second step
        proves a factor that was already in use).
        """
        key = user_key(user_name)
        attempt = _Attempt(actor, key, code, context, self._clock(), bearer, confirm, live_only)
        # One code check per user at a time, so the lock read, the comparison and the count
        # are one step: on PostgreSQL 40 concurrent wrong codes compared 14 against a limit of
        # 5 without it. An advisory lock, not the user's row: a push answer writes the device
        # row and then the user's, and taking the user's row first could deadlock with it.
        lock = (OTP_LOCK, zlib.crc32(key.encode()) - 2**31)
        try:
            if self._db.postgres_jobs is not None:
                result = await self._verify_postgres(attempt, lock)
            else:
                result = await self._db.run_job(lambda tx: self._verify(tx, attempt), lock=lock)
        except OpenMFAError as exc:
            self.outcomes[exc.type] += 1
            raise
        self.outcomes["accept" if result.accepted else result.reason] += 1
        return result

    async def _verify_postgres(self, attempt: _Attempt, lock: tuple[int, int]) -> OtpResult:
        """The same check in two round trips on PostgreSQL (the job takes six).

        1. One read: the gateway token, the user, their seeds and their lockout policy.
        2. The comparison here (the seeds are opened with the server key, which never goes to
           the database), then one call of ``openmfa_otp_record`` (migration 0013): under the
           user's advisory lock it re-checks the user (disabled, blocked, locked by a
           concurrent failure since the read), claims the step (``last_step < step``) or
           counts the failure, and writes the audit row, in one transaction.

        The read takes no lock: everything it decides is decided again under the lock, so a
        lockout reached by a concurrent check refuses this one too, and a step can be
        claimed once.
        """
        actor = attempt.actor
        try:
            rows = await self._db.run_statement(_PG_READ, *_read_params(attempt))
            actor = _gateway_actor(attempt, actor, rows)
            return await self._record_postgres(attempt, actor, rows, lock)
        except OpenMFAError as exc:
            exc.extra.setdefault("actor", actor)
            raise

    async def _record_postgres(
        self, attempt: _Attempt, actor: Actor, rows: list[tuple[Any, ...]], lock: tuple[int, int]
    ) -> OtpResult:
        _, user_id, name, disabled, blocked, blocked_reason, locked_until = rows[0][:7]
        if user_id is None:
            raise UnknownUser(f"no user named {attempt.user_name!r}")
        _check_user(attempt, disabled, blocked, blocked_reason, locked_until)
        devices = [(row[7], row[8], int(row[9] or 30)) for row in rows if row[7] is not None]
        if not devices:
            raise UserNotEnrolled()
        matched: tuple[str, int] | None = None
        for device_id, seed_enc, period in devices:
            seed = self._box.open(bytes(seed_enc), f"seed:{device_id}").decode()
            step = totp.matching_step(seed, attempt.code, attempt.now, period=period)
            if step is not None:
                matched = (device_id, step)
                break
        reason = "wrong-code" if totp.is_well_formed(attempt.code) else "malformed-code"
        layers: dict[str, dict[str, str]] = {GLOBAL_SCOPE: {}, user_scope(user_id): {}}
        for scope, policy_key, value in json.loads(rows[0][10] or "[]"):
            layers[scope][policy_key] = value
        policy = policy_rules.resolve(*layers.values())
        where = f"{attempt.context.client_name} {attempt.context.client_ip}".strip()
        recorded = await self._db.run_statement(
            "SELECT outcome, locked_until, blocked_reason FROM openmfa_otp_record("
            "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            lock[0],
            lock[1],
            user_id,
            matched[0] if matched else None,
            matched[1] if matched else None,
            attempt.now,
            reason,
            policy.otp_max_failures,
            policy.otp_lockout_seconds,
            _clip(actor.name, 128),
            _clip(attempt.user_name, 128),
            _clip(actor.source, 64),
            actor.request_id[:64],
            where,
        )
        outcome, locked_at, reason_blocked = recorded[0]
        if outcome == "gone":
            raise UnknownUser(f"no user named {attempt.user_name!r}")
        _check_user(attempt, outcome == "disabled", outcome == "blocked", reason_blocked, locked_at)
        if outcome == "accept" and matched is not None:
            return OtpResult(True, "ok", name, matched[0])
        return OtpResult(False, str(outcome), name)

    def _verify(self, tx: Tx, attempt: _Attempt) -> OtpResult:
        actor = attempt.actor
        try:
            rows = tx.all(_READ, *_read_params(attempt))
            actor = _gateway_actor(attempt, actor, rows)
            return self._verify_user(tx, attempt, actor, rows)
        except OpenMFAError as exc:
            exc.extra.setdefault("actor", actor)
            raise

    def _verify_user(
        self, tx: Tx, attempt: _Attempt, actor: Actor, rows: list[tuple[Any, ...]]
    ) -> OtpResult:
        _, user_id, name, disabled, blocked, blocked_reason, locked_until, _, _, _ = rows[0]
        if user_id is None:
            raise UnknownUser(f"no user named {attempt.user_name!r}")
        if disabled:
            raise UserDisabled()
        if blocked:
            raise UserBlocked(blocked_reason or None)
        locked = tx.read_time(locked_until)
        if locked is not None and locked > attempt.now:
            raise OtpLocked(f"codes are locked until {locked.isoformat(timespec='seconds')}")
        devices = [(row[7], row[8], int(row[9] or 30)) for row in rows if row[7] is not None]
        if not devices:
            raise UserNotEnrolled()
        where = f"{attempt.context.client_name} {attempt.context.client_ip}".strip()
        now = tx.time(attempt.now)
        for device_id, seed_enc, period in devices:
            seed = self._box.open(bytes(seed_enc), f"seed:{device_id}").decode()
            # The device's own step (60 s hardware tokens): a 30 s code of its seed is wrong.
            step = totp.matching_step(seed, attempt.code, attempt.now, period=period)
            if step is None:
                continue
            claimed = tx.run(
                "UPDATE devices SET last_step = ?, last_used_at = ?, state = 'active', "
                "activated_at = COALESCE(activated_at, ?) "
                # Still live: marked lost or removed since the read (PostgreSQL), it is refused.
                "WHERE id = ? AND state IN ('pending', 'active') "
                "AND (last_step IS NULL OR last_step < ?)",
                step,
                now,
                now,
                device_id,
                step,
            )
            if claimed != 1:
                return self._fail(tx, attempt, actor, user_id, name, "replayed", where)
            tx.run(
                "UPDATE users SET otp_failures = 0, last_sign_in_at = ? WHERE id = ?", now, user_id
            )
            self._audit.add_job(
                tx,
                actor,
                attempt.now,
                "otp.verify",
                "accept",
                attempt.user_name,
                f"{device_id} {where}".strip(),
            )
            return OtpResult(True, "ok", name, device_id)
        reason = "wrong-code" if totp.is_well_formed(attempt.code) else "malformed-code"
        return self._fail(tx, attempt, actor, user_id, name, reason, where)

    def _fail(
        self,
        tx: Tx,
        attempt: _Attempt,
        actor: Actor,
        user_id: int,
        name: str,
        reason: str,
        where: str,
    ) -> OtpResult:
        # A code that was valid once is no guess: refuse and audit it, but do not count it
        # toward the lockout (a user who signs in twice within 30 s would be locked).
        if reason != "replayed" and count_failure(tx, attempt.now, user_id)[1]:
            reason = "locked"
        self._audit.add_job(
            tx,
            actor,
            attempt.now,
            "otp.verify",
            "reject",
            attempt.user_name,
            f"{reason} {where}".strip(),
        )
        return OtpResult(False, reason, name)


def count_failure(tx: Tx, now: datetime, user_id: int) -> tuple[int, bool]:
    """Count a wrong code (or local password) toward the user's lockout: the failures
    counted, and True when this one locks the user now."""
    row = tx.one(
        "UPDATE users SET otp_failures = otp_failures + 1 WHERE id = ? RETURNING otp_failures",
        user_id,
    )
    failures = int(row[0]) if row else 0
    layers: dict[str, dict[str, str]] = {GLOBAL_SCOPE: {}, user_scope(user_id): {}}
    for scope, key, value in tx.all(
        "SELECT scope, key, value FROM policies WHERE scope IN (?, ?)",
        GLOBAL_SCOPE,
        user_scope(user_id),
    ):
        layers[scope][key] = value
    policy = policy_rules.resolve(*layers.values())
    if failures < policy.otp_max_failures:
        return failures, False
    tx.run(
        "UPDATE users SET otp_failures = 0, otp_locked_until = ? WHERE id = ?",
        tx.time(now + timedelta(seconds=policy.otp_lockout_seconds)),
        user_id,
    )
    return failures, True


def _check_user(
    attempt: _Attempt, disabled: Any, blocked: Any, blocked_reason: Any, locked_until: Any
) -> None:
    """Disabled, blocked and locked users are refused, each with its own error."""
    if disabled:
        raise UserDisabled()
    if blocked:
        raise UserBlocked(blocked_reason or None)
    if locked_until is not None and locked_until > attempt.now:
        raise OtpLocked(f"codes are locked until {locked_until.isoformat(timespec='seconds')}")


def _clip(value: str, limit: int) -> str:
    """As the audit log clips its columns."""
    return value if len(value) <= limit else value[: limit - 1] + "…"


# One round trip for the gateway token, the user and their seeds: on PostgreSQL each
# statement is a network round trip, and this is the hot path. Parameters: _read_params.
_READ_COLUMNS = (
    "SELECT (SELECT name FROM api_tokens WHERE token_hash = ? AND revoked_at IS NULL),"
    " u.id, u.name, u.disabled, u.blocked, u.blocked_reason, u.otp_locked_until,"
    " d.id, d.seed_enc, d.period"
)
_READ_FROM = (
    " FROM (SELECT 1 AS one) AS base"
    " LEFT JOIN users AS u ON u.name_key = ?"
    " LEFT JOIN devices AS d ON d.user_id = u.id AND (d.state = 'active'"
    " OR (d.state = 'pending' AND d.kind = 'app' AND ? = 0)"
    " OR (d.state = 'pending' AND d.id = ?))"
    # privacyIDEA Authenticator push tokens have no TOTP seed of their own.
    " AND d.kind <> 'pipush'"
)
_READ = _READ_COLUMNS + _READ_FROM
# The same read plus the user's lockout policy rows (json: one round trip for all).
_PG_POLICIES = (
    ", (SELECT json_agg(json_build_array(p.scope, p.key, p.value)) FROM policies AS p"
    " WHERE p.scope IN ('global', 'user:' || u.id))"
)
_PG_READ = _READ_COLUMNS + _PG_POLICIES + _READ_FROM


def _read_params(attempt: _Attempt) -> tuple[str | None, str, int, str]:
    """The parameters of :data:`_READ` / :data:`_PG_READ`, in order."""
    return (
        _bearer_digest(attempt.bearer),
        attempt.user_name,
        int(attempt.live_only),
        # No device id is empty: without confirm= the clause matches nothing.
        attempt.confirm or "",
    )


def _gateway_actor(attempt: _Attempt, actor: Actor, rows: Sequence[Any]) -> Actor:
    """The actor a gateway token's name makes of ``actor``; refused if the token is unknown."""
    if attempt.bearer is None:
        return actor
    if rows[0][0] is None:
        raise AuthenticationRequired("unknown or revoked API token")
    return Actor(f"gateway:{rows[0][0]}", actor.source, actor.request_id)


def _bearer_digest(bearer: str | None) -> str | None:
    """The stored form of a gateway token; ``None`` for a malformed one (which matches none)."""
    if bearer is None:
        return None
    if not bearer.startswith(TOKEN_PREFIX) or len(bearer) > 128:
        return "malformed"
    return token_digest(bearer)
