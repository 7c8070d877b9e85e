"""``create_app(settings)``: routes, middleware, error handlers and the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect

from backend.api import app_v1, bridge_v1, channel_v1, gateway_v1, health, openapi, pipush_v1
from backend.api.client_address import ForwardedClientMiddleware
from backend.api.middleware import RequestIdMiddleware
from backend.api.problems import client_gone, http_error, openmfa_error, unexpected_error
from backend.config import Settings
from backend.errors import OpenMFAError
from backend.metrics import BackendMetrics
from backend.services import Services
from backend.services.context import Clock
from backend.services.directory_sync import SyncSchedule
from backend.services.retention import PruneDuty, Pruner
from backend.store.tables import now
from webportal.app import routes as web_routes


def _proxies(settings: Settings) -> list[Middleware]:
    # Outermost, so the access log and everything after it see the forwarded client.
    if not settings.trusted_proxies:
        return []
    return [
        Middleware(
            ForwardedClientMiddleware,
            trusted=settings.trusted_networks,
            header=settings.trusted_proxy_header,
        )
    ]


def create_app(settings: Settings, clock: Clock = now) -> Starlette:
    """The backend's ASGI application. Resources open in the lifespan, not at import.

    Its metrics (``app.state.metrics``, one registry per app) are served by ``openmfa run``
    on ``metrics_listen``, never on the app's own routes."""
    metrics = BackendMetrics()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        services = await Services.open(settings, clock=clock)
        app.state.services = services
        metrics.attach(services)
        schedule = SyncSchedule(services.directory_sync)
        await schedule.start()
        pruner = Pruner.from_settings(services.db, services.audit, clock, settings)
        pruning = PruneDuty(pruner, settings.retention_interval_minutes * 60.0)
        await pruning.start()
        try:
            yield
        finally:
            await pruning.close()  # both before the services they use
            await schedule.close()
            metrics.detach()
            await services.close()

    app = Starlette(
        routes=[
            *health.routes,
            *openapi.routes,
            *app_v1.routes,
            *gateway_v1.routes,
            *bridge_v1.routes,
            *channel_v1.routes,  # the bridges' wait channel (WebSocket)
            *pipush_v1.routes,  # the privacyIDEA Authenticator (docs/apps.md)
            *web_routes(),  # /portal, /admin, /static (docs/portal.md)
        ],
        middleware=[*_proxies(settings), Middleware(RequestIdMiddleware, metrics=metrics)],
        exception_handlers={
            OpenMFAError: openmfa_error,
            HTTPException: http_error,
            ClientDisconnect: client_gone,
            Exception: unexpected_error,
        },
        lifespan=lifespan,
    )
    app.state.metrics = metrics
    return app
