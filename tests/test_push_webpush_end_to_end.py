"""Web Push end to end: ``openmfa run`` with the fake push service on its allow-list
(``OPENMFA_WEBPUSH_ALLOWED_ORIGINS``, ``OPENMFA_WEBPUSH_CA_FILE``), and a second fake that is
*not* on it but whose certificate the server would trust.

The web device is the reference authenticator activated with platform ``web`` and a
subscription the fake holds the keys of. A gateway starts a push authentication, the fake
receives a push whose VAPID JWT it verifies with the key ``GET /app/v1/webpush/key`` serves,
decrypts the payload and finds the challenge id; the device approves. Subscriptions pointing
anywhere but an allowed push service are refused at activation and at update, audited, and the
rogue service never sees a connection.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from backend.authenticator.client import AppClient, AuthenticatorError
from backend.domain.webpush import DEFAULT_ALLOWED_ORIGINS
from tests.fakes.tls import make_tls
from tests.fakes.webpush_service import FakePushService
from tests.support.database import migrated_sqlite
from tests.support.process import Cli, wait_for
from tests.support.push_e2e import LoopThread, PushWorld, gateway_server, prepare

USERS = ("alice", "bob", "carol", "dave", "erin", "frank")


@dataclass
class World(PushWorld):
    service: FakePushService
    rogue: FakePushService

    def app(self, user: str, push_token: str | None) -> AppClient:
        client = AppClient()
        client.activate(
            self.activation_uri(user),
            name=f"{user}'s browser",
            platform="web",
            push_token=push_token,
        )
        return client

    def start(self, user: str) -> str:
        return str(self.start_push(user)["id"])

    def pushes_for(self, token: str, count: int) -> list[Any]:
        def arrived() -> bool:
            return len(self.service.received_for(token)) >= count

        wait_for(arrived, timeout=15, what=f"{count} push(es) at the fake", every=0.05)
        return self.service.received_for(token)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    home = tmp_path_factory.mktemp("webpush-e2e")
    migrated_sqlite(home)
    token, codes = asyncio.run(prepare(home, USERS, unlimited_pushes=True))
    fakes = LoopThread()
    tls = make_tls(home / "tls")
    service = FakePushService(home / "service", tls=tls)
    rogue = FakePushService(home / "rogue", tls=tls)
    try:
        fakes.run(service.start())
        fakes.run(rogue.start())
        env = {
            "OPENMFA_LOG_FORMAT": "text",
            "OPENMFA_WEBPUSH_ALLOWED_ORIGINS": " ".join((*DEFAULT_ALLOWED_ORIGINS, service.origin)),
            "OPENMFA_WEBPUSH_CA_FILE": str(tls.ca_file),
            "OPENMFA_WEBPUSH_SUBJECT": "mailto:ops@example.com",
        }
        with gateway_server(home, token, env) as (server, gateway):
            key = httpx.get(f"{server.url}/app/v1/webpush/key").json()["vapid_public_key"]
            service.expected_vapid_key = key  # any other k= is a violation
            yield World(
                server=server,
                cli=Cli(home, **env),
                fakes=fakes,
                gateway=gateway,
                codes=codes,
                service=service,
                rogue=rogue,
            )
            assert server.terminate() == 0
        fakes.run(service.stop())
        fakes.run(rogue.stop())
    finally:
        fakes.run(service.stop(check=False))
        fakes.run(rogue.stop(check=False))
        fakes.close()
    # The attacker's endpoints never got as much as a TLS handshake.
    assert rogue.connections_made == 0
    assert rogue.requests == []


def test_the_server_says_web_push_is_on(world: World) -> None:
    assert (
        "Web Push on: VAPID subject mailto:ops@example.com, 5 allowed push service origin(s)"
        in world.server.log
    )


def test_the_key_endpoint_serves_the_vapid_public_key(world: World) -> None:
    response = httpx.get(f"{world.server.url}/app/v1/webpush/key")
    assert response.status_code == 200
    key = response.json()["vapid_public_key"]
    raw = base64.urlsafe_b64decode(key + "=" * (-len(key) % 4))
    assert len(raw) == 65
    assert raw[0] == 4
    assert "=" not in key


def test_a_web_device_gets_a_push_it_can_decrypt_and_approves(world: World) -> None:
    token = world.service.subscription()
    app = world.app("alice", token)
    auth = world.start("alice")
    [request] = world.pushes_for(token, 1)
    assert request.payload["challenge_id"] == auth
    assert request.payload["user"] == "alice"
    assert request.payload["display"] == "Sign-in to vpn from 203.0.113.7"
    assert request.payload["expires_at"].endswith("Z")
    assert request.claims["aud"] == world.service.origin
    assert request.claims["sub"] == "mailto:ops@example.com"
    assert 0 < (request.ttl or 0) <= 120
    assert app.challenge(auth)["id"] == auth
    assert app.answer(auth, "approve") == "approved"
    assert world.outcome(auth) == "approved"
    [sent] = [r for r in world.audit("push.send") if r["detail"].startswith(auth)]
    assert sent["result"] == "delivered"
    assert sent["detail"].split()[2] == "webpush"


def test_a_dead_subscription_is_marked_and_the_device_polls(world: World) -> None:
    token = world.service.subscription()
    app = world.app("bob", token)
    world.fakes.loop.call_soon_threadsafe(world.service.unsubscribe, token, 410)
    auth = world.start("bob")

    def marked() -> bool:
        return any(r["user_name"] == "bob" for r in world.audit("push.token_invalid"))

    wait_for(marked, timeout=30, what="bob's subscription to be marked invalid", every=0.2)
    assert [c["id"] for c in app.pending()] == [auth]
    assert app.answer(auth, "approve") == "approved"
    assert world.outcome(auth) == "approved"
    # A fresh subscription from the app: pushes are tried again.
    fresh = world.service.subscription()
    app.update_push_token(fresh)
    second = world.start("bob")
    [request] = world.pushes_for(fresh, 1)
    assert request.payload["challenge_id"] == second


def test_a_busy_push_service_is_retried_after_retry_after(world: World) -> None:
    token = world.service.subscription()
    world.app("carol", token)
    world.fakes.loop.call_soon_threadsafe(world.service.fail_next, 1, 429, "1")
    auth = world.start("carol")
    first, second = world.pushes_for(token, 2)
    assert [first.status, second.payload["challenge_id"]] == [429, auth]
    assert second.received_at - first.received_at >= 0.95


@pytest.mark.parametrize(
    "endpoint",
    ["{rogue}/push/x", "http://fcm.googleapis.com/fcm/send/x", "https://evil.example/push/x"],
)
def test_an_endpoint_off_the_list_is_refused_at_activation(world: World, endpoint: str) -> None:
    token = json.loads(world.service.subscription())
    token["endpoint"] = endpoint.format(rogue=world.rogue.origin)
    client = AppClient()
    with pytest.raises(AuthenticatorError) as refused:
        client.activate(world.activation_uri("dave"), platform="web", push_token=json.dumps(token))
    assert (refused.value.type, refused.value.status) == ("invalid-request", 400)
    reason = str(refused.value).split(" (", 1)[0]
    assert "allowed push service" in reason or "https:// URL" in reason
    # Audited with the reason, and the code is still unused.
    assert any(reason in r["detail"] for r in world.audit("request.refused"))


def test_an_endpoint_off_the_list_is_refused_at_update(world: World) -> None:
    token = world.service.subscription()
    app = world.app("erin", token)
    with pytest.raises(AuthenticatorError, match="not an allowed push service"):
        app.update_push_token(world.rogue.subscription())
    # The stored subscription is untouched: pushes still go to it.
    auth = world.start("erin")
    [request] = world.pushes_for(token, 1)
    assert request.payload["challenge_id"] == auth
