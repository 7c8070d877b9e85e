"""``routes()``: the portal, the admin console and their static files, for create_app."""

from __future__ import annotations

import re
from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Match, Mount
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


#: The app API's namespace (``/app/v1``, and any later version) inside the web app's mount.
_APP_API = re.compile(r"/app/v[0-9]+(?:/.*)?")


class _WebAppMount(Mount):
    """The web app's files at ``/app``, except the app API's namespace: an unknown or
    wrongly-called ``/app/v1/...`` stays the API's (a problem document, 405 with ``Allow``),
    never the web app's plain-text 404."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        path: str = scope.get("path", "")
        root: str = scope.get("root_path", "")
        if _APP_API.fullmatch(path.removeprefix(root)):
            return Match.NONE, {}
        return super().matches(scope)


def routes() -> list[BaseRoute]:
    """Mounts for ``/portal``, ``/admin``, ``/static`` and ``/app`` (the web app); one
    :class:`WebState` shared by both areas of this application (its template cache)."""
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
        _WebAppMount(  # the web authenticator (docs/webapp.md); /app/v1 is the API's
            "/app",
            app=_StaticFiles(directory=pwa.WEBAPP, html=True),
            name="webapp",
            middleware=[Middleware(pwa.AppHeadersMiddleware)],
        ),
    ]
