"""The push-fatigue guard: may this user get another push now, and if not, why and until when.

An attacker who has a user's password can send push after push until a tired user taps
"approve". The guard caps that. It counts the user's **push** challenges created in a sliding
window of ``push_limit_window_seconds`` (by their creation time) and stops pushes when:

* ``push_limit``: the window holds that many pushes, whatever became of them (an approved
  push is a notification on the phone like any other);
* ``push_max_unanswered``: that many of them were refused: denied, reported as fraud, or never
  answered (expired, or cancelled by the gateway without an answer);
* ``deny_limit_per_device``: one device denied that many (a wrong number is a deny too);
* an open fraud report exists for the user: pushes stay muted until an administrator reviews
  it, also when ``fraud_blocks_user`` is off.

A limit of 0 is off. While pushes are stopped the user signs in with a code from the app.
Pure: the caller reads the history (:class:`PushRecord`) and supplies the time.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from backend.domain.challenge import ChallengeState
from backend.domain.policy import Policy

#: States in which a push counts as refused once it has no chance of an answer any more.
_REFUSED = frozenset({ChallengeState.DENIED, ChallengeState.FRAUD})
_UNANSWERED = frozenset({ChallengeState.EXPIRED, ChallengeState.CANCELLED})


class Reason(StrEnum):
    """Why pushes are stopped (also the audit detail's first word)."""

    PUSH_LIMIT = "push-limit"
    UNANSWERED_LIMIT = "unanswered-limit"
    DEVICE_DENY_LIMIT = "device-deny-limit"
    FRAUD_REPORT_OPEN = "fraud-report-open"
    #: Not the guard: number matching is on and the gateway cannot show the number.
    NUMBER_MATCHING_UNAVAILABLE = "number-matching-unavailable"


@dataclass(frozen=True, slots=True)
class PushRecord:
    """One push challenge of the user, as stored."""

    created_at: datetime
    expires_at: datetime
    state: ChallengeState
    answered_by: str | None = None

    def refused(self, now: datetime) -> bool:
        """Denied, reported, or over without an answer (a pending one past its expiry too)."""
        if self.state in _REFUSED:
            return True
        if self.state in _UNANSWERED:
            return self.answered_by is None
        return self.state is ChallengeState.PENDING and now >= self.expires_at

    def denied_by(self) -> str | None:
        """The device that denied it (or reported fraud), if one did."""
        return self.answered_by if self.state in _REFUSED else None


@dataclass(frozen=True, slots=True)
class Stop:
    """One rule that stops pushes; ``until`` is ``None`` for as long as a report stays open."""

    reason: Reason
    until: datetime | None
    count: int = 0
    limit: int = 0
    device: str | None = None


@dataclass(frozen=True, slots=True)
class GuardDecision:
    """The guard's answer, with the counts an administrator wants to see."""

    stops: tuple[Stop, ...]
    pushes_in_window: int
    refused_in_window: int
    most_denies_by_one_device: int
    window_seconds: int

    @property
    def allowed(self) -> bool:
        """True when a new push may go out."""
        return not self.stops

    @property
    def deciding(self) -> Stop | None:
        """The stop that lasts longest (an open fraud report lasts until it is reviewed)."""
        if not self.stops:
            return None
        return max(self.stops, key=_lasting)

    @property
    def reason(self) -> Reason | None:
        stop = self.deciding
        return None if stop is None else stop.reason

    @property
    def until(self) -> datetime | None:
        """When pushes may resume at the earliest (``None``: allowed now, or until review)."""
        stop = self.deciding
        return None if stop is None else stop.until


def _lasting(stop: Stop) -> tuple[bool, float]:
    return stop.until is None, stop.until.timestamp() if stop.until else 0.0


def explain(stop: Stop, window_seconds: int) -> str:
    """One sentence for an error's detail, the audit trail and ``openmfa user show``."""
    window = duration_text(window_seconds)
    if stop.reason is Reason.PUSH_LIMIT:
        return f"{stop.count} pushes in {window} (limit {stop.limit})"
    if stop.reason is Reason.UNANSWERED_LIMIT:
        return f"{stop.count} denied or unanswered pushes in {window} (limit {stop.limit})"
    if stop.reason is Reason.DEVICE_DENY_LIMIT:
        return f"{stop.count} denies from device {stop.device} in {window} (limit {stop.limit})"
    if stop.reason is Reason.FRAUD_REPORT_OPEN:
        return "a fraud report is open; pushes stay muted until an administrator reviews it"
    return "number matching is on and this gateway cannot show the number"


def duration_text(seconds: int) -> str:
    """``300`` -> ``5 min``; whole hours and minutes as such, anything else in seconds."""
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"


def _earliest_clear(times: list[datetime], limit: int, window: timedelta) -> datetime:
    """With ``len(times) >= limit``: when fewer than ``limit`` of them are left in the window.

    The window holds a push while ``created_at > now - window``; once the oldest
    ``len - limit + 1`` have left, ``limit - 1`` remain.
    """
    ordered = sorted(times)
    return ordered[len(ordered) - limit] + window


def decide(
    policy: Policy, now: datetime, pushes: Iterable[PushRecord], fraud_report_open: bool
) -> GuardDecision:
    """May a new push go out to this user at ``now``? ``pushes``: their push challenges (any
    may be outside the window; those are ignored)."""
    window = timedelta(seconds=policy.push_limit_window_seconds)
    recent = [p for p in pushes if now - window < p.created_at <= now]
    refused = [p.created_at for p in recent if p.refused(now)]
    denies: dict[str, list[datetime]] = defaultdict(list)
    for push in recent:
        device = push.denied_by()
        if device is not None:
            denies[device].append(push.created_at)

    stops: list[Stop] = []
    if fraud_report_open:
        stops.append(Stop(Reason.FRAUD_REPORT_OPEN, None))
    if policy.push_limit and len(recent) >= policy.push_limit:
        until = _earliest_clear([p.created_at for p in recent], policy.push_limit, window)
        stops.append(Stop(Reason.PUSH_LIMIT, until, len(recent), policy.push_limit))
    if policy.push_max_unanswered and len(refused) >= policy.push_max_unanswered:
        until = _earliest_clear(refused, policy.push_max_unanswered, window)
        stops.append(Stop(Reason.UNANSWERED_LIMIT, until, len(refused), policy.push_max_unanswered))
    limit = policy.deny_limit_per_device
    if limit:
        for device, times in sorted(denies.items()):
            if len(times) >= limit:
                until = _earliest_clear(times, limit, window)
                stops.append(Stop(Reason.DEVICE_DENY_LIMIT, until, len(times), limit, device))
    return GuardDecision(
        stops=tuple(stops),
        pushes_in_window=len(recent),
        refused_in_window=len(refused),
        most_denies_by_one_device=max((len(t) for t in denies.values()), default=0),
        window_seconds=policy.push_limit_window_seconds,
    )
