"""``/portal/sign-ins``: the user's recent sign-ins, and "this wasn't me".

The report goes through :meth:`FraudService.report_sign_in`, the path the app's report-fraud
answer takes (a pending sign-in is refused at once; the report is filed; by policy the account
is blocked and its other pending sign-ins cancelled; the help desk gets the e-mail).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from backend.services.sign_ins import SignInRow
from webportal.auth import require_user
from webportal.portal.common import TEST_PUSH_CLIENT, own_challenge
from webportal.routing import page
from webportal.sessions import flash
from webportal.state import services_of
from webportal.templating import render

PAGE_SIZE = 25
RESULTS = {
    "pending": "waiting for an answer",
    "approved": "approved",
    "denied": "denied",
    "fraud": "reported as fraud",
    "expired": "timed out",
    "cancelled": "cancelled",
}


def _where(row: SignInRow) -> str:
    if row.client_name == TEST_PUSH_CLIENT:
        return "Test push from this portal"
    parts = [row.client_name or "a gateway"]
    if row.nas_identifier and row.nas_identifier != row.client_name:
        parts.append(f"({row.nas_identifier})")
    return " ".join(parts)


async def sign_ins(request: Request) -> Response:
    """The list, newest first, ``?before=<id>`` for older ones."""
    me = await require_user(request)
    before = request.query_params.get("before") or None
    rows = await services_of(request).sign_ins.recent(me.user.name, PAGE_SIZE, before)
    items = [
        {
            "row": row,
            "where": _where(row),
            "result": RESULTS.get(row.state, row.state),
            "tone": {"approved": "ok", "pending": "waiting"}.get(row.state, "failed"),
            "method": "code" if row.method == "otp" else row.method,
        }
        for row in rows
    ]
    older = rows[-1].challenge_id if len(rows) == PAGE_SIZE else None
    context = {"items": items, "older": older, "paged": before is not None}
    return await render(request, "portal/sign_ins.html", context)


async def report(request: Request) -> Response:
    """GET: what reporting means; POST: file the report and say what happens next."""
    me = await require_user(request)
    view = await own_challenge(request, me, request.path_params["challenge_id"])
    services = services_of(request)
    if request.method == "GET":
        return await render(request, "portal/sign_in_report.html", {"sign_in": view})
    filed = await services.fraud.report_sign_in(me.actor, me.user.name, view.id)
    if filed.user_blocked:
        next_steps = (
            "Your account is now blocked: no one can sign in with it, you included, until your "
            "help desk has looked at it and unblocks it."
        )
    else:
        next_steps = "Your help desk will look at it."
    told = " They have been told by e-mail." if filed.notify_state in ("pending", "sent") else ""
    await flash(
        request,
        f"Thank you. The sign-in is reported as not yours (report {filed.id}). {next_steps}"
        f"{told} If someone may know your password, ask them to reset it.",
        "success",
    )
    return RedirectResponse("/portal/sign-ins", status_code=303)


routes = [
    page("/sign-ins", sign_ins, name="portal_sign_ins"),
    page(
        "/sign-ins/{challenge_id}/report",
        report,
        methods=["GET", "POST"],
        name="portal_sign_in_report",
    ),
]
