"""Small helpers for the server's background tasks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection


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
