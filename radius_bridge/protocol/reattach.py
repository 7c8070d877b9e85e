"""When a held push's long-poll is cut, how long to keep re-attaching before giving up.

A long-poll that ends normally (the backend answered, perhaps "still pending" at the end of
a slice) is not a failure. A long-poll that is *cut* -- the connection reset or closed under
it, the backend refusing connections, a proxy answering 5xx because the backend is gone --
means the backend may be dead. Waiting for the push's own timeout (tens of seconds) would
leave the gateway without an answer long after it gave up; giving up at the first cut would
turn every backend restart into failmode answers. So: re-attach to the same authentication
id with short growing pauses for a *grace* period (a few seconds, long enough for a restart
to pass unnoticed), and once the grace is spent with the backend still gone, give up so the
flow answers by the client's failmode at once.

The grace is counted from the first cut of a run of cuts; any poll that reaches the backend
ends the run, so a backend that restarts and is then cut again gets a fresh grace. This is
pure state (no clock, no I/O): the caller passes the time and sleeps the pause it is given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

#: Pauses between re-attach attempts, the last one repeating: quick at first (a connection
#: reset by a proxy reconnects at once), then at most 1 s apart so a restarted backend is
#: found within about a second of answering again.
PAUSES: Final = (0.05, 0.1, 0.25, 0.5, 1.0)
#: The default grace after a cut before the failmode answers.
DEFAULT_GRACE: Final = 5.0


@dataclass(slots=True)
class Reattach:
    """Retry state of one held push's long-poll; see the module docstring.

    ``cut(now, end)`` after a failed poll returns the pause before the next attempt, or
    ``None`` to give up (the grace is spent, or the next attempt would come after ``end``,
    the push's own deadline). ``reached()`` after a poll that got an answer.
    """

    grace: float = DEFAULT_GRACE
    pauses: tuple[float, ...] = PAUSES
    #: When the current run of cuts began; None while the backend answers.
    since: float | None = field(default=None)
    attempts: int = 0

    def cut(self, now: float, end: float) -> float | None:
        """The poll failed at ``now``: the pause before re-attaching, or None to give up."""
        if self.since is None:
            self.since = now
            self.attempts = 0
        left = self.since + self.grace - now
        if left <= 0:
            return None
        # Never pause past the grace: the last attempt is made right at its end, so a backend
        # back just in time is still used and giving up is never later than the grace.
        pause = min(self.pauses[min(self.attempts, len(self.pauses) - 1)], left)
        if now + pause >= end:
            return None
        self.attempts += 1
        return pause

    def reached(self) -> None:
        """A poll got an answer from the backend: the run of cuts is over."""
        self.since = None
        self.attempts = 0

    @property
    def cutting(self) -> bool:
        """True while in a run of cuts (the backend has not answered since the first)."""
        return self.since is not None
