"""The middleware of each page area (``/portal``, ``/admin``).

It puts the web state, the area and the HTML error renderer on ``request.state``, adds the
session cookie a handler started or ended, and turns :class:`~webportal.auth.SignInRequired`
into a redirect to the sign-in page.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.responses import RedirectResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from webportal.auth import SignInRequired
from webportal.errors import error_page
from webportal.state import Area, WebState


class AreaMiddleware:
    """Wraps the routes of one area."""

    def __init__(self, app: ASGIApp, web: WebState, area: Area) -> None:
        self.app = app
        self.web = web
        self.area = area

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # scope["state"] is this request's own copy (the server makes it per request), so
        # what is set here is seen by the handler and by the error handlers outside.
        state = scope.setdefault("state", {})
        state["web"] = self.web
        state["area"] = self.area
        state["html_errors"] = error_page
        started = False

        async def send_with_cookie(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                cookie = state.get("web_cookie")
                if cookie:
                    MutableHeaders(scope=message).append("set-cookie", cookie)
            await send(message)

        try:
            await self.app(scope, receive, send_with_cookie)
        except SignInRequired as exc:
            if started:
                raise
            response = RedirectResponse(exc.location, status_code=303)
            await response(scope, receive, send_with_cookie)
