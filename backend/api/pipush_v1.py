"""The privacyIDEA Authenticator compatibility endpoint: ``/pipush/v1/push``.

The unmodified store app sends everything to one URL, form-encoded, and reads privacyIDEA's
JSON shapes, not our problem documents (docs/dev/privacyidea-app-protocol.md, section B):

* ``GET`` with ``serial``, ``timestamp``, ``signature``: poll;
* ``POST`` with ``pubkey``: rollout; with ``new_fb_token``: token update; with ``nonce``:
  answer; anything else (the iOS app's empty network-check POST) is refused at once, with no
  effect on the enrolment.

Success is ``{"result": {"status": true, "value": ...}}``. A refusal is audited
(``request.refused``, as everywhere) and said in the body the app reads:
``{"result": {"status": false, "error": {"code": ..., "message": ...}}}`` with the error's
status (401s as 403: the app has no credentials to retry with), except for answers, which are
refused with HTTP 200 and ``"value": false``: any 4xx makes some app versions keep the
request on screen, yet a refused answer can never succeed when sent again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from backend.api.client_address import client_address
from backend.api.http import read_body, services_of
from backend.api.problems import request_actor
from backend.errors import BadRequest, DatabaseError, OpenMFAError, PayloadTooLarge
from backend.logs import request_id_var
from backend.services.context import Actor
from backend.services.pipush import ENDPOINT_PATH

log = logging.getLogger("openmfa.api")

#: The largest request the app sends is a rollout with an RSA-4096 key (~1.2 kB).
MAX_BODY_BYTES = 8192
MAX_QUERY_BYTES = 4096
_MAX_FIELDS = 16
_FORM = "application/x-www-form-urlencoded"


def _fields(raw: str, what: str) -> dict[str, str]:
    """Form or query fields; a field sent twice is refused (which one was signed?)."""
    try:
        pairs = parse_qsl(
            raw, keep_blank_values=True, strict_parsing=False, max_num_fields=_MAX_FIELDS
        )
    except ValueError as exc:
        raise BadRequest(f"the {what} has too many fields") from exc
    fields: dict[str, str] = {}
    for key, value in pairs:
        if key in fields:
            raise BadRequest(f"{key} is given twice")
        fields[key] = value
    return fields


def _need(fields: Mapping[str, str], name: str) -> str:
    value = fields.get(name)
    if not value:
        raise BadRequest(f"{name} is required")
    return value


def _ok(value: object, detail: Mapping[str, object] | None = None) -> JSONResponse:
    body: dict[str, object] = {"result": {"status": True, "value": value}}
    if detail is not None:
        body["detail"] = dict(detail)
    return JSONResponse(body)


async def _refused(request: Request, exc: OpenMFAError, what: str) -> JSONResponse:
    """Audit a refusal and answer it in the shape the app reads."""
    if exc.status >= 500:
        log.error("privacyIDEA app request failed: %s", exc.detail, extra={"problem": exc.type})
    if not isinstance(exc, DatabaseError):
        try:
            await services_of(request).audit.record(
                request_actor(request, exc),
                "request.refused",
                exc.type,
                user_name=str(exc.extra.get("user_name", "")),
                detail=f"{request.method} {request.url.path} ({what}): {exc.detail}",
            )
        except OpenMFAError:
            log.warning("could not audit a refused request", exc_info=True)
    if what == "answer" and exc.status < 500:
        return JSONResponse(
            {"result": {"status": True, "value": False}, "detail": {"message": exc.detail}}
        )
    status = 403 if exc.status == 401 else exc.status
    return JSONResponse(
        {"result": {"status": False, "error": {"code": status, "message": exc.detail}}},
        status_code=status,
    )


async def push_endpoint(request: Request) -> Response:
    """Every request of the privacyIDEA Authenticator (see the module docstring)."""
    client = client_address(request)
    actor = Actor("pipush:anonymous", client, request_id_var.get())
    request.state.actor = actor
    what = "poll" if request.method == "GET" else "request"
    try:
        if request.method == "GET":
            return await _poll(request, actor)
        fields = await _form(request)
        if "pubkey" in fields:
            what = "rollout"
            return await _rollout(request, actor, fields)
        if "new_fb_token" in fields:
            what = "token update"
            return await _token_update(request, actor, fields)
        if "nonce" in fields:
            what = "answer"
            return await _answer(request, actor, fields)
        raise BadRequest(
            "nothing to do: expected a rollout, answer or token update "
            "(the iOS app's first, empty request arrives this way and changes nothing)"
        )
    except OpenMFAError as exc:
        return await _refused(request, exc, what)


async def _form(request: Request) -> dict[str, str]:
    body = await read_body(request)  # bounded by max_body_bytes while reading
    if len(body) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"the body may have at most {MAX_BODY_BYTES} bytes")
    if not body:
        return {}
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type != _FORM:
        raise BadRequest(f"the body must be {_FORM}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the body is not UTF-8") from None
    return _fields(text, "body")


async def _poll(request: Request, actor: Actor) -> Response:
    query: bytes = request.scope.get("query_string", b"")
    if len(query) > MAX_QUERY_BYTES:
        raise BadRequest(f"the query may have at most {MAX_QUERY_BYTES} bytes")
    # The app does not percent-encode its values: the signature's "=" padding arrives raw,
    # which a parser that splits each field at its first "=" takes as it is.
    fields = _fields(query.decode("latin-1"), "query")
    challenges = await services_of(request).pipush.poll(
        actor, _need(fields, "serial"), _need(fields, "timestamp"), _need(fields, "signature")
    )
    return _ok(challenges)


async def _rollout(request: Request, actor: Actor, fields: Mapping[str, str]) -> Response:
    # fbtoken (no_firebase_token in poll-only mode) and capabilities are not needed: this
    # server never pushes, and always advertises (and signs) what it supports per challenge.
    rolled = await services_of(request).pipush.rollout(
        actor,
        _need(fields, "serial"),
        _need(fields, "enrollment_credential"),
        _need(fields, "pubkey"),
        user_agent=request.headers.get("user-agent", ""),
    )
    return _ok(True, {"public_key": rolled.server_public_key, "rollout_state": "enrolled"})


async def _token_update(request: Request, actor: Actor, fields: Mapping[str, str]) -> Response:
    await services_of(request).pipush.token_update(
        actor,
        _need(fields, "serial"),
        _need(fields, "new_fb_token"),
        _need(fields, "timestamp"),
        _need(fields, "signature"),
    )
    return _ok(True)


async def _answer(request: Request, actor: Actor, fields: Mapping[str, str]) -> Response:
    decline = fields.get("decline")
    if decline not in (None, "1"):
        raise BadRequest("decline is 1 when given")
    await services_of(request).pipush.answer(
        actor,
        _need(fields, "serial"),
        _need(fields, "nonce"),
        _need(fields, "signature"),
        decline=decline == "1",
        decline_reason=fields.get("decline_reason"),
        presence_answer=fields.get("presence_answer"),
    )
    return _ok(True)


routes = [Route(ENDPOINT_PATH, push_endpoint, methods=["GET", "POST"])]
