"""The published OpenAPI document describes exactly the routes the app serves."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.routing import Mount, Route, WebSocketRoute

import backend
from backend import errors
from tests.support.api import ApiHarness

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}
UNDOCUMENTED = {("get", "/openapi.json")}
# Public, unsigned reads under /app/v1 (the web app fetches the VAPID key before it has a key).
UNSIGNED_APP = {("get", "/app/v1/webpush/key")}
# Raised only while loading settings, before any HTTP server exists.
NOT_FROM_HTTP = {"configuration-error"}
# Raised only by the portal and admin pages, which answer HTML, not problem documents.
HTML_ONLY = {
    "bootstrap-invalid",
    "csrf-failed",
    "invitation-expired",
    "invitation-invalid",
    "invitation-used",
    # The step-up rule's refusals that only portal sessions meet (the app API's device proof
    # is refused, if ever, as factor-change-refused).
    "step-up-required",
    "enrolment-not-allowed",
    # Directories and CSV imports are administered in the console and the CLI only; a
    # directory password check through the gateway API answers with its outcome, never these.
    "import-refused",
    "invalid-directory",
    "directory-error",
    "directory-unavailable",
    "sync-stopped",
}
# The web pages (webportal), outside the API the document describes.
WEB_MOUNTS = {"/portal", "/admin", "/static", "/app"}  # /app: the web app's files


@pytest.fixture
def document(api: ApiHarness) -> dict[str, Any]:
    response = api.http.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    data: dict[str, Any] = response.json()
    return data


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert method in METHODS, f"{path}: {method} is not an HTTP method"
            yield method, path, operation


def refs(node: Any) -> Iterator[str]:
    """Every ``$ref`` anywhere in a JSON value."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def test_documented_operations_are_exactly_the_routes(
    api: ApiHarness, document: dict[str, Any]
) -> None:
    served: set[tuple[str, str]] = set()
    for route in api.app.routes:
        if isinstance(route, Mount) and route.path in WEB_MOUNTS:
            continue
        if isinstance(route, WebSocketRoute):  # OpenAPI cannot describe it: docs/api.md does
            assert route.path == "/gateway/v1/channel"
            continue
        assert isinstance(route, Route), f"{route!r}: only plain routes are checked here"
        assert route.methods, f"{route.path} accepts every method"
        served |= {(m.lower(), route.path) for m in route.methods if m != "HEAD"}
    documented = {(method, path) for method, path, _ in operations(document)}

    assert served - UNDOCUMENTED - documented == set(), "routes missing from /openapi.json"
    assert documented - served == set(), "documented operations that no route serves"
    assert served >= UNDOCUMENTED


def test_the_document_is_well_formed_openapi_3_1(document: dict[str, Any]) -> None:
    assert re.fullmatch(r"3\.1\.\d+", document["openapi"])
    assert document["info"]["title"]
    assert document["info"]["version"] == backend.__version__
    schemas = document["components"]["schemas"]
    schemes = document["components"]["securitySchemes"]
    assert document["paths"]
    for ref in refs(document):
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.rsplit("/", 1)[1] in schemas, f"dangling {ref}"

    for method, path, op in operations(document):
        where = f"{method.upper()} {path}"
        assert path.startswith("/")
        assert op["summary"], where
        responses = op["responses"]
        success = [code for code in responses if code != "default"]
        assert len(success) == 1, where
        assert re.fullmatch(r"2\d\d", success[0]), where
        problem = responses["default"]["content"]["application/problem+json"]["schema"]
        assert problem == {"$ref": "#/components/schemas/Problem"}, where
        templated = set(re.findall(r"\{([^}]+)\}", path))
        params = op.get("parameters", [])
        in_path = {p["name"] for p in params if p["in"] == "path"}
        assert in_path == templated, where
        assert all(p["required"] for p in params if p["in"] == "path"), where
        assert {p["in"] for p in params} <= {"path", "query"}, where
        for requirement in op.get("security", []):
            assert set(requirement) <= set(schemes), where
        if path.startswith("/app/v1/") and (method, path) not in UNSIGNED_APP:
            assert op["security"] == [{"deviceSignature": []}], where
        if path.startswith("/gateway/v1/"):
            assert op["security"] == [{"gatewayToken": []}], where
        body = op.get("requestBody")
        if method in {"get", "delete"}:
            assert body is None, where
        if body is not None:
            ref = body["content"]["application/json"]["schema"]["$ref"]
            schema = schemas[ref.rsplit("/", 1)[1]]
            # Bodies refuse unknown fields; clients must be told so.
            assert schema.get("additionalProperties") is False, where
    assert schemes["gatewayToken"] == {"type": "http", "scheme": "bearer"}


def test_the_long_poll_parameter_is_documented(document: dict[str, Any]) -> None:
    op = document["paths"]["/gateway/v1/authentications/{auth_id}"]["get"]
    wait = [p for p in op["parameters"] if p["in"] == "query"]
    assert [(p["name"], p["schema"]["type"], p["required"]) for p in wait] == [
        ("wait", "number", False)
    ]


def _problem_types() -> set[str]:
    found: set[str] = set()
    pending: list[type[errors.OpenMFAError]] = [errors.OpenMFAError]
    while pending:
        cls = pending.pop()
        found.add(cls.type)
        pending.extend(cls.__subclasses__())
    return found


def test_every_problem_type_the_api_can_answer_is_documented(document: dict[str, Any]) -> None:
    described = document["info"]["description"]
    documented = set(re.findall(r"https://openmfa\.org/problems/([a-z0-9-]+)", described))
    # Starlette's own routing errors are mapped to problems too (see backend.api.problems).
    expected = (_problem_types() - NOT_FROM_HTTP - HTML_ONLY) | {"not-found", "method-not-allowed"}
    assert expected - documented == set()
    assert documented - expected == set()
