"""``/portal/test``: send a test push to your own phone and see the answer live.

``POST /portal/test/push`` starts a push challenge like a gateway does (same policy: number
matching, PIN, the push-fatigue limits), marked as the portal's test. A browser with script
asks for JSON and polls ``/portal/test/push/<id>/status`` on the page it is on (the activation page
does this); without script the form lands on ``/portal/test/push/<id>``, which polls the same way
and also works by reloading. Every id is checked to be the user's own (404 otherwise).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from backend.domain.devices import can_answer_push
from backend.errors import OpenMFAError
from backend.services.challenges import ChallengeView
from backend.services.context import SignInContext
from webportal.auth import SignedIn, require_user
from webportal.portal.common import PUSH_RESULTS, TEST_PUSH_CLIENT, own_challenge, seconds_left
from webportal.routing import page
from webportal.state import client_address, services_of
from webportal.templating import render


def _wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "")


def push_json(view: ChallengeView, expires_in: int) -> dict[str, Any]:
    """What the status box shows for a test push (see static/js/portal-push.js)."""
    state = view.state.value
    tone = {"pending": "waiting", "approved": "ok"}.get(state, "failed")
    return {
        "id": view.id,
        "state": state,
        "tone": tone,
        "message": PUSH_RESULTS.get(state, state),
        "final": view.state.is_final,
        "number": view.number,
        "expires_in": expires_in if state == "pending" else 0,
        "status_url": f"/portal/test/push/{view.id}/status",
    }


async def _pushable(request: Request, me: SignedIn) -> bool:
    devices = await services_of(request).devices.list_for_user(me.user.name)
    return any(can_answer_push(d.kind, d.state) for d in devices)


async def test_page(request: Request) -> Response:
    """The "Send test push" page."""
    me = await require_user(request)
    context = {"can_push": await _pushable(request, me), "error": "", "push": None}
    return await render(request, "portal/test.html", context)


async def send(request: Request) -> Response:
    """Start a test push (JSON for script, else a redirect to its page)."""
    me = await require_user(request)
    services = services_of(request)
    issuer = services.settings.issuer
    context = SignInContext(
        client_name=TEST_PUSH_CLIENT,
        client_ip=client_address(request)[:64],
        display=f"Test from the {issuer} portal"[:256],
    )
    try:
        view = await services.challenges.start(me.actor, me.user.name, "push", context)
    except OpenMFAError as exc:
        message = _explain(exc)
        if _wants_json(request):
            return JSONResponse(
                {"state": "refused", "tone": "failed", "message": message, "final": True},
                status_code=exc.status,
            )
        page_context = {"can_push": await _pushable(request, me), "error": message, "push": None}
        return await render(request, "portal/test.html", page_context, exc.status)
    if _wants_json(request):
        return JSONResponse(push_json(view, seconds_left(view.expires_at, services.clock())))
    return RedirectResponse(f"/portal/test/push/{view.id}", status_code=303)


def _explain(exc: OpenMFAError) -> str:
    if exc.type == "user-not-enrolled":
        return "None of your devices can answer a push yet. Activate the OpenMFA app first."
    if exc.type == "user-blocked":
        return "Your account is blocked, so no pushes are sent. Please contact your help desk."
    detail = exc.detail[:1].upper() + exc.detail[1:]
    return detail.rstrip(".") + "."


async def push_page(request: Request) -> Response:
    """One of the user's test pushes, with its live status."""
    me = await require_user(request)
    view = await own_challenge(request, me, request.path_params["challenge_id"])
    data = push_json(view, seconds_left(view.expires_at, services_of(request).clock()))
    context = {"can_push": True, "error": "", "push": data}
    return await render(request, "portal/test.html", context)


async def push_status(request: Request) -> Response:
    """``{"state": pending|approved|denied|fraud|expired|cancelled, ...}`` (own pushes only)."""
    me = await require_user(request)
    view = await own_challenge(request, me, request.path_params["challenge_id"])
    return JSONResponse(
        push_json(view, seconds_left(view.expires_at, services_of(request).clock()))
    )


routes = [
    page("/test", test_page, name="portal_test"),
    page("/test/push", send, methods=["POST"], name="portal_test_push"),
    page("/test/push/{challenge_id}", push_page, name="portal_test_push_page"),
    page("/test/push/{challenge_id}/status", push_status, name="portal_test_push_status"),
]
