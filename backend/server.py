"""Run the backend under uvicorn, with a shutdown that answers long-poll waiters at once."""

from __future__ import annotations

import asyncio
import signal
import socket
from types import FrameType

import uvicorn
from starlette.applications import Starlette

from backend.app import create_app
from backend.config import Settings
from backend.logs import configure_logging
from backend.services import Services


class _Server(uvicorn.Server):
    """On SIGTERM / SIGINT, wake every long-poll waiter before uvicorn drains connections.

    uvicorn waits for open requests before it runs the lifespan shutdown, so a gateway
    long-polling for 55 s would hold the stop that long. Closing the outcome bus first answers
    those requests with the current (pending) state and lets the drain finish promptly.
    """

    def __init__(self, config: uvicorn.Config, app: Starlette) -> None:
        super().__init__(config)
        self._app = app
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if sig == signal.SIGTERM:
            # uvicorn re-raises captured signals once it has shut down, so the process would
            # die of SIGTERM (status 143 / -15). SIGTERM is how service managers stop us on
            # purpose: after the clean shutdown, exit 0 instead.
            self._captured_signals = [s for s in self._captured_signals if s != sig]
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._close_bus)

    def _close_bus(self) -> None:
        services = getattr(self._app.state, "services", None)
        if services is not None and self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(services.bus.close())


def check_startup(settings: Settings) -> None:
    """Open and close the services once, so a missing schema or server key is reported as a
    plain :class:`~backend.errors.OpenMFAError` (one clear line from the CLI) before uvicorn
    starts, instead of as a lifespan traceback and exit status 3."""

    async def check() -> None:
        services = await Services.open(settings)
        await services.close()

    asyncio.run(check())


def serve(settings: Settings) -> None:
    """Serve until stopped. Blocking."""
    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        lifespan="on",
        log_config=None,
        access_log=False,
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=max(1, int(settings.shutdown_grace_seconds)),
    )
    _Server(config, app).run()
