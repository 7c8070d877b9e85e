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
from backend.domain.leases import DIRECTORY_SYNC, FRAUD_MAIL, RETENTION
from backend.errors import OpenMFAError
from backend.metrics import BackendMetrics
from backend.services import Services
from backend.services.context import Clock
from backend.services.directory_sync import SyncSchedule
from backend.services.retention import PruneDuty, Pruner
from backend.store.tables import now
from backend.tasks import LeasedDuty
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


def _duties(services: Services, clock: Clock) -> list[LeasedDuty]:
    """What runs on one node at a time, each under its lease (docs/operations.md, "Several
    nodes"): a node holds a lease while it is alive and renews it, another node takes over
    once it stops renewing (at once when it stops cleanly)."""
    settings = services.settings
    leases = services.leases
    if leases is None:
        raise RuntimeError("the app's services hold leases (Services.open(node=True))")
    ttl = settings.node_timeout_seconds
    retry = settings.node_heartbeat_seconds
    schedule = SyncSchedule(services.directory_sync)
    pruner = Pruner.from_settings(services.db, services.audit, clock, settings)
    pruning = PruneDuty(pruner, settings.retention_interval_minutes * 60.0)
    duties = [LeasedDuty(DIRECTORY_SYNC, leases, schedule.run, ttl=ttl, retry=retry)]
    if settings.retention_interval_minutes > 0:  # 0: only `openmfa prune` prunes
        duties.append(LeasedDuty(RETENTION, leases, pruning.run, ttl=ttl, retry=retry))
    mailer = services.fraud_mailer
    if mailer is not None:

        async def resend() -> None:
            await mailer.resend_pending()

        # Resends what an earlier or a dead node left pending, once per lease taken.
        duties.append(LeasedDuty(FRAUD_MAIL, leases, resend, ttl=ttl, retry=retry))
    if services.handover is not None:
        # Sends the pushes a dead node (or a command) left unsent (docs/push.md).
        duties.append(services.handover.leased(leases, ttl=ttl, retry=retry))
    return duties


def create_app(settings: Settings, clock: Clock = now) -> Starlette:
    """The backend's ASGI application. Resources open in the lifespan, not at import.

    Its metrics (``app.state.metrics``, one registry per app) are served by ``openmfa run``
    on ``metrics_listen``, never on the app's own routes."""
    metrics = BackendMetrics()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        services = await Services.open(settings, clock=clock, node=True)
        app.state.services = services
        metrics.attach(services)
        duties = _duties(services, clock)
        app.state.duties = duties
        for duty in duties:
            await duty.start()
        try:
            yield
        finally:
            for duty in duties:  # before the services they use
                await duty.close()
            metrics.detach()
            await services.close()  # the node stops: its leases are released

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
