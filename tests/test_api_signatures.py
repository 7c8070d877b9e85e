"""Every way an app request's Ed25519 signature can be wrong, and activation codes that are not
good, each refused with its own problem type and an audit row."""

from __future__ import annotations

import secrets
from typing import Any

import httpx
import pytest

from backend.authenticator.client import AppClient
from backend.domain import signing
from backend.domain.stepup import ADMINISTRATOR
from tests.support.api import ADMIN, ApiHarness, assert_problem, new_key, signed_request
from tests.support.clock import FakeClock

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def phone(api: ApiHarness) -> AppClient:
    api.add_user("alice")
    return api.device("alice")


def key_and_id(phone: AppClient) -> tuple[Any, str]:
    assert phone.device is not None
    return phone.device.key(), phone.device.device_id


def refused_and_audited(api: ApiHarness, response: httpx.Response, status: int, type_: str) -> None:
    """The problem document, and the ``request.refused`` row carrying its request id."""
    problem = assert_problem(response, status, type_)
    rows = [row for row in api.refusals() if row.request_id == problem["request_id"]]
    assert [row.result for row in rows] == [type_], rows
    assert rows[0].source == "127.0.0.1"
    assert response.request.url.path in rows[0].detail


# -- the signature headers --------------------------------------------------------------------


@sqlite_only
def test_a_correctly_signed_request_is_accepted(api: ApiHarness, phone: AppClient) -> None:
    key, device_id = key_and_id(phone)
    response = signed_request(api.http, "GET", "/app/v1/challenges", key, device_id)
    assert response.status_code == 200, response.text
    assert response.json() == {"challenges": []}


@sqlite_only
@pytest.mark.parametrize(
    "header",
    [
        signing.HEADER_DEVICE,
        signing.HEADER_TIMESTAMP,
        signing.HEADER_NONCE,
        signing.HEADER_SIGNATURE,
    ],
)
def test_each_missing_header_is_refused(api: ApiHarness, phone: AppClient, header: str) -> None:
    key, device_id = key_and_id(phone)
    headers = signing.sign_request(
        key, device_id, "GET", "/app/v1/challenges", b"", int(api.clock().timestamp())
    )
    del headers[header]
    response = api.http.get("/app/v1/challenges", headers=headers)
    refused_and_audited(api, response, 401, "bad-signature")
    assert header in response.json()["detail"]


@sqlite_only
@pytest.mark.parametrize(
    ("header", "value"),
    [
        (signing.HEADER_SIGNATURE, "***not base64***"),
        (signing.HEADER_SIGNATURE, signing.b64u_encode(b"short")),
        (signing.HEADER_TIMESTAMP, "yesterday"),
        (signing.HEADER_TIMESTAMP, "-1700000000"),
        (signing.HEADER_NONCE, "short"),
        (signing.HEADER_NONCE, "has spaces in it, sixteen+"),
    ],
)
def test_malformed_headers_are_refused(
    api: ApiHarness, phone: AppClient, header: str, value: str
) -> None:
    key, device_id = key_and_id(phone)
    response = signed_request(
        api.http, "GET", "/app/v1/challenges", key, device_id, headers={header: value}
    )
    refused_and_audited(api, response, 401, "bad-signature")


@sqlite_only
def test_wrong_key_tampered_body_path_and_query_are_refused(
    api: ApiHarness, phone: AppClient
) -> None:
    key, device_id = key_and_id(phone)
    auth_id = api.start("alice")["id"]
    other_key, _ = new_key()

    wrong_key = signed_request(api.http, "GET", "/app/v1/challenges", other_key, device_id)
    refused_and_audited(api, wrong_key, 401, "bad-signature")

    # Body: sign a deny, send an approve with the same headers.
    answer = f"/app/v1/challenges/{auth_id}/answer"
    headers = signing.sign_request(
        key, device_id, "POST", answer, b'{"answer": "deny"}', int(api.clock().timestamp())
    )
    tampered_body = api.http.post(answer, content=b'{"answer": "approve"}', headers=headers)
    refused_and_audited(api, tampered_body, 401, "bad-signature")

    # Path: a signature for one challenge used on another.
    headers = signing.sign_request(
        key, device_id, "GET", "/app/v1/challenges/ch_other", b"", int(api.clock().timestamp())
    )
    tampered_path = api.http.get(f"/app/v1/challenges/{auth_id}", headers=headers)
    refused_and_audited(api, tampered_path, 401, "bad-signature")

    # Query: signed without it, sent with it (and the other way round).
    headers = signing.sign_request(
        key, device_id, "GET", "/app/v1/challenges", b"", int(api.clock().timestamp())
    )
    added_query = api.http.get("/app/v1/challenges?page=2", headers=headers)
    refused_and_audited(api, added_query, 401, "bad-signature")
    headers = signing.sign_request(
        key, device_id, "GET", "/app/v1/challenges?page=1", b"", int(api.clock().timestamp())
    )
    changed_query = api.http.get("/app/v1/challenges?page=2", headers=headers)
    refused_and_audited(api, changed_query, 401, "bad-signature")

    assert api.status(auth_id)["state"] == "pending"


@sqlite_only
@pytest.mark.parametrize("offset", [-301, 301, -3600, 10**9])
def test_timestamps_outside_the_skew_are_stale(
    api: ApiHarness, phone: AppClient, offset: int
) -> None:
    key, device_id = key_and_id(phone)
    when = int(api.clock().timestamp()) + offset
    response = signed_request(api.http, "GET", "/app/v1/challenges", key, device_id, timestamp=when)
    refused_and_audited(api, response, 401, "stale-request")


@sqlite_only
@pytest.mark.parametrize("offset", [-295, 295])
def test_timestamps_inside_the_skew_are_accepted(
    api: ApiHarness, phone: AppClient, offset: int
) -> None:
    key, device_id = key_and_id(phone)
    when = int(api.clock().timestamp()) + offset
    response = signed_request(api.http, "GET", "/app/v1/challenges", key, device_id, timestamp=when)
    assert response.status_code == 200, response.text


def test_a_reused_nonce_is_a_replay(api: ApiHarness, phone: AppClient) -> None:
    key, device_id = key_and_id(phone)
    auth_id = api.start("alice")["id"]
    answer = f"/app/v1/challenges/{auth_id}/answer"
    body = b'{"answer": "deny"}'
    headers = signing.sign_request(
        key, device_id, "POST", answer, body, int(api.clock().timestamp())
    )

    first = api.http.post(answer, content=body, headers=headers)
    again = api.http.post(answer, content=body, headers=headers)

    assert first.status_code == 200, first.text
    refused_and_audited(api, again, 401, "replayed-request")
    # The same nonce on another request of the same device is a replay too.
    other = signing.sign_request(
        key, device_id, "GET", "/app/v1/challenges", b"", int(api.clock().timestamp())
    )
    nonce = headers[signing.HEADER_NONCE]
    message = signing.canonical_request(
        "GET", "/app/v1/challenges", device_id, other[signing.HEADER_TIMESTAMP], nonce, b""
    )
    other |= {
        signing.HEADER_NONCE: nonce,
        signing.HEADER_SIGNATURE: signing.b64u_encode(key.sign(message)),
    }
    refused_and_audited(
        api, api.http.get("/app/v1/challenges", headers=other), 401, "replayed-request"
    )


@sqlite_only
def test_removed_and_unknown_devices_are_refused(api: ApiHarness, phone: AppClient) -> None:
    key, device_id = key_and_id(phone)
    api.run(api.services.devices.remove(ADMIN, ADMINISTRATOR, device_id))

    removed = signed_request(api.http, "GET", "/app/v1/challenges", key, device_id)
    refused_and_audited(api, removed, 401, "bad-signature")
    unknown = signed_request(api.http, "GET", "/app/v1/challenges", key, "dev_nobody")
    refused_and_audited(api, unknown, 401, "bad-signature")
    oath = api.run(api.services.activation.enrol_oath(ADMIN, ADMINISTRATOR, "alice"))
    oath_device = signed_request(api.http, "GET", "/app/v1/challenges", key, oath.device_id)
    refused_and_audited(api, oath_device, 401, "bad-signature")


# -- activation -------------------------------------------------------------------------------


def activation_body(code: str, public: str, **extra: Any) -> dict[str, Any]:
    return {"code": code, "public_key": public, "platform": "reference", **extra}


@sqlite_only
def test_activation_signed_with_another_key_is_refused(api: ApiHarness) -> None:
    api.add_user("alice")
    code = api.activation_code("alice")
    _, public = new_key()
    other_key, _ = new_key()

    response = signed_request(
        api.http, "POST", "/app/v1/activate", other_key, "activation", activation_body(code, public)
    )

    refused_and_audited(api, response, 401, "bad-signature")
    assert api.run(api.services.devices.list_for_user("alice")) == []
    # Nothing was consumed: the right key can still use the code.
    key, public = new_key()
    ok = signed_request(
        api.http, "POST", "/app/v1/activate", key, "activation", activation_body(code, public)
    )
    assert ok.status_code == 201, ok.text


@sqlite_only
def test_activation_header_and_clock_checks(api: ApiHarness) -> None:
    api.add_user("alice")
    code = api.activation_code("alice")
    key, public = new_key()
    body = activation_body(code, public)

    as_device = signed_request(api.http, "POST", "/app/v1/activate", key, "dev_x", body)
    refused_and_audited(api, as_device, 401, "bad-signature")
    stale = signed_request(
        api.http,
        "POST",
        "/app/v1/activate",
        key,
        "activation",
        body,
        timestamp=int(api.clock().timestamp()) - 400,
    )
    refused_and_audited(api, stale, 401, "stale-request")
    unsigned = api.http.post("/app/v1/activate", json=body)
    refused_and_audited(api, unsigned, 401, "bad-signature")
    bad_key = signed_request(
        api.http,
        "POST",
        "/app/v1/activate",
        key,
        "activation",
        activation_body(code, signing.b64u_encode(b"too short")),
    )
    assert_problem(bad_key, 401, "bad-signature")


def test_activation_codes_unknown_used_and_expired(api: ApiHarness, clock: FakeClock) -> None:
    api.add_user("alice")
    key, public = new_key()

    def activate(code: str) -> httpx.Response:
        return signed_request(
            api.http,
            "POST",
            "/app/v1/activate",
            key,
            "activation",
            activation_body(code, public),
            timestamp=int(clock().timestamp()),
        )

    refused_and_audited(api, activate(secrets.token_urlsafe(20)), 400, "activation-code-invalid")
    refused_and_audited(api, activate("x" * 128), 400, "activation-code-invalid")

    code = api.activation_code("alice")
    assert activate(code).status_code == 201
    refused_and_audited(api, activate(code), 400, "activation-code-used")

    short_lived = api.activation_code("alice", ttl_seconds=60)
    clock.advance(60)
    refused_and_audited(api, activate(short_lived), 400, "activation-code-expired")
    assert len(api.run(api.services.devices.list_for_user("alice"))) == 1


@sqlite_only
def test_activation_refused_for_blocked_and_disabled_users(api: ApiHarness) -> None:
    api.add_user("alice")
    api.add_user("bob")
    alice_code = api.activation_code("alice")
    bob_code = api.activation_code("bob")
    api.run(api.services.users.set_blocked(ADMIN, "alice", True, "lost phone"))
    api.run(api.services.users.set_disabled(ADMIN, "bob", True))
    key, public = new_key()

    for code, type_ in ((alice_code, "user-blocked"), (bob_code, "user-disabled")):
        response = signed_request(
            api.http, "POST", "/app/v1/activate", key, "activation", activation_body(code, public)
        )
        refused_and_audited(api, response, 403, type_)
