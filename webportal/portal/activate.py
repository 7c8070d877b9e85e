"""``/portal/activate``: activate an authenticator app by QR code, with a live status.

Our app: "Generate activation code" shows the code as text and as a QR code, and the same code
as a link and QR code of the web app (``<public URL>/app/#activate=<code>``, "Use this
phone's browser"); the page polls
``/portal/activate/status?ref=<digest>`` (the code's stored digest, never the code) and turns to
"activated" by itself when the phone redeems it; a test push then makes the device active. The
privacyIDEA Authenticator: an ``otpauth://pipush/...`` QR; the page polls the pending token's
state until the app rolled it out. Standard OATH apps have their own page (:mod:`.oath`).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from backend.domain.stepup import FactorAction
from backend.errors import ConfigurationError, FactorChangeRefused, NotFound, OpenMFAError
from backend.services.devices import ActivationProgress, activation_reference
from webportal.auth import SignedIn, require_user
from webportal.portal.common import own_device, policy_of, qr_data_uri, seconds_left
from webportal.portal.stepup import gate, proof_of
from webportal.routing import page
from webportal.state import services_of
from webportal.templating import render

MAX_REFERENCE = 64
#: Hosts a browser treats as a secure context over plain http (the web app needs one for
#: WebCrypto keys, its service worker and Web Push).
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def web_app_offer(url: str) -> dict[str, str]:
    """The "Use this phone's browser" link and its QR code, or why there is none.

    Browsers give WebCrypto, service workers and push only to https:// pages (and loopback),
    so with an http:// public URL a link would open an app that cannot work: say so instead.
    """
    parts = urlsplit(url)
    if parts.scheme != "https" and parts.hostname not in LOOPBACK_HOSTS:
        return {"web_url": "", "web_qr": ""}
    return {"web_url": url, "web_qr": qr_data_uri(url)}


async def _page(
    request: Request, me: SignedIn, context: dict[str, Any], status: int = 200
) -> Response:
    policy = await policy_of(request, me)
    base = {
        "offer": None,
        "pi_offer": None,
        "error": "",
        "pi_error": "",
        "ttl_minutes": max(1, policy.activation_code_ttl_seconds // 60),
        "require_pin": policy.require_pin,
        "has_pin": me.user.has_pin,
    }
    return await render(request, "portal/activate.html", {**base, **context}, status)


async def activate(request: Request) -> Response:
    """GET: the choices. POST: a new activation code, shown once with its QR code."""
    me = await require_user(request)
    if request.method == "GET":
        return await gate(request, me, FactorAction.ENROL_APP) or await _page(request, me, {})
    services = services_of(request)
    try:
        offer = await services.activation.create_code(me.actor, proof_of(me), me.user.name)
    except FactorChangeRefused:
        raise  # 403 and audited: a POST that skipped the step-up
    except OpenMFAError as exc:  # blocked or disabled meanwhile
        return await _page(request, me, {"error": _sentence(exc.detail)}, exc.status)
    context = {
        "offer": offer,
        "qr": qr_data_uri(offer.uri),
        "reference": activation_reference(offer.code),
        "expires_in": seconds_left(offer.expires_at, services.clock()),
        # The same code for the web app at /app/ (in the URL's fragment): one code, either app.
        **web_app_offer(services.activation.web_app_url(offer.code)),
    }
    return await _page(request, me, context)


def _progress_json(progress: ActivationProgress, expires_in: int) -> dict[str, Any]:
    device = progress.device
    if device is None:
        if progress.state == "expired":
            return _status(
                "expired", "failed", "This code expired. Make a new one.", final=True, expires_in=0
            )
        return _status(
            "waiting",
            "waiting",
            "Waiting for your phone… Scan the QR code with the OpenMFA app.",
            expires_in=expires_in,
        )
    if device.state == "active":
        message = f"“{device.name}” is activated and confirmed. You are ready to sign in."
        return _status("active", "ok", message, final=True, device_id=device.id)
    if device.state == "pending":
        message = (
            f"Device activated: “{device.name}”. Send a test push to finish — "
            "approve it on your phone."
        )
        return _status("activated", "ok", message, device_id=device.id)
    return _status("gone", "failed", "That device was removed or marked lost.", final=True)


def _status(
    state: str, tone: str, message: str, final: bool = False, **extra: Any
) -> dict[str, Any]:
    """The small JSON document the status boxes poll (see static/js/portal-activate.js)."""
    return {"state": state, "tone": tone, "message": message, "final": final, **extra}


async def status(request: Request) -> Response:
    """``{"state": waiting|expired|activated|active|gone, ...}`` of one of the user's own codes
    (404 for anyone else's). A GET: it changes nothing, so it needs no CSRF token."""
    me = await require_user(request)
    reference = request.query_params.get("ref", "")
    if not reference or len(reference) > MAX_REFERENCE:
        raise NotFound("no such activation code")
    services = services_of(request)
    progress = await services.devices.activation_progress(me.user.name, reference)
    return JSONResponse(
        _progress_json(progress, seconds_left(progress.expires_at, services.clock()))
    )


async def privacyidea(request: Request) -> Response:
    """POST: a privacyIDEA Authenticator enrolment QR (a pending push token)."""
    me = await require_user(request)
    services = services_of(request)
    try:
        offer = await services.pipush.create_enrollment(me.actor, proof_of(me), me.user.name)
    except FactorChangeRefused:
        raise
    except ConfigurationError:
        message = (
            "The privacyIDEA Authenticator cannot be used with this server yet: it needs the "
            "server's public https:// address. Ask your help desk, or use the OpenMFA app or a "
            "standard OATH app."
        )
        return await _page(request, me, {"pi_error": message}, 503)
    except OpenMFAError as exc:
        return await _page(request, me, {"pi_error": _sentence(exc.detail)}, exc.status)
    context = {
        "pi_offer": offer,
        "pi_qr": qr_data_uri(offer.uri),
        "expires_in": seconds_left(offer.expires_at, services.clock()),
    }
    return await _page(request, me, context)


async def privacyidea_status(request: Request) -> Response:
    """``{"state": pending|active|gone}`` of the user's own privacyIDEA token."""
    me = await require_user(request)
    device = await own_device(request, me, request.path_params["device_id"])
    if device.kind != "pipush":
        raise NotFound("no such device")
    if device.state == "active":
        return JSONResponse(
            _status("active", "ok", "The privacyIDEA Authenticator is set up.", final=True)
        )
    if device.state == "pending":
        return JSONResponse(
            _status(
                "waiting",
                "waiting",
                "Waiting for the privacyIDEA Authenticator to scan the code…",
            )
        )
    return JSONResponse(_status("gone", "failed", "That token was removed.", final=True))


def _sentence(detail: str) -> str:
    return (detail[:1].upper() + detail[1:]).rstrip(".") + "."


routes = [
    page("/activate", activate, methods=["GET", "POST"], name="portal_activate"),
    page("/activate/status", status, name="portal_activate_status"),
    page("/activate/privacyidea", privacyidea, methods=["POST"], name="portal_activate_pi"),
    page(
        "/activate/privacyidea/{device_id}/status",
        privacyidea_status,
        name="portal_activate_pi_status",
    ),
]
