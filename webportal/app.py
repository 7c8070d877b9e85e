"""``routes()``: the portal, the admin console and their static files, for create_app."""

from __future__ import annotations

from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from webportal import admin, portal, pwa
from webportal.middleware import AreaMiddleware
from webportal.security import SecurityHeadersMiddleware
from webportal.state import WebState
from webportal.templating import make_environment

STATIC = Path(__file__).resolve().parent / "static"


class _StaticFiles(StaticFiles):
    """StaticFiles whose 404 and 405 are responses, not exceptions: an exception would pass
    the security-headers middleware of the mount by and leave without its headers."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        try:
            return await super().get_response(path, scope)
        except HTTPException as exc:
            return PlainTextResponse(exc.detail, exc.status_code, headers=exc.headers)


def routes() -> list[BaseRoute]:
    """Mounts for ``/portal``, ``/admin``, ``/static`` and ``/app`` (the web app); one
    :class:`WebState` shared by both areas of this application (its template cache and
    sign-in rate limiter)."""
    web = WebState(templates=make_environment())
    return [
        Mount(
            "/portal",
            routes=portal.routes,
            middleware=[
                Middleware(SecurityHeadersMiddleware),
                Middleware(AreaMiddleware, web=web, area="portal"),
            ],
        ),
        Mount(
            "/admin",
            routes=admin.routes,
            middleware=[
                Middleware(SecurityHeadersMiddleware),
                Middleware(AreaMiddleware, web=web, area="admin"),
            ],
        ),
        Mount(
            "/static",
            app=_StaticFiles(directory=STATIC),
            name="static",
            middleware=[Middleware(SecurityHeadersMiddleware, pages=False)],
        ),
        Mount(  # the web authenticator (docs/webapp.md); /app/v1 (the API) is routed first
            "/app",
            app=_StaticFiles(directory=pwa.WEBAPP, html=True),
            name="webapp",
            middleware=[Middleware(pwa.AppHeadersMiddleware)],
        ),
    ]
