"""The app API (``/app/v1``): what an authenticator app calls. Every request is signed."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from backend.api.client_address import client_address
from backend.api.http import json_response, parse_json, read_body, services_of, target_of
from backend.api.schemas import (
    ActivateRequest,
    ActivateResponse,
    AnswerRequest,
    AnswerResponse,
    ChallengeContext,
    ChallengeList,
    DeviceChallenge,
    PushTokenRequest,
    TotpParameters,
    WebPushKey,
)
from backend.domain import signing
from backend.domain.challenge import Answer
from backend.domain.stepup import DeviceProof
from backend.errors import BadSignature, NotFound, StaleRequest
from backend.logs import request_id_var
from backend.services.challenges import ChallengeView
from backend.services.context import Actor
from backend.services.devices import DeviceRecord
from backend.services.geoip import GeoIp

ACTIVATION_DEVICE = "activation"


async def _signed_device(request: Request) -> tuple[DeviceRecord, bytes]:
    body = await read_body(request)
    services = services_of(request)
    device = await services.devices.authenticate(
        request.method, target_of(request), dict(request.headers), body
    )
    request.state.actor = Actor(
        f"device:{device.id}", client_address(request), request_id_var.get()
    )
    request.state.user_name = device.user_name  # so refusals from here on name the user
    return device, body


def _device_view(view: ChallengeView, geoip: GeoIp | None) -> DeviceChallenge:
    """What the app may know about a challenge: never the number to match (the user reads
    it at the sign-in and types it, which is the point), never a secret."""
    location = geoip.locate(view.client_ip) if geoip is not None else None
    return DeviceChallenge(
        id=view.id,
        state=view.state.value,
        display=view.display,
        client_name=view.client_name,
        client_ip=view.client_ip,
        nas_identifier=view.nas_identifier,
        created_at=view.created_at,
        expires_at=view.expires_at,
        number_required=view.number is not None,
        context=ChallengeContext(
            client_name=view.client_name,
            client_ip=view.client_ip,
            nas_identifier=view.nas_identifier,
            time=view.created_at,
            city=(location.city or None) if location else None,
            country=(location.country or None) if location else None,
        ),
    )


async def activate(request: Request) -> Response:
    """Redeem an activation code. Signed with the new key: proof that the app holds it."""
    body = await read_body(request)
    payload = parse_json(body, ActivateRequest)
    public_key = signing.b64u_decode(payload.public_key)
    signed = signing.parse_headers(dict(request.headers))
    if signed.device != ACTIVATION_DEVICE:
        raise BadSignature(f"activation requests carry device '{ACTIVATION_DEVICE}'")
    services = services_of(request)
    if (
        abs(services.clock().timestamp() - signed.timestamp)
        > services.settings.signature_skew_seconds
    ):
        raise StaleRequest("the device clock is too far off")
    message = signing.canonical_request(
        request.method,
        target_of(request),
        signed.device,
        str(signed.timestamp),
        signed.nonce,
        body,
    )
    signing.verify(public_key, signed.signature, message)
    actor = Actor("device:activating", client_address(request), request_id_var.get())
    request.state.actor = actor
    device = await services.activation.activate(
        actor,
        payload.code,
        public_key,
        payload.platform,
        payload.push_token,
        payload.name,
        payload.pin,
    )
    return json_response(
        ActivateResponse(
            device_id=device.device_id,
            user=device.user_name,
            totp=TotpParameters(secret=device.seed),
            require_pin=device.require_pin,
            has_pin=device.has_pin,
        ),
        status_code=201,
    )


async def list_challenges(request: Request) -> Response:
    """Pending challenges for this device's user (also the polling path)."""
    device, _ = await _signed_device(request)
    services = services_of(request)
    views = await services.challenges.pending_for_device(device)
    return json_response(ChallengeList(challenges=[_device_view(v, services.geoip) for v in views]))


async def get_challenge(request: Request) -> Response:
    """One challenge with its context."""
    device, _ = await _signed_device(request)
    services = services_of(request)
    view = await services.challenges.get_for_device(device, request.path_params["challenge_id"])
    return json_response(_device_view(view, services.geoip))


async def answer_challenge(request: Request) -> Response:
    """Approve, deny or report fraud."""
    device, body = await _signed_device(request)
    payload = parse_json(body, AnswerRequest)
    view = await services_of(request).challenges.answer(
        request.state.actor,
        device,
        request.path_params["challenge_id"],
        Answer(payload.answer),
        pin=payload.pin,
        number=payload.number,
    )
    return json_response(AnswerResponse(id=view.id, state=view.state.value))


async def update_push_token(request: Request) -> Response:
    """Replace the push token (apps get new ones from APNs / FCM from time to time)."""
    device, body = await _signed_device(request)
    payload = parse_json(body, PushTokenRequest)
    await services_of(request).devices.update_push_token(
        request.state.actor, device, payload.push_token
    )
    return Response(status_code=204)


async def deactivate(request: Request) -> Response:
    """The app removes itself (the user deleted the account in the app)."""
    device, _ = await _signed_device(request)
    # The device's own signature is the proof: it may remove itself, nothing else.
    await services_of(request).devices.remove(
        request.state.actor, DeviceProof(device.id), device.id
    )
    return Response(status_code=204)


async def webpush_key(request: Request) -> Response:
    """The VAPID public key the web app subscribes with (not signed: it is public)."""
    key = services_of(request).webpush_key
    if key is None:
        raise NotFound("Web Push is switched off on this server")
    return json_response(WebPushKey(vapid_public_key=key.public_b64u))


routes = [
    Route("/app/v1/activate", activate, methods=["POST"]),
    Route("/app/v1/challenges", list_challenges, methods=["GET"]),
    Route("/app/v1/challenges/{challenge_id}", get_challenge, methods=["GET"]),
    Route("/app/v1/challenges/{challenge_id}/answer", answer_challenge, methods=["POST"]),
    Route("/app/v1/device/push-token", update_push_token, methods=["PUT"]),
    Route("/app/v1/device", deactivate, methods=["DELETE"]),
    Route("/app/v1/webpush/key", webpush_key, methods=["GET"]),
]
