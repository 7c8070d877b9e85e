"""What a page handler reaches through its request: the services, the web state, the area.

:class:`~webportal.middleware.AreaMiddleware` puts the per-application :class:`WebState` and
the area name on ``request.state`` for every request under ``/portal`` and ``/admin``; nothing
here is global.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import jinja2
from starlette.requests import Request

from backend.api.client_address import client_address as client_address  # for the pages
from backend.logs import request_id_var
from backend.services.context import Actor

if TYPE_CHECKING:
    from backend.services import Services

Area = Literal["portal", "admin"]


@dataclass(slots=True)
class WebState:
    """One per application (made by :func:`webportal.app.routes`)."""

    templates: jinja2.Environment


def services_of(request: Request) -> Services:
    """The container the lifespan opened."""
    services: Services = request.app.state.services
    return services


def web_of(request: Request) -> WebState:
    """The web state of this application."""
    web = getattr(request.state, "web", None)
    if not isinstance(web, WebState):
        raise RuntimeError("webportal pages must be served under webportal.app.routes()")
    return web


def area_of(request: Request) -> Area:
    """``portal`` or ``admin``: which part of the site the request is in."""
    area = getattr(request.state, "area", None)
    if area not in ("portal", "admin"):
        raise RuntimeError("webportal pages must be served under webportal.app.routes()")
    return "portal" if area == "portal" else "admin"


def web_actor(request: Request, name: str) -> Actor:
    """An audit actor for this request: ``portal:<user>``, ``admin:<user>`` or ``web:<area>``,
    naming the request's web session once it was loaded."""
    session = getattr(request.state, "web_session", None)
    session_id = getattr(session, "id_hash", "") if session is not None else ""
    return Actor(name, client_address(request)[:64], request_id_var.get(), str(session_id))
