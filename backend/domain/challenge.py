"""The challenge state machine.

A challenge starts ``pending`` and makes exactly one transition to a final state::

    pending --approve--> approved        pending --deny--> denied
    pending --fraud----> fraud           pending --cancel--> cancelled
    pending --expire (at or after expires_at)--> expired

An answer at or after ``expires_at`` is refused (and the challenge expires). Once final, the
same answer from the same device is idempotent (``repeated``); any other answer is refused.
Cancelling or expiring a final challenge changes nothing. This module decides; callers persist.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

from backend.errors import ChallengeClosed, ChallengeExpired


class ChallengeState(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    FRAUD = "fraud"
    EXPIRED = "expired"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        """Every state but ``pending`` is final."""
        return self is not ChallengeState.PENDING


class Answer(StrEnum):
    APPROVE = "approve"
    DENY = "deny"
    FRAUD = "fraud"


ANSWER_STATE = {
    Answer.APPROVE: ChallengeState.APPROVED,
    Answer.DENY: ChallengeState.DENIED,
    Answer.FRAUD: ChallengeState.FRAUD,
}


@dataclass(frozen=True, slots=True)
class ChallengeStatus:
    """What the state machine needs to know about one challenge."""

    state: ChallengeState
    expires_at: datetime
    answered_by: str | None = None


@dataclass(frozen=True, slots=True)
class Answered:
    """A device (or, with ``by="otp"``, a verified code) answered."""

    answer: Answer
    by: str
    at: datetime


@dataclass(frozen=True, slots=True)
class Cancelled:
    at: datetime


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed; expires the challenge if its time is up."""

    at: datetime


Event = Answered | Cancelled | Tick


@dataclass(frozen=True, slots=True)
class Transition:
    """The result of applying an event: the new status and whether anything changed."""

    status: ChallengeStatus
    changed: bool


def apply(status: ChallengeStatus, event: Event) -> Transition:
    """Apply one event. Raises :class:`ChallengeExpired` or :class:`ChallengeClosed` to refuse."""
    if isinstance(event, Tick):
        if status.state is ChallengeState.PENDING and event.at >= status.expires_at:
            return Transition(replace(status, state=ChallengeState.EXPIRED), changed=True)
        return Transition(status, changed=False)
    if isinstance(event, Cancelled):
        if status.state is ChallengeState.PENDING:
            if event.at >= status.expires_at:
                return Transition(replace(status, state=ChallengeState.EXPIRED), changed=True)
            return Transition(replace(status, state=ChallengeState.CANCELLED), changed=True)
        return Transition(status, changed=False)
    return _answer(status, event)


def _answer(status: ChallengeStatus, event: Answered) -> Transition:
    target = ANSWER_STATE[event.answer]
    if status.state is ChallengeState.PENDING:
        if event.at >= status.expires_at:
            raise ChallengeExpired("the challenge expired before it was answered")
        return Transition(replace(status, state=target, answered_by=event.by), changed=True)
    if status.state is ChallengeState.EXPIRED:
        raise ChallengeExpired("the challenge expired before it was answered")
    if status.state is ChallengeState.CANCELLED:
        raise ChallengeClosed("the sign-in was cancelled")
    if status.state is target and status.answered_by == event.by:
        return Transition(status, changed=False)
    raise ChallengeClosed(f"the challenge was already answered: {status.state}")
