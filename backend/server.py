"""Run the backend under uvicorn, with a shutdown that answers long-poll waiters at once, and
the built-in RADIUS bridge (UDP ``radius_port``) talking to the app in-process."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from backend.app import create_app
from backend.config import Settings
from backend.errors import ConfigurationError
from backend.logs import configure_logging
from backend.push.factory import push_summary
from backend.services import Services

if TYPE_CHECKING:  # the bridge is imported only when RADIUS is on
    from radius_bridge.config import BridgeSettings
    from radius_bridge.runner import Bridge

log = logging.getLogger("openmfa.server")


class _Server(uvicorn.Server):
    """On SIGTERM / SIGINT, wake every long-poll waiter before uvicorn drains connections.

    uvicorn waits for open requests before it runs the lifespan shutdown, so a gateway
    long-polling for 55 s would hold the stop that long. Closing the outcome bus first answers
    those requests with the current (pending) state and lets the drain finish promptly.

    With the built-in RADIUS bridge, the bridge starts once the lifespan has opened the
    services (it calls the app in-process) and stops before anything else: its held requests
    must not see the bus close (they would read "pending" as the push's end), and it must be
    gone before the lifespan closes the services under it.
    """

    def __init__(self, config: uvicorn.Config, app: Starlette, radius: _Radius | None) -> None:
        super().__init__(config)
        self._app = app
        self._radius = radius
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self._radius is not None and not self.should_exit:
            try:
                await self._radius.start(self._app)
            except Exception:
                log.exception("the RADIUS bridge did not start")
                self.should_exit = True
        if not self.should_exit:
            freeze_startup_heap()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await self._begin_closing()
        await super().shutdown(sockets)

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
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self._stop_then_wake())

    async def _begin_closing(self) -> None:
        self._close_bus()
        assert self._closing is not None  # noqa: S101 - set by _close_bus
        await asyncio.shield(self._closing)

    async def _stop_then_wake(self) -> None:
        if self._radius is not None:
            await self._radius.stop()
        services = getattr(self._app.state, "services", None)
        if services is not None:
            await services.bus.close()


class _Radius:
    """The bridge ``openmfa run`` hosts: UDP bound before uvicorn starts (a taken port is one
    clear error), the rest once the app's services are open."""

    TOKEN_NAME = "builtin-bridge"  # noqa: S105 - a name, not a secret

    def __init__(self, settings: Settings) -> None:
        from radius_bridge.config import ListenAddress
        from radius_bridge.metrics import BridgeMetrics
        from radius_bridge.runner import StartupError, bind_sockets

        self.settings = settings
        host, port = settings.resolved_radius_host, settings.radius_port
        # "::" means every address, as it does for the HTTP server (dual stack); the bridge's
        # IPv6 sockets are IPv6-only, so IPv4 gets a socket of its own.
        hosts = ("::", "0.0.0.0") if host == "::" else (host,)  # noqa: S104 - asked for
        self.addresses = tuple(ListenAddress(h, port) for h in hosts)
        self.metrics = BridgeMetrics()
        self._bridge: Bridge | None = None
        # Only the address matters here; the credential exists once the services are open.
        try:
            self.sockets = bind_sockets(self._bridge_settings("omfa_placeholder"))
        except StartupError as exc:
            raise ConfigurationError(
                f"{exc}; choose another port with --radius-port (0 turns RADIUS off)"
            ) from exc

    def _bridge_settings(self, token: str) -> BridgeSettings:
        from radius_bridge.config import BridgeSettings

        return BridgeSettings(
            backend_url="http://openmfa.internal",  # never resolved: the app is called in-process
            token=token,
            listen=self.addresses,
            long_poll_seconds=float(min(50, self.settings.long_poll_max_seconds)),
        )

    async def start(self, app: Starlette) -> None:
        import httpx

        from radius_bridge.runner import Bridge

        services = app.state.services
        token = services.tokens.register_ephemeral(self.TOKEN_NAME, "bridge")
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        bridge = Bridge(self._bridge_settings(token), transport=transport, metrics=self.metrics)
        await bridge.start(self.sockets)
        self._bridge = bridge

    async def stop(self) -> None:
        if self._bridge is not None:
            bridge, self._bridge = self._bridge, None
            await bridge.stop()

    def close_sockets(self) -> None:
        """Release the UDP sockets if the bridge never took them over."""
        if self._bridge is None:
            for sock in self.sockets.values():
                sock.close()

    def metrics_route(self) -> Route:
        """``GET /metrics``: the bridge's Prometheus metrics on the HTTP server."""
        from radius_bridge.metrics import CONTENT_TYPE

        async def endpoint(request: Request) -> Response:
            return Response(self.metrics.render(), media_type=CONTENT_TYPE)

        return Route("/metrics", endpoint, methods=["GET"])


def freeze_startup_heap() -> int:
    """Take what start-up built (modules, the services) out of every later garbage collection.

    It lives as long as the process, yet each full collection walked it again: ~48 ms every
    1.5 s under load, measured in bench/radius_bridge.py, which put those pauses into the
    tail of every request in flight. ``gc.freeze()`` is CPython's tool for exactly this.
    Returns how many objects were frozen.
    """
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("start-up heap set aside from garbage collection: %d objects", frozen)
    return frozen


def check_startup(settings: Settings) -> None:
    """Open and close the services once, so a missing schema or server key, or a bad push
    key file, is reported as a plain :class:`~backend.errors.OpenMFAError` (one clear line
    from the CLI) before uvicorn starts, instead of as a lifespan traceback and exit status 3."""

    async def check() -> None:
        services = await Services.open(settings, push=True, notify=False)
        await services.close()

    asyncio.run(check())


def serve(settings: Settings) -> None:
    """Serve until stopped. Blocking."""
    configure_logging(settings.log_level, settings.log_format)
    for line in push_summary(settings):  # which devices get pushes, which poll
        log.info(line)
    app = create_app(settings)
    # Each gateway long-poll (and each request the built-in bridge holds, standalone
    # bridges' long-polls included) is a connection: allow as many as the system does.
    from radius_bridge.server import raise_file_limit

    raise_file_limit(65536)
    radius = _Radius(settings) if settings.radius_port else None
    if radius is not None:
        app.router.routes.append(radius.metrics_route())
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
    try:
        _Server(config, app, radius).run()
    finally:
        if radius is not None:
            radius.close_sockets()
