"""Portal sign-in (user name and local password) and sign-out."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from webportal.auth import safe_next
from webportal.forms import field
from webportal.routing import page
from webportal.sessions import current_session, end_session, flash, start_session
from webportal.signin import Refusal, audit, check_password
from webportal.templating import render, signed_in_user


async def sign_in(request: Request) -> Response:
    """The sign-in form; POST checks the password and starts a new session."""
    if request.method == "GET":
        target = safe_next(request.query_params.get("next"), "portal")
        if signed_in_user(await current_session(request)) is not None:
            return RedirectResponse(target, status_code=303)
        return await render(request, "portal/sign_in.html", {"next": target, "name": ""})
    name = await field(request, "username", 256)
    target = safe_next(await field(request, "next"), "portal")
    outcome = await check_password(request, name, await field(request, "password"))
    if isinstance(outcome, Refusal):
        context = {"next": target, "name": name, "error": outcome.message}
        return await render(request, "portal/sign_in.html", context, status=outcome.status)
    await start_session(request, outcome.id)
    await audit(request, outcome.name, "accept", "password")
    return RedirectResponse(target, status_code=303)


async def sign_out(request: Request) -> Response:
    """End the session (POST only, with the CSRF token: no sign-out by a stray link)."""
    await end_session(request)
    await flash(request, "You are signed out.", "success")
    return RedirectResponse("/portal/sign-in", status_code=303)


routes = [
    page("/sign-in", sign_in, methods=["GET", "POST"], name="portal_sign_in"),
    page("/sign-out", sign_out, methods=["POST"], name="portal_sign_out"),
]
