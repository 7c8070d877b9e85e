"""Sign-in failures per source address: an in-process sliding window.

Per-user lockout lives in the database (the users' failure counters, shared by every node);
this one only slows down one address guessing across many users, and is per process by
design (cheap, no writes). Memory is bounded: the least recently failing addresses are
forgotten first.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from datetime import datetime, timedelta

MAX_ADDRESSES = 10_000
MAX_PER_ADDRESS = 1000  # the largest web_sign_in_address_limit allowed


class AddressLimiter:
    """``claim(address, ...)`` before a password check (``release`` it when it was right);
    ``blocked_until(address, ...)`` before a cheap step, ``failure(address, ...)`` after one."""

    def __init__(self, max_addresses: int = MAX_ADDRESSES) -> None:
        self._failures: OrderedDict[str, deque[datetime]] = OrderedDict()
        self._max = max_addresses

    def _window(self, address: str, now: datetime, window: timedelta) -> deque[datetime]:
        times = self._failures.get(address)
        if times is None:
            return deque()
        while times and times[0] <= now - window:
            times.popleft()
        if not times:
            del self._failures[address]
        return times

    def blocked_until(
        self, address: str, now: datetime, limit: int, window: timedelta
    ) -> datetime | None:
        """When ``address`` may try again, or ``None`` if it may now."""
        times = self._window(address, now, window)
        if len(times) < limit:
            return None
        return times[len(times) - limit] + window

    def claim(self, address: str, now: datetime, limit: int, window: timedelta) -> datetime | None:
        """Count an attempt as a failure *before* it is checked (no await between the test and
        the count, so concurrent guesses cannot all pass the test first): ``None`` when
        claimed, else when ``address`` may try again."""
        until = self.blocked_until(address, now, limit, window)
        if until is None:
            self.failure(address, now, window)
        return until

    def release(self, address: str, at: datetime) -> None:
        """Take back an attempt claimed at ``at``: it was no failure."""
        times = self._failures.get(address)
        if times is not None and at in times:
            times.remove(at)

    def failure(self, address: str, now: datetime, window: timedelta) -> None:
        """Count one failed sign-in from ``address``."""
        self._window(address, now, window)
        times = self._failures.setdefault(address, deque(maxlen=MAX_PER_ADDRESS))
        times.append(now)
        self._failures.move_to_end(address)
        while len(self._failures) > self._max:
            self._failures.popitem(last=False)
