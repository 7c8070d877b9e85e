"""argon2id hashing for PINs and local passwords, off the event loop, with bounded work.

Each verify costs ~24 ms of CPU at OWASP's minimum parameters (DESIGN.md), ~80 a second for
the whole box, so it runs in a small thread pool: a burst of password checks waits there
instead of starving the event loop that serves OTP and push traffic. argon2-cffi releases
the GIL while hashing.

The wait is bounded too: at most ``workers + queue_limit`` hashes are admitted at once (running
or queued); one more is refused at once with :class:`~backend.errors.HashingBusy` (429 with
``Retry-After``), so a flood is answered in microseconds instead of queueing for minutes.
Callers that count an attempt before checking it take :meth:`PasswordHasher.admission` first,
so a refused check never spends one of the user's attempts.

Unknown users are checked against a dummy hash of the same parameters (no user enumeration
by timing). Made-up names cost no real user anything, so they get a budget of their own per
process (``unknown_per_second``): past it, the answer waits as long as a check typically
takes, without the CPU, and a flood of invented names cannot fill the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar

from argon2 import PasswordHasher as _Argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from backend.errors import HashingBusy

DUMMY_SECRET = "openmfa-timing-equaliser"  # noqa: S105 - hashed once, matched by nobody
#: Weight of the newest check in the typical duration (an exponential moving average).
_EWMA = 0.2

# The hasher whose admission the running task holds: a verify inside it takes no second one.
_admitted: ContextVar[PasswordHasher | None] = ContextVar("argon2_admitted", default=None)


def _yield_to_the_loop(nice: int) -> None:
    """Run hashes at a lower CPU priority than the event loop (Linux nice, per thread): when
    the CPUs are busy hashing, answering a refusal, a code or a push still comes first."""
    if nice <= 0:
        return
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or not allowed
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)


class PasswordHasher:
    """Async argon2id hash / verify with rehash-on-verify when parameters change.

    ``counts`` (for metrics and tests): ``verify`` and ``hash`` computed, ``dummy`` checks for
    unknown users, ``dummy-waited`` past their budget, ``refused`` because the pool was full.
    """

    def __init__(
        self,
        memory_kib: int,
        time_cost: int,
        parallelism: int,
        workers: int,
        queue_limit: int = 40,
        unknown_per_second: float = 20.0,
        nice: int = 10,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._argon2 = _Argon2(time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism)
        self._pool = ThreadPoolExecutor(
            max_workers=workers,
            thread_name_prefix="argon2",
            initializer=_yield_to_the_loop,
            initargs=(nice,),
        )
        self.capacity = workers + queue_limit
        self._admitted = 0
        self._lock = threading.Lock()
        self._dummy: str | None = None
        self._typical = 0.0  # seconds one check takes here, measured
        self._monotonic = monotonic
        self._rate = unknown_per_second
        self._tokens = max(1.0, unknown_per_second)  # one second's worth, at least one
        self._refilled = monotonic()
        self.counts: Counter[str] = Counter()

    @property
    def admitted(self) -> int:
        """Hashes running or queued now."""
        return self._admitted

    @contextmanager
    def admission(self) -> Iterator[None]:
        """One place in the pool for the ``with`` block, or :class:`HashingBusy` at once.

        Hashes inside the block use this place instead of taking another one.
        """
        if _admitted.get() is self:
            yield
            return
        with self._lock:
            if self._admitted >= self.capacity:
                self.counts["refused"] += 1
                raise HashingBusy("too many password and PIN checks at once; try again in a moment")
            self._admitted += 1
        token = _admitted.set(self)
        try:
            yield
        finally:
            _admitted.reset(token)
            with self._lock:
                self._admitted -= 1

    async def hash(self, secret: str) -> str:
        """A new argon2id hash string."""
        with self.admission():
            self.counts["hash"] += 1
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, self._timed_hash, secret)

    async def verify(self, stored: str, secret: str) -> tuple[bool, str | None]:
        """``(matches, new_hash)``; ``new_hash`` is set when the stored hash should be replaced."""
        with self.admission():
            self.counts["verify"] += 1
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, self._verify, stored, secret)

    async def verify_dummy(self, secret: str) -> None:
        """Take as long as checking ``secret`` against a real hash would (the user is unknown,
        disabled, blocked or has no password): argon2id against a dummy hash while the budget
        for such checks lasts, else a wait as long as a typical check, with no CPU spent."""
        if not self._take_unknown_token():
            self.counts["dummy-waited"] += 1
            await asyncio.sleep(self._typical)
            return
        with self.admission():
            if self._dummy is None:  # made once, with the parameters real hashes have
                self._dummy = await self.hash(DUMMY_SECRET)
            self.counts["dummy"] += 1
            await self.verify(self._dummy, secret)

    def _take_unknown_token(self) -> bool:
        """A token bucket: ``unknown_per_second``, bursts of one second's worth."""
        with self._lock:
            now = self._monotonic()
            burst = max(1.0, self._rate)
            self._tokens = min(burst, self._tokens + (now - self._refilled) * self._rate)
            self._refilled = now
            if self._tokens < 1.0:
                return False
            self._tokens -= 1.0
            return True

    def _measured(self, started: float) -> None:
        took = time.perf_counter() - started
        self._typical = took if self._typical == 0.0 else (1 - _EWMA) * self._typical + _EWMA * took

    def _timed_hash(self, secret: str) -> str:
        started = time.perf_counter()
        try:
            return self._argon2.hash(secret)
        finally:
            self._measured(started)

    def _verify(self, stored: str, secret: str) -> tuple[bool, str | None]:
        started = time.perf_counter()
        try:
            self._argon2.verify(stored, secret)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False, None
        finally:
            self._measured(started)
        if self._argon2.check_needs_rehash(stored):
            return True, self._argon2.hash(secret)
        return True, None

    def close(self) -> None:
        """Stop the worker threads."""
        self._pool.shutdown(wait=True, cancel_futures=True)
