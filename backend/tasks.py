"""Small helpers for the server's background tasks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from asyncio import FIRST_COMPLETED
from collections.abc import Callable, Collection, Coroutine
from typing import Any, Protocol


async def stop_task(task: asyncio.Task[None] | None) -> None:
    """Cancel ``task`` (if any) and wait until it has ended; its cancellation is not raised."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def finish_within(
    tasks: Collection[asyncio.Task[None]], grace: float, log: logging.Logger, warning: str
) -> None:
    """Give the unfinished ``tasks`` ``grace`` seconds, cancel those still running then (one
    ``warning`` each on ``log``) and wait for all of them; their errors are not raised."""
    running = [task for task in tasks if not task.done()]
    if running:
        _, late = await asyncio.wait(running, timeout=grace)
        for task in late:
            log.warning(warning)
            task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class LeaseClaims(Protocol):
    """What :class:`LeasedDuty` needs of a lease holder (backend/services/leases.py
    ``Leases``; kept as a protocol so this module imports nothing from the services)."""

    async def claim(self, name: str, ttl: float) -> bool:
        """Take the lease if free, expired or already ours."""

    async def renew(self, name: str, ttl: float) -> bool:
        """Push our lease's expiry forward; False when it is no longer ours."""

    async def release(self, name: str) -> bool:
        """Give the lease up now."""


class LeasedDuty:
    """Runs ``duty`` only while this node holds lease ``name`` (backend/domain/leases.py).

    Every ``retry`` seconds (default: a third of ``ttl``) a node that does not hold the lease
    tries to claim it. Once it has, ``duty()`` starts as a task: a long-running loop (the
    directory-sync schedule, the pruning schedule, the push handover sweeper) or one pass
    (the fraud-mail resend, which then returns; the lease stays held, so no other node
    repeats it). While held, the lease is renewed every ``ttl / 3`` seconds. When a renewal
    says the lease is gone, or renewals have failed (database away) until the lease would
    have expired, the duty is cancelled at once: another node may hold it by then. A duty
    that raises is logged, its lease released, and it is tried again at the next claim.
    :meth:`close` cancels the duty and releases the lease.
    """

    def __init__(
        self,
        name: str,
        leases: LeaseClaims,
        duty: Callable[[], Coroutine[Any, Any, None]],
        *,
        ttl: float,
        retry: float | None = None,
        log: logging.Logger | None = None,
    ) -> None:
        if ttl <= 0:
            raise ValueError("a lease's ttl must be positive")
        self.name = name
        self._leases = leases
        self._duty = duty
        self._ttl = ttl
        self._renew_every = ttl / 3  # backend.domain.leases.renew_interval
        self._retry = self._renew_every if retry is None else retry
        self._log = log or logging.getLogger("openmfa.duties")
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        #: True while this node holds the lease (the duty runs or has done its pass).
        self.holding = False
        #: How many times the duty was started (once per lease acquired).
        self.runs = 0
        #: How many times the lease was lost while held (a renewal refused or too late).
        self.lost = 0
        #: How many claims this node has made (taken or refused).
        self.claims = 0
        self._held = asyncio.Event()

    async def wait_held(self) -> None:
        """Until this node holds the lease (tests; a caller that needs the duty running)."""
        await self._held.wait()

    async def start(self) -> None:
        """Start trying to claim the lease in the background."""
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"lease-{self.name}")

    async def close(self) -> None:
        """Stop: the duty is cancelled and the lease released (if held)."""
        self._stop.set()
        await stop_task(self._task)
        self._task = None

    async def _loop(self) -> None:
        while not self._stop.is_set():
            self.claims += 1
            try:
                got = await self._leases.claim(self.name, self._ttl)
            except Exception:  # the database away for a moment: try again at the next retry
                self._log.warning("lease %s: claim failed", self.name, exc_info=True)
                got = False
            if got:
                await self._hold()
            if await self._stopped_within(self._retry):
                return

    async def _stopped_within(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)
        return self._stop.is_set()

    async def _hold(self) -> None:
        """Run the duty while the lease is renewed; return once it is lost, released or the
        duty failed."""
        loop = asyncio.get_running_loop()
        expires = loop.time() + self._ttl  # our own view of the expiry: measured from before
        self.holding = True
        self.runs += 1
        self._held.set()
        self._log.info("lease %s: held; starting the duty", self.name)
        duty = loop.create_task(self._duty(), name=f"duty-{self.name}")
        stopping = loop.create_task(self._stop.wait())
        release = True
        try:
            while True:
                # A duty that has done its pass leaves only the stop to wait for.
                watched = {stopping} if duty.done() else {duty, stopping}
                await asyncio.wait(watched, timeout=self._renew_every, return_when=FIRST_COMPLETED)
                if self._stop.is_set():
                    return
                failure = duty.exception() if duty.done() and not duty.cancelled() else None
                if failure is not None:
                    self._log.error(
                        "lease %s: the duty failed; released", self.name, exc_info=failure
                    )
                    return
                asked = loop.time()
                try:
                    kept: bool | None = await self._leases.renew(self.name, self._ttl)
                except Exception:
                    self._log.warning("lease %s: renewal failed", self.name, exc_info=True)
                    kept = None
                if kept:
                    expires = asked + self._ttl
                    continue
                if kept is False or loop.time() + self._renew_every >= expires:
                    # Another node may take it now (or has): stop before doing anything twice.
                    self.lost += 1
                    release = kept is None  # still ours in the table, maybe: give it up
                    self._log.warning("lease %s: lost; the duty is stopped", self.name)
                    return
        finally:
            self.holding = False
            self._held.clear()
            stopping.cancel()
            duty.cancel()
            # Its failure, if any, was logged above; its cancellation is ours.
            await asyncio.gather(duty, stopping, return_exceptions=True)
            if release:
                try:
                    await self._leases.release(self.name)
                except Exception:  # it runs out on its own
                    self._log.warning("lease %s: release failed", self.name, exc_info=True)
