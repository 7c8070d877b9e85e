"""``/portal/step-up``: prove a factor you already use before adding or changing one.

The pages that add or change a second factor (activate, OATH, privacyIDEA, PIN, device rename,
remove, lost) call :func:`gate` on GET: a session that needs a step-up is sent here with
``next`` = the page; a user with no live factor and no enrolment grant sees why they cannot
enrol. Their POSTs go to services that check the same rule themselves
(:class:`backend.services.factors.FactorGuard`), so skipping this page gets a 403, not a change.

Here the user approves a push (with the number to pick when number matching applies; the page
polls like the admin console's second step) or types a code from an *active* device. Success
stamps the session (``stepped_up_at``); the stamp is good for ``step_up_minutes``.
"""

from __future__ import annotations

from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from backend.domain.challenge import ChallengeState
from backend.domain.stepup import FactorAction, Outcome, SessionProof
from backend.errors import NotFound, OpenMFAError, OtpLocked
from backend.services.challenges import ChallengeView
from backend.services.context import SignInContext
from webportal.auth import SignedIn, live_factors, require_user, safe_next
from webportal.forms import field
from webportal.routing import page
from webportal.sessions import flash
from webportal.signin import (
    Refusal,
    address_refusal,
    audit,
    claim_address,
    record_failure,
    release_address,
)
from webportal.state import client_address, services_of
from webportal.templating import render

STEP_UP = "/portal/step-up"
STEP_UP_CLIENT = "portal step-up"


def proof_of(me: SignedIn) -> SessionProof:
    """What this portal session can show the factor guard."""
    return SessionProof(me.user.id, me.session.stepped_up_at, me.session.enrol_until)


def step_up_url(target: str) -> str:
    return STEP_UP + "?" + urlencode({"next": target})


async def gate(
    request: Request, me: SignedIn, action: FactorAction, device_id: str | None = None
) -> Response | None:
    """``None`` when the session may do ``action`` now; else where to go instead: the step-up
    (keeping this page as ``next``), or the page that says how a first factor is enrolled."""
    decision = await services_of(request).factors.decide(
        proof_of(me), action, me.user.name, device_id
    )
    if decision.allowed:
        return None
    if decision.outcome is Outcome.STEP_UP_REQUIRED:
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(step_up_url(safe_next(here, "portal")), status_code=303)
    return await render(request, "portal/no_enrolment.html", {"reason": decision.reason})


def _context(request: Request) -> SignInContext:
    issuer = services_of(request).settings.issuer
    return SignInContext(
        client_name=STEP_UP_CLIENT,
        client_ip=client_address(request)[:64],
        display=f"Confirm a change to your sign-in in the {issuer} portal"[:256],
    )


async def _challenge(request: Request, me: SignedIn) -> ChallengeView | None:
    challenge_id = me.session.challenge_id
    if challenge_id is None:
        return None
    try:
        view = await services_of(request).challenges.get(challenge_id)
    except NotFound:
        return None
    return view if view.user_name.casefold() == me.user.name_key else None


async def _page(
    request: Request, me: SignedIn, target: str, error: str = "", status: int = 200
) -> Response:
    can_push = (await live_factors(request, me.user)).push
    context = {
        "next": target,
        "can_push": can_push,
        "challenge": await _challenge(request, me),
        "error": error,
        "minutes": services_of(request).settings.step_up_minutes,
    }
    return await render(request, "portal/step_up.html", context, status)


async def step_up(request: Request) -> Response:
    """The page: push (when an active device can answer one) and code."""
    me = await require_user(request)
    target = safe_next(request.query_params.get("next"), "portal")
    has_factor = (await live_factors(request, me.user)).any
    if not has_factor:  # nothing to prove: the target page says what applies instead
        return RedirectResponse(target, status_code=303)
    return await _page(request, me, target)


async def push(request: Request) -> Response:
    """Send a push to the user's phone; the page then waits for the answer."""
    me = await require_user(request)
    target = safe_next(await field(request, "next"), "portal")
    refusal = await address_refusal(request)
    if refusal is not None:
        await audit(request, me.user.name, "reject", "step-up: address-limited")
        return await _page(request, me, target, refusal.message, 429)
    services = services_of(request)
    try:
        view = await services.challenges.start(me.actor, me.user.name, "push", _context(request))
    except OpenMFAError as exc:
        await audit(request, me.user.name, "reject", f"step-up push: {exc.type}")
        return await _page(request, me, target, exc.detail, exc.status)
    await services.web_sessions.set_challenge(me.session, view.id)
    return RedirectResponse(step_up_url(target), status_code=303)


async def push_status(request: Request) -> Response:
    """``{"state": ...}`` of the push this step-up waits for (polled by admin-verify.js)."""
    me = await require_user(request)
    view = await _challenge(request, me)
    return JSONResponse({"state": "none" if view is None else view.state.value})


async def _done(request: Request, me: SignedIn, how: str, target: str) -> Response:
    await services_of(request).web_sessions.mark_stepped_up(me.session)
    await audit(request, me.user.name, "accept", f"step-up: {how}")
    return RedirectResponse(target, status_code=303)


async def push_done(request: Request) -> Response:
    """Finish the step-up once the push was approved."""
    me = await require_user(request)
    target = safe_next(await field(request, "next"), "portal")
    view = await _challenge(request, me)
    if view is not None and view.state is ChallengeState.APPROVED:
        return await _done(request, me, "push approved", target)
    if view is not None and view.state is ChallengeState.PENDING:
        return RedirectResponse(step_up_url(target), status_code=303)
    await services_of(request).web_sessions.set_challenge(me.session, None)
    state = "none" if view is None else view.state.value
    await record_failure(request, me.user.name, f"step-up: push {state}")
    await flash(request, f"The change was not confirmed ({state}). Try again.", "error")
    return RedirectResponse(step_up_url(target), status_code=303)


async def code(request: Request) -> Response:
    """Finish the step-up with a code from an active authenticator."""
    me = await require_user(request)
    target = safe_next(await field(request, "next"), "portal")
    claimed = await claim_address(request)  # counted before the check: concurrent guesses too
    if isinstance(claimed, Refusal):
        await audit(request, me.user.name, "reject", "step-up: address-limited")
        return await _page(request, me, target, claimed.message, 429)
    entered = "".join((await field(request, "code", 64)).split())
    services = services_of(request)
    try:
        result = await services.otp.verify(
            me.actor, me.user.name, entered, _context(request), live_only=True
        )
    except OtpLocked:
        await audit(request, me.user.name, "reject", "step-up: code locked")
        message = "Too many wrong codes; codes are locked for a while. Try a push, or later."
        return await _page(request, me, target, message, 429)
    except OpenMFAError as exc:
        await audit(request, me.user.name, "reject", f"step-up: code {exc.type}")
        return await _page(request, me, target, exc.detail, exc.status)
    if result.accepted:
        await release_address(request, claimed)
        return await _done(request, me, "code", target)
    await audit(request, me.user.name, "reject", f"step-up: code {result.reason}")
    message = "That code is not right. Type the current code from your app."
    return await _page(request, me, target, message, 401)


routes = [
    page("/step-up", step_up, name="portal_step_up"),
    page("/step-up/push", push, methods=["POST"], name="portal_step_up_push"),
    page("/step-up/push/status", push_status, name="portal_step_up_push_status"),
    page("/step-up/push/done", push_done, methods=["POST"], name="portal_step_up_push_done"),
    page("/step-up/code", code, methods=["POST"], name="portal_step_up_code"),
]
