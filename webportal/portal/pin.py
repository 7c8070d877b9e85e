"""``/portal/pin``: set or change the approval PIN.

The new PIN must pass the policy's rule (:func:`backend.domain.policy.pin_problem`: length,
digits, nothing trivial). Setting the first PIN needs nothing more than being signed in;
changing one needs the current PIN or the account password, each checked with its own
failure count and lockout (a stolen session cannot guess its way to a new PIN).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from backend.domain.policy import MAX_PIN_LENGTH, pin_problem
from backend.errors import OpenMFAError, OtpLocked, PinLocked, PinRequired, WrongPin
from webportal.auth import SignedIn, require_user
from webportal.forms import field
from webportal.portal.common import policy_of
from webportal.routing import page
from webportal.sessions import flash
from webportal.signin import MAX_FIELD
from webportal.state import services_of
from webportal.templating import render


async def _form(request: Request, me: SignedIn, error: str = "", status: int = 200) -> Response:
    policy = await policy_of(request, me)
    context = {
        "has_pin": me.user.has_pin,
        "require_pin": policy.require_pin,
        "min_length": policy.pin_min_length,
        "max_length": MAX_PIN_LENGTH,
        "error": error,
    }
    return await render(request, "portal/pin.html", context, status)


async def pin(request: Request) -> Response:
    """GET: the form. POST: check the new PIN, then the current PIN or password, then set it."""
    me = await require_user(request)
    if request.method == "GET":
        return await _form(request, me)
    new_pin = (await field(request, "pin", 64)).strip()
    confirm = (await field(request, "confirm", 64)).strip()
    policy = await policy_of(request, me)
    problem = pin_problem(new_pin, policy.pin_min_length)
    if problem is not None:
        return await _form(request, me, problem[:1].upper() + problem[1:] + ".", 400)
    if new_pin != confirm:
        return await _form(request, me, "The two PINs are not the same.", 400)
    if me.user.has_pin:
        refusal = await _check_current(request, me)
        if refusal is not None:
            return await _form(request, me, refusal[0], refusal[1])
    await services_of(request).users.set_pin(me.actor, me.user.name, new_pin)
    done = "changed" if me.user.has_pin else "set"
    await flash(
        request, f"Your PIN is {done}. Approvals that ask for a PIN take the new one.", "success"
    )
    return RedirectResponse("/portal/pin", status_code=303)


async def _check_current(request: Request, me: SignedIn) -> tuple[str, int] | None:
    """The refusal (message, status) unless the current PIN or the password was given right."""
    services = services_of(request)
    current = (await field(request, "current_pin", 64)).strip()
    password = await field(request, "password", MAX_FIELD)
    if current:
        try:
            await services.users.verify_pin(me.actor, me.user, current)
        except PinLocked:
            return "Too many wrong PINs; try again later, or use your password.", 429
        except (WrongPin, PinRequired):
            return "The current PIN is not right.", 401
        return None
    if password:
        try:
            result = await services.users.verify_password(me.actor, me.user.name, password)
        except OtpLocked:
            return "Too many failed attempts; your account is locked for a while.", 429
        except OpenMFAError as exc:
            return exc.detail[:1].upper() + exc.detail[1:] + ".", exc.status
        if not result.accepted:
            return "The password is not right.", 401
        return None
    return "To change your PIN, type your current PIN or your password.", 400


routes = [page("/pin", pin, methods=["GET", "POST"], name="portal_pin")]
