"""A P-256 device (the web app's key where the browser has no Ed25519) over real HTTP: the
reference authenticator with ``key_type="p256"`` and platform ``web`` through activation,
answers and removal; and the attacks on the server's side of two key types."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from backend.authenticator.client import AppClient, AuthenticatorError, StoredDevice
from backend.domain import signing
from tests.support.api import ApiHarness, assert_problem, new_key, signed_request

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def web_device(api: ApiHarness, user: str = "alice", pin: str | None = None) -> AppClient:
    client = AppClient(transport=api.transport)
    client.activate(
        api.activation_uri(user), name="Browser", platform="web", pin=pin, key_type="p256"
    )
    return client


def stored(client: AppClient) -> StoredDevice:
    assert client.device is not None
    return client.device


def refused(call: object, *args: object, **kwargs: object) -> AuthenticatorError:
    assert callable(call)
    with pytest.raises(AuthenticatorError) as info:
        call(*args, **kwargs)
    return info.value


def test_a_p256_web_device_activates_answers_and_is_removed(api: ApiHarness) -> None:
    api.add_user("alice", number_matching=True, require_pin=True)
    phone = web_device(api, pin="4711")
    device = stored(phone)
    assert device.key_type == "p256"
    record = api.run(api.services.devices.get(device.device_id))
    assert (record.platform, record.kind, record.state) == ("web", "app", "pending")
    assert record.public_key is not None
    assert len(record.public_key) == 65
    assert record.public_key == signing.public_bytes(device.key())

    started = api.start("alice")
    [pending] = phone.pending()
    assert pending["id"] == started["id"]
    assert phone.challenge(started["id"])["number_required"] is True
    answered = phone.answer(started["id"], "approve", pin="4711", number=started["number"])
    assert answered == "approved"
    assert api.status(started["id"])["state"] == "approved"
    assert api.run(api.services.devices.get(device.device_id)).state == "active"

    second = api.start("alice")
    assert phone.answer(second["id"], "deny") == "denied"
    assert api.status(second["id"])["state"] == "denied"

    phone.deactivate()
    error = refused(phone.pending)
    assert (error.status, error.type) == (401, "bad-signature")
    assert api.run(api.services.devices.get(device.device_id)).state == "removed"


@sqlite_only
def test_fraud_from_a_p256_device(api: ApiHarness) -> None:
    api.add_user("alice")
    phone = web_device(api)
    started = api.start("alice")
    assert phone.answer(started["id"], "fraud") == "fraud"
    assert len(api.fraud_reports()) == 1


@sqlite_only
def test_a_p256_store_survives_a_save_and_load(api: ApiHarness, tmp_path: Any) -> None:
    from backend.authenticator.client import load_store, save_store

    api.add_user("alice")
    phone = web_device(api)
    path = tmp_path / "web.json"
    save_store(path, stored(phone))
    again = AppClient(load_store(path), transport=api.transport)
    assert again.pending() == []


# -- attacks ----------------------------------------------------------------------------------


def raw_request(
    api: ApiHarness,
    key: signing.SigningKey,
    device: str,
    signature: bytes | None = None,
    nonce: str | None = None,
    method: str = "GET",
    target: str = "/app/v1/challenges",
    payload: Any = None,
) -> Any:
    """A request signed by hand, with the signature bytes open to tampering."""
    body = b"" if payload is None else json.dumps(payload).encode()
    timestamp = str(int(time.time()))
    nonce = nonce or secrets.token_urlsafe(18)
    message = signing.canonical_request(method, target, device, timestamp, nonce, body)
    headers = {
        signing.HEADER_DEVICE: device,
        signing.HEADER_TIMESTAMP: timestamp,
        signing.HEADER_NONCE: nonce,
        signing.HEADER_SIGNATURE: signing.b64u_encode(
            signing.sign(key, message) if signature is None else signature
        ),
    }
    if payload is not None:
        headers["content-type"] = "application/json"
    return api.http.request(method, target, content=body, headers=headers), message


@sqlite_only
def test_requests_signed_any_other_way_are_refused(api: ApiHarness) -> None:
    api.add_user("alice")
    phone = web_device(api)
    device = stored(phone)
    key = device.key()
    assert isinstance(key, ec.EllipticCurvePrivateKey)

    ok, _ = raw_request(api, key, device.device_id)
    assert ok.status_code == 200, ok.text

    # The same key's DER signature (what a non-WebCrypto ECDSA library returns).
    _, message = raw_request(api, key, device.device_id, nonce="n" * 16)
    der = key.sign(message, ec.ECDSA(hashes.SHA256()))
    as_der, _ = raw_request(api, key, device.device_id, signature=der)
    assert_problem(as_der, 401, "bad-signature")
    # An Ed25519 key signing for the P-256 device.
    ed_key, _ = new_key()
    by_ed25519 = signed_request(api.http, "GET", "/app/v1/challenges", ed_key, device.device_id)
    assert_problem(by_ed25519, 401, "bad-signature")
    # Another P-256 key.
    other = ec.generate_private_key(ec.SECP256R1())
    by_other = signed_request(api.http, "GET", "/app/v1/challenges", other, device.device_id)
    assert_problem(by_other, 401, "bad-signature")


@sqlite_only
def test_a_high_s_copy_of_a_request_is_a_replay_and_a_fresh_high_s_request_is_fine(
    api: ApiHarness,
) -> None:
    """ECDSA malleability: (r, n-s) of a sent request carries the same signed nonce, so the
    server refuses it as a replay; high S on a new request is accepted (WebCrypto makes it)."""
    api.add_user("alice")
    phone = web_device(api)
    started = api.start("alice")
    device = stored(phone)
    key = device.key()
    target = f"/app/v1/challenges/{started['id']}/answer"
    body = {"answer": "deny"}
    nonce = secrets.token_urlsafe(18)

    first, message = raw_request(
        api, key, device.device_id, nonce=nonce, method="POST", target=target, payload=body
    )
    assert first.status_code == 200, first.text
    timestamp = message.split(b"\n")[4].decode()
    signature = signing.sign(key, message)
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    twin = r.to_bytes(32, "big") + (N - s).to_bytes(32, "big")
    signing.verify(signing.public_bytes(key), twin, message)  # it is a valid signature
    replay = api.http.post(
        target,
        content=json.dumps(body).encode(),
        headers={
            "content-type": "application/json",
            signing.HEADER_DEVICE: device.device_id,
            signing.HEADER_TIMESTAMP: timestamp,
            signing.HEADER_NONCE: nonce,
            signing.HEADER_SIGNATURE: signing.b64u_encode(twin),
        },
    )
    assert_problem(replay, 401, "replayed-request")

    # A new request whose signature has a high S, by construction.
    nonce2 = secrets.token_urlsafe(18)
    timestamp = str(int(time.time()))
    message2 = signing.canonical_request(
        "GET", "/app/v1/challenges", device.device_id, timestamp, nonce2, b""
    )
    sig2 = signing.sign(key, message2)
    r2, s2 = int.from_bytes(sig2[:32], "big"), int.from_bytes(sig2[32:], "big")
    high_s = r2.to_bytes(32, "big") + max(s2, N - s2).to_bytes(32, "big")
    accepted = api.http.get(
        "/app/v1/challenges",
        headers={
            signing.HEADER_DEVICE: device.device_id,
            signing.HEADER_TIMESTAMP: timestamp,
            signing.HEADER_NONCE: nonce2,
            signing.HEADER_SIGNATURE: signing.b64u_encode(high_s),
        },
    )
    assert accepted.status_code == 200, accepted.text


def activation(
    api: ApiHarness, key: signing.SigningKey, public: bytes, code: str, signature: bytes | None
) -> Any:
    body = {"code": code, "public_key": signing.b64u_encode(public), "platform": "web"}
    response, _ = raw_request(
        api,
        key,
        "activation",
        signature=signature,
        method="POST",
        target="/app/v1/activate",
        payload=body,
    )
    return response


@sqlite_only
def test_bad_keys_cannot_activate_and_leave_the_code_unused(api: ApiHarness) -> None:
    api.add_user("alice")
    code = api.activation_code("alice")
    key = ec.generate_private_key(ec.SECP256R1())
    uncompressed = signing.public_bytes(key)
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    compressed = key.public_key().public_bytes(Encoding.X962, PublicFormat.CompressedPoint)
    y = int.from_bytes(uncompressed[33:], "big")
    off_curve = uncompressed[:33] + (y ^ 1).to_bytes(32, "big")
    for public in (compressed, off_curve, uncompressed[1:]):
        response = activation(api, key, public, code, None)
        assert_problem(response, 401, "bad-signature")

    # The identity as an Ed25519 key with the universal forgery (R = identity, S = 0): OpenSSL
    # alone would verify it, and the device would then take any signature from anyone.
    identity = (1).to_bytes(32, "little")
    forged = identity + bytes(32)
    response = activation(api, key, identity, code, forged)
    assert_problem(response, 401, "bad-signature")
    assert "large order" in response.json()["detail"]

    # A non-canonical base64url spelling of a good key.
    text = signing.b64u_encode(uncompressed)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = text[:-1] + alphabet[alphabet.index(text[-1]) | 0b11]
    body = {"code": code, "public_key": twin, "platform": "web"}
    response, _ = raw_request(
        api, key, "activation", method="POST", target="/app/v1/activate", payload=body
    )
    assert_problem(response, 401, "bad-signature")

    assert api.run(api.services.devices.list_for_user("alice")) == []
    good = activation(api, key, uncompressed, code, None)
    assert good.status_code == 201, good.text


@sqlite_only
def test_the_service_refuses_bad_keys_by_itself(api: ApiHarness) -> None:
    """Below the HTTP layer (the CLI and future callers): the same key checks, as 400."""
    from backend.errors import BadRequest
    from backend.services.context import Actor

    api.add_user("alice")
    code = api.activation_code("alice")
    for public in ((1).to_bytes(32, "little"), b"\x04" + bytes(64), b"\x02" + bytes(32)):
        with pytest.raises(BadRequest, match="public_key"):
            api.run(api.services.activation.activate(Actor("test"), code, public, "web"))


@sqlite_only
def test_the_cli_activates_a_p256_web_device(api: ApiHarness, tmp_path: Any) -> None:
    """``openmfa device activate --key-type p256 --platform web``, then ``pending``."""
    from tests.support.cli import run_in_process

    api.add_user("alice")
    store = tmp_path / "web.json"
    env = {"OPENMFA_HOME": str(tmp_path)}
    uri = api.activation_uri("alice")
    args = ["device", "activate", uri, "--store", str(store), "--platform", "web"]
    done = run_in_process([*args, "--key-type", "p256"], env)
    assert done.returncode == 0, done.stderr
    saved = json.loads(store.read_text())
    assert (saved["key_type"], saved["platform"]) == ("p256", "web")
    record = api.run(api.services.devices.get(saved["device_id"]))
    assert record.public_key is not None
    assert len(record.public_key) == 65
    started = api.start("alice")
    pending = run_in_process(["device", "pending", "--store", str(store)], env)
    assert pending.returncode == 0, pending.stderr
    assert started["id"] in pending.stdout
