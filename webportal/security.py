"""Security headers on every response under ``/portal``, ``/admin`` and ``/static``.

The Content-Security-Policy allows no inline script or style at all: pages load their CSS and
JavaScript from ``/static`` only, so an injected ``<script>`` or ``style=""`` does nothing even
if escaping ever failed somewhere.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"
)
BASE_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",  # invitation and bootstrap tokens live in URLs
    "x-frame-options": "DENY",
    "permissions-policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
    "cross-origin-opener-policy": "same-origin",
}
HSTS = "max-age=31536000"


def is_https(scope: Scope) -> bool:
    """Served over HTTPS: the request's scheme, or ``public_url`` (TLS ends at a proxy)."""
    if scope.get("scheme") == "https":
        return True
    app = scope.get("app")
    services = getattr(getattr(app, "state", None), "services", None)
    public_url = getattr(getattr(services, "settings", None), "public_url", "")
    return isinstance(public_url, str) and public_url.startswith("https://")


def security_headers(scope: Scope, pages: bool = True) -> dict[str, str]:
    """The headers for one response; ``pages``: also forbid caching (signed-in content)."""
    headers = dict(BASE_HEADERS)
    if pages:
        headers["cache-control"] = "no-store"
    else:
        headers["cache-control"] = "no-cache"  # static files: revalidate (ETag), no build step
    if is_https(scope):
        headers["strict-transport-security"] = HSTS
    return headers


class SecurityHeadersMiddleware:
    """Set :func:`security_headers` on every response of the wrapped app."""

    def __init__(self, app: ASGIApp, pages: bool = True) -> None:
        self.app = app
        self.pages = pages

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in security_headers(scope, self.pages).items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)
