"""The APNs transport: the real ``aioapns`` client against the local HTTP/2-over-TLS fake.

Every test talks over real sockets on 127.0.0.1; the fake verifies the wire format (headers,
ES256 provider token, payload) and its fixture fails the test on any violation.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import secrets
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from h2.connection import H2Connection
from h2.events import DataReceived, ResponseReceived, StreamEnded

from backend.config import Settings
from backend.errors import ConfigurationError
from backend.push.apns import ApnsTransport
from backend.push.base import PushMessage, PushOutcome, PushResult
from tests.fakes.apns import ApnsFake, ApnsKey, make_apns_key

pytestmark = pytest.mark.anyio

TOPIC = "org.openmfa.authenticator"


def token() -> str:
    return secrets.token_hex(32)


def message(
    *, device: str | None = None, display: str = "Sign-in to VPN from 203.0.113.7", ttl: int = 120
) -> PushMessage:
    return PushMessage(
        challenge_id="ch_" + secrets.token_urlsafe(16),
        token=device or token(),
        display=display,
        expires_at=datetime.now(UTC) + timedelta(seconds=ttl),
    )


def settings_for(home: Path, key: ApnsKey, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "home": home,
        "apns_key_file": key.p8_path,
        "apns_key_id": key.key_id,
        "apns_team_id": key.team_id,
        "apns_topic": TOPIC,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def apns_key(tmp_path: Path) -> ApnsKey:
    return make_apns_key(tmp_path / "keys")


@pytest.fixture
async def fake(tmp_path: Path, apns_key: ApnsKey) -> AsyncIterator[ApnsFake]:
    server = ApnsFake(tmp_path, key=apns_key, topic=TOPIC)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()  # raises when the fake recorded a wire-format violation


@pytest.fixture
async def make_transport(
    tmp_path: Path, apns_key: ApnsKey, fake: ApnsFake
) -> AsyncIterator[Callable[..., ApnsTransport]]:
    """Build transports aimed at the fake (``timeout=`` and settings overrides); all are
    closed afterwards."""
    made: list[ApnsTransport] = []

    def build(
        timeout: float = 5.0, liveness_timeout: float = 3.0, **overrides: Any
    ) -> ApnsTransport:
        values = {"apns_url": fake.url, "apns_ca_file": fake.ca_file, **overrides}
        transport = ApnsTransport.from_settings(
            settings_for(tmp_path, apns_key, **values),
            timeout=timeout,
            liveness_timeout=liveness_timeout,
        )
        made.append(transport)
        return transport

    try:
        yield build
    finally:
        for transport in made:
            await transport.close()


@pytest.fixture
def transport(make_transport: Callable[..., ApnsTransport]) -> ApnsTransport:
    return make_transport()


# -- delivery -------------------------------------------------------------------------------


async def test_delivery_sends_apples_wire_format(
    transport: ApnsTransport, fake: ApnsFake, apns_key: ApnsKey
) -> None:
    push = message()
    before = int(time.time())

    result = await transport.send(push)

    assert result == PushResult(PushOutcome.DELIVERED, status=200, reason="Success")
    (request,) = await fake.wait_for(1)
    assert request.violations == []
    headers = request.headers
    assert headers[":method"] == "POST"
    assert headers[":scheme"] == "https"
    assert headers[":path"] == f"/3/device/{push.token}"
    assert headers["apns-topic"] == TOPIC
    assert headers["apns-push-type"] == "alert"
    assert headers["apns-priority"] == "10"
    assert headers["apns-collapse-id"] == push.challenge_id
    expiry = int(push.expires_at.timestamp())
    # aioapns adds its own clock reading to the time-to-live we computed from the same clock
    # a few microseconds earlier: a second boundary in between shows as +1.
    assert int(headers["apns-expiration"]) in (expiry, expiry + 1)
    assert re.fullmatch(r"[0-9a-f-]{36}", headers["apns-id"])
    # The provider token: signature verified by the fake against the key's public half.
    assert headers["authorization"].startswith("bearer ")
    assert request.jwt_header is not None
    assert request.jwt_claims is not None
    assert request.jwt_header["alg"] == "ES256"
    assert request.jwt_header["kid"] == apns_key.key_id
    assert request.jwt_claims["iss"] == apns_key.team_id
    assert before - 2 <= request.jwt_claims["iat"] <= int(time.time()) + 2
    assert request.status == 200
    assert fake.connections_made == 1


async def test_payload_is_only_the_challenge_id_and_display(
    transport: ApnsTransport, fake: ApnsFake
) -> None:
    push = message(display="Sign-in to VPN from 203.0.113.7")

    assert (await transport.send(push)).outcome is PushOutcome.DELIVERED

    (request,) = await fake.wait_for(1)
    assert request.payload == {
        "aps": {
            "alert": {"title": "OpenMFA", "body": "Sign-in to VPN from 203.0.113.7"},
            "mutable-content": 1,
        },
        "challenge_id": push.challenge_id,
    }
    # No number, code or seed anywhere: the only digits left once the display string and
    # the challenge id are taken out are mutable-content's 1.
    rest = request.body.decode().replace(push.display, "").replace(push.challenge_id, "")
    assert re.findall(r"\d+", rest) == ["1"]


async def test_display_text_is_sent_as_utf8(transport: ApnsTransport, fake: ApnsFake) -> None:
    push = message(display="Anmeldung bei VPN in Zürich ✓")
    assert (await transport.send(push)).outcome is PushOutcome.DELIVERED
    (request,) = await fake.wait_for(1)
    assert request.payload["aps"]["alert"]["body"] == "Anmeldung bei VPN in Zürich ✓"


async def test_concurrent_sends_share_connections(transport: ApnsTransport, fake: ApnsFake) -> None:
    pushes = [message() for _ in range(100)]

    results = await asyncio.gather(*(transport.send(p) for p in pushes))

    assert {r.outcome for r in results} == {PushOutcome.DELIVERED}
    requests = await fake.wait_for(100)
    assert {r.token for r in requests} == {p.token for p in pushes}
    assert len({r.headers["apns-id"] for r in requests}) == 100
    # One HTTP/2 connection carries them; a second at most when the fake's stream limit
    # arrives in the middle of the burst. One provider token for all of them.
    assert fake.connections_made <= 2
    assert len({r.headers["authorization"] for r in requests}) == 1


# -- classification -------------------------------------------------------------------------


INVALID, RETRY, FAILED = PushOutcome.INVALID_TOKEN, PushOutcome.RETRY, PushOutcome.FAILED


@pytest.mark.parametrize(
    ("status", "reason", "retry_after", "outcome", "seconds"),
    [
        (400, "BadDeviceToken", None, INVALID, None),
        (400, "DeviceTokenNotForTopic", None, INVALID, None),
        (410, "Unregistered", None, INVALID, None),
        (410, "ExpiredToken", None, INVALID, None),
        (429, "TooManyRequests", "7", RETRY, 7.0),
        (429, "TooManyRequests", None, RETRY, None),
        (500, "InternalServerError", None, RETRY, None),
        (503, "ServiceUnavailable", "2.5", RETRY, 2.5),
        (503, "Shutdown", "soon", RETRY, None),  # an unreadable retry-after is ignored
        (403, "InvalidProviderToken", None, FAILED, None),
        (403, "ExpiredProviderToken", None, FAILED, None),
        (400, "BadTopic", None, FAILED, None),
        (413, "PayloadTooLarge", None, FAILED, None),
    ],
)
async def test_answers_are_classified_after_one_attempt(
    transport: ApnsTransport,
    fake: ApnsFake,
    status: int,
    reason: str,
    retry_after: str | None,
    outcome: PushOutcome,
    seconds: float | None,
) -> None:
    fake.fail_next(1, status, reason, retry_after=retry_after)

    result = await transport.send(message())

    assert result == PushResult(outcome, status=status, reason=reason, retry_after=seconds)
    # send() returned after aioapns finished with the request: a retry inside the library
    # would already show here as a second request.
    assert len(fake.requests) == 1


async def test_fail_token_hits_only_that_device(transport: ApnsTransport, fake: ApnsFake) -> None:
    dead, alive = token(), token()
    fake.fail_token(dead, 410, "Unregistered")

    first = await transport.send(message(device=dead))
    second = await transport.send(message(device=alive))
    third = await transport.send(message(device=dead))

    assert (first.outcome, second.outcome, third.outcome) == (
        PushOutcome.INVALID_TOKEN,
        PushOutcome.DELIVERED,
        PushOutcome.INVALID_TOKEN,
    )


async def test_retry_after_as_an_http_date(transport: ApnsTransport, fake: ApnsFake) -> None:
    when = datetime.now(UTC) + timedelta(seconds=30)
    fake.fail_next(1, 429, "TooManyRequests", retry_after=format_datetime(when, usegmt=True))

    result = await transport.send(message())

    assert result.outcome is PushOutcome.RETRY
    assert result.retry_after is not None
    assert 25 <= result.retry_after <= 30


async def test_error_bodies_do_not_exhaust_the_receive_window(
    transport: ApnsTransport, fake: ApnsFake
) -> None:
    # aioapns never returns HTTP/2 receive window; with ~8 KB error bodies the 64 KiB
    # connection window would be gone after 8 answers and the rest would time out.
    reason = "X" * 8000
    fake.fail_next(12, 400, reason)

    results = [await transport.send(message()) for _ in range(12)]

    assert [r.outcome for r in results] == [PushOutcome.FAILED] * 12
    assert {r.reason for r in results} == {reason}
    assert fake.connections_made == 1


# -- failures of the service ----------------------------------------------------------------


async def test_held_answer_times_out_as_retry_and_the_connection_survives(
    make_transport: Callable[..., ApnsTransport], fake: ApnsFake
) -> None:
    transport = make_transport(timeout=0.5)
    assert (await transport.send(message())).outcome is PushOutcome.DELIVERED
    fake.hold()
    started = time.monotonic()

    result = await transport.send(message())

    elapsed = time.monotonic() - started
    assert result.outcome is PushOutcome.RETRY
    assert "no answer" in result.reason
    assert 0.45 <= elapsed < 3
    # The client gave the stream up (RST_STREAM) and checked the connection with a PING,
    # which the fake answered; the late answer is dropped, and the same connection goes on.
    await fake.wait_until(lambda: fake.requests[1].reset, 5, "the abandoned stream reset")
    await fake.wait_until(lambda: fake.pings == 1, 5, "a liveness PING")
    fake.release()
    assert (await transport.send(message())).outcome is PushOutcome.DELIVERED
    assert fake.connections_made == 1
    assert fake.requests[1].status is None


async def test_a_silent_connection_is_dropped_and_replaced(
    make_transport: Callable[..., ApnsTransport], fake: ApnsFake
) -> None:
    transport = make_transport(timeout=0.5, liveness_timeout=0.5)
    assert (await transport.send(message())).outcome is PushOutcome.DELIVERED
    fake.frozen = True  # the path dies: nothing arrives any more, PINGs included

    result = await transport.send(message())

    assert result.outcome is PushOutcome.RETRY
    # The unanswered PING makes the client drop the connection instead of timing out every
    # later push on it.
    await fake.wait_until(lambda: fake.open_connections == 0, 5, "the client to drop it")
    fake.frozen = False
    assert (await transport.send(message())).outcome is PushOutcome.DELIVERED
    assert fake.connections_made == 2


async def test_slow_service_delivers_within_and_retries_beyond_the_timeout(
    make_transport: Callable[..., ApnsTransport], fake: ApnsFake
) -> None:
    transport = make_transport(timeout=2.0)
    fake.delay = 0.3
    started = time.monotonic()
    assert (await transport.send(message())).outcome is PushOutcome.DELIVERED
    assert time.monotonic() - started >= 0.3

    fake.delay = 10
    result = await transport.send(message())
    assert result.outcome is PushOutcome.RETRY
    assert "within 2 s" in result.reason


async def test_dropped_connection_is_one_attempt_then_a_new_connection(
    transport: ApnsTransport, fake: ApnsFake
) -> None:
    fake.drop_next(1)

    result = await transport.send(message())

    assert result.outcome is PushOutcome.RETRY
    assert "lost" in result.reason
    assert len(fake.requests) == 1  # aioapns did not try again on its own
    assert (await transport.send(message())).outcome is PushOutcome.DELIVERED
    assert fake.connections_made == 2
    # The new connection signs with the same provider token (Apple throttles new ones).
    first, second = fake.requests
    assert first.headers["authorization"] == second.headers["authorization"]


async def test_refused_connection_is_retry_at_once(tmp_path: Path, apns_key: ApnsKey) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    transport = ApnsTransport.from_settings(
        settings_for(tmp_path, apns_key, apns_url=f"https://127.0.0.1:{port}"), timeout=5
    )
    try:
        started = time.monotonic()
        result = await transport.send(message())
        elapsed = time.monotonic() - started
    finally:
        await transport.close()

    assert result.outcome is PushOutcome.RETRY
    assert f"cannot connect to https://127.0.0.1:{port}" in result.reason
    assert "ConnectionRefusedError" in result.reason
    assert elapsed < 0.9  # not after aioapns's one-second pause between attempts


async def test_stalled_tls_handshake_times_out(tmp_path: Path, apns_key: ApnsKey) -> None:
    accepted: list[asyncio.BaseTransport] = []

    class Silent(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            accepted.append(transport)  # accept TCP, never answer the TLS hello

    loop = asyncio.get_running_loop()
    server = await loop.create_server(Silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport = ApnsTransport.from_settings(
        settings_for(tmp_path, apns_key, apns_url=f"https://127.0.0.1:{port}"), timeout=0.5
    )
    try:
        result = await transport.send(message())
    finally:
        await transport.close()
        server.close()
        for accepted_transport in accepted:
            accepted_transport.close()
        await server.wait_closed()

    assert result.outcome is PushOutcome.RETRY
    assert "no answer from APNs within 0.5 s" in result.reason
    assert len(accepted) == 1


async def test_untrusted_certificate_is_not_accepted(
    tmp_path: Path, apns_key: ApnsKey, fake: ApnsFake
) -> None:
    # Without apns_ca_file the test CA is unknown: verification stays on.
    transport = ApnsTransport.from_settings(
        settings_for(tmp_path, apns_key, apns_url=fake.url), timeout=5
    )
    try:
        result = await transport.send(message())
    finally:
        await transport.close()

    assert result.outcome is PushOutcome.RETRY
    assert "CERTIFICATE_VERIFY_FAILED" in result.reason
    assert fake.requests == []


async def test_wrong_signing_key_is_refused_by_the_fake(
    tmp_path: Path, apns_key: ApnsKey, fake: ApnsFake
) -> None:
    other = make_apns_key(tmp_path / "other")
    impostor = other.p8_path.with_name(f"AuthKey_{apns_key.key_id}.p8")
    other.p8_path.rename(impostor)
    transport = ApnsTransport.from_settings(
        settings_for(
            tmp_path,
            apns_key,
            apns_key_file=impostor,
            apns_url=fake.url,
            apns_ca_file=fake.ca_file,
        )
    )
    try:
        result = await transport.send(message())
    finally:
        await transport.close()

    assert result == PushResult(PushOutcome.FAILED, 403, "InvalidProviderToken")
    assert len(fake.violations) == 1
    assert "signature does not verify" in fake.violations[0]
    fake.violations.clear()


# -- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["not-hex-at-all", "ab/../cd" * 4, "abcd", "ab\r\nx: y" * 4])
async def test_malformed_token_is_invalid_and_never_sent(
    transport: ApnsTransport, fake: ApnsFake, device: str
) -> None:
    result = await transport.send(message(device=device))

    assert result == PushResult(PushOutcome.INVALID_TOKEN, reason="malformed device token")
    assert fake.requests == []
    assert fake.connections_made == 0


async def test_expired_challenge_is_not_sent(transport: ApnsTransport, fake: ApnsFake) -> None:
    result = await transport.send(message(ttl=-5))

    assert result.outcome is PushOutcome.FAILED
    assert "expired" in result.reason
    assert fake.connections_made == 0


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _pem(key: Any) -> bytes:
    pem: bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pem


@pytest.mark.parametrize(
    ("change", "message_part"),
    [
        (lambda d, k: {"apns_key_file": None}, "missing: apns_key_file"),
        (lambda d, k: {"apns_key_id": "", "apns_topic": ""}, "missing: apns_key_id, apns_topic"),
        (lambda d, k: {"apns_team_id": ""}, "missing: apns_team_id"),
        (
            lambda d, k: {"apns_key_file": d / "AuthKey_NOPE.p8"},
            "is the key NOPE, but apns_key_id is",
        ),
        (lambda d, k: {"apns_key_file": d / "absent.p8"}, "cannot read apns_key_file"),
        (lambda d, k: {"apns_key_file": d}, "cannot read apns_key_file"),
        (
            lambda d, k: {"apns_key_file": _write(d / "garbage.p8", b"not a key\n")},
            "is not an APNs auth key",
        ),
        (
            lambda d, k: {
                "apns_key_file": _write(
                    d / "cert.p8", k.p8_path.read_bytes().replace(b"PRIVATE KEY", b"CERTIFICATE")
                )
            },
            "is not an APNs auth key",
        ),
        (
            lambda d, k: {
                "apns_key_file": _write(
                    d / "rsa.p8",
                    _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
                )
            },
            "holds a key of type RSA",
        ),
        (
            lambda d, k: {
                "apns_key_file": _write(
                    d / "p384.p8", _pem(ec.generate_private_key(ec.SECP384R1()))
                )
            },
            "holds a key of type EC secp384r1",
        ),
        (
            lambda d, k: {
                "apns_key_file": _write(
                    d / "locked.p8",
                    ec.generate_private_key(ec.SECP256R1()).private_bytes(
                        serialization.Encoding.PEM,
                        serialization.PrivateFormat.PKCS8,
                        serialization.BestAvailableEncryption(b"secret"),
                    ),
                )
            },
            "is encrypted",
        ),
        (lambda d, k: {"apns_key_id": "abc"}, "apns_key_id 'abc' is not an APNs key id"),
        (lambda d, k: {"apns_team_id": "TEAM ID 12"}, "is not an Apple team id"),
        (lambda d, k: {"apns_topic": "org example"}, "is not a bundle id"),
        (lambda d, k: {"apns_url": "http://127.0.0.1:1"}, "apns_url must be https://host"),
        (lambda d, k: {"apns_url": "https://relay.example/3/device"}, "apns_url must be"),
        (lambda d, k: {"apns_url": "https://relay.example:99999"}, "apns_url must be"),
        (lambda d, k: {"apns_ca_file": d / "absent-ca.pem"}, "cannot use apns_ca_file"),
        (
            lambda d, k: {"apns_ca_file": _write(d / "bad-ca.pem", b"nope")},
            "cannot use apns_ca_file",
        ),
    ],
)
def test_bad_configuration_fails_at_construction(
    tmp_path: Path,
    apns_key: ApnsKey,
    change: Callable[[Path, ApnsKey], dict[str, Any]],
    message_part: str,
) -> None:
    # A key named for its own id unless the case renames it, as Apple names the download.
    overrides = change(tmp_path, apns_key)
    if "apns_key_file" in overrides and overrides["apns_key_file"] is not None:
        overrides.setdefault("apns_key_id", apns_key.key_id)
    with pytest.raises(ConfigurationError) as raised:
        ApnsTransport.from_settings(settings_for(tmp_path, apns_key, **overrides))
    assert message_part in str(raised.value)


def test_a_good_configuration_picks_the_endpoint(tmp_path: Path, apns_key: ApnsKey) -> None:
    production = ApnsTransport.from_settings(settings_for(tmp_path, apns_key))
    sandbox = ApnsTransport.from_settings(settings_for(tmp_path, apns_key, apns_sandbox=True))
    relay = ApnsTransport.from_settings(
        settings_for(tmp_path, apns_key, apns_url="https://relay.example:2197")
    )

    assert production.endpoint == "https://api.push.apple.com:443"
    assert sandbox.endpoint == "https://api.development.push.apple.com:443"
    assert relay.endpoint == "https://relay.example:2197"
    assert production.name == "apns"


# -- closing --------------------------------------------------------------------------------


async def test_close_leaves_no_connection_or_task(
    tmp_path: Path, apns_key: ApnsKey, fake: ApnsFake
) -> None:
    tasks_before = asyncio.all_tasks()
    transport = ApnsTransport.from_settings(
        settings_for(tmp_path, apns_key, apns_url=fake.url, apns_ca_file=fake.ca_file)
    )
    results = await asyncio.gather(*(transport.send(message()) for _ in range(5)))
    assert {r.outcome for r in results} == {PushOutcome.DELIVERED}
    assert fake.open_connections >= 1

    await transport.close()

    assert transport.closed
    await fake.wait_until(lambda: fake.open_connections == 0, 5, "the client to hang up")
    assert asyncio.all_tasks() == tasks_before
    after = await transport.send(message())
    assert after == PushResult(PushOutcome.FAILED, reason="the APNs transport is closed")
    assert fake.open_connections == 0


async def test_close_ends_a_send_in_flight(
    make_transport: Callable[..., ApnsTransport], fake: ApnsFake
) -> None:
    transport = make_transport(timeout=30)
    fake.hold()
    pending = asyncio.create_task(transport.send(message()))
    await fake.wait_for(1)

    await transport.close()

    result = await asyncio.wait_for(pending, 5)
    assert result.outcome is PushOutcome.RETRY
    assert "lost" in result.reason
    await fake.wait_until(lambda: fake.open_connections == 0, 5, "the client to hang up")


# -- the fake's own checks ------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _provider_token(path: Path, kid: str, iss: str, iat: int) -> str:
    private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    signing_input = (
        _b64(json.dumps({"alg": "ES256", "kid": kid}).encode())
        + "."
        + _b64(json.dumps({"iss": iss, "iat": iat}).encode())
    )
    r, s = decode_dss_signature(private.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return signing_input + "." + _b64(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


async def _raw_post(
    fake: ApnsFake, headers: list[tuple[str, str]], body: bytes, alpn: bool = True
) -> tuple[int, bytes]:
    """One request from a bare h2 client, to feed the fake what aioapns never would."""
    context = ssl.create_default_context(cafile=str(fake.ca_file))
    if alpn:
        context.set_alpn_protocols(["h2"])
    async with asyncio.timeout(5):
        reader, writer = await asyncio.open_connection("127.0.0.1", fake.port, ssl=context)
        try:
            h2 = H2Connection()
            h2.initiate_connection()
            h2.send_headers(1, headers)
            h2.send_data(1, body, end_stream=True)
            writer.write(h2.data_to_send())
            status, answer, ended = 0, b"", False
            while not ended:
                chunk = await reader.read(65536)
                assert chunk, "the fake closed the connection"
                for event in h2.receive_data(chunk):
                    if isinstance(event, ResponseReceived):
                        status = int(dict(event.headers)[b":status"])
                    elif isinstance(event, DataReceived):
                        answer += event.data
                    elif isinstance(event, StreamEnded):
                        ended = True
                writer.write(h2.data_to_send())
        finally:
            writer.close()
            # The fake may still be sending (a SETTINGS ack) when our close_notify goes out.
            with contextlib.suppress(ssl.SSLError):
                await writer.wait_closed()
    return status, answer


def _good_request(fake: ApnsFake, key: ApnsKey) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    challenge = "ch_" + secrets.token_urlsafe(16)
    headers = [
        (":method", "POST"),
        (":scheme", "https"),
        (":path", f"/3/device/{token()}"),
        (":authority", "127.0.0.1"),
        ("apns-topic", TOPIC),
        ("apns-push-type", "alert"),
        ("apns-priority", "10"),
        ("apns-expiration", str(int(time.time()) + 60)),
        ("apns-collapse-id", challenge),
        (
            "authorization",
            "bearer " + _provider_token(key.p8_path, key.key_id, key.team_id, int(time.time())),
        ),
    ]
    payload = {
        "aps": {"alert": {"title": "OpenMFA", "body": "Sign-in"}, "mutable-content": 1},
        "challenge_id": challenge,
    }
    return headers, payload


def _set(headers: list[tuple[str, str]], name: str, value: str | None) -> list[tuple[str, str]]:
    kept = [(k, v) for k, v in headers if k != name]
    if value is None:
        return kept
    return [(name, value), *kept] if name.startswith(":") else [*kept, (name, value)]


async def test_the_fake_accepts_a_correct_request(fake: ApnsFake, apns_key: ApnsKey) -> None:
    headers, payload = _good_request(fake, apns_key)
    status, _ = await _raw_post(fake, headers, json.dumps(payload).encode())
    assert status == 200
    assert fake.violations == []


@pytest.mark.parametrize(
    ("mutate", "status", "reason", "violation"),
    [
        (lambda h, p, k: (_set(h, "apns-priority", "5"), p), 400, "BadPriority", "apns-priority"),
        (
            lambda h, p, k: (_set(h, "apns-push-type", "background"), p),
            400,
            "InvalidPushType",
            "apns-push-type",
        ),
        (
            lambda h, p, k: (_set(h, "apns-expiration", None), p),
            400,
            "BadExpirationDate",
            "apns-expiration",
        ),
        (
            lambda h, p, k: (_set(h, "apns-collapse-id", None), p),
            400,
            "BadCollapseId",
            "apns-collapse-id",
        ),
        (lambda h, p, k: (_set(h, "apns-topic", "org.other"), p), 400, "TopicDisallowed", "topic"),
        (lambda h, p, k: (_set(h, "apns-topic", None), p), 400, "MissingTopic", "apns-topic"),
        (lambda h, p, k: (_set(h, ":path", "/3/device/xyz"), p), 400, "BadDeviceToken", "hex"),
        (lambda h, p, k: (_set(h, ":path", "/2/push"), p), 404, "BadPath", ":path"),
        (
            lambda h, p, k: (_set(h, "authorization", None), p),
            403,
            "MissingProviderToken",
            "authorization",
        ),
        (
            lambda h, p, k: (
                _set(
                    h,
                    "authorization",
                    "bearer "
                    + _provider_token(k.p8_path, "WRONGKEYID", k.team_id, int(time.time())),
                ),
                p,
            ),
            403,
            "InvalidProviderToken",
            "kid",
        ),
        (
            lambda h, p, k: (
                _set(
                    h,
                    "authorization",
                    "bearer "
                    + _provider_token(k.p8_path, k.key_id, "OTHERTEAM1", int(time.time())),
                ),
                p,
            ),
            403,
            "InvalidProviderToken",
            "iss",
        ),
        (
            lambda h, p, k: (
                _set(
                    h,
                    "authorization",
                    "bearer "
                    + _provider_token(k.p8_path, k.key_id, k.team_id, int(time.time()) - 7200),
                ),
                p,
            ),
            403,
            "ExpiredProviderToken",
            "older than an hour",
        ),
        (
            lambda h, p, k: (h, {**p, "code": "123456"}),
            400,
            "FakeContractViolation",
            "top-level keys",
        ),
        (
            lambda h, p, k: (h, {**p, "aps": {**p["aps"], "mutable-content": 0}}),
            400,
            "FakeContractViolation",
            "mutable-content",
        ),
        (
            lambda h, p, k: (_set(h, "apns-collapse-id", "ch_other"), p),
            400,
            "FakeContractViolation",
            "not the challenge id",
        ),
    ],
)
async def test_the_fake_flags_wire_format_violations(
    fake: ApnsFake,
    apns_key: ApnsKey,
    mutate: Callable[..., tuple[list[tuple[str, str]], dict[str, Any]]],
    status: int,
    reason: str,
    violation: str,
) -> None:
    headers, payload = mutate(*_good_request(fake, apns_key), apns_key)

    got_status, body = await _raw_post(fake, headers, json.dumps(payload).encode())

    assert (got_status, json.loads(body)["reason"]) == (status, reason)
    assert len(fake.violations) == 1
    assert violation in fake.violations[0]
    fake.violations.clear()


async def test_the_fake_flags_a_client_without_alpn(fake: ApnsFake, apns_key: ApnsKey) -> None:
    headers, payload = _good_request(fake, apns_key)
    status, _ = await _raw_post(fake, headers, json.dumps(payload).encode(), alpn=False)
    assert status == 200
    assert fake.violations == ["connection 1: ALPN negotiated None, not 'h2'"]
    fake.violations.clear()
