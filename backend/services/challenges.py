"""Challenges: started by a gateway, answered by a device (or a code), awaited by the gateway.

The state rules live in :mod:`backend.domain.challenge`; this service loads, decides with them,
and persists with a conditional UPDATE (``WHERE state = 'pending'``) so that of two racing
answers exactly one wins and the other is judged again against what was stored.
"""

from __future__ import annotations

import contextlib
import functools
import secrets
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, literal, literal_column, select, union_all, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from backend.domain.challenge import (
    Answer,
    Answered,
    Cancelled,
    ChallengeState,
    ChallengeStatus,
    Event,
    Tick,
    apply,
)
from backend.domain.devices import LIVE_STATES, can_answer_push
from backend.domain.fatigue import GuardDecision, PushRecord, Reason, Stop, decide, explain
from backend.domain.names import user_key
from backend.domain.notices import AccountChange
from backend.domain.policy import Policy
from backend.errors import (
    BadRequest,
    ChallengeClosed,
    ChallengeExpired,
    Conflict,
    NotFound,
    NumberMatchingUnavailable,
    OpenMFAError,
    PinLocked,
    PinRequired,
    PushLimited,
    UserNotEnrolled,
    WrongNumber,
)
from backend.events import Outcome, OutcomeBus
from backend.notify.base import FraudNotifier
from backend.push.base import PushNotifier
from backend.services.audit import AuditLog
from backend.services.context import Actor, Clock, SignInContext
from backend.services.devices import DeviceRecord, device_gone
from backend.services.notices import AccountNotices
from backend.services.otp import OtpResult, OtpService, check_may_sign_in
from backend.services.tokens import ApiTokenRecord
from backend.services.users import UserService
from backend.store.database import Database
from backend.store.fastpath import Tx, required
from backend.store.queries import (
    effective_policy,
    effective_policy_job,
    load_user,
    load_user_by_id,
)
from backend.store.tables import (
    UtcDateTime,
    challenges_t,
    devices_t,
    fraud_reports_t,
    users_t,
)

METHODS = ("push", "otp", "auto")


@dataclass(frozen=True, slots=True)
class ChallengeView:
    """A challenge as the gateway sees it (the device view leaves out ``number``)."""

    id: str
    user_name: str
    method: str
    state: ChallengeState
    created_at: datetime
    expires_at: datetime
    answered_at: datetime | None
    number: int | None
    client_name: str
    client_ip: str
    nas_identifier: str
    display: str
    # The gateway token that started it (see tables.Challenge.started_by).
    started_by: str | None = None


def _view(row: Any, user_name: str) -> ChallengeView:
    return ChallengeView(
        id=row.id,
        user_name=user_name,
        method=row.method,
        state=ChallengeState(row.state),
        created_at=row.created_at,
        expires_at=row.expires_at,
        answered_at=row.answered_at,
        number=row.number,
        client_name=row.client_name,
        client_ip=row.client_ip,
        nas_identifier=row.nas_identifier,
        display=row.display,
        started_by=row.started_by,
    )


class _CopyStarted(Exception):
    """A copy of the request being started committed its authentication first."""


def idempotency_scope(
    token_id: int | None, key: str | None, token_scope: str | None = None
) -> str | None:
    """Whose copies of a request count as one: every bridge alike (any token of scope
    ``bridge``, and the in-process bridge, which has no token row), or else the gateway
    token that sent it.

    One scope for all bridges is what makes a start idempotent *across* bridges: a gateway
    that fails over to a second bridge resends the same packet, the bridge derives the same
    key from it (client, user, Calling-Station-Id, Request Authenticator), and the second
    bridge joins the first one's authentication instead of pushing again. A gateway token's
    keys are its own: another caller's key must never return its challenge."""
    if key is None:
        return None
    if token_id is None or token_scope == "bridge":  # noqa: S105 - a scope, not a secret
        return "bridge"
    return f"token:{token_id}"


def _check_context(context: SignInContext) -> None:
    for field, value, limit in (
        ("client_name", context.client_name, 128),
        ("client_ip", context.client_ip, 64),
        ("nas_identifier", context.nas_identifier, 128),
        ("display", context.display, 256),
    ):
        if len(value) > limit:
            raise BadRequest(f"{field} has at most {limit} characters")


def _display(context: SignInContext) -> str:
    if context.display:
        return context.display
    where = context.client_name or "a gateway"
    return f"Sign-in to {where}" + (f" from {context.client_ip}" if context.client_ip else "")


class ChallengeService:
    """Start, answer, cancel and await challenges."""

    def __init__(
        self,
        db: Database,
        bus: OutcomeBus,
        users: UserService,
        otp: OtpService,
        audit: AuditLog,
        clock: Clock,
        push: PushNotifier | None = None,
        fraud_notifier: FraudNotifier | None = None,
        notices: AccountNotices | None = None,
        node_id: str | None = None,
    ) -> None:
        self._notices = notices
        # This node (``nodes.id``), recorded as ``push_node`` on the push challenges its
        # dispatcher sends; None (tests, commands without a node) leaves push_node NULL.
        self._node_id = node_id
        self._db = db
        self._push = push
        self._fraud_notifier = fraud_notifier
        self._bus = bus
        self._users = users
        self._otp = otp
        self._audit = audit
        self._clock = clock
        # Push sign-ins by how they ended (``accept``, denied, fraud, expired), counted where
        # the state is decided and read by backend.metrics at scrape time. A challenge closed
        # by a code is counted by OtpService, which checked the code.
        self.push_outcomes: Counter[str] = Counter()

    # -- gateway side -------------------------------------------------------------------------

    async def start(
        self,
        actor: Actor,
        user_name: str,
        method: str,
        context: SignInContext,
        token_id: int | None = None,
        idempotency_key: str | None = None,
        *,
        number_matching: bool | None = None,
        can_show_number: bool = True,
        started_by: str | None = None,
        token_scope: str | None = None,
    ) -> ChallengeView:
        """Begin an authentication. A repeated ``idempotency_key`` returns the first one
        (per :func:`idempotency_scope`: ``token_scope`` "bridge" shares keys between bridges).

        ``started_by`` names the gateway token that starts it (:attr:`ApiTokenRecord.starter`):
        only that token and bridge tokens may see it afterwards; ``None`` (the web) none.

        ``number_matching`` overrides the user's policy for this gateway (``None``: the
        policy decides); ``can_show_number`` is false for a gateway that cannot display the
        number (RADIUS push mode), where ``number_matching_fallback`` decides.
        """
        # Copies racing each other (a retransmission, the same packet through two bridges)
        # are settled by the unique (idempotency_scope, idempotency_key) constraint: every
        # keyed start has a non-NULL scope, so the loser's insert fails and it returns the
        # winner's authentication (see the IntegrityError below), on every node alike.
        scope = idempotency_scope(token_id, idempotency_key, token_scope)
        return await self._start(
            actor,
            user_name,
            method,
            context,
            token_id,
            idempotency_key,
            scope,
            _NumberMatching(number_matching, can_show_number),
            started_by,
        )

    async def _start(
        self,
        actor: Actor,
        user_name: str,
        method: str,
        context: SignInContext,
        token_id: int | None,
        idempotency_key: str | None,
        scope: str | None,
        matching: _NumberMatching,
        started_by: str | None,
    ) -> ChallengeView:
        if method not in METHODS:
            raise BadRequest(f"method must be one of {', '.join(METHODS)}")
        _check_context(context)
        if idempotency_key is not None and not 1 <= len(idempotency_key) <= 128:
            raise BadRequest("idempotency_key has 1 to 128 characters")
        if scope is not None and idempotency_key is not None:
            existing = await self._find_idempotent(scope, idempotency_key, user_name)
            if existing is not None:
                return existing
        now = self._clock()
        challenge_id = "ch_" + secrets.token_urlsafe(16)
        refusal: OpenMFAError | None = None
        try:
            async with self._db.write() as conn:
                user = await load_user(conn, user_name)
                if scope is not None and idempotency_key is not None:
                    await self._join_racing_copy(conn, user.id, scope, idempotency_key)
                check_may_sign_in(user)
                devices = (
                    await conn.execute(
                        select(devices_t.c.kind, devices_t.c.state).where(
                            devices_t.c.user_id == user.id, devices_t.c.state.in_(LIVE_STATES)
                        )
                    )
                ).all()
                if not devices:
                    raise UserNotEnrolled()
                pushable = any(can_answer_push(row.kind, row.state) for row in devices)
                requested = method
                if method == "auto":
                    method = "push" if pushable else "otp"
                if method == "push" and not pushable:
                    raise UserNotEnrolled(
                        "the user has no device that can answer a push; ask for a code"
                    )
                policy = await effective_policy(conn, user.id)
                number: int | None = None
                note = ""
                if method == "push":
                    # A keyed start took the user's row lock already (_join_racing_copy).
                    locked = scope is not None and idempotency_key is not None
                    stop = await self._push_stop(conn, user.id, policy, now, matching, locked)
                    if stop is not None:
                        # The guard or the number-matching fallback stops the push: "auto"
                        # asks for a code instead; "push" is refused (after this commits the
                        # audit row).
                        refusal = await self._stop_push(
                            conn, actor, user.name_key, requested, stop, policy, challenge_id
                        )
                        method = "otp"
                    elif matching.wanted(policy):
                        if matching.can_show:
                            number = secrets.randbelow(90) + 10
                        else:
                            note = " number-matching-skipped(gateway cannot show it)"
                if refusal is None:
                    push_node, push_sent_at = self._push_delivery(method, now)
                    await conn.execute(
                        insert(challenges_t).values(
                            id=challenge_id,
                            user_id=user.id,
                            method=method,
                            state=ChallengeState.PENDING.value,
                            created_at=now,
                            expires_at=now + timedelta(seconds=policy.challenge_ttl_seconds),
                            number=number,
                            client_name=context.client_name,
                            client_ip=context.client_ip,
                            nas_identifier=context.nas_identifier,
                            display=_display(context),
                            token_id=token_id,
                            idempotency_key=idempotency_key,
                            idempotency_scope=scope,
                            started_by=started_by,
                            push_node=push_node,
                            push_sent_at=push_sent_at,
                        )
                    )
                    detail = f"{challenge_id} {method} {context.client_name} {context.client_ip}"
                    await self._audit.add(
                        conn, actor, "auth.start", "ok", user.name_key, detail.strip() + note
                    )
        except _CopyStarted:
            existing = await self._find_idempotent(scope or "", idempotency_key or "", user_name)
            if existing is None:  # pragma: no cover - seen in this very transaction
                raise Conflict("the authentication for this idempotency_key vanished") from None
            return existing
        except IntegrityError:
            # Two copies of the same request raced; the other one created it.
            if scope is not None and idempotency_key is not None:
                existing = await self._find_idempotent(scope, idempotency_key, user_name)
                if existing is not None:
                    return existing
            raise
        if refusal is not None:
            raise refusal
        if method == "push" and self._push is not None:
            self._push.challenge_started(challenge_id)
        return await self.get(challenge_id)

    def _push_delivery(self, method: str, now: datetime) -> tuple[str | None, datetime | None]:
        """``push_node`` and ``push_sent_at`` for a new challenge (docs/push.md, "Several
        nodes"). Our dispatcher sends it: this node. No dispatcher here (a command): both NULL,
        so a live node's handover sends it. A dispatcher without transports: sent already."""
        if method != "push" or self._push is None:
            return None, None
        if not self._push.can_send:
            return None, now
        return self._node_id, None

    @staticmethod
    async def _join_racing_copy(conn: AsyncConnection, user_id: int, scope: str, key: str) -> None:
        """Raise :class:`_CopyStarted` when a copy of this request (same scope and key) has
        committed its authentication since the check before this transaction.

        Two copies racing (the same packet through two bridges, on two nodes) must not both
        run the fatigue guard: the second would count the first one's push and refuse with
        "push limited" instead of joining it. On PostgreSQL the user's row lock taken here
        (which the guard then relies on) makes the second copy wait for the first to commit,
        and this read -- a fresh snapshot under READ COMMITTED -- then finds it. SQLite's
        writers are serialised already."""
        if conn.dialect.name == "postgresql":
            await conn.execute(
                select(users_t.c.id).where(users_t.c.id == user_id).with_for_update()
            )
        found = (
            await conn.execute(
                select(challenges_t.c.id).where(
                    challenges_t.c.idempotency_scope == scope,
                    challenges_t.c.idempotency_key == key,
                )
            )
        ).first()
        if found is not None:
            raise _CopyStarted()

    async def _push_stop(
        self,
        conn: AsyncConnection,
        user_id: int,
        policy: Policy,
        now: datetime,
        matching: _NumberMatching,
        locked: bool = False,
    ) -> Stop | None:
        """Why this push may not go out (number matching impossible, or the fatigue guard),
        or ``None``. Runs inside the start's write transaction; ``locked``: it holds the
        user's row lock already."""
        if (
            matching.wanted(policy)
            and not matching.can_show
            and policy.number_matching_fallback == "refuse"
        ):
            return Stop(Reason.NUMBER_MATCHING_UNAVAILABLE, None)
        if conn.dialect.name == "postgresql" and not locked:
            # Concurrent starts for one user (two nodes, or a burst) must not both read a
            # history below the limit and both push: the user's row lock serialises them.
            # SQLite needs nothing: its writers are serialised already.
            await conn.execute(
                select(users_t.c.id).where(users_t.c.id == user_id).with_for_update()
            )
        return (await _guard(conn, user_id, policy, now)).deciding

    async def _stop_push(
        self,
        conn: AsyncConnection,
        actor: Actor,
        user_name: str,
        requested: str,
        stop: Stop,
        policy: Policy,
        challenge_id: str,
    ) -> OpenMFAError | None:
        """Audit ``push.limited``; the error for method ``push``, ``None`` for ``auto`` (which
        goes on as a code challenge)."""
        why = explain(stop, policy.push_limit_window_seconds)
        until = "" if stop.until is None else f" until {_iso(stop.until)}"
        await self._audit.add(
            conn,
            actor,
            "push.limited",
            "otp" if requested == "auto" else "refused",
            user_name,
            f"{stop.reason.value}{until}: {why}"
            + (f"; {challenge_id} asks for a code" if requested == "auto" else ""),
        )
        if requested == "auto":
            return None
        if stop.reason is Reason.NUMBER_MATCHING_UNAVAILABLE:
            return NumberMatchingUnavailable(
                "number matching is on for this sign-in and the gateway cannot show the "
                "number (policy number_matching_fallback = refuse); sign in with a code "
                "from the app"
            )
        resume = (
            "until an administrator reviews the report"
            if stop.until is None
            else f"until {_iso(stop.until)}"
        )
        return PushLimited(
            f"no more pushes for this user {resume}: {why}. A code from the app still works."
        )

    async def guard_state(self, user_name: str) -> GuardDecision:
        """The push-fatigue guard for a user as of now (for ``openmfa user show``)."""
        now = self._clock()
        async with self._db.read() as conn:
            user = await load_user(conn, user_name)
            policy = await effective_policy(conn, user.id)
            return await _guard(conn, user.id, policy, now, always=True)

    async def _find_idempotent(self, scope: str, key: str, user_name: str) -> ChallengeView | None:
        """The authentication this gateway started with ``key``; the key must name the same user."""
        async with self._db.read() as conn:
            row = (
                await conn.execute(
                    select(challenges_t.c.id).where(
                        challenges_t.c.idempotency_scope == scope,
                        challenges_t.c.idempotency_key == key,
                    )
                )
            ).first()
        if row is None:
            return None
        existing = await self.get(row.id)
        if existing.user_name.casefold() != user_key(user_name):
            raise Conflict("this idempotency_key was already used for another user's sign-in")
        return existing

    async def get(self, challenge_id: str, caller: ApiTokenRecord | None = None) -> ChallengeView:
        """The current state, expiring the challenge if its time is up.

        With ``caller`` (a gateway token) a challenge it may not see (:meth:`ApiTokenRecord.
        may_see`) is :class:`NotFound`, exactly like one that does not exist."""
        # Each long-poll slice of a held RADIUS request reads this twice: a raw-SQL job, at a
        # tenth of the cost of an ORM read, keeps 10,000 held requests affordable.
        view = await self._db.run_read(lambda tx: _read_view(tx, challenge_id[:64]))
        if view is None or (caller is not None and not caller.may_see(view.started_by)):
            raise NotFound("no such challenge")
        if view.state is ChallengeState.PENDING and self._clock() >= view.expires_at:
            return await self._settle(Actor("system"), challenge_id, Tick(self._clock()))
        return view

    async def wait(
        self, challenge_id: str, within: float, caller: ApiTokenRecord | None = None
    ) -> ChallengeView:
        """Long-poll: return as soon as the challenge is final, or after ``within`` seconds
        (``caller``: see :meth:`get`)."""
        view = await self.get(challenge_id, caller)
        if view.state.is_final or within <= 0:
            return view
        remaining = (view.expires_at - self._clock()).total_seconds()
        outcome = await self._bus.wait(challenge_id, max(0.0, min(within, remaining)))
        if outcome is None:
            return await self.get(challenge_id)  # time is up: expire it if due
        # The outcome was committed before it was published; no need to read it back.
        return replace(view, state=ChallengeState(outcome.state), answered_at=outcome.answered_at)

    async def cancel(
        self, actor: Actor, challenge_id: str, caller: ApiTokenRecord | None = None
    ) -> ChallengeView:
        """The gateway gave up (user closed the dialog, timeout on its side); ``caller``: see
        :meth:`get`."""
        if caller is not None:
            await self.get(challenge_id, caller)
        return await self._settle(actor, challenge_id, Cancelled(self._clock()))

    async def cancel_pending_for_user(self, actor: Actor, user_name: str, reason: str) -> int:
        """End every pending challenge of a user (blocked or disabled); waiters wake at once."""
        async with self._db.write() as conn:
            user = await load_user(conn, user_name)
            cancelled = await self._cancel_pending(conn, actor, user.id, user.name_key, reason)
        await self._announce(cancelled)
        return len(cancelled)

    async def cancel_pending_in(
        self, conn: AsyncConnection, actor: Actor, user_id: int, user_name: str, reason: str
    ) -> list[Outcome]:
        """:meth:`cancel_pending_for_user` inside the caller's transaction (a sync disabling
        many users at once); the caller passes the outcomes to :meth:`announce` after its
        commit."""
        return await self._cancel_pending(conn, actor, user_id, user_name, reason)

    async def announce(self, outcomes: list[Outcome]) -> None:
        """Wake whoever waits on these challenges (after the transaction that ended them)."""
        await self._announce(outcomes)

    async def _cancel_pending(
        self, conn: AsyncConnection, actor: Actor, user_id: int, user_name: str, reason: str
    ) -> list[Outcome]:
        """Cancel the user's pending challenges inside ``conn``'s transaction, audited; the
        outcomes to publish once it commits."""
        rows = (
            await conn.execute(
                update(challenges_t)
                .where(
                    challenges_t.c.user_id == user_id,
                    challenges_t.c.state == ChallengeState.PENDING.value,
                )
                .values(state=ChallengeState.CANCELLED.value)
                .returning(challenges_t.c.id)
            )
        ).all()
        for row in rows:
            await self._audit.add(
                conn, actor, "challenge.cancel", "cancelled", user_name, f"{row.id} {reason}"
            )
        return [Outcome(row.id, ChallengeState.CANCELLED.value) for row in rows]

    async def verify_code(
        self, actor: Actor, challenge_id: str, code: str, caller: ApiTokenRecord | None = None
    ) -> tuple[ChallengeView, OtpResult]:
        """Answer a pending challenge with a code instead of a push (RADIUS challenge mode);
        ``caller``: see :meth:`get`."""
        view = await self.get(challenge_id, caller)
        status = ChallengeStatus(view.state, view.expires_at, None)
        apply(status, Answered(Answer.APPROVE, "otp", self._clock()))  # refuses if closed
        result = await self._otp.verify(
            actor, view.user_name, code, SignInContext(view.client_name, view.client_ip)
        )
        if not result.accepted:
            return await self.get(challenge_id), result
        event = Answered(Answer.APPROVE, "otp", self._clock())
        return await self._settle(actor, challenge_id, event), result

    # -- device side ----------------------------------------------------------------------------

    async def pending_for_device(self, device: DeviceRecord) -> list[ChallengeView]:
        """Push challenges waiting for this device's user (also the polling path)."""
        now = self._clock()
        async with self._db.read() as conn:
            user_name = (await load_user_by_id(conn, device.user_id)).name
            rows = (
                await conn.execute(
                    select(challenges_t)
                    .where(
                        challenges_t.c.user_id == device.user_id,
                        challenges_t.c.state == ChallengeState.PENDING.value,
                        challenges_t.c.method == "push",
                        challenges_t.c.expires_at > now,
                    )
                    .order_by(challenges_t.c.created_at)
                )
            ).all()
        return [_view(row, user_name) for row in rows]

    async def get_for_device(self, device: DeviceRecord, challenge_id: str) -> ChallengeView:
        """One challenge of the device's user; anyone else's is :class:`NotFound`."""
        view = await self.get(challenge_id)
        async with self._db.read() as conn:
            row, _ = await _load(conn, challenge_id)
        if row.user_id != device.user_id or row.method != "push":
            raise NotFound("no such challenge")
        return view

    async def answer(
        self,
        actor: Actor,
        device: DeviceRecord,
        challenge_id: str,
        answer: Answer,
        pin: str | None = None,
        number: int | None = None,
        *,
        unlocked_on_device: bool = False,
    ) -> ChallengeView:
        """Approve, deny or report fraud. Approval may need the PIN and the matching number.

        ``unlocked_on_device``: the app unlocked itself with the phone's screen lock before
        answering (a privacyIDEA Authenticator token enrolled with ``pin=True``); that stands
        for the PIN that policy ``require_pin`` asks for, which such an app cannot send."""
        if answer is not Answer.FRAUD:
            quick = await self._db.run_job(
                functools.partial(
                    self._answer_job,
                    actor=actor,
                    device=device,
                    challenge_id=challenge_id[:64],
                    answer=answer,
                    number=number,
                    unlocked_on_device=unlocked_on_device,
                    now=self._clock(),
                )
            )
            if quick is not None:
                self.push_outcomes[_sign_in_outcome(quick.state)] += 1
                await self._announce([Outcome(quick.id, quick.state.value, quick.answered_at)])
                return quick
        # Everything else (refusals, PIN checks, a wrong number, fraud, late or repeated
        # answers) takes the ORM path below, which the quick path leaves untouched.
        async with self._db.read() as conn:
            row, _ = await _load(conn, challenge_id)
            if row.user_id != device.user_id or row.method != "push":
                raise NotFound("no such challenge")
            user = await load_user_by_id(conn, row.user_id)
            policy = await effective_policy(conn, user.id)
        event = Answered(answer, device.id, self._clock())
        status = ChallengeStatus(ChallengeState(row.state), row.expires_at, row.answered_by)
        if status.state is ChallengeState.PENDING and event.at >= status.expires_at:
            return await self._settle(actor, challenge_id, event, device)  # records it, refuses
        if not apply(status, event).changed:
            return await self.get(challenge_id)  # the same answer again: idempotent
        if answer is Answer.APPROVE:
            # Blocked or disabled after the push went out: deny and fraud stay possible.
            check_may_sign_in(user)
            if row.number is not None and number != row.number:
                await self._settle(
                    actor, challenge_id, Answered(Answer.DENY, device.id, self._clock()), device
                )
                raise WrongNumber()
            if policy.require_pin and not unlocked_on_device:
                if not pin:
                    raise PinRequired()
                try:
                    await self._users.verify_pin(actor, user, pin)
                except PinLocked:  # past the limit: this push is over, not left to guess on
                    await self._settle(
                        actor, challenge_id, Answered(Answer.DENY, device.id, self._clock()), device
                    )
                    raise
        return await self._settle(
            actor, challenge_id, Answered(answer, device.id, self._clock()), device
        )

    def _answer_job(
        self,
        tx: Tx,
        *,
        actor: Actor,
        device: DeviceRecord,
        challenge_id: str,
        answer: Answer,
        number: int | None,
        unlocked_on_device: bool,
        now: datetime,
    ) -> ChallengeView | None:
        """The common answer in one raw-SQL job: approve or deny a pending push that needs
        nothing else checked. ``None`` (nothing written) hands every other case to the ORM path.

        Every held RADIUS request ends with this: measured with 10,000 held, the ORM path's
        eight round trips made most of the answer-to-Access-Accept time (docs/performance.md).
        The writes are those of :meth:`_settle` and :meth:`_after_transition`.
        """
        row = tx.one(_ANSWER_SQL, challenge_id)
        if row is None:
            return None
        view = _view_of(tx, row)
        user_id, answered_by, disabled, blocked = row[13:17]
        if (
            user_id != device.user_id
            or view.method != "push"
            or view.state is not ChallengeState.PENDING
            or now >= view.expires_at
        ):
            return None
        if answer is Answer.APPROVE:
            if disabled or blocked or (view.number is not None and number != view.number):
                return None
            if effective_policy_job(tx, user_id).require_pin and not unlocked_on_device:
                return None
        event = Answered(answer, device.id, now)
        state = apply(ChallengeStatus(view.state, view.expires_at, answered_by), event).status.state
        done = tx.run(
            "UPDATE challenges SET state = ?, answered_at = ?, answered_by = ? "
            "WHERE id = ? AND state = ?",
            state.value,
            tx.time(now),
            device.id,
            challenge_id,
            ChallengeState.PENDING.value,
        )
        if done != 1:  # answered or cancelled since the read (PostgreSQL): let the ORM path say
            return None
        # The device was live at its signature check, a transaction ago: marked lost or
        # removed since, it answers nothing (the raise rolls this job's writes back).
        if (
            tx.run(
                "UPDATE devices SET last_used_at = ?, state = 'active', "
                "activated_at = COALESCE(activated_at, ?) "
                "WHERE id = ? AND state IN ('pending', 'active')",
                tx.time(now),
                tx.time(now),
                device.id,
            )
            != 1
        ):
            raise device_gone()
        if state is ChallengeState.APPROVED:
            tx.run("UPDATE users SET last_sign_in_at = ? WHERE id = ?", tx.time(now), user_id)
        self._audit.add_job(
            tx,
            actor,
            now,
            "challenge.answer",
            state.value,
            view.user_name,
            f"{challenge_id} by {device.id}",
        )
        return replace(view, state=state, answered_at=now.astimezone(UTC))

    # -- the user's own report ("this wasn't me") ------------------------------------------------

    async def report_sign_in(self, actor: Actor, user_name: str, challenge_id: str) -> int:
        """The user says "this wasn't me" about one of their sign-ins (the portal's history).

        A pending challenge is answered ``fraud`` exactly as the app's answer is: the waiting
        gateway is rejected at once. A final one (an approved sign-in, say) keeps its state and
        gets a report of its own. Either way the report, the block by policy, the cancelled
        challenges and the e-mail come from :meth:`_report_fraud`, as for the app. Reporting
        the same sign-in again returns the report already filed. Returns the report's id.
        """
        view = await self.get(challenge_id)  # expires it if its time is up
        if view.user_name.casefold() != user_key(user_name):
            raise NotFound("no such challenge")
        if view.state is ChallengeState.PENDING:
            # Decided (or timed out) meanwhile: then it is reported as a past sign-in below.
            with contextlib.suppress(ChallengeClosed, ChallengeExpired):
                await self._settle(
                    actor, challenge_id, Answered(Answer.FRAUD, "portal", self._clock())
                )
        published: list[Outcome] = []
        async with self._db.write() as conn:
            row, name = await _load(conn, challenge_id, lock=True)
            existing = (
                await conn.execute(
                    select(fraud_reports_t.c.id)
                    .where(fraud_reports_t.c.challenge_id == row.id)
                    .order_by(fraud_reports_t.c.id)
                )
            ).first()
            if existing is not None:
                return int(existing.id)
            report_id, published = await self._report_fraud(conn, actor, row, name, None)
        await self._announce(published, [report_id])
        return report_id

    # -- shared -------------------------------------------------------------------------------

    async def _settle(
        self, actor: Actor, challenge_id: str, event: Event, device: DeviceRecord | None = None
    ) -> ChallengeView:
        """Apply ``event`` and persist it; publish the outcomes once committed."""
        published: list[Outcome] = []
        reports: list[int] = []
        late = False
        decided: str | None = None  # a push sign-in's outcome, counted once committed
        async with self._db.write() as conn:
            row, user_name = await _load(conn, challenge_id, lock=True)
            view = _view(row, user_name)
            status = ChallengeStatus(ChallengeState(row.state), row.expires_at, row.answered_by)
            if (
                isinstance(event, Answered)
                and status.state is ChallengeState.PENDING
                and (event.at >= status.expires_at)
            ):
                # Too late: record the expiry (committed), then refuse below.
                await self._persist(conn, challenge_id, {"state": ChallengeState.EXPIRED.value})
                await self._audit.add(
                    conn, actor, "challenge.answer", "expired", user_name, challenge_id
                )
                published.append(Outcome(challenge_id, ChallengeState.EXPIRED.value))
                late = True
                decided = ChallengeState.EXPIRED.value if row.method == "push" else None
            else:
                transition = apply(status, event)  # raises to refuse; nothing written yet
                if transition.changed:
                    values: dict[str, object] = {"state": transition.status.state.value}
                    if isinstance(event, Answered):
                        values |= {"answered_at": event.at, "answered_by": event.by}
                    await self._persist(conn, challenge_id, values)
                    answered_at = event.at.astimezone(UTC) if isinstance(event, Answered) else None
                    view = replace(view, state=transition.status.state, answered_at=answered_at)
                    published.append(
                        Outcome(challenge_id, transition.status.state.value, answered_at)
                    )
                    published += await self._after_transition(
                        conn, actor, row, user_name, transition.status.state, event, device, reports
                    )
                    by_code = isinstance(event, Answered) and event.by == "otp"
                    if row.method == "push" and not by_code:
                        decided = _sign_in_outcome(transition.status.state)
        if decided is not None:
            self.push_outcomes[decided] += 1
        await self._announce(published, reports)
        if late:
            raise ChallengeExpired("the challenge expired before it was answered")
        return view

    async def _announce(self, outcomes: list[Outcome], reports: Sequence[int] = ()) -> None:
        """After the commit: wake the waiters, and schedule the notice of each fraud report."""
        for outcome in outcomes:
            await self._bus.publish(outcome)
        if self._fraud_notifier is not None:
            for report_id in reports:
                self._fraud_notifier.report_filed(report_id)

    async def _persist(
        self, conn: AsyncConnection, challenge_id: str, values: dict[str, object]
    ) -> None:
        # The write transaction holds the lock (BEGIN IMMEDIATE on SQLite, the row's lock on
        # PostgreSQL after _load), so the pending check cannot lose a race; it guards anyway.
        done = await conn.execute(
            update(challenges_t)
            .where(
                challenges_t.c.id == challenge_id,
                challenges_t.c.state == ChallengeState.PENDING.value,
            )
            .values(**values)
        )
        if done.rowcount != 1:
            raise Conflict("the challenge changed meanwhile; try again")

    async def _after_transition(
        self,
        conn: AsyncConnection,
        actor: Actor,
        row: Any,
        user_name: str,
        state: ChallengeState,
        event: Event,
        device: DeviceRecord | None,
        reports: list[int],
    ) -> list[Outcome]:
        """Side effects of a transition; returns further outcomes to publish and adds the ids
        of fraud reports it filed to ``reports``."""
        now = self._clock()
        if isinstance(event, Tick):
            await self._audit.add(conn, actor, "challenge.expire", "expired", user_name, row.id)
            return []
        if isinstance(event, Cancelled):
            await self._audit.add(conn, actor, "challenge.cancel", state.value, user_name, row.id)
            return []
        if device is not None:
            # The first answered push is the round trip that makes a device active. Only a
            # device still live: one marked lost or removed since its signature check answers
            # nothing (the raise rolls the whole transition back).
            touched = await conn.execute(
                update(devices_t)
                .where(devices_t.c.id == device.id, devices_t.c.state.in_(LIVE_STATES))
                .values(
                    last_used_at=now,
                    state="active",
                    # typed, so the UTC conversion applies inside COALESCE too
                    activated_at=func.coalesce(
                        devices_t.c.activated_at, literal(now, UtcDateTime())
                    ),
                )
            )
            if touched.rowcount != 1:
                raise device_gone()
        if state is ChallengeState.APPROVED:
            await conn.execute(
                update(users_t).where(users_t.c.id == row.user_id).values(last_sign_in_at=now)
            )
        await self._audit.add(
            conn, actor, "challenge.answer", state.value, user_name, f"{row.id} by {event.by}"
        )
        if state is ChallengeState.FRAUD:
            report_id, cancelled = await self._report_fraud(conn, actor, row, user_name, device)
            reports.append(report_id)
            return cancelled
        return []

    async def _report_fraud(
        self,
        conn: AsyncConnection,
        actor: Actor,
        row: Any,
        user_name: str,
        device: DeviceRecord | None,
    ) -> tuple[int, list[Outcome]]:
        """Record the report; block the user and cancel their other challenges if policy says so.

        Returns the report's id and the cancelled challenges' outcomes."""
        cancelled: list[Outcome] = []
        inserted = await conn.execute(
            insert(fraud_reports_t)
            .values(
                user_id=row.user_id,
                challenge_id=row.id,
                device_id=device.id if device else None,
                client_name=row.client_name,
                client_ip=row.client_ip,
                state="open",
                created_at=self._clock(),
                # Stored with the report: a notice lost to a restart is resent at the next start.
                notify_state="pending" if self._fraud_notifier is not None else "none",
            )
            .returning(fraud_reports_t.c.id)
        )
        report_id = int(inserted.scalar_one())
        policy = await effective_policy(conn, row.user_id)
        if policy.fraud_blocks_user:
            await conn.execute(
                update(users_t)
                .where(users_t.c.id == row.user_id)
                .values(blocked=True, blocked_reason=f"fraud reported on {row.id}")
            )
            cancelled += await self._cancel_pending(
                conn, actor, row.user_id, user_name, "user blocked"
            )
            if self._notices is not None:
                # In this transaction: no session outlives the block by a moment.
                await self._notices.changed_in(
                    conn, actor, row.user_id, AccountChange.FRAUD_BLOCKED
                )
        await self._audit.add(
            conn,
            actor,
            "fraud.report",
            "blocked" if policy.fraud_blocks_user else "recorded",
            user_name,
            row.id,
        )
        return report_id, cancelled


_VIEW_SQL = (
    "SELECT c.id, u.name, c.method, c.state, c.created_at, c.expires_at, c.answered_at, "
    "c.number, c.client_name, c.client_ip, c.nas_identifier, c.display, c.started_by "
    "FROM challenges c JOIN users u ON u.id = c.user_id WHERE c.id = ?"
)


# _VIEW_SQL's columns, then what an answer needs to decide.
_ANSWER_SQL = _VIEW_SQL.replace(
    " FROM ", ", c.user_id, c.answered_by, u.disabled, u.blocked FROM ", 1
)


def _read_view(tx: Tx, challenge_id: str) -> ChallengeView | None:
    """One challenge as a view, read with raw SQL (see :meth:`ChallengeService.get`)."""
    row = tx.one(_VIEW_SQL, challenge_id)
    return None if row is None else _view_of(tx, row)


def _view_of(tx: Tx, row: Sequence[Any]) -> ChallengeView:
    """A view from the first columns of :data:`_VIEW_SQL`."""
    return ChallengeView(
        id=row[0],
        user_name=row[1],
        method=row[2],
        state=ChallengeState(row[3]),
        created_at=required(tx.read_time(row[4]), "challenges.created_at"),
        expires_at=required(tx.read_time(row[5]), "challenges.expires_at"),
        answered_at=tx.read_time(row[6]),
        number=row[7],
        client_name=row[8],
        client_ip=row[9],
        nas_identifier=row[10],
        display=row[11],
        started_by=row[12],
    )


@dataclass(frozen=True, slots=True)
class _NumberMatching:
    """What the starting gateway says about number matching."""

    override: bool | None = None  # the gateway's (RADIUS client's) setting; None: policy
    can_show: bool = True  # false: it cannot display the number (RADIUS push mode)

    def wanted(self, policy: Policy) -> bool:
        return policy.number_matching if self.override is None else self.override


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


async def _guard(
    conn: AsyncConnection, user_id: int, policy: Policy, now: datetime, always: bool = False
) -> GuardDecision:
    """Read the user's recent pushes and open fraud reports (one query) and decide.

    With every limit off the history is not read (``always`` reads it anyway, for display).
    """
    since = now - timedelta(seconds=policy.push_limit_window_seconds)
    limits = (policy.push_limit, policy.push_max_unanswered, policy.deny_limit_per_device)
    c, f = challenges_t.c, fraud_reports_t.c
    reports = select(
        literal_column("'fraud'").label("kind"),
        f.created_at,
        f.created_at.label("expires_at"),
        f.state,
        f.device_id.label("answered_by"),
    ).where(f.user_id == user_id, f.state == "open")
    query: Any = reports
    if always or any(limits):
        # Served by the (user_id, created_at) index; a window holds a handful of rows.
        pushes = select(
            literal_column("'push'").label("kind"),
            c.created_at,
            c.expires_at,
            c.state,
            c.answered_by,
        ).where(c.user_id == user_id, c.method == "push", c.created_at > since)
        query = union_all(pushes, reports)
    rows = (await conn.execute(query)).all()
    history = [
        PushRecord(row.created_at, row.expires_at, ChallengeState(row.state), row.answered_by)
        for row in rows
        if row.kind == "push"
    ]
    fraud_open = any(row.kind == "fraud" for row in rows)
    return decide(policy, now, history, fraud_open)


async def _load(conn: AsyncConnection, challenge_id: str, lock: bool = False) -> tuple[Any, str]:
    """The challenge row and its user's name; ``lock`` takes the row lock (PostgreSQL)."""
    stmt = (
        select(challenges_t, users_t.c.name)
        .join(users_t, users_t.c.id == challenges_t.c.user_id)
        .where(challenges_t.c.id == challenge_id[:64])
    )
    if lock:
        stmt = stmt.with_for_update(of=challenges_t)
    row = (await conn.execute(stmt)).first()
    if row is None:
        raise NotFound("no such challenge")
    return row, str(row.name)


def _sign_in_outcome(state: ChallengeState) -> str:
    """A push challenge's final state as a sign-in outcome: ``accept`` like a right code."""
    return "accept" if state is ChallengeState.APPROVED else state.value
