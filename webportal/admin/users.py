"""``/admin/users``: find, add and invite users; per user their state, devices, OATH tokens,
recent sign-ins, audit trail and policy overrides, and the actions on them.

Every action goes through the services (which audit it with the acting administrator) and
then redirects back (POST-redirect-GET), except the invitation link, which is shown once in
the POST's own answer and never again. Disabling, blocking and resetting devices also cancel
the user's pending sign-ins and end their web sessions, as ``openmfa user disable`` does.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from backend.domain.emails import email_problem
from backend.domain.stepup import ADMINISTRATOR
from backend.errors import BadRequest, Conflict, OpenMFAError
from backend.notify.mail import MailError, MailSender
from backend.services.access import AccessChange
from backend.services.invitations import DEFAULT_HOURS, MAX_HOURS, InvitationOffer
from backend.store.queries import UserRecord
from webportal.admin.policies import (
    apply_changes,
    build_fields,
    changed_message,
    read_policy_form,
    validate,
)
from webportal.auth import require_admin
from webportal.forms import field
from webportal.routing import page
from webportal.sessions import flash
from webportal.state import services_of
from webportal.templating import render

PAGE_SIZE = 50
#: How long the console's "Allow enrolment" lets a user enrol a first factor (the CLI's default).
ENROLMENT_HOURS = 24
RECENT = 20  # sign-ins and audit rows on a user's page


def user_url(name: str, tail: str = "") -> str:
    """The page of a user (``tail``: a sub-path such as ``/invite``)."""
    return f"/admin/users/{quote(name, safe='')}{tail}"


def _sentence(exc: OpenMFAError) -> str:
    text = exc.detail or exc.title
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


async def users(request: Request) -> Response:
    """GET: the list, searched by name, display name or e-mail, in pages of
    :data:`PAGE_SIZE`, with the form to add a user. POST: add the user (without a password:
    invite them to choose one), then show their page."""
    me = await require_admin(request)
    form: dict[str, Any] = {"name": "", "display_name": "", "email": "", "admin": False}
    error = ""
    if request.method == "POST":
        form = {
            "name": (await field(request, "name", 128)).strip(),
            "display_name": (await field(request, "display_name", 256)).strip(),
            "email": (await field(request, "email", 320)).strip(),
            "admin": (await field(request, "admin", 8)) == "yes",
        }
        try:
            user = await services_of(request).users.add(
                me.actor,
                form["name"],
                email=form["email"],
                display_name=form["display_name"],
                is_admin=form["admin"],
            )
        except (BadRequest, Conflict) as exc:  # name rules, e-mail, name taken
            error = _sentence(exc)
        else:
            await flash(
                request, f"User {user.name} added. Invite them to set a password.", "success"
            )
            return RedirectResponse(user_url(user.name), status_code=303)
    query = request.query_params.get("q", "")[:320]
    after = request.query_params.get("after", "")[:128] or None
    found = await services_of(request).users.search(query, PAGE_SIZE + 1, after)
    more = len(found) > PAGE_SIZE
    found = found[:PAGE_SIZE]
    next_url = ""
    if more:
        next_url = "/admin/users?" + urlencode({"q": query, "after": found[-1].user.name_key})
    return await render(
        request,
        "admin/users.html",
        {
            "found": found,
            "q": query,
            "paged": after is not None,
            "next_url": next_url,
            "first_url": "/admin/users?" + urlencode({"q": query}) if query else "/admin/users",
            "form": form,
            "error": error,
        },
        400 if error else 200,
    )


async def _page_context(request: Request, user: UserRecord) -> dict[str, Any]:
    services = services_of(request)
    devices = await services.devices.list_for_user(user.name)
    lines = await services.policies.show(user.name)
    global_lines = await services.policies.show()
    now = services.clock()
    return {
        "u": user,
        "url": user_url(user.name),
        "apps": [d for d in devices if d.kind != "oath"],
        "oath": [d for d in devices if d.kind == "oath"],
        "sign_ins": await services.sign_ins.recent(user.name, RECENT),
        "audit": await services.audit.query(user.name, limit=RECENT),
        "audit_url": "/admin/audit?" + urlencode({"user": user.name_key}),
        "overrides": [line.key for line in lines if line.source == "user"],
        "groups": build_fields(lines, "user", global_lines),
        "codes_locked": user.otp_locked_until is not None and user.otp_locked_until > now,
        "pin_locked": user.pin_locked_until is not None and user.pin_locked_until > now,
        "mail_configured": bool(services.settings.smtp_host),
        "default_hours": DEFAULT_HOURS,
        "max_hours": MAX_HOURS,
        "offer": None,
    }


async def user_page(request: Request) -> Response:
    """One user: everything about them and every action on them."""
    await require_admin(request)
    user = await services_of(request).users.get(request.path_params["name"])
    return await render(request, "admin/user.html", await _page_context(request, user))


def _consequences(change: AccessChange) -> str:
    """What else a change did, for the message."""
    parts = []
    if change.cancelled:
        parts.append(f"{change.cancelled} pending sign-in(s) cancelled")
    if change.sessions_ended:
        parts.append(f"{change.sessions_ended} web session(s) ended")
    if change.reviewed:
        parts.append(f"open fraud report(s) {', '.join(map(str, change.reviewed))} marked reviewed")
    if not parts:
        return ""
    sentence = "; ".join(parts)
    return f" {sentence[0].upper()}{sentence[1:]}."


async def user_action(request: Request) -> Response:
    """POST ``/admin/users/<name>/<action>``: disable, enable, block, unblock, reset-devices,
    allow-enrolment."""
    me = await require_admin(request)
    services = services_of(request)
    action = request.path_params["action"]
    user = await services.users.get(request.path_params["name"])
    if user.id == me.user.id and action in ("disable", "block", "reset-devices"):
        # Locking yourself out of the console is never what was meant; the CLI still can.
        raise BadRequest("you cannot do this to your own account here; ask another administrator")
    access, name = services.access, user.name
    if action == "allow-enrolment":
        until = await services.factors.allow_enrolment(me.actor, name, ENROLMENT_HOURS)
        message = (
            f"{name} may activate a first authenticator in the portal until "
            f"{until:%Y-%m-%d %H:%M} UTC (while they have none in use)."
        )
        await flash(request, message, "success")
        return RedirectResponse(user_url(name), status_code=303)
    if action == "disable":
        change = await access.disable(me.actor, name)
        message = f"{name} is now disabled."
    elif action == "enable":
        change = await access.enable(me.actor, name)
        message = f"{name} is now {change.user.state}."
    elif action == "block":
        reason = (await field(request, "reason", 256)).strip()
        change = await access.block(me.actor, name, reason)
        message = f"{name} is now blocked: no pushes or sign-ins until unblocked."
    elif action == "unblock":
        change = await access.unblock(me.actor, name)
        message = f"{name} is unblocked."
    elif action == "reset-devices":
        change = await access.reset_devices(me.actor, ADMINISTRATOR, name)
        removed = len(change.removed_devices)
        message = f"{removed} device(s) of {name} removed; they must activate again."
    else:
        raise BadRequest(f"unknown action {action!r}")
    message += _consequences(change)
    await flash(request, message, "success")
    return RedirectResponse(user_url(user.name), status_code=303)


async def remove_device(request: Request) -> Response:
    """POST ``/admin/users/<name>/devices/<id>/remove``: remove one device of this user."""
    me = await require_admin(request)
    services = services_of(request)
    user = await services.users.get(request.path_params["name"])
    device_id = request.path_params["device_id"][:64]
    # user_name= scopes the removal: a device of another user is "no such device".
    await services.devices.remove(me.actor, ADMINISTRATOR, device_id, user_name=user.name)
    await flash(request, f"Device {device_id} of {user.name} removed.", "success")
    return RedirectResponse(user_url(user.name), status_code=303)


async def _send_invitation(request: Request, user: UserRecord, offer: InvitationOffer) -> str:
    """E-mail the link to the user; raises :class:`MailError` (or ConfigurationError)."""
    services = services_of(request)
    sender = MailSender.from_settings(services.settings)
    if sender is None:
        raise MailError("e-mail is not configured (smtp_host)", permanent=True)
    issuer = services.settings.issuer
    body = (
        f"Hello {user.display_name or user.name},\n\n"
        f"an administrator invited you to {issuer}. Open this link to choose your password "
        f"and set up your sign-in app:\n\n  {offer.url}\n\n"
        f"The link works once and expires {offer.expires_at:%Y-%m-%d %H:%M} UTC. "
        "If you did not expect this, ignore it and tell your IT support.\n"
    )
    message = sender.compose([user.email], f"Your {issuer} invitation", body)
    return await sender.send([user.email], message)


async def invite(request: Request) -> Response:
    """POST: a new invitation link (earlier unused ones stop working), shown once on the
    answer page; with ``send=mail`` e-mailed to the user instead."""
    me = await require_admin(request)
    services = services_of(request)
    user = await services.users.get(request.path_params["name"])
    hours_text = (await field(request, "hours", 8)).strip() or str(DEFAULT_HOURS)
    by_mail = (await field(request, "send", 8)) == "mail"
    if not (hours_text.isascii() and hours_text.isdigit()):
        raise BadRequest(f"the link lives 1 to {MAX_HOURS} hours")
    if by_mail and not user.email:
        raise BadRequest("the user has no e-mail address; show the link instead")
    if by_mail and not services.settings.smtp_host:
        raise BadRequest("e-mail is not configured (smtp_host); show the link instead")
    problem = email_problem(user.email) if by_mail else None
    if problem is not None:
        # Stored by an older version that checked only for "@": never put it in a header.
        await services.audit.record(
            me.actor, "invitation.mail", "failed", user.name_key, f"bad address: {problem}"
        )
        raise BadRequest(
            f"{user.name}'s stored address is not a valid e-mail address ({problem}); "
            "show the link instead"
        )
    # By mail, earlier invitations keep working until this one is sent.
    offer = await services.invitations.create(
        me.actor, user.name, int(hours_text), replace=not by_mail
    )
    if by_mail:
        try:
            await _send_invitation(request, user, offer)
        except MailError as exc:
            await services.audit.record(
                me.actor, "invitation.mail", "failed", user.name_key, exc.reason[:200]
            )
            context = await _page_context(request, user)
            context["offer"] = offer  # not lost: the admin can still pass it on by hand
            context["mail_error"] = exc.reason
            return await render(request, "admin/user.html", context, 502)
        await services.audit.record(me.actor, "invitation.mail", "sent", user.name_key, user.email)
        await services.invitations.retire_others(me.actor, offer)
        await flash(request, f"Invitation e-mailed to {user.email}.", "success")
        return RedirectResponse(user_url(user.name), status_code=303)
    context = await _page_context(request, user)
    context["offer"] = offer
    return await render(request, "admin/user.html", context)


async def user_policies(request: Request) -> Response:
    """POST: store the user's policy overrides (empty field: inherit the global value)."""
    me = await require_admin(request)
    services = services_of(request)
    user = await services.users.get(request.path_params["name"])
    lines = await services.policies.show(user.name)
    submitted = await read_policy_form(request)
    values, errors = validate(submitted)
    if errors:
        context = await _page_context(request, user)
        context["groups"] = build_fields(
            lines, "user", await services.policies.show(), submitted, errors
        )
        context["policy_error"] = "Some values are not valid; see the marked fields."
        return await render(request, "admin/user.html", context, 400)
    changed = await apply_changes(services.policies, me.actor, lines, "user", values, user.name)
    await flash(request, changed_message(changed, f"Policy of {user.name}"), "success")
    return RedirectResponse(user_url(user.name) + "#policies", status_code=303)


routes = [
    page("/users", users, methods=["GET", "POST"], name="admin_users"),
    page("/users/{name}", user_page, name="admin_user"),
    page("/users/{name}/invite", invite, methods=["POST"], name="admin_user_invite"),
    page("/users/{name}/policies", user_policies, methods=["POST"], name="admin_user_policies"),
    page(
        "/users/{name}/devices/{device_id}/remove",
        remove_device,
        methods=["POST"],
        name="admin_user_remove_device",
    ),
    page(
        "/users/{name}/{action:str}",
        user_action,
        methods=["POST"],
        name="admin_user_action",
    ),
]
