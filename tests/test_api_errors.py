"""Bad input gets a clear RFC 9457 error and an audit row; request ids; health endpoints."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from backend.config import Settings
from backend.errors import DatabaseError
from tests.support.api import ApiHarness, assert_problem
from tests.support.clock import FakeClock

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
START = "/gateway/v1/authentications"


async def _explode(request: Request) -> Response:
    raise RuntimeError("a bug in a handler")


@pytest.fixture
def api(settings: Settings, clock: FakeClock) -> Iterator[ApiHarness]:
    with ApiHarness(settings, clock, [Route("/test/explode", _explode)]) as running:
        yield running


def audited(api: ApiHarness, response: httpx.Response, type_: str) -> None:
    """The refusal left an audit row carrying the response's request id."""
    request_id = response.headers["x-request-id"]
    rows = [row for row in api.refusals() if row.request_id == request_id]
    assert [row.result for row in rows] == [type_]


# -- malformed bodies ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"", b"[]", b'"alice"', b"null", b"\xff\xfe{}", b'{"user": "alice"', b"{}"],
)
def test_malformed_json_is_refused(api: ApiHarness, body: bytes) -> None:
    api.add_user("alice")
    response = api.gateway.post(START, content=body, headers={"content-type": "application/json"})
    assert_problem(response, 400, "invalid-request")
    audited(api, response, "invalid-request")
    assert api.run(api.services.audit.query(action="auth.start")) == []


@pytest.mark.parametrize(
    ("path", "payload", "field"),
    [
        (START, {"user": 5}, "user"),
        (START, {"user": "alice", "method": "sms"}, "method"),
        (START, {"user": "alice", "context": "vpn"}, "context"),
        (START, {"user": "alice", "context": {"client_ip": ["192.0.2.1"]}}, "client_ip"),
        (START, {"user": "alice", "idempotency_key": ""}, "idempotency_key"),
        (START, {"user": "alice", "context": {"display": "x" * 257}}, "display"),
        ("/gateway/v1/otp/verify", {"user": "alice", "code": 123456}, "code"),
        ("/gateway/v1/otp/verify", {"user": "alice"}, "code"),
        (f"{START}/ch_x/code", {"code": None}, "code"),
        # PostgreSQL cannot store NUL: refused for every database, before any service runs
        (START, {"user": "alice", "context": {"display": "VPN\u0000"}}, "context.display"),
        (START, {"user": "al\u001bice"}, "user"),
    ],
)
def test_wrong_field_types_name_the_field(
    api: ApiHarness, path: str, payload: dict[str, Any], field: str
) -> None:
    response = api.gateway.post(path, json=payload)
    problem = assert_problem(response, 400, "invalid-request")
    assert field in problem["detail"]
    audited(api, response, "invalid-request")


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        (START, {"user": "alice", "admin": True}),
        (START, {"user": "alice", "context": {"client_name": "vpn", "password": "hunter2"}}),
        ("/gateway/v1/otp/verify", {"user": "alice", "code": "123456", "pin": "1"}),
        (
            "/app/v1/activate",
            {"code": "x", "public_key": "x", "platform": "ios", "device_id": "dev_mine"},
        ),
    ],
)
def test_extra_fields_are_refused(api: ApiHarness, path: str, payload: dict[str, Any]) -> None:
    response = api.gateway.post(path, json=payload)
    problem = assert_problem(response, 400, "invalid-request")
    assert "extra" in problem["detail"].lower()
    assert "hunter2" not in problem["detail"]  # bad input is named, never echoed back


def test_app_api_bodies_are_validated(api: ApiHarness) -> None:
    base = {"code": "c", "public_key": "k", "platform": "reference"}
    for payload, field in (
        ({**base, "platform": "windows"}, "platform"),
        ({**base, "code": ""}, "code"),
        ({**base, "pin": 4711}, "pin"),
        ({"public_key": "k", "platform": "ios"}, "code"),
    ):
        response = api.http.post("/app/v1/activate", json=payload)
        problem = assert_problem(response, 400, "invalid-request")
        assert field in problem["detail"]


# -- size limit --------------------------------------------------------------------------------


def _big_body(size: int) -> bytes:
    padding = size - len(json.dumps({"user": "alice", "context": {"display": ""}}))
    return json.dumps({"user": "alice", "context": {"display": "x" * padding}}).encode()


@pytest.mark.parametrize("path", [START, "/app/v1/activate", "/gateway/v1/otp/verify"])
def test_body_over_the_limit_with_content_length(api: ApiHarness, path: str) -> None:
    limit = api.settings.max_body_bytes
    body = _big_body(limit + 1)
    assert len(body) == limit + 1
    response = api.gateway.post(path, content=body, headers={"content-type": "application/json"})
    assert response.request.headers["content-length"] == str(limit + 1)
    assert_problem(response, 413, "payload-too-large")
    audited(api, response, "payload-too-large")


def test_body_over_the_limit_chunked(api: ApiHarness) -> None:
    limit = api.settings.max_body_bytes
    chunks = [b'{"user": "alice", "context": {"display": "', b"x" * (limit // 2), b"x" * limit]
    response = api.gateway.post(
        START, content=iter(chunks), headers={"content-type": "application/json"}
    )
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in response.request.headers
    assert_problem(response, 413, "payload-too-large")
    audited(api, response, "payload-too-large")


def test_body_at_the_limit_is_read(api: ApiHarness) -> None:
    # Exactly at the limit: read and validated (the display is too long for the schema).
    body = _big_body(api.settings.max_body_bytes)
    response = api.gateway.post(START, content=body, headers={"content-type": "application/json"})
    assert_problem(response, 400, "invalid-request")
    chunked = api.gateway.post(
        START, content=iter([body[:100], body[100:]]), headers={"content-type": "application/json"}
    )
    assert_problem(chunked, 400, "invalid-request")


# -- routing errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/nope", "/app/v1", "/app/v2/challenges", "/gateway/v1/authentications/a/b/c"]
)
def test_unknown_routes_are_problem_documents(api: ApiHarness, path: str) -> None:
    assert_problem(api.http.get(path), 404, "not-found")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/healthz", {"GET", "HEAD"}),
        ("GET", "/gateway/v1/otp/verify", {"POST"}),
        ("POST", "/app/v1/challenges", {"GET", "HEAD"}),
        ("PUT", START, {"POST"}),
    ],
)
def test_wrong_method_is_405_with_allow(
    api: ApiHarness, method: str, path: str, allowed: set[str]
) -> None:
    response = api.http.request(method, path)
    assert_problem(response, 405, "method-not-allowed")
    assert set(re.split(r",\s*", response.headers["allow"])) == allowed


def test_an_unexpected_error_is_a_500_problem_with_the_request_id(api: ApiHarness) -> None:
    response = api.http.get("/test/explode", headers={"X-Request-ID": "trace-500"})
    problem = assert_problem(response, 500, "internal-error")
    assert problem["request_id"] == "trace-500"
    assert "bug" not in problem["detail"]  # no internals leak
    assert api.http.get("/healthz").status_code == 200  # and the server carries on


# -- request ids -------------------------------------------------------------------------------


def test_request_ids_are_made_echoed_and_audited(api: ApiHarness) -> None:
    made = api.http.get("/healthz")
    assert re.fullmatch(r"[0-9a-f]{16}", made.headers["x-request-id"])
    assert api.http.get("/healthz").headers["x-request-id"] != made.headers["x-request-id"]

    given = "bridge-7.req_42"
    response = api.gateway.post(START, json={"user": "nobody"}, headers={"X-Request-ID": given})
    assert response.headers["x-request-id"] == given
    assert assert_problem(response, 404, "unknown-user")["request_id"] == given
    audited(api, response, "unknown-user")

    for insane in ("has spaces", "x" * 65, "semi;colon", "ünï"):
        response = api.http.get("/nope", headers={"X-Request-ID": insane.encode()})
        assert response.headers["x-request-id"] != insane
        assert re.fullmatch(r"[0-9a-f]{16}", response.headers["x-request-id"])
        assert assert_problem(response, 404, "not-found")


# -- health --------------------------------------------------------------------------------------


def test_healthz_and_readyz(api: ApiHarness) -> None:
    for path in ("/healthz", "/readyz"):
        response = api.http.get(path)
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {"status": "ok", "detail": ""}


class _BrokenDatabase:
    """Stands in for the server's database: every transaction fails as a lost one would."""

    @asynccontextmanager
    async def read(self) -> AsyncIterator[Any]:
        raise DatabaseError("database error: connection refused")
        yield  # pragma: no cover - makes this a generator


def test_readyz_reports_an_unusable_database(api: ApiHarness) -> None:
    services = api.server_services
    real = services.db
    services.db = _BrokenDatabase()  # type: ignore[assignment]
    try:
        response = api.http.get("/readyz")
    finally:
        services.db = real
    assert response.status_code == 503
    assert response.json() == {
        "status": "unavailable",
        "detail": "database error: connection refused",
    }
    assert api.http.get("/healthz").status_code == 200
    assert api.http.get("/readyz").status_code == 200
