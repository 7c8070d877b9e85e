"""The challenge outcome bus: whoever waits for a challenge wakes the moment it is decided.

Callers use only :class:`OutcomeBus`. The in-process implementation serves the embedded
default; a PostgreSQL LISTEN/NOTIFY implementation can take its place for several nodes
without touching callers. The bus remembers recent outcomes so that a waiter that subscribes
just after the answer was published still returns at once (no lost wake-up).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Outcome:
    """A challenge reached a final state. Small and plain, so it fits a NOTIFY payload."""

    challenge_id: str
    state: str
    answered_at: datetime | None = None


class OutcomeBus(Protocol):
    """Publish final challenge states; wait for one."""

    async def publish(self, outcome: Outcome) -> None:
        """Announce that a challenge reached its final state."""

    async def wait(self, challenge_id: str, within: float) -> Outcome | None:
        """The outcome, or ``None`` if none arrived within ``within`` seconds."""

    def watch(self, challenge_id: str, on_outcome: Callable[[Outcome], None]) -> Callable[[], None]:
        """Call ``on_outcome`` once when the challenge is decided (at once if it already
        was, as far as the bus remembers); returns the function that stops watching. For
        callers that hold many challenges (a bridge's wait channel): no task per challenge."""

    async def close(self) -> None:
        """Wake every waiter with ``None`` and stop."""


class InProcessOutcomeBus:
    """Futures keyed by challenge id, plus a bounded memory of recent outcomes."""

    def __init__(self, remember: int = 10_000, remember_seconds: float = 600.0) -> None:
        self._waiters: dict[str, set[asyncio.Future[Outcome | None]]] = {}
        self._watchers: dict[str, list[Callable[[Outcome], None]]] = {}
        self._recent: OrderedDict[str, tuple[Outcome, float]] = OrderedDict()
        self._remember = remember
        self._remember_seconds = remember_seconds
        self._closed = False

    async def publish(self, outcome: Outcome) -> None:
        self.deliver(outcome)

    def deliver(self, outcome: Outcome) -> None:
        """:meth:`publish` without the coroutine: for a feed that hands outcomes over from a
        plain callback (the PostgreSQL bus's notifications), so no task per notification."""
        self._recent[outcome.challenge_id] = (outcome, time.monotonic())
        self._recent.move_to_end(outcome.challenge_id)
        while len(self._recent) > self._remember:
            self._recent.popitem(last=False)
        for future in self._waiters.pop(outcome.challenge_id, set()):
            if not future.done():
                future.set_result(outcome)
        for on_outcome in self._watchers.pop(outcome.challenge_id, []):
            on_outcome(outcome)

    def watch(self, challenge_id: str, on_outcome: Callable[[Outcome], None]) -> Callable[[], None]:
        known = self._remembered(challenge_id)
        if known is not None:
            on_outcome(known)
            return _nothing
        watchers = self._watchers.setdefault(challenge_id, [])
        watchers.append(on_outcome)

        def unwatch() -> None:
            current = self._watchers.get(challenge_id)
            if current is not None and on_outcome in current:
                current.remove(on_outcome)
                if not current:
                    del self._watchers[challenge_id]

        return unwatch

    def held(self) -> set[str]:
        """The challenge ids someone waits on or watches here (a bus that lost its feed
        re-reads these, so no wake-up is lost in the gap)."""
        return {*self._waiters, *self._watchers}

    def _remembered(self, challenge_id: str) -> Outcome | None:
        entry = self._recent.get(challenge_id)
        if entry is None:
            return None
        outcome, at = entry
        if time.monotonic() - at > self._remember_seconds:
            del self._recent[challenge_id]
            return None
        return outcome

    async def wait(self, challenge_id: str, within: float) -> Outcome | None:
        known = self._remembered(challenge_id)
        if known is not None or self._closed or within <= 0:
            return known
        future: asyncio.Future[Outcome | None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(challenge_id, set()).add(future)
        try:
            return await asyncio.wait_for(future, within)
        except TimeoutError:
            return None
        finally:
            waiters = self._waiters.get(challenge_id)
            if waiters is not None:
                waiters.discard(future)
                if not waiters:
                    del self._waiters[challenge_id]

    @property
    def waiting(self) -> int:
        """How many waiters and watchers are parked (for metrics and tests)."""
        return sum(len(w) for w in self._waiters.values()) + sum(
            len(w) for w in self._watchers.values()
        )

    async def close(self) -> None:
        self._closed = True
        for waiters in self._waiters.values():
            for future in waiters:
                if not future.done():
                    future.set_result(None)
        self._waiters.clear()
        self._watchers.clear()


def _nothing() -> None:
    """The unwatch of a watch that fired at once."""
