"""The published OpenAPI 3.1 document for the app and gateway APIs.

Built from the same pydantic models the handlers validate with; a test checks that every
route is described here and nothing else is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from backend import __version__
from backend.api import schemas as s


@dataclass(frozen=True, slots=True)
class Operation:
    method: str
    path: str
    summary: str
    response: type[BaseModel] | None
    status: int = 200
    request: type[BaseModel] | None = None
    security: str | None = None
    query: tuple[tuple[str, str], ...] = ()
    description: str = ""


_PIPUSH = (
    "The unmodified privacyIDEA Authenticator app's own wire format, RSA-signed, answered in "
    "privacyIDEA's JSON shape, not with problem documents: see docs/apps.md and "
    "docs/dev/privacyidea-app-protocol.md."
)
SIGNED = "deviceSignature"
BEARER = "gatewayToken"

OPERATIONS = (
    Operation(
        "post",
        "/app/v1/activate",
        "Redeem an activation code",
        s.ActivateResponse,
        201,
        s.ActivateRequest,
        SIGNED,
    ),
    Operation(
        "get",
        "/app/v1/challenges",
        "Pending challenges for this device",
        s.ChallengeList,
        security=SIGNED,
    ),
    Operation(
        "get",
        "/app/v1/challenges/{challenge_id}",
        "One challenge",
        s.DeviceChallenge,
        security=SIGNED,
    ),
    Operation(
        "post",
        "/app/v1/challenges/{challenge_id}/answer",
        "Approve, deny or report fraud",
        s.AnswerResponse,
        request=s.AnswerRequest,
        security=SIGNED,
    ),
    Operation(
        "put",
        "/app/v1/device/push-token",
        "Replace the push token",
        None,
        204,
        s.PushTokenRequest,
        SIGNED,
    ),
    Operation("delete", "/app/v1/device", "Remove this device", None, 204, security=SIGNED),
    Operation(
        "get",
        "/app/v1/webpush/key",
        "The server's VAPID public key for Web Push",
        s.WebPushKey,
        description="Not signed. 404 not-found when Web Push is switched off "
        "(webpush_enabled = false).",
    ),
    Operation(
        "post",
        "/gateway/v1/authentications",
        "Start an authentication",
        s.Authentication,
        201,
        s.StartRequest,
        BEARER,
    ),
    Operation(
        "get",
        "/gateway/v1/authentications/{auth_id}",
        "State, with optional long-poll",
        s.Authentication,
        security=BEARER,
        query=(("wait", "seconds to wait for a final state (0 to the server's limit)"),),
    ),
    Operation(
        "post",
        "/gateway/v1/authentications/{auth_id}/code",
        "Answer with a code",
        s.CodeResponse,
        request=s.CodeRequest,
        security=BEARER,
    ),
    Operation(
        "post",
        "/gateway/v1/authentications/{auth_id}/cancel",
        "Cancel",
        s.Authentication,
        security=BEARER,
    ),
    Operation(
        "post",
        "/gateway/v1/otp/verify",
        "Verify a code for a user",
        s.VerifyResponse,
        request=s.VerifyRequest,
        security=BEARER,
    ),
    Operation(
        "get",
        "/gateway/v1/radius/clients",
        "The RADIUS clients document (token scope bridge)",
        s.RadiusClients,
        security=BEARER,
        description="Holds the shared secrets: tokens of scope gateway get 403 forbidden. "
        'The ETag is the quoted revision; a request with If-None-Match: "<revision>" of the '
        "current revision is answered 304 Not Modified with no body.",
    ),
    Operation(
        "post",
        "/gateway/v1/password/verify",
        "Check a user's local password (token scope bridge)",
        s.PasswordVerifyResponse,
        request=s.PasswordVerifyRequest,
        security=BEARER,
        description="Wrong passwords count toward the same lockout as wrong codes "
        "(otp_max_failures); while locked the answer is 429 otp-locked.",
    ),
    Operation(
        "post",
        "/gateway/v1/audit",
        "Record a decision the bridge took alone (token scope bridge)",
        None,
        204,
        s.BridgeAuditRequest,
        BEARER,
    ),
    Operation("get", "/healthz", "Liveness", s.Health),
    Operation("get", "/readyz", "Readiness (database reachable)", s.Health),
    Operation(
        "get",
        "/pipush/v1/push",
        "privacyIDEA Authenticator: poll (serial, timestamp, signature in the query)",
        None,
        description=_PIPUSH,
    ),
    Operation(
        "post",
        "/pipush/v1/push",
        "privacyIDEA Authenticator: rollout, answer or token update (form-encoded)",
        None,
        description=_PIPUSH,
    ),
)

PROBLEM_TYPES = (
    "invalid-request",
    "invalid-name",
    "invalid-policy",
    "invalid-radius-client",
    "payload-too-large",
    "not-found",
    "method-not-allowed",
    "conflict",
    "unauthorized",
    "forbidden",
    "factor-change-refused",
    "bad-signature",
    "stale-request",
    "replayed-request",
    "activation-code-invalid",
    "activation-code-expired",
    "activation-code-used",
    "unknown-user",
    "user-not-enrolled",
    "user-disabled",
    "user-blocked",
    "otp-locked",
    "pin-required",
    "wrong-pin",
    "pin-locked",
    "wrong-number",
    "push-limited",
    "too-many-watched",
    "busy",
    "number-matching-unavailable",
    "challenge-expired",
    "challenge-closed",
    "database-unavailable",
    "server-key-error",
    "internal-error",
)


def _ref(model: type[BaseModel], components: dict[str, Any]) -> dict[str, str]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, sub in schema.pop("$defs", {}).items():
        components[name] = sub
    components[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def build_document() -> dict[str, Any]:
    """The whole document."""
    components: dict[str, Any] = {}
    paths: dict[str, dict[str, Any]] = {}
    problem = _ref(s.Problem, components)
    for op in OPERATIONS:
        parameters: list[dict[str, Any]] = [
            {"name": part[1:-1], "in": "path", "required": True, "schema": {"type": "string"}}
            for part in op.path.split("/")
            if part.startswith("{")
        ]
        parameters += [
            {
                "name": name,
                "in": "query",
                "required": False,
                "description": text,
                "schema": {"type": "number"},
            }
            for name, text in op.query
        ]
        responses: dict[str, Any] = {
            str(op.status): {"description": "success"}
            if op.response is None
            else {
                "description": "success",
                "content": {"application/json": {"schema": _ref(op.response, components)}},
            },
            "default": {
                "description": "problem (RFC 9457)",
                "content": {"application/problem+json": {"schema": problem}},
            },
        }
        entry: dict[str, Any] = {"summary": op.summary, "responses": responses}
        if op.description:
            entry["description"] = op.description
        if parameters:
            entry["parameters"] = parameters
        if op.request is not None:
            entry["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _ref(op.request, components)}},
            }
        if op.security is not None:
            entry["security"] = [{op.security: []}]
        paths.setdefault(op.path, {})[op.method] = entry
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "OpenMFA app and gateway APIs",
            "version": __version__,
            "description": "The RADIUS bridges' wait channel, a WebSocket at /gateway/v1/channel, "
            "is described in docs/api.md (OpenAPI cannot describe it). Problem types: "
            + ", ".join(f"https://openmfa.org/problems/{t}" for t in PROBLEM_TYPES),
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                BEARER: {"type": "http", "scheme": "bearer"},
                SIGNED: {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-OpenMFA-Signature",
                    "description": "request signature (Ed25519, or P-256 ECDSA as r||s); "
                    "see docs/app-api.md",
                },
            },
        },
    }


async def openapi(request: Request) -> Response:
    """Serve the document."""
    return JSONResponse(build_document())


routes = [Route("/openapi.json", openapi, methods=["GET"])]
