"""The push interface shared by every transport and the dispatcher.

A transport makes exactly one attempt per :meth:`PushTransport.send` and classifies what the
service said; retrying, backing off and marking tokens invalid are the dispatcher's job, so
every transport behaves the same way under failure. A transport never raises for a service or
network failure: it returns a :class:`PushResult`. It raises
:class:`backend.errors.ConfigurationError` only while being built, for a bad key or file, so
that a broken configuration stops the server at start and not at the first push.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Protocol


class PushOutcome(StrEnum):
    DELIVERED = "delivered"  # the service accepted the message
    RETRY = "retry"  # 429, 5xx, timeout or connection failure: worth another attempt
    INVALID_TOKEN = "invalid-token"  # noqa: S105  # the token is dead (BadDeviceToken, ...)
    FAILED = "failed"  # any other refusal (bad request, bad credentials): do not retry


@dataclass(frozen=True, slots=True)
class PushMessage:
    """What a push may carry: the challenge id and a short display string, nothing secret.

    The app fetches everything else (the number to match, the context) over the signed app API.
    """

    challenge_id: str
    token: str
    display: str
    expires_at: datetime
    user: str = ""  # the user's name, for apps holding several accounts (Web Push payload)


@dataclass(frozen=True, slots=True)
class PushResult:
    """One attempt's classified result; ``reason`` is the service's own word for it."""

    outcome: PushOutcome
    status: int | None = None
    reason: str = ""
    retry_after: float | None = None


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` value (seconds or an HTTP date) as seconds from now; ``None`` when
    absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


class PushTransport(Protocol):
    """One push service (APNs, FCM, Web Push)."""

    name: str

    async def send(self, message: PushMessage) -> PushResult:
        """Make one attempt; never raises for a service or network failure."""
        ...

    async def close(self) -> None:
        """Release connections and threads."""
        ...


class PushNotifier(Protocol):
    """What :class:`backend.services.challenges.ChallengeService` tells once a push challenge
    is committed. Implementations schedule the delivery and return at once."""

    def challenge_started(self, challenge_id: str) -> None:
        """Deliver the challenge to the user's devices in the background."""
        ...

    @property
    def can_send(self) -> bool:
        """False when no push service is configured: nothing is ever sent, every device
        polls (a new push challenge is then recorded as sent at once)."""
        ...
