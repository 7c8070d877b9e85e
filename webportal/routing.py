"""``page()``: how every route of the portal and the admin console is declared.

It checks the CSRF token (:func:`webportal.csrf.check_csrf`) before the handler runs on any
method but GET/HEAD/OPTIONS. tests/test_web_core.py walks every route under ``/portal`` and
``/admin`` and fails for one not made by ``page()``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from webportal.csrf import SAFE_METHODS, UPLOAD_BYTES, check_csrf

Handler = Callable[[Request], Awaitable[Response]]
CSRF_MARK = "__openmfa_csrf_checked__"


def page(
    path: str,
    handler: Handler,
    methods: Sequence[str] = ("GET",),
    name: str | None = None,
    upload_bytes: int = 0,
) -> Route:
    """A route whose unsafe methods must carry the session's CSRF token.

    ``upload_bytes``: the route takes one uploaded file and a form of up to this many bytes
    (the console's CSV import); other forms take no file and ``max_body_bytes``."""

    async def guarded(request: Request) -> Response:
        if not upload_bytes:
            if request.method not in SAFE_METHODS:
                await check_csrf(request)
            return await handler(request)
        request.scope[UPLOAD_BYTES] = upload_bytes
        try:
            if request.method not in SAFE_METHODS:
                await check_csrf(request)
            return await handler(request)
        finally:
            await request.close()  # the spooled upload, refused or not

    guarded.__name__ = handler.__name__
    guarded.__doc__ = handler.__doc__
    setattr(guarded, CSRF_MARK, True)
    return Route(path, guarded, methods=list(methods), name=name or handler.__name__)


def is_page(route: object) -> bool:
    """True for a route made by :func:`page`."""
    return isinstance(route, Route) and bool(getattr(route.endpoint, CSRF_MARK, False))
