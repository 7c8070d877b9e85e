"""Step-up: who may add or change a user's second factor, and on what proof.

A password alone never adds or changes a factor. The rule, as one table (first match wins)::

    proof                    live factor  action                       decision
    -----------------------  -----------  ---------------------------  ---------------------
    administrator            any          any                          allowed
    device D (signed by D)   any          rename/remove/lose D itself  allowed
    device D                 any          anything else                not-allowed
    session of another user  any          any                          not-allowed
    session, stepped up <=W  yes          any                          allowed
    session, not stepped up  yes          any                          step-up-required
    session                  no           rename/remove/lose/reset     allowed
    session with a grant     no           enrol / set PIN              allowed
    session without a grant  no           enrol / set PIN              enrolment-not-allowed

``W`` is the step-up window (a setting, 5 minutes by default). A *live* factor is an ``active``
device of a kind that proves presence at sign-in (app, OATH, privacyIDEA push); a ``pending``
one has never been used, so it proves nothing yet. A *grant* is a first-enrolment window that
only an invitation (for the session that accepted it) or an administrator (for the user) opens.
Renaming, removing or marking lost a device of a user with no live factor weakens nothing: the
user has nothing left to protect with a second factor. This module decides; callers persist
and audit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

#: Device kinds that count as a second factor once ``active``.
FACTOR_KINDS = frozenset({"app", "oath", "pipush"})


class FactorAction(StrEnum):
    """Everything that adds or changes a second factor."""

    ENROL_APP = "enrol-app"
    ENROL_OATH = "enrol-oath"
    ENROL_PIPUSH = "enrol-pipush"
    SET_PIN = "set-pin"
    RENAME_DEVICE = "rename-device"
    REMOVE_DEVICE = "remove-device"
    MARK_LOST = "mark-lost"
    RESET_DEVICES = "reset-devices"

    @property
    def adds(self) -> bool:
        """Whether the action adds to what can approve a sign-in (a factor, or the PIN)."""
        return self in _ADDING


_ADDING = frozenset(
    {
        FactorAction.ENROL_APP,
        FactorAction.ENROL_OATH,
        FactorAction.ENROL_PIPUSH,
        FactorAction.SET_PIN,
    }
)
#: What a device may do to itself with its own signature.
_DEVICE_SELF = frozenset(
    {FactorAction.RENAME_DEVICE, FactorAction.REMOVE_DEVICE, FactorAction.MARK_LOST}
)


@dataclass(frozen=True, slots=True)
class AdministratorProof:
    """An administrator acts: the CLI (who runs it owns the server) or the admin console (an
    administrator who passed its second factor)."""


@dataclass(frozen=True, slots=True)
class SessionProof:
    """A portal session of ``user_id``: when it last proved a live factor (``stepped_up_at``)
    and until when an accepted invitation lets it enrol a first factor (``enrol_until``)."""

    user_id: int
    stepped_up_at: datetime | None = None
    enrol_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class DeviceProof:
    """A request signed by device ``device_id``'s own key."""

    device_id: str


Proof = AdministratorProof | SessionProof | DeviceProof
ADMINISTRATOR = AdministratorProof()


@dataclass(frozen=True, slots=True)
class FactorState:
    """What the rule needs to know about the user (and the device acted on, if any)."""

    user_id: int
    has_live_factor: bool
    #: A first-enrolment window an administrator opened for the user (``None``: none).
    enrol_until: datetime | None = None
    device_id: str | None = None


class Outcome(StrEnum):
    ALLOWED = "allowed"
    STEP_UP_REQUIRED = "step-up-required"
    ENROLMENT_NOT_ALLOWED = "enrolment-not-allowed"
    NOT_ALLOWED = "not-allowed"


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome and, in a few words for the audit trail, why."""

    outcome: Outcome
    reason: str

    @property
    def allowed(self) -> bool:
        return self.outcome is Outcome.ALLOWED


def is_live_factor(kind: str, state: str) -> bool:
    """An ``active`` device of a factor kind; ``pending``, ``lost`` and ``removed`` are not."""
    return state == "active" and kind in FACTOR_KINDS


def stepped_up(proof: SessionProof, now: datetime, window: timedelta) -> bool:
    """Whether the session proved a live factor within ``window`` before ``now``."""
    at = proof.stepped_up_at
    return at is not None and at <= now < at + window


def decide(
    action: FactorAction, proof: Proof, state: FactorState, now: datetime, window: timedelta
) -> Decision:
    """Whether ``proof`` lets ``action`` happen to ``state``'s user at ``now`` (see the table)."""
    if isinstance(proof, AdministratorProof):
        return Decision(Outcome.ALLOWED, "administrator")
    if isinstance(proof, DeviceProof):
        if action in _DEVICE_SELF and state.device_id == proof.device_id:
            return Decision(Outcome.ALLOWED, "the device itself")
        return Decision(Outcome.NOT_ALLOWED, "a device acts only on itself")
    if proof.user_id != state.user_id:
        return Decision(Outcome.NOT_ALLOWED, "a session acts only for its own user")
    if state.has_live_factor:
        if stepped_up(proof, now, window):
            return Decision(Outcome.ALLOWED, "stepped up")
        return Decision(Outcome.STEP_UP_REQUIRED, "step-up required: no fresh proof of a factor")
    if not action.adds:
        return Decision(Outcome.ALLOWED, "no live factor to protect")
    if _open(proof.enrol_until, now):
        return Decision(Outcome.ALLOWED, "first enrolment: invitation")
    if _open(state.enrol_until, now):
        return Decision(Outcome.ALLOWED, "first enrolment: allowed by an administrator")
    return Decision(
        Outcome.ENROLMENT_NOT_ALLOWED,
        "no live factor and no enrolment grant: an invitation or an administrator enrols",
    )


def _open(until: datetime | None, now: datetime) -> bool:
    return until is not None and now < until
