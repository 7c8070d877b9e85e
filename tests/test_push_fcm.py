"""The FCM transport: the real ``pyfcm`` / ``google-auth`` clients against the local FCM fake
over HTTPS on 127.0.0.1 (tests/fakes/fcm.py checks the token exchange and the message body).

The fake runs on the test's event loop while the transport's requests run in its worker
threads, so every test that gets an answer also shows that a send never blocks the loop.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import formatdate
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from backend.config import Settings
from backend.errors import ConfigurationError
from backend.push.base import PushMessage, PushOutcome, PushTransport
from backend.push.fcm import FcmTransport, load_service_account
from tests.fakes.fcm import FCM_SCOPE, TEST_PROJECT, FcmFake, make_service_account
from tests.support.process import free_port

pytestmark = pytest.mark.anyio

DISPLAY = "Sign-in to VPN from 203.0.113.7"
TOKEN = "fcm-registration-token-abc123"
BOUND = 5.0


def message(
    challenge_id: str = "ch_0001", token: str = TOKEN, seconds: float = 60.0
) -> PushMessage:
    return PushMessage(
        challenge_id=challenge_id,
        token=token,
        display=DISPLAY,
        expires_at=datetime.now(UTC) + timedelta(seconds=seconds),
    )


def fcm_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("openmfa-fcm")]


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[FcmFake]:
    fake = FcmFake(tmp_path)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()  # raises on wire-format violations


@pytest.fixture
def account(fake: FcmFake, tmp_path: Path) -> Path:
    return fake.service_account(tmp_path)


@pytest.fixture
def account_info(account: Path) -> dict[str, Any]:
    info: dict[str, Any] = json.loads(account.read_text())
    return info


@pytest.fixture
async def transport(fake: FcmFake, account: Path) -> AsyncIterator[FcmTransport]:
    transport = FcmTransport(account, url=fake.url, ca_file=fake.ca_file, workers=2, timeout=5.0)
    try:
        yield transport
    finally:
        await transport.close()


# -- delivery -------------------------------------------------------------------------------


async def test_satisfies_the_protocol(transport: FcmTransport) -> None:
    checked: PushTransport = transport
    assert checked.name == "fcm"
    assert transport.project_id == TEST_PROJECT


async def test_delivers_the_contract_message_with_a_verified_token(
    fake: FcmFake, transport: FcmTransport, account_info: dict[str, Any]
) -> None:
    result = await transport.send(message(seconds=60))

    assert result.outcome is PushOutcome.DELIVERED
    assert result.status == 200
    assert result.reason == f"projects/{TEST_PROJECT}/messages/0:1"
    [exchange] = fake.token_requests
    info = account_info
    assert exchange.status == 200
    assert exchange.header["alg"] == "RS256"
    assert exchange.header["kid"] == info["private_key_id"]
    assert exchange.claims["iss"] == info["client_email"]
    assert exchange.claims["aud"] == fake.token_uri
    assert FCM_SCOPE in exchange.claims["scope"].split()

    [request] = fake.requests
    assert request.project == TEST_PROJECT
    assert request.headers["authorization"] == f"Bearer {exchange.access_token}"
    assert request.headers["content-type"].startswith("application/json")
    sent = request.body["message"]
    assert request.body.get("validate_only", False) is False
    assert sent["token"] == TOKEN
    assert sent["data"] == {"challenge_id": "ch_0001", "display": DISPLAY}
    assert sent["notification"] == {"title": "OpenMFA", "body": DISPLAY}
    assert sent["android"]["priority"] == "HIGH"
    assert sent["android"]["collapse_key"] == "ch_0001"
    ttl = int(sent["android"]["ttl"].removesuffix("s"))
    assert 55 <= ttl <= 60  # seconds to the challenge's expiry


async def test_the_payload_carries_nothing_but_id_and_display(
    fake: FcmFake, transport: FcmTransport
) -> None:
    # No number to match, no code, no seed: every string in the body is accounted for.
    result = await transport.send(message(challenge_id="ch_42"))
    assert result.outcome is PushOutcome.DELIVERED

    leaves: list[Any] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        else:
            leaves.append(value)

    walk(fake.requests[0].body)
    ttl = fake.requests[0].body["message"]["android"]["ttl"]
    assert sorted(map(str, leaves)) == sorted(
        map(str, [TOKEN, "ch_42", DISPLAY, "OpenMFA", DISPLAY, "HIGH", ttl, "ch_42", False])
    )


async def test_an_expired_challenge_gets_ttl_zero(fake: FcmFake, transport: FcmTransport) -> None:
    result = await transport.send(message(seconds=-30))
    assert result.outcome is PushOutcome.DELIVERED
    assert fake.requests[0].body["message"]["android"]["ttl"] == "0s"


async def test_the_token_is_exchanged_once_and_shared_by_all_threads(
    fake: FcmFake, account: Path
) -> None:
    transport = FcmTransport(account, url=fake.url, ca_file=fake.ca_file, workers=4)
    try:
        results = await asyncio.gather(*(transport.send(message(f"ch_{i}")) for i in range(12)))
        assert {r.outcome for r in results} == {PushOutcome.DELIVERED}
        assert len(fake.requests) == 12
        assert len(fake.token_requests) == 1
        token = fake.token_requests[0].access_token
        assert {r.headers["authorization"] for r in fake.requests} == {f"Bearer {token}"}
        assert len(fcm_threads()) <= 4  # the pool is bounded
    finally:
        await transport.close()


async def test_an_expired_token_means_retry_and_a_new_exchange(
    fake: FcmFake, transport: FcmTransport
) -> None:
    assert (await transport.send(message())).outcome is PushOutcome.DELIVERED
    fake.expire_tokens()

    expired = await transport.send(message())
    assert expired.outcome is PushOutcome.RETRY
    assert (expired.status, expired.reason) == (401, "ACCESS_TOKEN_EXPIRED")
    assert len(fake.requests) == 2  # one attempt: pyfcm would have re-sent at once

    again = await transport.send(message())
    assert again.outcome is PushOutcome.DELIVERED
    assert len(fake.token_requests) == 2
    assert fake.requests[-1].headers["authorization"] == (
        f"Bearer {fake.token_requests[1].access_token}"
    )


# -- what the service says --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "reason", "field", "outcome"),
    [
        (404, "UNREGISTERED", None, PushOutcome.INVALID_TOKEN),
        (400, "INVALID_ARGUMENT", None, PushOutcome.INVALID_TOKEN),  # about message.token
        (400, "INVALID_ARGUMENT", "message.android.ttl", PushOutcome.FAILED),
        (403, "SENDER_ID_MISMATCH", None, PushOutcome.INVALID_TOKEN),
        (403, "PERMISSION_DENIED", None, PushOutcome.FAILED),
        (401, "THIRD_PARTY_AUTH_ERROR", None, PushOutcome.FAILED),
        (429, "QUOTA_EXCEEDED", None, PushOutcome.RETRY),
        (500, "INTERNAL", None, PushOutcome.RETRY),
        (502, "UNAVAILABLE", None, PushOutcome.RETRY),
        (503, "UNAVAILABLE", None, PushOutcome.RETRY),
        (413, "PAYLOAD_TOO_LARGE", None, PushOutcome.FAILED),
    ],
)
async def test_each_error_is_classified_after_one_attempt(
    fake: FcmFake,
    transport: FcmTransport,
    status: int,
    reason: str,
    field: str | None,
    outcome: PushOutcome,
) -> None:
    fake.fail_next(1, status, reason, field=field)

    result = await transport.send(message())

    assert result.outcome is outcome
    assert (result.status, result.reason) == (status, reason)
    assert result.retry_after is None
    assert len(fake.requests) == 1  # neither urllib3 (502/503) nor pyfcm re-sent it


async def test_retry_after_is_passed_on_not_slept(fake: FcmFake, transport: FcmTransport) -> None:
    fake.fail_next(1, 429, "QUOTA_EXCEEDED", retry_after="30")
    started = time.monotonic()

    result = await transport.send(message())

    assert result.outcome is PushOutcome.RETRY
    assert result.retry_after == 30.0
    assert time.monotonic() - started < 10  # pyfcm would have slept 30 s and sent again
    assert len(fake.requests) == 1


async def test_retry_after_as_an_http_date(fake: FcmFake, transport: FcmTransport) -> None:
    fake.fail_next(1, 503, "UNAVAILABLE", retry_after=formatdate(time.time() + 20, usegmt=True))

    result = await transport.send(message())

    assert result.outcome is PushOutcome.RETRY
    assert result.retry_after is not None
    assert 15 <= result.retry_after <= 21


async def test_a_dead_token_fails_only_for_that_token(
    fake: FcmFake, transport: FcmTransport
) -> None:
    fake.fail_token("dead-token", 404, "UNREGISTERED")

    dead, alive = await asyncio.gather(
        transport.send(message(token="dead-token")), transport.send(message(token="live"))
    )

    assert (dead.outcome, dead.reason) == (PushOutcome.INVALID_TOKEN, "UNREGISTERED")
    assert alive.outcome is PushOutcome.DELIVERED


async def test_an_auth_failure_drops_the_token_so_the_next_send_renews_it(
    fake: FcmFake, transport: FcmTransport
) -> None:
    fake.fail_next(1, 401, "UNAUTHENTICATED")
    assert (await transport.send(message())).outcome is PushOutcome.FAILED
    assert (await transport.send(message())).outcome is PushOutcome.DELIVERED
    assert len(fake.token_requests) == 2


# -- the token exchange -----------------------------------------------------------------------


async def test_a_refused_grant_fails_without_a_send(fake: FcmFake, transport: FcmTransport) -> None:
    fake.fail_token_exchange(1, 400, "invalid_grant")

    result = await transport.send(message())

    assert result.outcome is PushOutcome.FAILED
    assert result.status == 400
    assert result.reason.startswith("token-exchange invalid_grant")
    assert fake.requests == []
    assert len(fake.token_requests) == 1
    assert (await transport.send(message())).outcome is PushOutcome.DELIVERED


@pytest.mark.parametrize(
    ("status", "error"), [(503, "temporarily_unavailable"), (500, "server_error"), (429, "x")]
)
async def test_a_busy_token_endpoint_means_retry_after_one_exchange(
    fake: FcmFake, transport: FcmTransport, status: int, error: str
) -> None:
    fake.fail_token_exchange(1, status, error, retry_after="4")

    result = await transport.send(message())

    assert result.outcome is PushOutcome.RETRY
    assert (result.status, result.retry_after) == (status, 4.0)
    assert len(fake.token_requests) == 1  # google-auth would have tried three times
    assert fake.requests == []


# -- slow, dead and untrusted endpoints -------------------------------------------------------


async def test_a_hung_send_is_a_retry_within_the_timeout(fake: FcmFake, account: Path) -> None:
    transport = FcmTransport(account, url=fake.url, ca_file=fake.ca_file, timeout=0.5)
    try:
        fake.hold()
        started = time.monotonic()
        result = await transport.send(message())
        assert (result.outcome, result.reason) == (PushOutcome.RETRY, "timeout")
        assert time.monotonic() - started < 0.5 + 2.5  # the timeout, not a hang
        assert len(fake.requests) == 1
    finally:
        fake.release()
        await transport.close()


async def test_a_hung_token_endpoint_is_a_retry(fake: FcmFake, account: Path) -> None:
    transport = FcmTransport(account, url=fake.url, ca_file=fake.ca_file, timeout=0.5)
    try:
        fake.hold(token_exchange=True)
        result = await transport.send(message())
        assert (result.outcome, result.reason) == (PushOutcome.RETRY, "timeout")
        assert fake.requests == []
    finally:
        fake.release()
        await transport.close()


async def test_sends_queued_behind_a_hung_one_time_out_too(fake: FcmFake, account: Path) -> None:
    transport = FcmTransport(account, url=fake.url, ca_file=fake.ca_file, workers=1, timeout=0.5)
    try:
        assert (await transport.send(message())).outcome is PushOutcome.DELIVERED
        fake.hold()
        results = await asyncio.gather(*(transport.send(message(f"ch_{i}")) for i in range(3)))
        assert [r.outcome for r in results] == [PushOutcome.RETRY] * 3
        # One thread: the queued sends were cancelled before they reached the wire.
        assert len(fake.requests) == 2
    finally:
        fake.release()
        await transport.close()


async def test_connection_refused_is_a_retry(fake: FcmFake, account: Path) -> None:
    dead = f"https://127.0.0.1:{free_port()}"
    transport = FcmTransport(account, url=dead, ca_file=fake.ca_file)
    try:
        result = await transport.send(message())
        assert (result.outcome, result.reason) == (PushOutcome.RETRY, "connection error")
        assert len(fake.token_requests) == 1  # the exchange worked, the send could not connect
    finally:
        await transport.close()


async def test_a_dead_token_endpoint_is_a_retry(fake: FcmFake, tmp_path: Path) -> None:
    account = make_service_account(tmp_path, f"https://127.0.0.1:{free_port()}/token")
    transport = FcmTransport(account, url=fake.url, ca_file=fake.ca_file)
    try:
        result = await transport.send(message())
        assert result.outcome is PushOutcome.RETRY
        assert result.reason == "token-exchange connection error"
    finally:
        await transport.close()


async def test_an_untrusted_certificate_fails(fake: FcmFake, account: Path) -> None:
    transport = FcmTransport(account, url=fake.url)  # the system trust store only
    try:
        result = await transport.send(message())
        assert result.outcome is PushOutcome.FAILED
        assert result.reason == "token-exchange tls certificate not trusted"
        assert fake.token_requests == []
    finally:
        await transport.close()


# -- close ------------------------------------------------------------------------------------


async def test_close_ends_the_threads_and_later_sends_fail(
    fake: FcmFake, transport: FcmTransport
) -> None:
    assert (await transport.send(message())).outcome is PushOutcome.DELIVERED
    assert fcm_threads()

    await transport.close()
    await transport.close()  # twice is fine

    assert fcm_threads() == []
    result = await transport.send(message())
    assert (result.outcome, result.reason) == (PushOutcome.FAILED, "transport closed")
    assert len(fake.requests) == 1


async def test_close_while_a_send_hangs(fake: FcmFake, account: Path) -> None:
    transport = FcmTransport(account, url=fake.url, ca_file=fake.ca_file, timeout=0.5)
    fake.hold()
    pending = asyncio.create_task(transport.send(message()))
    await fake.wait_until(lambda: fake.held == 1, BOUND, "the send to be held")

    await asyncio.wait_for(transport.close(), BOUND)

    assert (await pending).outcome is PushOutcome.RETRY
    assert fcm_threads() == []


# -- configuration ----------------------------------------------------------------------------


def write_account(tmp_path: Path, **changes: Any) -> Path:
    path = make_service_account(tmp_path, "https://oauth2.example.test/token")
    info = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            info.pop(key)
        else:
            info[key] = value
    path.write_text(json.dumps(info))
    return path


def ec_key_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"type": "authorized_user"}, "is not a service-account key"),
        ({"project_id": None}, "lacks project_id"),
        ({"client_email": ""}, "lacks client_email"),
        ({"private_key": None, "token_uri": None}, "lacks private_key, token_uri"),
        ({"token_uri": "http://oauth2.example.test/token"}, "token_uri that is not an https"),
        (
            {"private_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"},
            "not an unencrypted PEM private key",
        ),
        ({"private_key": "not a key"}, "not an unencrypted PEM private key"),
        ({"private_key": ec_key_pem()}, "not an RSA key"),
    ],
)
def test_a_malformed_key_file_is_refused_at_construction(
    tmp_path: Path, changes: dict[str, Any], expected: str
) -> None:
    path = write_account(tmp_path, **changes)
    with pytest.raises(ConfigurationError) as caught:
        FcmTransport(path)
    assert expected in str(caught.value)
    assert str(path) in str(caught.value)
    assert "PRIVATE KEY" not in str(caught.value)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "does not exist"),
        ("{not json", "is not valid JSON (line 1"),
        ("[1, 2]", "is not a JSON object"),
        ("", "is not valid JSON"),
    ],
)
def test_an_unreadable_key_file_is_refused(
    tmp_path: Path, content: str | None, expected: str
) -> None:
    path = tmp_path / "key.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigurationError, match=re.escape(expected)):
        FcmTransport(path)
    with pytest.raises(ConfigurationError, match="is a directory"):
        load_service_account(tmp_path)


def test_bad_endpoint_settings_are_refused(tmp_path: Path) -> None:
    path = write_account(tmp_path)
    with pytest.raises(ConfigurationError, match="not an https://host"):
        FcmTransport(path, url="http://127.0.0.1:1")
    with pytest.raises(ConfigurationError, match="without a path"):
        FcmTransport(path, url="https://relay.example.test/fcm")
    with pytest.raises(ConfigurationError, match=r"fcm_ca_file .* does not exist"):
        FcmTransport(path, ca_file=tmp_path / "missing.pem")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(ConfigurationError, match="not a readable PEM CA file"):
        FcmTransport(path, ca_file=garbage)


async def test_built_from_settings(fake: FcmFake, account: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="fcm_service_account_file is not set"):
        FcmTransport.from_settings(Settings(home=tmp_path))
    settings = Settings(
        home=tmp_path,
        fcm_service_account_file=account,
        fcm_url=fake.url,
        fcm_ca_file=fake.ca_file,
        fcm_workers=1,
    )
    transport = FcmTransport.from_settings(settings)
    try:
        assert transport.endpoint == f"{fake.url}/v1/projects/{TEST_PROJECT}/messages:send"
        assert (await transport.send(message())).outcome is PushOutcome.DELIVERED
    finally:
        await transport.close()


# -- the fake itself notices wire-format mistakes --------------------------------------------


async def test_the_fake_rejects_a_wrongly_signed_or_addressed_assertion(
    fake: FcmFake, account_info: dict[str, Any]
) -> None:
    info = account_info
    now = int(time.time())
    claims = {
        "iss": info["client_email"],
        "aud": "https://oauth2.googleapis.com/token",  # not the token_uri it was sent to
        "scope": FCM_SCOPE,
        "iat": now,
        "exp": now + 3600,
    }
    wrong_aud = jwt.encode(claims, info["private_key"], "RS256", {"kid": info["private_key_id"]})
    other_key = ec.generate_private_key(ec.SECP256R1())
    wrong_alg = jwt.encode({**claims, "aud": fake.token_uri}, other_key, "ES256")
    async with httpx.AsyncClient(
        verify=ssl.create_default_context(cafile=str(fake.ca_file))
    ) as client:
        for assertion in (wrong_aud, wrong_alg):
            answer = await client.post(
                fake.token_uri,
                data={
                    "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                    "assertion": assertion,
                },
            )
            assert answer.status_code == 400
    assert any("InvalidAudienceError" in v for v in fake.violations)
    assert any("alg 'ES256'" in v for v in fake.violations)
    fake.violations.clear()


async def test_the_fake_rejects_extra_fields_and_unknown_bearers(
    fake: FcmFake, transport: FcmTransport
) -> None:
    assert (await transport.send(message())).outcome is PushOutcome.DELIVERED
    good = fake.requests[0]
    body = json.loads(json.dumps(good.body))
    body["message"]["data"]["number"] = "42"
    async with httpx.AsyncClient(
        verify=ssl.create_default_context(cafile=str(fake.ca_file))
    ) as client:
        url = f"{fake.url}/v1/projects/{TEST_PROJECT}/messages:send"
        extra = await client.post(
            url, json=body, headers={"authorization": good.headers["authorization"]}
        )
        stranger = await client.post(url, json=good.body, headers={"authorization": "Bearer x"})
    assert extra.status_code == 400
    assert stranger.status_code == 401
    assert any("message.data" in v for v in fake.violations)
    assert any("bearer token the fake issued" in v for v in fake.violations)
    fake.violations.clear()
