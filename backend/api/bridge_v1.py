"""What only a RADIUS bridge may call (``/gateway/v1``, API tokens of scope ``bridge``).

The clients document (with the shared secrets, so a plain gateway token gets 403), local
password checks for primary authentication, and audit rows for decisions the bridge takes
alone. A bridge token can also call everything in :mod:`backend.api.gateway_v1`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from backend.api.gateway_v1 import authenticate_gateway, sign_in_context
from backend.api.http import json_response, parse_json, read_body, services_of
from backend.api.schemas import (
    BridgeAuditRequest,
    PasswordVerifyRequest,
    PasswordVerifyResponse,
    RadiusClients,
)
from backend.services.context import Actor

if TYPE_CHECKING:
    from backend.services import Services

BRIDGE = "bridge"


def _etag(revision: str) -> str:
    return f'"{revision}"'


def _not_modified(header: str | None, revision: str) -> bool:
    """``If-None-Match`` with the current ETag (weak comparison, RFC 9110 13.1.2) or ``*``."""
    if not header:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in header.split(",")}
    return "*" in tags or _etag(revision) in tags


async def radius_clients(request: Request) -> Response:
    """The clients document; ``304`` when ``If-None-Match`` names the current revision."""
    await authenticate_gateway(request, BRIDGE)
    service = services_of(request).radius_clients
    # The secrets stay in the database (they are not even decrypted) unless something changed.
    revision = await service.revision()
    headers = {"Cache-Control": "no-store"}
    if _not_modified(request.headers.get("if-none-match"), revision):
        return Response(status_code=304, headers={**headers, "ETag": _etag(revision)})
    document = await service.fetch_document(request.state.actor)
    response = json_response(
        RadiusClients.model_validate({"revision": document.revision, "clients": document.clients})
    )
    response.headers.update({**headers, "ETag": _etag(document.revision)})
    return response


async def password_op(
    services: Services, actor: Actor, payload: PasswordVerifyRequest
) -> PasswordVerifyResponse:
    """Check a user's password (HTTP and the wait channel share this)."""
    result = await services.users.verify_password(
        actor,
        payload.user,
        payload.password,
        sign_in_context(payload.context),
        client=payload.client,
    )
    return PasswordVerifyResponse(
        result="accept" if result.accepted else "reject", reason=result.reason
    )


async def verify_password(request: Request) -> Response:
    """Check a user's password: the local one (argon2id), or for a user from a directory (and
    any user of a client with primary ldap) a bind to the directory. Wrong ones count toward
    the code lockout; an unreachable directory is a reject with its own reason."""
    await authenticate_gateway(request, BRIDGE)
    payload = parse_json(await read_body(request), PasswordVerifyRequest)
    request.state.user_name = payload.user.casefold()
    return json_response(await password_op(services_of(request), request.state.actor, payload))


async def bridge_audit(request: Request) -> Response:
    """Record a decision the bridge took alone (exempt user or network, fail-safe accept)."""
    await authenticate_gateway(request, BRIDGE)
    payload = parse_json(await read_body(request), BridgeAuditRequest)
    request.state.user_name = payload.user.casefold()
    await services_of(request).radius_clients.record_bridge_decision(
        request.state.actor, payload.action, payload.user, payload.detail
    )
    return Response(status_code=204)


routes = [
    Route("/gateway/v1/radius/clients", radius_clients, methods=["GET"]),
    Route("/gateway/v1/password/verify", verify_password, methods=["POST"]),
    Route("/gateway/v1/audit", bridge_audit, methods=["POST"]),
]
