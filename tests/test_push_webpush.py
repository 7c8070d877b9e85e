"""The Web Push transport against the TLS fake push service (tests/fakes/webpush_service.py),
and with the real dispatcher: the fake verifies the VAPID JWT with PyJWT and decrypts every
body with http-ece, so both the signing and the encryption are checked by independent code.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import delete, update

from backend.cli.main import main
from backend.config import Settings, load_settings
from backend.crypto import SecretBox, read_key
from backend.domain.stepup import ADMINISTRATOR
from backend.domain.webpush import DEFAULT_ALLOWED_ORIGINS, OriginAllowList, topic_for
from backend.errors import ServerKeyError
from backend.push.base import PushMessage, PushOutcome, PushTransport
from backend.push.dispatcher import Backoff, PushDispatcher
from backend.push.vapid import VapidKey, VapidSigner, load_or_create_vapid_key
from backend.push.webpush import WebPushTransport
from backend.services import Services
from backend.services.challenges import ChallengeService
from backend.services.context import Actor, SignInContext
from backend.store.tables import devices_t, meta_t
from tests.fakes.tls import TlsFiles, make_tls
from tests.fakes.webpush_service import FakePushService, b64u_decode
from tests.support.clock import FakeClock

pytestmark = pytest.mark.anyio
ADMIN = Actor("test:admin")
SUBJECT = "mailto:ops@example.com"


@pytest.fixture
def tls(tmp_path: Path) -> TlsFiles:
    return make_tls(tmp_path / "tls")


@pytest.fixture
async def service(tmp_path: Path, tls: TlsFiles) -> AsyncIterator[FakePushService]:
    fake = FakePushService(tmp_path, tls=tls)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
async def rogue(tmp_path: Path, tls: TlsFiles) -> AsyncIterator[FakePushService]:
    """A push service *not* on the allow-list, with a certificate the server would trust:
    only the allow-list stands between it and a request."""
    fake = FakePushService(tmp_path / "rogue", tls=tls)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
def settings(settings: Settings, service: FakePushService) -> Settings:
    """The suite's settings with the fake on the allow-list (so subscriptions to it store)."""
    return settings.model_copy(
        update={"webpush_allowed_origins": (*DEFAULT_ALLOWED_ORIGINS, service.origin)}
    )


@pytest.fixture
def key() -> VapidKey:
    return VapidKey.generate()


def make_transport(
    service: FakePushService, key: VapidKey, *origins: str, **kw: object
) -> WebPushTransport:
    return WebPushTransport(
        key=key,
        subject=SUBJECT,
        allowed=OriginAllowList(origins or (service.origin,)),
        ca_file=service.ca_file,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
async def transport(service: FakePushService, key: VapidKey) -> AsyncIterator[WebPushTransport]:
    service.expected_vapid_key = key.public_b64u
    transport = make_transport(service, key)
    try:
        yield transport
    finally:
        await transport.close()


def message(token: str, seconds: float = 60, challenge: str = "ch_1") -> PushMessage:
    expires = datetime.now(UTC) + timedelta(seconds=seconds)
    return PushMessage(challenge, token, "Sign in to VPN-ASA from 203.0.113.7", expires, "alice")


# -- one send -------------------------------------------------------------------------------


async def test_satisfies_the_protocol(transport: WebPushTransport) -> None:
    checked: PushTransport = transport  # mypy checks the shape
    assert checked.name == "webpush"


async def test_a_push_arrives_signed_and_decrypts_to_the_contract_payload(
    service: FakePushService, transport: WebPushTransport, key: VapidKey
) -> None:
    token = service.subscription()
    sent = message(token, seconds=90, challenge="ch_abc")
    result = await transport.send(sent)
    assert result.outcome is PushOutcome.DELIVERED
    assert result.status == 201
    [request] = service.requests
    assert request.payload == {
        "v": 1,
        "challenge_id": "ch_abc",
        "display": "Sign in to VPN-ASA from 203.0.113.7",
        "expires_at": sent.expires_at.isoformat().replace("+00:00", "Z"),
        "user": "alice",
    }
    assert request.claims["aud"] == service.origin
    assert request.claims["sub"] == SUBJECT
    assert request.vapid_key == key.public_b64u
    assert len(b64u_decode(request.vapid_key)) == 65
    assert 0 < request.claims["exp"] - datetime.now(UTC).timestamp() <= 12 * 3600 + 5
    assert request.urgency == "high"
    assert request.topic == topic_for("ch_abc")
    assert len(request.topic) == 32
    assert request.ttl is not None
    assert 85 <= request.ttl <= 90
    assert request.headers["content-encoding"] == "aes128gcm"


async def test_the_payload_holds_no_secret_and_no_number(
    service: FakePushService, transport: WebPushTransport
) -> None:
    await transport.send(message(service.subscription()))
    assert set(service.requests[0].payload) == {
        "v",
        "challenge_id",
        "display",
        "expires_at",
        "user",
    }


async def test_an_expired_challenge_gets_ttl_zero(
    service: FakePushService, transport: WebPushTransport
) -> None:
    await transport.send(message(service.subscription(), seconds=-5))
    assert service.requests[0].ttl == 0


async def test_each_push_is_encrypted_afresh(
    service: FakePushService, transport: WebPushTransport
) -> None:
    sent = message(service.subscription())
    await transport.send(sent)
    await transport.send(sent)
    first, second = service.requests
    assert first.plaintext == second.plaintext
    assert first.body[:16] != second.body[:16]  # a new salt
    assert first.body[21:86] != second.body[21:86]  # a new ephemeral key
    assert first.topic == second.topic  # a newer push for a challenge replaces the older


async def test_the_jwt_is_signed_once_per_origin_and_reused(
    service: FakePushService, transport: WebPushTransport
) -> None:
    for _ in range(5):
        await transport.send(message(service.subscription()))
    assert transport.signer.signed == 1
    assert len({r.headers["authorization"] for r in service.requests}) == 1
    assert service.connections_made == 1  # the connection is kept and reused


def test_the_jwt_cache_renews_before_expiry_and_per_origin(key: VapidKey) -> None:
    now = [1_000_000.0]
    signer = VapidSigner(key, SUBJECT, clock=lambda: now[0])
    first = signer.authorization("https://fcm.googleapis.com")
    assert signer.authorization("https://fcm.googleapis.com") == first
    other = signer.authorization("https://web.push.apple.com")
    assert other != first
    assert signer.signed == 2
    now[0] += 10 * 3600  # 2 h left: still used
    assert signer.authorization("https://fcm.googleapis.com") == first
    now[0] += 1.5 * 3600  # half an hour left: renewed
    renewed = signer.authorization("https://fcm.googleapis.com")
    assert renewed != first
    assert signer.signed == 3
    token = renewed.split("t=", 1)[1].split(",", 1)[0]
    claims = jwt.decode(
        token,
        key.private_key.public_key(),
        algorithms=["ES256"],
        audience="https://fcm.googleapis.com",
        options={"verify_exp": False},
    )
    assert claims["exp"] == int(now[0]) + 12 * 3600


# -- what the service answers ---------------------------------------------------------------


@pytest.mark.parametrize("status", [404, 410])
async def test_a_gone_subscription_is_an_invalid_token(
    service: FakePushService, transport: WebPushTransport, status: int
) -> None:
    token = service.subscription()
    service.unsubscribe(token, status)
    result = await transport.send(message(token))
    assert (result.outcome, result.status) == (PushOutcome.INVALID_TOKEN, status)


@pytest.mark.parametrize(("status", "after"), [(429, "7"), (500, None), (503, "2")])
async def test_busy_or_broken_services_mean_retry_with_retry_after(
    service: FakePushService, transport: WebPushTransport, status: int, after: str | None
) -> None:
    service.fail_next(1, status, after)
    result = await transport.send(message(service.subscription()))
    assert (result.outcome, result.status) == (PushOutcome.RETRY, status)
    assert result.retry_after == (float(after) if after else None)


@pytest.mark.parametrize("status", [400, 401, 403, 413])
async def test_refusals_fail_with_the_reason_and_drop_a_refused_jwt(
    service: FakePushService, transport: WebPushTransport, status: int
) -> None:
    await transport.send(message(service.subscription()))
    service.fail_next(1, status)
    result = await transport.send(message(service.subscription()))
    assert (result.outcome, result.status, result.reason) == (
        PushOutcome.FAILED,
        status,
        "injected",
    )
    await transport.send(message(service.subscription()))
    assert transport.signer.signed == (2 if status in (401, 403) else 1)


async def test_a_redirect_is_never_followed(
    service: FakePushService, rogue: FakePushService, transport: WebPushTransport
) -> None:
    service.fail_next(1, 307, location=f"{rogue.origin}/push/x")
    result = await transport.send(message(service.subscription()))
    assert (result.outcome, result.status) == (PushOutcome.FAILED, 307)
    assert rogue.connections_made == 0
    assert rogue.requests == []


async def test_an_untrusted_certificate_fails(service: FakePushService, key: VapidKey) -> None:
    transport = WebPushTransport(
        key=key, subject=SUBJECT, allowed=OriginAllowList((service.origin,))
    )
    try:
        result = await transport.send(message(service.subscription()))
    finally:
        await transport.close()
    assert (result.outcome, result.reason) == (PushOutcome.FAILED, "tls-certificate-not-trusted")
    assert service.requests == []


async def test_a_refused_connection_is_a_retry(
    service: FakePushService, transport: WebPushTransport
) -> None:
    token = service.subscription()
    await service.stop()
    result = await transport.send(message(token))
    assert result.outcome is PushOutcome.RETRY


# -- the allow-list at send time -----------------------------------------------------------


async def test_an_origin_off_the_list_gets_no_request_at_all(
    service: FakePushService, rogue: FakePushService, key: VapidKey
) -> None:
    # Stored when the rogue origin was allowed, or written into the database some other way:
    # the list is checked again before every send.
    transport = make_transport(service, key, *DEFAULT_ALLOWED_ORIGINS, service.origin)
    try:
        result = await transport.send(message(rogue.subscription()))
    finally:
        await transport.close()
    assert (result.outcome, result.reason) == (PushOutcome.INVALID_TOKEN, "origin-not-allowed")
    assert rogue.connections_made == 0
    assert rogue.requests == []
    assert transport.requests_made == 0


@pytest.mark.parametrize(
    "token",
    [
        "not json",
        '{"endpoint":"http://127.0.0.1:1/push/x","keys":{"p256dh":"AA","auth":"AA"}}',
        "[]",
    ],
)
async def test_a_stored_token_that_is_no_subscription_is_dead(
    transport: WebPushTransport, token: str
) -> None:
    result = await transport.send(message(token))
    assert (result.outcome, result.reason) == (PushOutcome.INVALID_TOKEN, "not-a-subscription")
    assert transport.requests_made == 0


# -- with the dispatcher -------------------------------------------------------------------


class World:
    def __init__(self, services: Services, clock: FakeClock, transport: WebPushTransport) -> None:
        self.services = services
        self.clock = clock
        self.transport = transport
        self.dispatcher = PushDispatcher(
            services.db,
            services.audit,
            clock,
            Actor("system:push"),
            {"webpush": transport},
            10,
            Backoff(0.001, 0.004),
        )
        s = services
        self.challenges = ChallengeService(
            s.db, s.bus, s.users, s.otp, s.audit, clock, push=self.dispatcher
        )

    async def device(self, user: str, token: str) -> str:
        await self.services.users.add(ADMIN, user)
        offer = await self.services.activation.create_code(ADMIN, ADMINISTRATOR, user)
        public = (
            Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        )
        activated = await self.services.activation.activate(
            ADMIN, offer.code, public, "web", push_token=token
        )
        return activated.device_id

    async def push(self, user: str) -> str:
        view = await self.challenges.start(ADMIN, user, "push", SignInContext("vpn", "203.0.113.7"))
        await self.dispatcher.wait_idle()
        return view.id


@pytest.fixture
async def world(
    services: Services, clock: FakeClock, service: FakePushService, key: VapidKey
) -> AsyncIterator[World]:
    await services.policies.set(ADMIN, "push_limit", "0")
    await services.policies.set(ADMIN, "push_max_unanswered", "0")
    transport = make_transport(service, key, service.origin, clock=clock)
    world = World(services, clock, transport)
    try:
        yield world
    finally:
        await world.dispatcher.close()
        await transport.close()


async def test_a_web_device_gets_its_challenge(world: World, service: FakePushService) -> None:
    token = service.subscription()
    device = await world.device("alice", token)
    challenge = await world.push("alice")
    [request] = service.requests
    assert request.payload["challenge_id"] == challenge
    assert request.payload["user"] == "alice"
    assert (await world.services.devices.get(device)).push_status == "ok"


async def test_a_dead_subscription_is_marked_and_not_pushed_again(
    world: World, service: FakePushService
) -> None:
    token = service.subscription()
    device = await world.device("alice", token)
    service.unsubscribe(token)
    await world.push("alice")
    record = await world.services.devices.get(device)
    assert record.push_status == "invalid"
    await world.push("alice")
    assert len(service.requests) == 1  # the device polls from now on


async def test_429_is_retried_after_its_retry_after_within_the_lifetime(
    world: World, service: FakePushService
) -> None:
    await world.device("alice", service.subscription())
    service.fail_next(2, 429, "1")
    await world.push("alice")
    first, second, third = service.requests
    assert [r.status for r in service.requests] == [429, 429, 201]
    assert second.received_at - first.received_at >= 0.95
    assert third.received_at - second.received_at >= 0.95
    assert third.payload["challenge_id"] == first.payload["challenge_id"]


async def test_retrying_gives_up_when_retry_after_lands_past_the_expiry(
    world: World, service: FakePushService
) -> None:
    await world.device("alice", service.subscription())
    service.fail_next(5, 503, "3600")  # the challenge lives for a minute
    await world.push("alice")
    assert [r.status for r in service.requests] == [503]
    rows = await world.services.audit.query(action="push.send", limit=10)
    assert [row.result for row in rows] == ["retry"]


async def test_retrying_stops_once_the_challenge_expired(
    world: World, service: FakePushService
) -> None:
    await world.device("alice", service.subscription())
    service.fail_next(5, 500)

    def time_passes(_: object) -> None:
        world.clock.advance(25)  # each attempt "takes" 25 s of the challenge's 60

    service.on_request = time_passes
    challenge = await world.push("alice")
    # At 0 s, 25 s and 50 s; after the third the challenge has expired: no fourth.
    assert [r.payload["challenge_id"] for r in service.requests] == [challenge] * 3


async def test_a_stored_subscription_off_a_narrowed_list_is_not_sent_to(
    world: World, service: FakePushService, rogue: FakePushService
) -> None:
    device = await world.device("alice", service.subscription())
    # As if stored under an older, wider list: straight into the row.
    async with world.services.db.write() as conn:
        await conn.execute(
            update(devices_t)
            .where(devices_t.c.id == device)
            .values(push_token=rogue.subscription())
        )
    await world.push("alice")
    assert rogue.connections_made == 0
    assert rogue.requests == []
    record = await world.services.devices.get(device)
    assert (record.push_status, record.push_error) == ("invalid", "origin-not-allowed")


# -- the VAPID key at rest ---------------------------------------------------------------------


async def test_the_vapid_key_is_made_once_and_kept_sealed(services: Services) -> None:
    first = services.webpush_key
    assert first is not None
    stored = await services.db.get_meta("webpush_vapid_key")
    assert stored is not None
    assert first.public_b64u not in stored
    again = await Services.open(services.settings)
    try:
        assert again.webpush_key is not None
        assert again.webpush_key.public_bytes == first.public_bytes
    finally:
        await again.close()


async def test_two_nodes_starting_at_once_agree_on_one_key(services: Services) -> None:
    async with services.db.write() as conn:
        await conn.execute(delete(meta_t).where(meta_t.c.key == "webpush_vapid_key"))
    box = SecretBox(read_key(services.settings.resolved_key_file))
    keys = await asyncio.gather(*(load_or_create_vapid_key(services.db, box) for _ in range(4)))
    assert len({k.public_bytes for k in keys}) == 1


async def test_the_key_does_not_open_with_another_server_key(services: Services) -> None:
    stored = await services.db.get_meta("webpush_vapid_key")
    assert stored is not None
    with pytest.raises(ServerKeyError):
        VapidKey.unseal(stored, SecretBox(b"\x01" * 32))


def test_the_fake_hands_out_browser_shaped_subscriptions(tmp_path: Path) -> None:
    fake = FakePushService(tmp_path)
    fake.url = "https://127.0.0.1:1"
    data = json.loads(fake.subscription("abc"))
    assert set(data) == {"endpoint", "keys"}
    assert set(data["keys"]) == {"p256dh", "auth"}
    assert data["endpoint"] == "https://127.0.0.1:1/push/abc"


async def test_a_long_subscription_fits_the_widened_column(
    world: World, service: FakePushService
) -> None:
    # Real endpoints run to a few hundred characters; migration 0010 leaves room for 2048.
    token = json.loads(service.subscription())
    token["endpoint"] += "-" + "a" * 1700
    device = await world.device("alice", json.dumps(token))
    stored = (await world.services.devices.get(device)).push_token
    assert stored is not None
    assert len(stored) > 1800
    assert json.loads(stored) == token


def test_a_backup_carries_the_vapid_key_so_subscriptions_survive_a_restore(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def public_key(home: Path) -> bytes:
        services = await Services.open(load_settings(config_file=None, home=home))
        try:
            assert services.webpush_key is not None
            return services.webpush_key.public_bytes
        finally:
            await services.close()

    monkeypatch.delenv("OPENMFA_DATABASE_URL", raising=False)
    monkeypatch.delenv("OPENMFA_KEY_FILE", raising=False)
    monkeypatch.setenv("OPENMFA_HOME", str(tmp_path / "home"))
    assert main(["db", "upgrade"]) == 0
    before = asyncio.run(public_key(tmp_path / "home"))
    assert main(["backup", str(tmp_path / "b.db"), "--include-key"]) == 0
    monkeypatch.setenv("OPENMFA_HOME", str(tmp_path / "fresh"))
    assert main(["restore", str(tmp_path / "b.db")]) == 0
    assert asyncio.run(public_key(tmp_path / "fresh")) == before
