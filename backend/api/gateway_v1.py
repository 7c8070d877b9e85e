"""The gateway API (``/gateway/v1``): what the RADIUS bridge and other gateways call.

Authenticated with a bearer API token (``openmfa token create NAME``). The endpoints only a
RADIUS bridge may call (scope ``bridge``) are in :mod:`backend.api.bridge_v1`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from backend.api.client_address import client_address
from backend.api.http import json_response, parse_json, read_body, services_of
from backend.api.schemas import (
    Authentication,
    CodeRequest,
    CodeResponse,
    SignInContextBody,
    StartRequest,
    VerifyRequest,
    VerifyResponse,
)
from backend.errors import AuthenticationRequired, BadRequest
from backend.logs import request_id_var
from backend.services.challenges import ChallengeView
from backend.services.context import Actor, SignInContext
from backend.services.tokens import ApiTokenRecord

if TYPE_CHECKING:
    from backend.services import Services


def _bearer(request: Request) -> str:
    """The token of the ``Authorization: Bearer`` header (401 without one)."""
    return bearer_of(request.headers.get("authorization", ""))


def bearer_of(authorization: str) -> str:
    """The token of an ``Authorization: Bearer`` header value (401 without one)."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationRequired("send the API token as 'Authorization: Bearer <token>'")
    return token.strip()


async def authenticate_gateway(request: Request, scope: str = "gateway") -> ApiTokenRecord:
    """The caller's API token (401 without a live one), allowed ``scope`` (403 otherwise)."""
    token = _bearer(request)
    tokens = services_of(request).tokens
    record = await tokens.authenticate(token)
    client = client_address(request)
    request.state.actor = Actor(f"gateway:{record.name}", client, request_id_var.get())
    tokens.authorize(record, scope)
    return record


def sign_in_context(body: SignInContextBody) -> SignInContext:
    return SignInContext(body.client_name, body.client_ip, body.nas_identifier, body.display)


def _authentication(view: ChallengeView) -> Authentication:
    return Authentication(
        id=view.id,
        user=view.user_name,
        method="push" if view.method == "push" else "otp",
        state=view.state.value,
        created_at=view.created_at,
        expires_at=view.expires_at,
        answered_at=view.answered_at,
        number=view.number,
    )


async def start_op(
    services: Services, actor: Actor, token: ApiTokenRecord, payload: StartRequest
) -> Authentication:
    """Start an authentication (HTTP and the wait channel share this)."""
    view = await services.challenges.start(
        actor,
        payload.user,
        payload.method,
        sign_in_context(payload.context),
        token_id=token.id,
        idempotency_key=payload.idempotency_key,
        number_matching=payload.number_matching,
        can_show_number=payload.can_show_number,
        started_by=token.starter,
        token_scope=token.scope,
    )
    return _authentication(view)


async def start_authentication(request: Request) -> Response:
    """Start a push (or code) authentication; idempotent per ``idempotency_key``."""
    token = await authenticate_gateway(request)
    payload = parse_json(await read_body(request), StartRequest)
    request.state.user_name = payload.user.casefold()
    started = await start_op(services_of(request), request.state.actor, token, payload)
    return json_response(started, status_code=201)


async def get_authentication(request: Request) -> Response:
    """The state; with ``?wait=N`` hold until it is final or N seconds pass."""
    token = await authenticate_gateway(request)
    services = services_of(request)
    raw_wait = request.query_params.get("wait", "0")
    limit = services.settings.long_poll_max_seconds
    try:
        wait = float(raw_wait)
    except ValueError:
        raise BadRequest("wait is a number of seconds") from None
    if not 0 <= wait <= limit:
        raise BadRequest(f"wait is from 0 to {limit} seconds")
    view = await services.challenges.wait(request.path_params["auth_id"], wait, token)
    return json_response(_authentication(view))


async def submit_op(
    services: Services, actor: Actor, token: ApiTokenRecord, auth_id: str, payload: CodeRequest
) -> CodeResponse:
    """Answer a pending authentication with a code (HTTP and the wait channel share this)."""
    view, result = await services.challenges.verify_code(actor, auth_id, payload.code, token)
    return CodeResponse(
        result="accept" if result.accepted else "reject",
        reason=result.reason,
        authentication=_authentication(view),
    )


async def submit_code(request: Request) -> Response:
    """Answer a pending authentication with a code from the app (challenge mode)."""
    token = await authenticate_gateway(request)
    payload = parse_json(await read_body(request), CodeRequest)
    answer = await submit_op(
        services_of(request), request.state.actor, token, request.path_params["auth_id"], payload
    )
    return json_response(answer)


async def cancel_op(
    services: Services, actor: Actor, token: ApiTokenRecord, auth_id: str
) -> Authentication:
    """The gateway gave up waiting (HTTP and the wait channel share this)."""
    return _authentication(await services.challenges.cancel(actor, auth_id, token))


async def cancel_authentication(request: Request) -> Response:
    """The gateway gave up waiting."""
    token = await authenticate_gateway(request)
    cancelled = await cancel_op(
        services_of(request), request.state.actor, token, request.path_params["auth_id"]
    )
    return json_response(cancelled)


async def verify_op(
    services: Services, actor: Actor, bearer: str | None, payload: VerifyRequest
) -> VerifyResponse:
    """Check a code for a user; ``bearer`` (None for the in-process bridge's token) is
    checked inside the verification's own transaction (HTTP and the wait channel share this)."""
    result = await services.otp.verify(
        actor, payload.user, payload.code, sign_in_context(payload.context), bearer=bearer
    )
    return VerifyResponse(
        result="accept" if result.accepted else "reject",
        reason=result.reason,
        user=result.user_name,
    )


async def verify_otp(request: Request) -> Response:
    """Check a code for a user in one call (OTP mode; the hot path).

    The token is checked inside the verification's own transaction: one database round trip.
    """
    token = _bearer(request)
    payload = parse_json(await read_body(request), VerifyRequest)
    request.state.user_name = payload.user.casefold()
    client = client_address(request)
    services = services_of(request)
    bearer: str | None = token
    # The in-process bridge's token lives in memory only; the query would not find it.
    ephemeral = services.tokens.match_ephemeral(token)
    name = "unverified"
    if ephemeral is not None:
        bearer, name = None, ephemeral.name
    actor = Actor(f"gateway:{name}", client, request_id_var.get())
    return json_response(await verify_op(services, actor, bearer, payload))


routes = [
    Route("/gateway/v1/authentications", start_authentication, methods=["POST"]),
    Route("/gateway/v1/authentications/{auth_id}", get_authentication, methods=["GET"]),
    Route("/gateway/v1/authentications/{auth_id}/code", submit_code, methods=["POST"]),
    Route("/gateway/v1/authentications/{auth_id}/cancel", cancel_authentication, methods=["POST"]),
    Route("/gateway/v1/otp/verify", verify_otp, methods=["POST"]),
]
