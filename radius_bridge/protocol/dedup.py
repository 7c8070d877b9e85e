"""Duplicate detection and response cache (RFC 5080 section 2.2.2).

A RADIUS client retransmits the *same* packet (same source address and port, Identifier and
Request Authenticator) when an answer is slow. For a held push that is every few seconds
for up to a minute. A duplicate of a request still being decided is absorbed: no second
flow, no second push. A duplicate of one already answered gets the same response, byte for
byte, because the client may have lost the first copy; deciding again could give a
different answer (a single-use State already spent, a push already used).

Both maps are bounded. When full, the oldest entry goes: for an answered one the client
at worst gets a fresh decision; for one in progress, a retransmission would start a second
flow, and the backend's idempotency key (client, user, Calling-Station-Id and Request
Authenticator) still keeps that from sending a second push.
"""

from __future__ import annotations

from enum import Enum
from typing import Final

#: (source address, source port, Identifier, Request Authenticator).
Key = tuple[str, int, int, bytes]

DEFAULT_LIFETIME: Final = 60.0  # RFC 5080 asks for "at least" a few seconds; gateways retry ~30 s
DEFAULT_MAX_ENTRIES: Final = 65536
#: Longest a request may stay "in progress" before a retransmission may start over: the
#: longest push_timeout (600 s) plus slack, so a runner that lost a flow cannot block a key.
DEFAULT_IN_PROGRESS_LIFETIME: Final = 660.0


class InProgress(Enum):
    """Returned by :meth:`DuplicateCache.begin` for a duplicate still being decided."""

    IN_PROGRESS = "in-progress"


IN_PROGRESS: Final = InProgress.IN_PROGRESS


class DuplicateCache:
    """Requests in progress and recent responses, keyed by :data:`Key`; explicit clock."""

    def __init__(
        self,
        *,
        lifetime: float = DEFAULT_LIFETIME,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        in_progress_lifetime: float = DEFAULT_IN_PROGRESS_LIFETIME,
    ) -> None:
        if lifetime <= 0 or in_progress_lifetime <= 0 or max_entries < 1:
            raise ValueError("lifetimes must be positive and max_entries at least 1")
        self.lifetime = lifetime
        self.max_entries = max_entries
        self.in_progress_lifetime = in_progress_lifetime
        # Both dicts keep insertion order; with a fixed lifetime that is also expiry order,
        # so expiring is popping from the front.
        self._in_progress: dict[Key, float] = {}  # key -> expires at
        self._answered: dict[Key, tuple[bytes, float]] = {}  # key -> (response, expires at)

    def __len__(self) -> int:
        return len(self._in_progress) + len(self._answered)

    @property
    def in_progress(self) -> int:
        """How many requests are being decided."""
        return len(self._in_progress)

    def begin(self, key: Key, now: float) -> bytes | InProgress | None:
        """Look ``key`` up and, if it is new, mark it in progress (one step, so two copies
        arriving together cannot both start). Returns the cached response for an answered
        duplicate, :data:`IN_PROGRESS` for one being decided, None for a new request."""
        answered = self._answered.get(key)
        if answered is not None:
            if answered[1] > now:
                return answered[0]
            del self._answered[key]
        expires = self._in_progress.get(key)
        if expires is not None:
            if expires > now:
                return IN_PROGRESS
            del self._in_progress[key]
        self._expire(now)
        if len(self._in_progress) >= self.max_entries:
            del self._in_progress[next(iter(self._in_progress))]
        self._in_progress[key] = now + self.in_progress_lifetime
        return None

    def answer(self, key: Key, response: bytes, now: float) -> None:
        """Record the response to ``key``; duplicates get it until ``now + lifetime``."""
        self._in_progress.pop(key, None)
        self._answered.pop(key, None)  # re-insert at the end: keeps the dict in expiry order
        if len(self._answered) >= self.max_entries:
            del self._answered[next(iter(self._answered))]
        self._answered[key] = (response, now + self.lifetime)

    def forget(self, key: Key) -> None:
        """Drop an in-progress mark without an answer (the flow was abandoned), so the
        client's next retransmission starts over instead of being absorbed."""
        self._in_progress.pop(key, None)

    def expire(self, now: float) -> None:
        """Drop entries whose time is up (also done as a side effect of :meth:`begin`)."""
        self._expire(now)

    def _expire(self, now: float) -> None:
        answered = self._answered
        while answered:
            key = next(iter(answered))
            if answered[key][1] > now:
                break
            del answered[key]
        in_progress = self._in_progress
        while in_progress:
            key = next(iter(in_progress))
            if in_progress[key] > now:
                break
            del in_progress[key]
