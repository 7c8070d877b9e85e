"""Finding 11 of issue 13: an app request is bound to the device that signed it.

The signed bytes name the ``X-OpenMFA-Device`` id, and a public key belongs to one device
only, so a request signed by one device cannot be re-sent as another's (the review removed
one device with a DELETE signed by another that had registered the same key).
"""

from __future__ import annotations

import hashlib
import time

import httpx
import pytest

from backend.domain import signing
from tests.support.api import ApiHarness, assert_problem, new_key, signed_request

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def activate(api: ApiHarness, user: str, key: object, public: str) -> httpx.Response:
    return signed_request(
        api.http,
        "POST",
        "/app/v1/activate",
        key,  # type: ignore[arg-type]
        "activation",
        {"code": api.activation_code(user), "public_key": public, "platform": "android"},
    )


def live_devices(api: ApiHarness, user: str) -> list[str]:
    return [device.id for device in api.run(api.services.devices.list_for_user(user))]


@sqlite_only
def test_a_public_key_already_registered_is_refused_and_audited(api: ApiHarness) -> None:
    api.add_user("alice")
    api.add_user("mallory")
    key, public = new_key()
    first = activate(api, "alice", key, public)
    assert first.status_code == 201, first.text

    for user in ("alice", "mallory"):  # the same user again, or anyone else
        again = activate(api, user, key, public)
        problem = assert_problem(again, 409, "conflict")
        assert "public key" in problem["detail"]
        rows = [row for row in api.refusals() if row.request_id == problem["request_id"]]
        assert [row.result for row in rows] == ["conflict"]

    assert live_devices(api, "alice") == [first.json()["device_id"]]
    assert live_devices(api, "mallory") == []


@sqlite_only
def test_the_key_of_a_removed_device_is_not_registered_again(api: ApiHarness) -> None:
    api.add_user("alice")
    key, public = new_key()
    first = activate(api, "alice", key, public)
    device_id = first.json()["device_id"]
    removed = signed_request(api.http, "DELETE", "/app/v1/device", key, device_id)
    assert removed.status_code == 204, removed.text

    assert_problem(activate(api, "alice", key, public), 409, "conflict")


@sqlite_only
def test_a_request_signed_without_the_device_id_is_refused(api: ApiHarness) -> None:
    """The old canonical form (OPENMFA-V1) did not name the device: it is no longer taken."""
    api.add_user("alice")
    key, public = new_key()
    device_id = activate(api, "alice", key, public).json()["device_id"]
    timestamp, nonce = str(int(time.time())), "n" * 20
    old_form = "\n".join(
        ("OPENMFA-V1", "DELETE", "/app/v1/device", timestamp, nonce, hashlib.sha256().hexdigest())
    ).encode()
    headers = {
        signing.HEADER_DEVICE: device_id,
        signing.HEADER_TIMESTAMP: timestamp,
        signing.HEADER_NONCE: nonce,
        signing.HEADER_SIGNATURE: signing.b64u_encode(key.sign(old_form)),
    }

    response = api.http.delete("/app/v1/device", headers=headers)

    assert_problem(response, 401, "bad-signature")
    assert live_devices(api, "alice") == [device_id]


@sqlite_only
def test_a_delete_signed_by_one_device_resent_with_anothers_id_is_refused(
    api: ApiHarness,
) -> None:
    api.add_user("alice")
    key_a, public_a = new_key()
    key_b, public_b = new_key()
    device_a = activate(api, "alice", key_a, public_a).json()["device_id"]
    device_b = activate(api, "alice", key_b, public_b).json()["device_id"]
    headers = signing.sign_request(
        key_a, device_a, "DELETE", "/app/v1/device", b"", int(time.time())
    )

    replayed = api.http.delete(
        "/app/v1/device", headers={**headers, signing.HEADER_DEVICE: device_b}
    )

    assert_problem(replayed, 401, "bad-signature")
    assert sorted(live_devices(api, "alice")) == sorted([device_a, device_b])
    # The genuine request still works: the refusal spent nothing.
    assert api.http.delete("/app/v1/device", headers=headers).status_code == 204
    assert live_devices(api, "alice") == [device_b]


@sqlite_only
@pytest.mark.parametrize("device", ["dev a", "x" * 65, "dév", "dev_a;b"])
def test_a_malformed_device_header_is_refused(api: ApiHarness, device: str) -> None:
    key, _ = new_key()
    headers = signing.sign_request(key, "dev_x", "GET", "/app/v1/challenges", b"", int(time.time()))
    headers[signing.HEADER_DEVICE] = device
    raw = {name: value.encode("utf-8") for name, value in headers.items()}
    response = api.http.get("/app/v1/challenges", headers=raw)
    problem = assert_problem(response, 401, "bad-signature")
    assert "device" in problem["detail"]
