"""``/portal/invite/<token>``: an invited user sets their password and is signed in."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from backend.errors import BadRequest
from backend.services.users import MAX_PASSWORD, MIN_PASSWORD
from webportal.forms import field
from webportal.routing import page
from webportal.sessions import flash, start_session
from webportal.signin import anonymous_actor, audit
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
    session = await start_session(request, user.id)
    # The invitation is the administrator's word that this person may enrol a first factor:
    # this session (no other, and not the password later) may, for a limited time.
    until = services.clock() + services.factors.grant
    await services.web_sessions.grant_enrolment(session, until)
    await audit(request, user.name, "accept", f"invitation; may enrol until {until.isoformat()}")
    await flash(request, "Your password is set and you are signed in.", "success")
    return RedirectResponse("/portal/", status_code=303)


routes = [page("/invite/{token}", invitation, methods=["GET", "POST"], name="portal_invite")]
