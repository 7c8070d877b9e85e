"""Run the backend under uvicorn, with a shutdown that answers long-poll waiters at once, and
the built-in RADIUS bridge (UDP ``radius_port``) talking to the app in-process."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import signal
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from backend.api import channel_v1
from backend.app import create_app
from backend.config import Settings
from backend.errors import ConfigurationError
from backend.http_limits import HttpLimits, HttpMetrics, protocol_class
from backend.logs import configure_logging
from backend.metrics import BackendMetrics
from backend.push.factory import push_summary
from backend.services import Services
from backend.tls import ServerTls

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

    def __init__(
        self,
        config: uvicorn.Config,
        app: Starlette,
        radius: _Radius | None,
        metrics: _MetricsServer | None = None,
        tls: ServerTls | None = None,
        handshake_seconds: float = 10.0,
    ) -> None:
        super().__init__(config)
        self._handshake_seconds = handshake_seconds
        self._app = app
        self._radius = radius
        self._metrics = metrics
        self._tls = tls
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        # SIGHUP would end the process by default; a service manager sends it to reload
        # (systemd's ExecReload), so it never stops the server, with or without TLS.
        # Signals reach the main thread only (uvicorn skips its own handlers elsewhere too).
        hup = threading.current_thread() is threading.main_thread()
        if hup:
            self._loop.add_signal_handler(signal.SIGHUP, self._reload)
        try:
            await super().serve(sockets)
        finally:
            if hup:
                self._loop.remove_signal_handler(signal.SIGHUP)

    def _reload(self) -> None:
        if self._tls is not None:
            self._tls.reload()
        else:
            log.info("SIGHUP: nothing to reload (HTTPS is not served: no tls_cert_file)")

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        if self._tls is None:
            await super().startup(sockets)
        else:
            async with _handshake_timeout(self._handshake_seconds):
                await super().startup(sockets)
        if self._radius is not None and not self.should_exit:
            try:
                await self._radius.start(self._app)
            except Exception:
                log.exception("the RADIUS bridge did not start")
                self.should_exit = True
        if self._metrics is not None and not self.should_exit:
            self._metrics.start()
        if not self.should_exit:
            freeze_startup_heap()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await self._begin_closing()
        if self._metrics is not None:
            await self._metrics.stop()
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


@contextlib.asynccontextmanager
async def _handshake_timeout(seconds: float) -> AsyncIterator[None]:
    """While uvicorn creates its listeners, give them a TLS handshake deadline.

    uvicorn calls ``loop.create_server`` without ``ssl_handshake_timeout``, so a connection
    that never sends its ClientHello was held for asyncio's 60 s, and is not yet counted
    against ``http_max_connections`` (the protocol sees it only after the handshake). The
    handshake gets the time a plain request has to arrive (``http_request_timeout_seconds``).
    Only this loop's method is wrapped, and only during start-up.
    """
    loop = asyncio.get_running_loop()
    loop.create_server = functools.partial(  # type: ignore[method-assign]
        loop.create_server, ssl_handshake_timeout=seconds
    )
    try:
        yield
    finally:
        del loop.create_server


class _Radius:
    """The bridge ``openmfa run`` hosts: UDP bound before uvicorn starts (a taken port is one
    clear error), the rest once the app's services are open."""

    TOKEN_NAME = "builtin-bridge"  # noqa: S105 - a name, not a secret

    def __init__(self, settings: Settings) -> None:
        from backend.config import radsec_addresses
        from radius_bridge.config import ListenAddress
        from radius_bridge.metrics import BridgeMetrics
        from radius_bridge.radsec import TlsSetupError
        from radius_bridge.runner import (
            StartupError,
            bind_radsec_sockets,
            bind_sockets,
            radsec_context,
        )

        self.settings = settings
        host, port = settings.resolved_radius_host, settings.radius_port
        # "::" means every address, as it does for the HTTP server (dual stack); the bridge's
        # IPv6 sockets are IPv6-only, so IPv4 gets a socket of its own.
        hosts = ("::", "0.0.0.0") if host == "::" else (host,)  # noqa: S104 - asked for
        self.addresses = tuple(ListenAddress(h, port) for h in hosts)
        self.radsec_addresses = radsec_addresses(settings.radius_radsec_listen)
        self.metrics = BridgeMetrics()
        self._bridge: Bridge | None = None
        # Only the address matters here; the credential exists once the services are open.
        try:
            self.sockets = bind_sockets(self._bridge_settings("omfa_placeholder"))
        except StartupError as exc:
            raise ConfigurationError(
                f"{exc}; choose another port with --radius-port (0 turns RADIUS off)"
            ) from exc
        self.radsec_sockets: dict[ListenAddress, socket.socket] = {}
        if self.radsec_addresses:
            # The certificate, key and CA are loaded once here so that a bad file is one
            # clear line at start-up, not an error once the server runs.
            try:
                radsec_context(self._bridge_settings("omfa_placeholder"))
            except TlsSetupError as exc:
                self.close_sockets()
                raise ConfigurationError(str(exc)) from exc
        try:
            self.radsec_sockets = bind_radsec_sockets(self._bridge_settings("omfa_placeholder"))
        except StartupError as exc:
            self.close_sockets()
            raise ConfigurationError(
                f"{exc}; change radius_radsec_listen (empty turns RadSec off)"
            ) from exc

    def _bridge_settings(self, token: str) -> BridgeSettings:
        from radius_bridge.config import BridgeSettings

        return BridgeSettings(
            # Never resolved: the app is called in-process, on this node only (its own node
            # is the one backend an in-process bridge needs).
            backend_urls=("http://openmfa.internal",),
            token=token,
            listen=self.addresses,
            long_poll_seconds=float(min(50, self.settings.long_poll_max_seconds)),
            radsec_listen=self.radsec_addresses,
            radsec_cert_file=self.settings.radius_radsec_cert_file,
            radsec_key_file=self.settings.radius_radsec_key_file,
            radsec_client_ca_file=self.settings.radius_radsec_client_ca_file,
        )

    async def start(self, app: Starlette) -> None:
        import httpx

        from radius_bridge.runner import Bridge

        services = app.state.services
        token = services.tokens.register_ephemeral(self.TOKEN_NAME, "bridge")
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        bridge = Bridge(self._bridge_settings(token), transport=transport, metrics=self.metrics)
        await bridge.start(self.sockets, self.radsec_sockets)
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
            for tcp in self.radsec_sockets.values():
                tcp.close()


class _MetricsServer:
    """``GET /metrics`` (Prometheus) on a listener of its own (``metrics_listen``), never on
    the public port: the figures name RADIUS clients and show the load, which is nobody's
    business outside (issue 13, finding 14)."""

    def __init__(
        self,
        sock: socket.socket,
        http: HttpMetrics,
        radius: _Radius | None,
        limits: HttpLimits,
        backend: BackendMetrics,
    ) -> None:
        from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

        async def endpoint(request: Request) -> Response:
            text = generate_latest(http.registry) + backend.render()
            if radius is not None:
                text += radius.metrics.render()
            return Response(text, media_type=CONTENT_TYPE_LATEST)

        app = Starlette(routes=[Route("/metrics", endpoint, methods=["GET"])])
        config = uvicorn.Config(
            app,
            http=protocol_class(limits, http),  # internal, but held to the same limits
            ws="none",
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
        )
        self._server = _QuietServer(config)
        self._socket = sock
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._server.serve(sockets=[self._socket])
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._server.should_exit = True
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


class _QuietServer(uvicorn.Server):
    """uvicorn without signal handling of its own: the main server's handlers stop it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Listeners:
    """Every socket ``openmfa run`` serves on, bound before anything else happens.

    :func:`claim_listeners` binds them before the database is opened, so a second
    ``openmfa run`` on busy ports stops with one clear line and changes nothing (it used to
    print a new bootstrap link first, which invalidated the running server's).
    """

    def __init__(
        self,
        http: list[socket.socket],
        radius: _Radius | None,
        metrics: socket.socket | None,
        tls: ServerTls | None = None,
    ) -> None:
        self.http = http
        self.radius = radius
        self.metrics = metrics
        self.tls = tls

    def close(self) -> None:
        """Release whatever was not handed over to a running server."""
        for sock in self.http:
            sock.close()
        if self.metrics is not None:
            self.metrics.close()
        if self.radius is not None:
            self.radius.close_sockets()


def _bind_tcp(host: str, port: int, what: str, hint: str) -> list[socket.socket]:
    """Bound (not yet listening) TCP sockets for ``host``, as asyncio would bind them: one
    per address the host resolves to, IPv6 ones IPv6-only."""
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError as exc:
        raise ConfigurationError(f"cannot listen for {what} on {host!r}: {exc}") from exc
    bound: list[socket.socket] = []
    seen: set[tuple[int, object]] = set()
    for family, kind, proto, _, address in infos:
        if (family, address) in seen:
            continue
        seen.add((family, address))
        sock = socket.socket(family, kind, proto)
        bound.append(sock)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
        except OSError as exc:
            for each in bound:
                each.close()
            shown = f"[{address[0]}]" if family == socket.AF_INET6 else address[0]
            raise ConfigurationError(
                f"cannot listen for {what} on TCP {shown}:{port}: {exc.strerror or exc}; {hint}"
            ) from exc
    return bound


def claim_listeners(settings: Settings) -> Listeners:
    """Load the TLS certificate and key (when HTTPS is asked for), bind the HTTP port, the
    RADIUS UDP port(s) and the metrics port, or raise :class:`ConfigurationError` naming the
    file that is wrong or the port that is taken (nothing is left bound)."""
    tls = (
        ServerTls(settings.tls_cert_file, settings.tls_key_file) if settings.tls_cert_file else None
    )
    http = _bind_tcp(
        settings.host,
        settings.port,
        "HTTP",
        "is another `openmfa run` using it? Stop it, or choose another port with --port",
    )
    radius: _Radius | None = None
    metrics: list[socket.socket] = []
    try:
        if settings.radius_port:
            radius = _Radius(settings)
        address = settings.metrics_address
        if address is not None:
            metrics = _bind_tcp(
                address[0], address[1], "metrics", "choose another metrics_listen address"
            )
    except BaseException:
        for sock in http:
            sock.close()
        if radius is not None:
            radius.close_sockets()
        raise
    return Listeners(http, radius, metrics[0] if metrics else None, tls)


def _tls_factory(
    tls: ServerTls,
) -> Callable[[uvicorn.Config, Callable[[], ssl.SSLContext]], ssl.SSLContext]:
    """uvicorn's hook for a context of our own: the one :class:`ServerTls` swaps behind."""

    def factory(config: uvicorn.Config, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        return tls.context

    return factory


def http_limits(settings: Settings) -> HttpLimits:
    """The HTTP server's limits from the settings; connections within the open-files limit."""
    from radius_bridge.server import raise_file_limit

    # Each gateway long-poll (and each request a standalone bridge holds) is a connection:
    # allow as many as the system does.
    files = raise_file_limit(max(65536, settings.http_max_connections + 1024))
    connections = min(settings.http_max_connections, max(64, files - 1024))
    if connections < settings.http_max_connections:
        # Only a limit the operator asked for is worth a warning; the default's is routine.
        asked = "http_max_connections" in settings.model_fields_set
        log.log(
            logging.WARNING if asked else logging.INFO,
            "open files are limited to %d: at most %d HTTP connections at once "
            "(raise LimitNOFILE / ulimit -n)",
            files,
            connections,
        )
    return HttpLimits(
        max_header_bytes=settings.http_max_header_bytes,
        max_headers=settings.http_max_headers,
        request_timeout_seconds=settings.http_request_timeout_seconds,
        max_connections=connections,
    )


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


def serve(settings: Settings, listeners: Listeners | None = None) -> None:
    """Serve until stopped, on ``listeners`` (claimed here if not given). Blocking."""
    configure_logging(settings.log_level, settings.log_format)
    listeners = listeners or claim_listeners(settings)
    try:
        for line in push_summary(settings):  # which devices get pushes, which poll
            log.info(line)
        app = create_app(settings)
        http_metrics = HttpMetrics()
        limits = http_limits(settings)
        radius, tls = listeners.radius, listeners.tls
        metrics = (
            _MetricsServer(listeners.metrics, http_metrics, radius, limits, app.state.metrics)
            if listeners.metrics is not None
            else None
        )
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            http=protocol_class(limits, http_metrics),
            # The one WebSocket route is the bridges' wait channel (backend.api.channel_v1);
            # its frames are bounded there, and here a little above that.
            ws="websockets-sansio",
            ws_max_size=channel_v1.MAX_FRAME + 4096,
            lifespan="on",
            log_config=None,
            access_log=False,
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=max(1, int(settings.shutdown_grace_seconds)),
            ssl_context_factory=_tls_factory(tls) if tls is not None else None,
        )
        for sock in listeners.http:
            host, port = sock.getsockname()[:2]
            shown = f"[{host}]" if sock.family == socket.AF_INET6 else host
            log.info("serving %s on %s:%d", "HTTPS" if tls else "HTTP", shown, port)
        if tls is not None:
            log.info("TLS certificate: %s (SIGHUP reloads it)", tls.describe())
        if listeners.metrics is not None:
            host, port = listeners.metrics.getsockname()[:2]
            log.info("serving Prometheus metrics on http://%s:%d/metrics", host, port)
        _Server(
            config, app, radius, metrics, tls, handshake_seconds=limits.request_timeout_seconds
        ).run(sockets=listeners.http)
    finally:
        listeners.close()
