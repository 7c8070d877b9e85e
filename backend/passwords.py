"""argon2id hashing for PINs and local passwords, off the event loop.

Each verify costs ~24 ms of CPU at OWASP's minimum parameters (DESIGN.md), so it runs in a
small bounded thread pool: a burst of password checks queues there instead of starving the
event loop that serves OTP and push traffic. argon2-cffi releases the GIL while hashing.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from argon2 import PasswordHasher as _Argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError


class PasswordHasher:
    """Async argon2id hash / verify with rehash-on-verify when parameters change."""

    def __init__(self, memory_kib: int, time_cost: int, parallelism: int, workers: int) -> None:
        self._argon2 = _Argon2(time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="argon2")

    async def hash(self, secret: str) -> str:
        """A new argon2id hash string."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._argon2.hash, secret)

    async def verify(self, stored: str, secret: str) -> tuple[bool, str | None]:
        """``(matches, new_hash)``; ``new_hash`` is set when the stored hash should be replaced."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._verify, stored, secret)

    def _verify(self, stored: str, secret: str) -> tuple[bool, str | None]:
        try:
            self._argon2.verify(stored, secret)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False, None
        if self._argon2.check_needs_rehash(stored):
            return True, self._argon2.hash(secret)
        return True, None

    def close(self) -> None:
        """Stop the worker threads."""
        self._pool.shutdown(wait=True, cancel_futures=True)
