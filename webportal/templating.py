"""One Jinja2 environment (autoescaping everything) and :func:`render`, which every page uses.

``render`` adds what ``base.html`` needs: the signed-in user, the CSRF token (for anonymous
visitors one tied to a pre-session cookie: a page view writes no session row), flash
messages, the area's navigation and, in the admin console, whether the admin still lacks a
second factor.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse

from backend.services.web_sessions import WebSessionRecord
from backend.store.queries import UserRecord
from webportal.device_labels import platform_label, push_state
from webportal.sessions import csrf_token, current_session
from webportal.state import area_of, services_of, web_of

NavItem = tuple[str, str]  # (label, path)
TEMPLATES = Path(__file__).resolve().parent / "templates"


def make_environment() -> jinja2.Environment:
    """The environment of the package's templates (autoescape on for every template)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = when
    env.filters["platform_label"] = platform_label
    env.filters["push_state"] = push_state
    return env


def when(value: datetime | None) -> str:
    """A timestamp as people read it (UTC, minutes), or a dash."""
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M UTC")


def signed_in_user(session: WebSessionRecord | None) -> UserRecord | None:
    """The user the page may show as signed in (admins: only after the second step)."""
    if session is None or session.user is None:
        return None
    if session.kind == "admin" and not session.second_factor_done:
        return None
    return session.user


def _nav(request: Request) -> list[NavItem]:
    # Imported here: the areas' packages import this module for render().
    if area_of(request) == "admin":
        from webportal.admin import NAV as ADMIN_NAV

        return list(ADMIN_NAV)
    from webportal.portal import NAV as PORTAL_NAV

    return list(PORTAL_NAV)


async def render(
    request: Request,
    template: str,
    context: Mapping[str, Any] | None = None,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
) -> HTMLResponse:
    """Render ``template`` with ``context`` plus the page basics (see the module doc)."""
    services = services_of(request)
    session = await current_session(request)
    flashes = []
    if session is not None and session.has_flash:
        flashes = await services.web_sessions.take_flash(session.id_hash)
    user = signed_in_user(session)
    area = area_of(request)
    page = {
        "area": area,
        "user": user,
        "csrf_token": await csrf_token(request),
        "flashes": flashes,
        "nav": _nav(request) if user is not None else [],
        "current_path": request.url.path,
        "issuer": services.settings.issuer,
        **(context or {}),
    }
    html = web_of(request).templates.get_template(template).render(page)
    return HTMLResponse(html, status_code=status, headers=dict(headers or {}))
