"""``/portal/oath``: a standard OATH app (Google Authenticator, FreeOTP, Aegis, ...).

POST makes a pending OATH token and shows its ``otpauth://`` QR code and secret, once (the
secret is not kept anywhere the portal could show it again). The user types the app's current
code to confirm: :meth:`OtpService.verify` accepts it (replay protection and failure lockout
as for any code) and that accepted code is what makes the token ``active``. A wrong code
leaves it pending; "start over" removes it.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from backend.domain.stepup import FactorAction
from backend.errors import FactorChangeRefused, NotFound, OpenMFAError, OtpLocked
from backend.services.context import SignInContext
from backend.services.devices import DeviceRecord
from webportal.auth import SignedIn, require_user
from webportal.forms import field
from webportal.portal.common import own_device, qr_data_uri
from webportal.portal.stepup import gate, proof_of
from webportal.routing import page
from webportal.sessions import flash
from webportal.state import client_address, services_of
from webportal.templating import render

CONFIRM_CLIENT = "portal OATH confirmation"


def _grouped(seed: str) -> str:
    """The base32 secret in groups of four, as people type it."""
    return " ".join(seed[i : i + 4] for i in range(0, len(seed), 4))


async def oath(request: Request) -> Response:
    """GET: what this is. POST: a new pending token with its QR code and the confirm form."""
    me = await require_user(request)
    if request.method == "GET":
        return await gate(request, me, FactorAction.ENROL_OATH) or await render(
            request, "portal/oath.html", {"enrolment": None, "error": ""}
        )
    name = " ".join((await field(request, "name", 128)).split())
    services = services_of(request)
    try:
        enrolment = await services.activation.enrol_oath(me.actor, proof_of(me), me.user.name, name)
    except FactorChangeRefused:
        raise  # 403 and audited: a POST that skipped the step-up
    except OpenMFAError as exc:
        message = exc.detail[:1].upper() + exc.detail[1:] + "."
        return await render(
            request, "portal/oath.html", {"enrolment": None, "error": message}, exc.status
        )
    context = {
        "enrolment": enrolment,
        "qr": qr_data_uri(enrolment.uri),
        "secret": _grouped(enrolment.seed),
        "error": "",
    }
    return await render(request, "portal/oath.html", context)


async def _pending_oath(request: Request, me: SignedIn) -> DeviceRecord:
    device = await own_device(request, me, request.path_params["device_id"])
    if device.kind != "oath":
        raise NotFound("no such device")
    return device


async def _confirm_page(
    request: Request, device: DeviceRecord, error: str, status: int
) -> Response:
    return await render(
        request, "portal/oath_confirm.html", {"device": device, "error": error}, status
    )


async def confirm(request: Request) -> Response:
    """POST: the app's current code; an accepted one activates the token."""
    me = await require_user(request)
    device = await _pending_oath(request, me)
    if device.state == "active":
        await flash(request, f"“{device.name}” is already confirmed.", "info")
        return RedirectResponse("/portal/devices", status_code=303)
    if device.state != "pending":
        raise NotFound("no such device")
    code = "".join((await field(request, "code", 32)).split())
    if not code:
        return await _confirm_page(request, device, "Type the code your app shows.", 400)
    services = services_of(request)
    context = SignInContext(client_name=CONFIRM_CLIENT, client_ip=client_address(request)[:64])
    try:
        # confirm=: this pending token's code counts here, and only here.
        result = await services.otp.verify(me.actor, me.user.name, code, context, confirm=device.id)
    except OtpLocked:
        message = "Too many wrong codes; codes are locked for a while. Try again later."
        return await _confirm_page(request, device, message, 429)
    except OpenMFAError as exc:
        return await _confirm_page(
            request, device, exc.detail[:1].upper() + exc.detail[1:] + ".", exc.status
        )
    if result.accepted and result.device_id == device.id:
        await flash(request, f"“{device.name}” is confirmed: its codes now sign you in.", "success")
        return RedirectResponse("/portal/devices", status_code=303)
    if result.accepted:
        message = (
            "That code came from another of your authenticators. Type the code the new app "
            "shows for this account."
        )
        return await _confirm_page(request, device, message, 400)
    if result.reason == "replayed":
        message = "That code was used already. Wait for the next one and type it."
    else:
        message = (
            "That code is not right. Type the code the app shows now; if it keeps failing, "
            "check that the phone's clock is set automatically."
        )
    return await _confirm_page(request, device, message, 401)


async def cancel(request: Request) -> Response:
    """POST: remove a token that was never confirmed (to start over)."""
    me = await require_user(request)
    device = await _pending_oath(request, me)
    if device.state != "pending":
        raise NotFound("no such device")
    await services_of(request).devices.remove(
        me.actor, proof_of(me), device.id, user_name=me.user.name
    )
    await flash(request, "The unconfirmed OATH token is removed. Start again below.", "info")
    return RedirectResponse("/portal/oath", status_code=303)


routes = [
    page("/oath", oath, methods=["GET", "POST"], name="portal_oath"),
    page("/oath/{device_id}/confirm", confirm, methods=["POST"], name="portal_oath_confirm"),
    page("/oath/{device_id}/cancel", cancel, methods=["POST"], name="portal_oath_cancel"),
]
