"""HTML error pages for the portal and the admin console.

backend/api/problems.py decides status, title and detail (and writes the audit row) for every
error; under ``/portal`` and ``/admin`` it hands them to :func:`error_page` (set on
``request.state.html_errors`` by the area middleware) instead of answering JSON.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from html import escape

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from backend.logs import request_id_var
from webportal.security import security_headers
from webportal.state import area_of, web_of

log = logging.getLogger("openmfa.web")

FRIENDLY = {
    403: "You may not do this",
    404: "Page not found",
    405: "Page not found",
    429: "Too many attempts",
    500: "Something went wrong on our side",
    503: "The service is unavailable",
}
# Headers of the original error worth keeping (405's Allow, 429's Retry-After).
KEPT = ("allow", "retry-after")


def _issuer(request: Request) -> str:
    services = getattr(request.app.state, "services", None)
    issuer = getattr(getattr(services, "settings", None), "issuer", None)
    return issuer if isinstance(issuer, str) else "OpenMFA"


async def error_page(
    request: Request,
    status: int,
    title: str,
    detail: str,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """Render ``error.html`` (plain HTML if even that fails); never a stack trace."""
    area = area_of(request)
    extra = {k: v for k, v in (headers or {}).items() if k.lower() in KEPT}
    extra.update(security_headers(request.scope))
    context = {
        "status": status,
        "heading": FRIENDLY.get(status, title) if status in (404, 405, 500, 503) else title,
        "detail": detail if detail and detail != title else "",
        "title": title,
        "area": area,
        "home": f"/{area}/",
        "request_id": request_id_var.get(),
        "user": None,
        "flashes": [],
        "csrf_token": "",
        "nav": [],
        "current_path": request.url.path,
        "issuer": _issuer(request),
    }
    try:
        html = web_of(request).templates.get_template("error.html").render(context)
    except Exception:
        log.error("the error template failed", exc_info=True)
        html = (
            f"<!doctype html><html lang=en><title>Error {status}</title>"
            f"<h1>{escape(str(context['heading']))}</h1><p>{escape(detail)}</p>"
            f'<p><a href="/{area}/">Back</a></p></html>'
        )
    return HTMLResponse(html, status_code=status, headers=extra)
