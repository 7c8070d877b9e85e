"""``/admin/bootstrap/<token>``: create the first administrator (link printed by
``openmfa run`` while none exists)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from backend.errors import BadRequest, Conflict
from backend.services.users import MAX_PASSWORD, MIN_PASSWORD
from webportal.forms import field
from webportal.routing import page
from webportal.sessions import flash, start_session
from webportal.signin import anonymous_actor, audit
from webportal.state import services_of
from webportal.templating import render


async def bootstrap(request: Request) -> Response:
    """GET: the form (or a 404 page once the link is dead). POST: create and sign in."""
    services = services_of(request)
    token = request.path_params["token"]
    await services.invitations.check_bootstrap(token)  # BootstrapInvalid: 404 page + audit
    context: dict[str, object] = {
        "min_password": MIN_PASSWORD,
        "max_password": MAX_PASSWORD,
        "name": "",
        "display_name": "",
    }
    if request.method == "GET":
        return await render(request, "admin/bootstrap.html", context)
    name = (await field(request, "username", 128)).strip()
    display_name = (await field(request, "display_name", 256)).strip()
    password = await field(request, "password", MAX_PASSWORD)
    confirm = await field(request, "confirm", MAX_PASSWORD)
    context.update(name=name, display_name=display_name)
    error = ""
    if password != confirm:
        error = "The two passwords are not the same."
    else:
        try:
            user = await services.invitations.create_first_admin(
                anonymous_actor(request), token, name, password, display_name
            )
        except (BadRequest, Conflict) as exc:  # name rules, length rules, name taken
            error = exc.detail[:1].upper() + exc.detail[1:] + "."
    if error:
        return await render(request, "admin/bootstrap.html", {**context, "error": error}, 400)
    # No authenticator yet, and the console opens only with one. The bootstrap link is the
    # server owner's word, like an administrator's: it opens a first-enrolment window.
    hours = services.factors.grant.total_seconds() / 3600
    await services.factors.allow_enrolment(anonymous_actor(request), user.name, hours)
    await start_session(request, user.id, second_factor_done=False)
    await audit(request, user.name, "accept", "bootstrap; enrolment next")
    await flash(
        request,
        f"Administrator {user.name} created. Now activate your authenticator.",
        "success",
    )
    return RedirectResponse("/admin/sign-in/enrol", status_code=303)


routes = [page("/bootstrap/{token}", bootstrap, methods=["GET", "POST"], name="admin_bootstrap")]
