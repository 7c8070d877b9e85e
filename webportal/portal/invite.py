"""``/portal/invite/<token>``: an invited user sets their password and is signed in."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from backend.errors import BadRequest
from backend.services.invitations import InvitationView
from backend.services.users import MAX_PASSWORD, MIN_PASSWORD
from webportal.forms import field
from webportal.routing import page
from webportal.sessions import flash, start_session
from webportal.signin import MAX_FIELD, Refusal, anonymous_actor, audit, check_password
from webportal.state import services_of
from webportal.templating import render


async def invitation(request: Request) -> Response:
    """GET: the set-password form (or why the link cannot be used). POST: set it."""
    services = services_of(request)
    token = request.path_params["token"]
    # Raises InvitationInvalid / -Expired / -Used: an HTML error page and an audit row.
    view = await services.invitations.check(token)
    context = {
        "invited": view,
        "min_password": MIN_PASSWORD,
        "max_password": MAX_PASSWORD,
    }
    if request.method == "GET":
        return await render(request, "portal/invite.html", context)
    if view.directory is not None:
        return await _directory_invitation(request, token, context)
    password = await field(request, "password", MAX_PASSWORD)
    confirm = await field(request, "confirm", MAX_PASSWORD)
    error = ""
    if password != confirm:
        error = "The two passwords are not the same."
    else:
        try:
            user = await services.invitations.accept(anonymous_actor(request), token, password)
        except BadRequest as exc:  # the length rules
            error = exc.detail[:1].upper() + exc.detail[1:] + "."
    if error:
        return await render(request, "portal/invite.html", {**context, "error": error}, 400)
    await _signed_in(request, user.id, user.name)
    await flash(request, "Your password is set and you are signed in.", "success")
    return RedirectResponse("/portal/", status_code=303)


async def _directory_invitation(request: Request, token: str, context: dict[str, Any]) -> Response:
    """A user from a directory has no password here to choose: they prove the directory's
    (the sign-in's rules: both rate limits, the audit), and the invitation then lets this
    session enrol a first factor, as for anyone invited."""
    services = services_of(request)
    view: InvitationView = context["invited"]
    password = await field(request, "password", MAX_FIELD)
    checked = await check_password(request, view.user_name, password)
    if isinstance(checked, Refusal):
        return await render(
            request, "portal/invite.html", {**context, "error": checked.message}, checked.status
        )
    user = await services.invitations.accept(anonymous_actor(request), token, None)
    await _signed_in(request, user.id, user.name)
    await flash(request, "You are signed in with your directory password.", "success")
    return RedirectResponse("/portal/", status_code=303)


async def _signed_in(request: Request, user_id: int, user_name: str) -> None:
    services = services_of(request)
    session = await start_session(request, user_id)
    # The invitation is the administrator's word that this person may enrol a first factor:
    # this session (no other, and not the password later) may, for a limited time.
    until = services.clock() + services.factors.grant
    await services.web_sessions.grant_enrolment(session, until)
    await audit(request, user_name, "accept", f"invitation; may enrol until {until.isoformat()}")


routes = [page("/invite/{token}", invitation, methods=["GET", "POST"], name="portal_invite")]
