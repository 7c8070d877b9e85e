"""``/portal/pin``: set or change the approval PIN.

The new PIN must pass the policy's rule (:func:`backend.domain.policy.pin_problem`: length,
digits, nothing trivial). Setting or changing it is a factor change: it needs a fresh step-up
with an authenticator in use (or, for a user with none yet, an enrolment grant; see
:mod:`backend.domain.stepup`). The password never stands in for the PIN.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from backend.domain.policy import MAX_PIN_LENGTH, pin_problem
from backend.domain.stepup import FactorAction
from webportal.auth import SignedIn, require_user
from webportal.forms import field
from webportal.portal.common import policy_of
from webportal.portal.stepup import gate, proof_of
from webportal.routing import page
from webportal.sessions import flash
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
    """GET: the form (after the step-up). POST: check the new PIN, then set it."""
    me = await require_user(request)
    if request.method == "GET":
        return await gate(request, me, FactorAction.SET_PIN) or await _form(request, me)
    new_pin = (await field(request, "pin", 64)).strip()
    confirm = (await field(request, "confirm", 64)).strip()
    policy = await policy_of(request, me)
    problem = pin_problem(new_pin, policy.pin_min_length)
    if problem is not None:
        return await _form(request, me, problem[:1].upper() + problem[1:] + ".", 400)
    if new_pin != confirm:
        return await _form(request, me, "The two PINs are not the same.", 400)
    # The step-up is the proof (FactorChangeRefused, 403, without it): neither the password
    # nor the current PIN alone changes the PIN.
    await services_of(request).users.set_pin(me.actor, proof_of(me), me.user.name, new_pin)
    done = "changed" if me.user.has_pin else "set"
    await flash(
        request, f"Your PIN is {done}. Approvals that ask for a PIN take the new one.", "success"
    )
    return RedirectResponse("/portal/pin", status_code=303)


routes = [page("/pin", pin, methods=["GET", "POST"], name="portal_pin")]
