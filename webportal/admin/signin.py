"""Admin sign-in: the password, then a second step: approve a push on the phone (the page
polls for the answer) or type a code from an *active* authenticator. An administrator with no
live factor (none, or only pending ones) gets no console page after the password: only the
enrolment page, which says how to activate one under the step-up rule. Sign-out.

The second step runs in the session the password step started (``second_factor_done`` false,
so :func:`~webportal.auth.require_admin` lets it into nothing else); passing it starts a new
session again (new cookie value), keeping the absolute timeout of the first.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from backend.domain.challenge import ChallengeState
from backend.errors import Forbidden, NotFound, OpenMFAError, OtpLocked
from backend.services.challenges import ChallengeView
from backend.services.context import SignInContext
from backend.services.web_sessions import WebSessionRecord
from backend.store.queries import UserRecord
from webportal.auth import SignInRequired, has_second_factor, live_factors, safe_next
from webportal.forms import field
from webportal.routing import page
from webportal.sessions import current_session, end_session, flash, start_session
from webportal.signin import (
    Refusal,
    address_refusal,
    audit,
    check_password,
    claim_address,
    record_failure,
    release_address,
)
from webportal.state import client_address, services_of, web_actor
from webportal.templating import render, signed_in_user

VERIFY = "/admin/sign-in/verify"
ENROL = "/admin/sign-in/enrol"


def _context(request: Request) -> SignInContext:
    issuer = services_of(request).settings.issuer
    return SignInContext(
        client_name="admin console",
        client_ip=client_address(request)[:64],
        display=f"Sign-in to the {issuer} admin console"[:256],
    )


def _verify_url(target: str) -> str:
    from urllib.parse import urlencode

    return VERIFY + ("" if target == "/admin/" else "?" + urlencode({"next": target}))


async def sign_in(request: Request) -> Response:
    """The password step."""
    if request.method == "GET":
        target = safe_next(request.query_params.get("next"), "admin")
        if signed_in_user(await current_session(request)) is not None:
            return RedirectResponse(target, status_code=303)
        return await render(request, "admin/sign_in.html", {"next": target, "name": ""})
    name = await field(request, "username", 256)
    target = safe_next(await field(request, "next"), "admin")
    outcome = await check_password(request, name, await field(request, "password"))
    if not isinstance(outcome, Refusal) and not outcome.is_admin:
        await audit(request, outcome.name, "reject", "not-admin")
        outcome = Refusal("This account is not an administrator.", 403)
    if isinstance(outcome, Refusal):
        context = {"next": target, "name": name, "error": outcome.message}
        return await render(request, "admin/sign_in.html", context, status=outcome.status)
    await start_session(request, outcome.id, second_factor_done=False)
    if await has_second_factor(request, outcome):
        await audit(request, outcome.name, "accept", "password; second factor next")
        return RedirectResponse(_verify_url(target), status_code=303)
    # A password alone opens no console page (issue 13, finding 5): enrol a factor first.
    await audit(request, outcome.name, "accept", "password; no live factor: enrolment only")
    return RedirectResponse(ENROL, status_code=303)


async def _half_signed_in(request: Request) -> tuple[WebSessionRecord, UserRecord]:
    """The session between the two steps (or a complete one), else back to the password."""
    session = await current_session(request)
    if session is None or session.user is None:
        raise SignInRequired("/admin/sign-in")
    if not session.user.is_admin or session.user.disabled:
        await end_session(request)
        raise Forbidden("this account may not use the admin console")
    return session, session.user


async def _challenge(request: Request, session: WebSessionRecord) -> ChallengeView | None:
    if session.challenge_id is None or session.user is None:
        return None
    try:
        view = await services_of(request).challenges.get(session.challenge_id)
    except NotFound:
        return None
    return view if view.user_name.casefold() == session.user.name_key else None


async def _complete(request: Request, user: UserRecord, how: str, target: str) -> Response:
    await start_session(request, user.id, second_factor_done=True, keep_started=True)
    await audit(request, user.name, "accept", how)
    return RedirectResponse(target, status_code=303)


async def verify(request: Request) -> Response:
    """The second step's page: push (when a device can answer one) and code."""
    session, user = await _half_signed_in(request)
    target = safe_next(request.query_params.get("next"), "admin")
    if not await has_second_factor(request, user):  # none, or removed meanwhile
        return RedirectResponse(ENROL, status_code=303)
    if session.second_factor_done:
        return RedirectResponse(target, status_code=303)
    return await _verify_page(request, session, user, target)


async def enrol(request: Request) -> Response:
    """What an administrator without a live factor sees instead of the console."""
    _session, user = await _half_signed_in(request)
    if await has_second_factor(request, user):
        return RedirectResponse(VERIFY, status_code=303)
    services = services_of(request)
    subject = await services.factors.subject(user.name)
    until = subject.state.enrol_until
    context = {
        "admin_name": user.name,
        "enrol_until": until if until is not None and until > services.clock() else None,
    }
    return await render(request, "admin/enrol.html", context)


async def _verify_page(
    request: Request,
    session: WebSessionRecord,
    user: UserRecord,
    target: str,
    error: str = "",
    status: int = 200,
) -> Response:
    context = {
        "next": target,
        "admin_name": user.name,
        # Only a live factor proves anything: a pending app is not offered.
        "can_push": (await live_factors(request, user)).push,
        "challenge": await _challenge(request, session),
        "error": error,
    }
    return await render(request, "admin/verify.html", context, status=status)


async def push(request: Request) -> Response:
    """Send a push to the admin's phone; the verify page then waits for the answer."""
    session, user = await _half_signed_in(request)
    target = safe_next(await field(request, "next"), "admin")
    if not await has_second_factor(request, user):  # a pending app's first answer is no proof
        return RedirectResponse(ENROL, status_code=303)
    refusal = await address_refusal(request)
    if refusal is not None:
        await audit(request, user.name, "reject", "address-limited")
        return await _verify_page(request, session, user, target, refusal.message, 429)
    services = services_of(request)
    try:
        view = await services.challenges.start(
            web_actor(request, f"admin:{user.name}"), user.name, "push", _context(request)
        )
    except OpenMFAError as exc:
        await audit(request, user.name, "reject", f"push: {exc.type}")
        return await _verify_page(request, session, user, target, exc.detail, exc.status)
    await services.web_sessions.set_challenge(session, view.id)
    return RedirectResponse(_verify_url(target), status_code=303)


async def push_status(request: Request) -> Response:
    """``{"state": ...}`` of the push this sign-in waits for (polled by admin-verify.js)."""
    session, _user = await _half_signed_in(request)
    view = await _challenge(request, session)
    return JSONResponse({"state": "none" if view is None else view.state.value})


async def push_done(request: Request) -> Response:
    """Finish the second step once the push was approved."""
    session, user = await _half_signed_in(request)
    target = safe_next(await field(request, "next"), "admin")
    view = await _challenge(request, session)
    if view is not None and view.state is ChallengeState.APPROVED:
        return await _complete(request, user, "push approved", target)
    if view is not None and view.state is ChallengeState.PENDING:
        return RedirectResponse(_verify_url(target), status_code=303)
    await services_of(request).web_sessions.set_challenge(session, None)
    state = "none" if view is None else view.state.value
    await record_failure(request, user.name, f"push {state}")
    await flash(request, f"The sign-in was not approved ({state}). Try again.", "error")
    return RedirectResponse(_verify_url(target), status_code=303)


async def code(request: Request) -> Response:
    """Finish the second step with a code from the admin's app."""
    session, user = await _half_signed_in(request)
    target = safe_next(await field(request, "next"), "admin")
    claimed = await claim_address(request)  # counted before the check: concurrent guesses too
    if isinstance(claimed, Refusal):
        await audit(request, user.name, "reject", "address-limited")
        return await _verify_page(request, session, user, target, claimed.message, 429)
    entered = (await field(request, "code", 64)).replace(" ", "")
    services = services_of(request)
    try:
        result = await services.otp.verify(
            web_actor(request, f"admin:{user.name}"),
            user.name,
            entered,
            _context(request),
            live_only=True,  # a pending token's code proves nothing
        )
    except OtpLocked:
        await audit(request, user.name, "reject", "code: locked")
        message = "Too many wrong codes; codes are locked for a while. Try a push, or later."
        return await _verify_page(request, session, user, target, message, 429)
    except OpenMFAError as exc:
        await audit(request, user.name, "reject", f"code: {exc.type}")
        return await _verify_page(request, session, user, target, exc.detail, exc.status)
    if result.accepted:
        await release_address(request, claimed)
        return await _complete(request, user, "code", target)
    await audit(request, user.name, "reject", f"code: {result.reason}")
    message = "That code is not right. Type the current code from your app."
    return await _verify_page(request, session, user, target, message, 401)


async def sign_out(request: Request) -> Response:
    """End the admin session."""
    await end_session(request)
    await flash(request, "You are signed out.", "success")
    return RedirectResponse("/admin/sign-in", status_code=303)


routes = [
    page("/sign-in", sign_in, methods=["GET", "POST"], name="admin_sign_in"),
    page("/sign-in/verify", verify, name="admin_verify"),
    page("/sign-in/enrol", enrol, name="admin_enrol"),
    page("/sign-in/push", push, methods=["POST"], name="admin_push"),
    page("/sign-in/push/status", push_status, name="admin_push_status"),
    page("/sign-in/push/done", push_done, methods=["POST"], name="admin_push_done"),
    page("/sign-in/code", code, methods=["POST"], name="admin_code"),
    page("/sign-out", sign_out, methods=["POST"], name="admin_sign_out"),
]
