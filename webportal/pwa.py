"""``/app/``: the installable web authenticator (static files in ``webportal/webapp/``).

The app is plain files (no build step); this module only serves them with the headers the
app's security rests on (docs/webapp.md, docs/security.md):

- a Content-Security-Policy stricter than the portal's: nothing but the app's own scripts,
  styles and API (``connect-src 'self'``), no inline code, no frames, no forms posting away;
- ``sw.js`` revalidated on every load (``no-cache``) so a fixed app reaches phones at once,
  with ``Service-Worker-Allowed`` limiting the worker to ``/app/``;
- no caching by shared caches, no referrer (the activation code is in the fragment, which
  browsers never send, but nothing else should leak either).

The app API (``/app/v1/...``) is routed before this mount, so these files never shadow it.
"""

from __future__ import annotations

from pathlib import Path

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from webportal.security import HSTS, is_https

WEBAPP = Path(__file__).resolve().parent / "webapp"

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; manifest-src 'self'; worker-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
    "cache-control": "no-cache",  # always revalidate (ETag): the service worker is the cache
}
SERVICE_WORKER = "sw.js"


class AppHeadersMiddleware:
    """Set :data:`HEADERS` on every response under ``/app/`` (and the worker's own)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in HEADERS.items():
                    headers[name] = value
                if path.endswith("/" + SERVICE_WORKER):
                    # The worker's scope is the folder it is served from (/app/, or under
                    # the site's path prefix), never wider.
                    headers["service-worker-allowed"] = path[: -len(SERVICE_WORKER)]
                if is_https(scope):
                    headers["strict-transport-security"] = HSTS
            await send(message)

        await self.app(scope, receive, send_with_headers)
