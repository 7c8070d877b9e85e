"""The one place that decides whether a second factor may be added or changed.

Every service method that adds or changes a factor (activation codes, OATH and privacyIDEA
enrolment, the PIN, renaming, removing or losing a device, resetting a user's devices) takes
a :data:`~backend.domain.stepup.Proof` as a required argument and calls :meth:`FactorGuard.
require` before it acts. The rule itself is the pure :func:`backend.domain.stepup.decide`; this
service reads what it needs (the user's live factors, an administrator's enrolment grant),
audits each refusal (``factor.refuse``) and raises :class:`~backend.errors.StepUpRequired` or
:class:`~backend.errors.EnrolmentNotAllowed` (both :class:`~backend.errors.FactorChangeRefused`,
403).

The check reads in its own transaction, before the caller's write: what it reads only changes
through another guarded action or a device's first use, neither of which can turn a refusal
into a wrong acceptance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update

from backend.domain.names import user_key
from backend.domain.stepup import (
    Decision,
    FactorAction,
    FactorState,
    Outcome,
    Proof,
    decide,
    is_live_factor,
)
from backend.errors import (
    BadRequest,
    EnrolmentNotAllowed,
    FactorChangeRefused,
    NotFound,
    StepUpRequired,
)
from backend.services.audit import AuditLog
from backend.services.context import Actor, Clock
from backend.store.database import Database
from backend.store.queries import load_user
from backend.store.tables import devices_t, users_t

MAX_GRANT_HOURS = 7 * 24


@dataclass(frozen=True, slots=True)
class FactorSubject:
    """Whose factor an action touches: the user's key and what the rule needs."""

    user_name: str
    state: FactorState


class FactorGuard:
    """Decides (and audits refusals of) every change to a second factor."""

    def __init__(
        self, db: Database, audit: AuditLog, clock: Clock, step_up: timedelta, grant: timedelta
    ) -> None:
        self._db = db
        self._audit = audit
        self._clock = clock
        self.step_up = step_up
        self.grant = grant

    async def subject(self, user_name: str | None, device_id: str | None = None) -> FactorSubject:
        """The user named (or owning ``device_id``) with their live factors and grant."""
        async with self._db.read() as conn:
            if user_name is None:
                if device_id is None:
                    raise ValueError("a factor action names a user or a device")
                owner = (
                    await conn.execute(
                        select(devices_t.c.user_id).where(devices_t.c.id == device_id[:64])
                    )
                ).first()
                if owner is None:
                    raise NotFound("no such device")
                user_id = int(owner.user_id)
            else:
                user_id = (await load_user(conn, user_name)).id
            row = (
                await conn.execute(
                    select(users_t.c.name_key, users_t.c.enrol_until).where(users_t.c.id == user_id)
                )
            ).one()
            kinds = (
                await conn.execute(
                    select(devices_t.c.kind, devices_t.c.state).where(
                        devices_t.c.user_id == user_id
                    )
                )
            ).all()
        live = any(is_live_factor(kind, state) for kind, state in kinds)
        return FactorSubject(
            str(row.name_key), FactorState(user_id, live, row.enrol_until, device_id)
        )

    async def decide(
        self,
        proof: Proof,
        action: FactorAction,
        user_name: str | None,
        device_id: str | None = None,
    ) -> Decision:
        """What the rule says now (nothing audited): for pages deciding what to show."""
        subject = await self.subject(user_name, device_id)
        return decide(action, proof, subject.state, self._clock(), self.step_up)

    async def require(
        self,
        actor: Actor,
        proof: Proof,
        action: FactorAction,
        user_name: str | None,
        device_id: str | None = None,
    ) -> None:
        """Return if ``proof`` allows ``action``; else audit ``factor.refuse`` and raise."""
        subject = await self.subject(user_name, device_id)
        decision = decide(action, proof, subject.state, self._clock(), self.step_up)
        if decision.allowed:
            return
        detail = f"{action.value}{' ' + device_id if device_id else ''}: {decision.reason}"
        await self._audit.record(
            actor, "factor.refuse", decision.outcome.value, subject.user_name, detail[:1024]
        )
        if decision.outcome is Outcome.ENROLMENT_NOT_ALLOWED:
            raise EnrolmentNotAllowed()
        if decision.outcome is Outcome.STEP_UP_REQUIRED:
            raise StepUpRequired()
        raise FactorChangeRefused(decision.reason)

    async def require_all(
        self, actor: Actor, proof: Proof, action: FactorAction, user_names: Sequence[str]
    ) -> None:
        """:meth:`require` for many users at once (bulk work such as a token import): the
        same rule per user, their states read in a few queries instead of three per user.
        The first refusal is audited and raised (by :meth:`require`, which reads that user
        again)."""
        keys = sorted({user_key(name) for name in user_names})
        states: dict[str, FactorState] = {}
        async with self._db.read() as conn:
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                users = (
                    await conn.execute(
                        select(users_t.c.id, users_t.c.name_key, users_t.c.enrol_until).where(
                            users_t.c.name_key.in_(chunk)
                        )
                    )
                ).all()
                live: set[int] = set()
                for user_id, kind, state in await conn.execute(
                    select(devices_t.c.user_id, devices_t.c.kind, devices_t.c.state).where(
                        devices_t.c.user_id.in_([u.id for u in users])
                    )
                ):
                    if is_live_factor(kind, state):
                        live.add(int(user_id))
                for u in users:
                    states[str(u.name_key)] = FactorState(int(u.id), u.id in live, u.enrol_until)
        now = self._clock()
        for key in keys:
            if key not in states:
                raise NotFound(f"no user named {key!r}")
            decision = decide(action, proof, states[key], now, self.step_up)
            if not decision.allowed:
                await self.require(actor, proof, action, key)

    async def allow_enrolment(self, actor: Actor, user_name: str, hours: float) -> datetime:
        """An administrator opens a first-enrolment window for the user (audited): until when.

        Any signed-in portal session of the user may then enrol, as long as the user has no
        live factor (once they have one, the step-up rule applies instead)."""
        if not 0 < hours <= MAX_GRANT_HOURS:
            raise BadRequest(
                f"an enrolment window lasts more than 0 and at most {MAX_GRANT_HOURS} hours"
            )
        until = self._clock() + timedelta(hours=hours)
        async with self._db.write() as conn:
            user = await load_user(conn, user_name)
            await conn.execute(
                update(users_t).where(users_t.c.id == user.id).values(enrol_until=until)
            )
            await self._audit.add(
                conn,
                actor,
                "user.allow_enrolment",
                "ok",
                user.name_key,
                f"until {until.isoformat()}",
            )
        return until
