"""Run a standalone bridge: the event loop (uvloop when installed), signals, and the optional
Prometheus endpoint (``--metrics-listen``) on a small uvicorn server in the same loop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import resource
import signal
import socket
from collections.abc import Callable, Iterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from radius_bridge.config import BridgeSettings
from radius_bridge.metrics import CONTENT_TYPE, BridgeMetrics
from radius_bridge.runner import Bridge, StartupError

__all__ = ["StartupError", "loop_factory", "metrics_app", "raise_file_limit", "run", "serve"]

log = logging.getLogger("openmfa.radius")

#: File descriptors beyond the held requests: sockets, the short-call pool, logs.
SPARE_FILES = 1024


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's loop when it is installed (uvicorn[standard] brings it), else asyncio's.

    Measured in DESIGN.md: a minimal RADIUS responder costs 26 µs per packet on uvloop
    against 59 µs on asyncio's default loop.
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def raise_file_limit(wanted: int) -> int:
    """Raise the soft limit of open files towards ``wanted`` (up to the hard limit): each
    held request keeps a long-poll connection to the backend. Returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return soft


def metrics_app(metrics: BridgeMetrics) -> Starlette:
    """``GET /metrics`` in Prometheus' text format, nothing else."""

    async def endpoint(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return Starlette(routes=[Route("/metrics", endpoint, methods=["GET"])])


class _MetricsServer(uvicorn.Server):
    """uvicorn without its own signal handling: the bridge's handlers stop everything."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(settings: BridgeSettings, stop: asyncio.Event | None = None) -> None:
    """Run until SIGTERM / SIGINT (or ``stop`` is set). Raises StartupError."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    limit = raise_file_limit(settings.max_held + settings.backend_connections + SPARE_FILES)
    if limit < settings.max_held + settings.backend_connections:
        log.warning(
            "open files are limited to %d: fewer than %d requests can be held at once "
            "(raise LimitNOFILE / ulimit -n)",
            limit,
            settings.max_held,
        )
    metrics_socket = None
    if settings.metrics_listen is not None:
        # Bound here, not by uvicorn, which would exit the process on a taken port.
        address = settings.metrics_listen
        family = socket.AF_INET6 if address.family_v6 else socket.AF_INET
        metrics_socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            metrics_socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            metrics_socket.bind((address.host, address.port))
        except OSError as exc:
            metrics_socket.close()
            raise StartupError(
                f"cannot serve metrics on TCP {address}: {exc.strerror or exc}"
            ) from exc
    bridge = Bridge(settings)
    try:
        await bridge.start()
    except BaseException:
        if metrics_socket is not None:
            metrics_socket.close()
        raise
    metrics_server: _MetricsServer | None = None
    metrics_task: asyncio.Task[None] | None = None
    try:
        if settings.metrics_listen is not None and metrics_socket is not None:
            config = uvicorn.Config(
                metrics_app(bridge.metrics),
                host=settings.metrics_listen.host,
                port=settings.metrics_listen.port,
                lifespan="off",
                log_config=None,
                access_log=False,
                server_header=False,
            )
            metrics_server = _MetricsServer(config)
            metrics_task = asyncio.create_task(metrics_server.serve(sockets=[metrics_socket]))
        # The start-up heap (modules, the client table: ~50,000 objects) lives as long as the
        # process: keep it out of every later full collection, which otherwise walks it
        # again in the middle of held requests' answers (as `openmfa run` does, see
        # backend/server.py freeze_startup_heap; measured in bench/bridge_channel.py).
        gc.collect()
        gc.freeze()
        await stop.wait()
        log.info("stopping the RADIUS bridge")
    finally:
        if metrics_server is not None and metrics_task is not None:
            metrics_server.should_exit = True
            await asyncio.gather(metrics_task, return_exceptions=True)
        await bridge.stop()


def run(settings: BridgeSettings) -> None:
    """Blocking: the bridge in its own event loop until stopped."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(serve(settings))
