"""The portal's start page: the user's authenticators at a glance and what to do next."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from backend.domain.devices import can_answer_push
from webportal.auth import require_user
from webportal.portal.common import KINDS, policy_of
from webportal.routing import page
from webportal.state import services_of
from webportal.templating import render


async def home(request: Request) -> Response:
    """Overview of the signed-in user."""
    me = await require_user(request)
    devices = await services_of(request).devices.list_for_user(me.user.name)
    policy = await policy_of(request, me)
    context = {
        "me": me.user,
        "devices": devices,
        "kinds": KINDS,
        "active": [d for d in devices if d.state == "active"],
        "can_push": any(can_answer_push(d.kind, d.state) for d in devices),
        "needs_pin": policy.require_pin and not me.user.has_pin,
    }
    return await render(request, "portal/home.html", context)


routes = [page("/", home, name="portal_home")]
