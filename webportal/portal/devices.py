"""``/portal/devices``: the user's own authenticators: list, rename, remove, mark lost.

Removing and marking lost each have a confirmation page (a GET that changes nothing) before
the POST that acts, so they work the same without script and with the keyboard. Every id in
a URL is checked to be the user's own (:func:`own_device`: 404 otherwise); the services write
the audit rows with the user as actor.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from backend.domain.stepup import FactorAction
from backend.errors import BadRequest
from backend.services.devices import LOST, MAX_DEVICE_NAME
from webportal.auth import require_user
from webportal.device_labels import platform_label, push_state
from webportal.forms import field
from webportal.portal.common import KINDS, STATES, own_device, push_summary
from webportal.portal.stepup import gate, proof_of, step_up_url
from webportal.routing import page
from webportal.sessions import flash
from webportal.state import services_of
from webportal.templating import render

DEVICES = "/portal/devices"


async def devices(request: Request) -> Response:
    """The list (removed devices are not shown; lost ones are, marked)."""
    me = await require_user(request)
    listed = await services_of(request).devices.list_for_user(me.user.name, include_removed=True)
    rows = [
        {
            "device": d,
            "kind": KINDS.get(d.kind, d.kind),
            "state": STATES.get(d.state, d.state),
            "platform": platform_label(d.platform) if d.platform else "",
            "push": push_summary(d),
            "push_state": state.state if (state := push_state(d)) is not None else "",
            "lost": d.state == LOST,
        }
        for d in listed
        if d.state != "removed"
    ]
    # Without a fresh step-up the rename form would only be refused: offer the step-up.
    decision = await services_of(request).factors.decide(
        proof_of(me), FactorAction.RENAME_DEVICE, me.user.name
    )
    context = {
        "rows": rows,
        "max_name": MAX_DEVICE_NAME,
        "can_change": decision.allowed,
        "step_up": step_up_url(DEVICES),
    }
    return await render(request, "portal/devices.html", context)


async def rename(request: Request) -> Response:
    """POST: a new name for one of the user's devices."""
    me = await require_user(request)
    device = await own_device(request, me, request.path_params["device_id"])
    name = await field(request, "name", 512)
    try:
        renamed = await services_of(request).devices.rename(
            me.actor, proof_of(me), device.id, name, user_name=me.user.name
        )
    except BadRequest as exc:
        await flash(request, f"The name was not changed: {exc.detail}.", "error")
        return RedirectResponse(DEVICES, status_code=303)
    await flash(request, f"Renamed to “{renamed.name}”.", "success")
    return RedirectResponse(DEVICES, status_code=303)


async def remove(request: Request) -> Response:
    """GET: "remove this device?"; POST: remove it."""
    me = await require_user(request)
    device = await own_device(request, me, request.path_params["device_id"])
    if request.method == "GET":
        return await gate(request, me, FactorAction.REMOVE_DEVICE, device.id) or await render(
            request, "portal/device_confirm.html", {"device": device, "act": "remove"}
        )
    await services_of(request).devices.remove(
        me.actor, proof_of(me), device.id, user_name=me.user.name
    )
    await flash(
        request,
        f"“{device.name}” is removed; it can no longer approve sign-ins. "
        "Delete the account in the app on that phone too.",
        "success",
    )
    return RedirectResponse(DEVICES, status_code=303)


async def lost(request: Request) -> Response:
    """GET: "mark this device lost?"; POST: mark it (it can no longer answer or give codes)."""
    me = await require_user(request)
    device = await own_device(request, me, request.path_params["device_id"])
    if device.state == LOST:
        await flash(request, f"“{device.name}” is already marked lost.", "info")
        return RedirectResponse(DEVICES, status_code=303)
    if request.method == "GET":
        return await gate(request, me, FactorAction.MARK_LOST, device.id) or await render(
            request, "portal/device_confirm.html", {"device": device, "act": "lost"}
        )
    await services_of(request).devices.mark_lost(
        me.actor, proof_of(me), device.id, user_name=me.user.name
    )
    await flash(
        request,
        f"“{device.name}” is marked lost: it can no longer approve sign-ins or give codes that "
        "work. Activate your new phone to keep signing in.",
        "success",
    )
    return RedirectResponse(DEVICES, status_code=303)


routes = [
    page("/devices", devices, name="portal_devices"),
    page("/devices/{device_id}/rename", rename, methods=["POST"], name="portal_device_rename"),
    page(
        "/devices/{device_id}/remove", remove, methods=["GET", "POST"], name="portal_device_remove"
    ),
    page("/devices/{device_id}/lost", lost, methods=["GET", "POST"], name="portal_device_lost"),
]
