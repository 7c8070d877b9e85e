"""Push end to end: ``openmfa run`` with APNs and FCM configured through its settings, talking
to the local APNs and FCM fakes (tests/fakes) with the real aioapns and pyfcm clients.

A gateway starts a push authentication, the fake receives the push (its wire format checked),
the reference authenticator fetches and approves the challenge, and the gateway's long-poll
sees the approval. A token APNs calls dead is marked invalid, shown to the admin, and the
device keeps working by polling.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from backend.authenticator.client import AppClient
from tests.fakes.apns import ApnsFake, make_apns_key
from tests.fakes.fcm import FcmFake
from tests.support.database import migrated_sqlite
from tests.support.process import Cli, free_port, wait_for
from tests.support.push_e2e import LoopThread, PushWorld, gateway_server, prepare

TOPIC = "org.openmfa.test"
USERS = ("alice", "bob", "carol", "dave")


@dataclass
class World(PushWorld):
    apns: ApnsFake
    fcm: FcmFake

    def app(self, user: str, platform: str, push_token: str) -> AppClient:
        """The reference authenticator, activated for ``user`` against the running server."""
        client = AppClient()
        client.activate(
            self.activation_uri(user),
            name=f"{user}'s phone",
            platform=platform,
            push_token=push_token,
        )
        return client


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    home = tmp_path_factory.mktemp("push-e2e")
    migrated_sqlite(home)
    token, codes = asyncio.run(prepare(home, USERS))

    fakes = LoopThread()
    key = make_apns_key(home / "apns")
    apns = ApnsFake(home, key=key, topic=TOPIC)
    fcm = FcmFake(home)
    try:
        fakes.run(apns.start())
        fakes.run(fcm.start())
        account = fcm.service_account(home / "fcm")
        env = {
            "OPENMFA_LOG_FORMAT": "text",
            "OPENMFA_APNS_KEY_FILE": str(key.p8_path),
            "OPENMFA_APNS_KEY_ID": key.key_id,
            "OPENMFA_APNS_TEAM_ID": key.team_id,
            "OPENMFA_APNS_TOPIC": TOPIC,
            "OPENMFA_APNS_URL": apns.url,
            "OPENMFA_APNS_CA_FILE": str(apns.ca_file),
            "OPENMFA_FCM_SERVICE_ACCOUNT_FILE": str(account),
            "OPENMFA_FCM_URL": fcm.url,
            "OPENMFA_FCM_CA_FILE": str(fcm.ca_file),
        }
        with gateway_server(home, token, env) as (server, gateway):
            yield World(
                server=server,
                cli=Cli(home, **env),
                fakes=fakes,
                gateway=gateway,
                codes=codes,
                apns=apns,
                fcm=fcm,
            )
            assert server.terminate() == 0
        # Stopped after the server, so its connections close from its side first; raises
        # if either fake saw anything on the wire that Apple or Google would refuse.
        fakes.run(apns.stop())
        fakes.run(fcm.stop())
    finally:
        fakes.run(apns.stop(check=False))
        fakes.run(fcm.stop(check=False))
        fakes.close()


def test_the_server_says_at_start_which_transports_are_on(world: World) -> None:
    log = world.server.log
    assert f"APNs on: topic {TOPIC}, {world.apns.url}" in log
    assert f"FCM on: {world.fcm.url}, 4 worker thread(s)" in log


def test_ios_push_through_apns_is_approved_by_the_authenticator(world: World) -> None:
    token = secrets.token_hex(32)
    app = world.app("alice", "ios", token)
    before = len(world.apns.requests)

    auth = world.start_push("alice")
    [request] = world.fakes.run(world.apns.wait_for(before + 1, timeout=10))[before:]

    assert request.violations == []
    assert request.path == f"/3/device/{token}"
    assert request.headers["apns-collapse-id"] == auth["id"]
    assert request.payload == {
        "aps": {
            "alert": {"title": "OpenMFA", "body": "Sign-in to vpn from 203.0.113.7"},
            "mutable-content": 1,
        },
        "challenge_id": auth["id"],
    }
    # The app fetches the details over the signed API, then answers.
    assert app.challenge(auth["id"])["id"] == auth["id"]
    assert app.answer(auth["id"], "approve") == "approved"
    assert world.outcome(auth["id"]) == "approved"

    [sent] = [r for r in world.audit("push.send") if r["detail"].startswith(auth["id"])]
    assert sent["result"] == "delivered"
    assert sent["actor"] == "system:push"
    assert sent["detail"].split()[2] == "apns"


def test_android_push_through_fcm_is_approved_by_the_authenticator(world: World) -> None:
    token = "fcm-" + secrets.token_urlsafe(40)
    app = world.app("bob", "android", token)
    before = len(world.fcm.requests)

    auth = world.start_push("bob")
    [request] = world.fakes.run(world.fcm.wait_for(before + 1, timeout=10))[before:]

    assert request.token == token
    message = request.body["message"]
    assert message["data"] == {
        "challenge_id": auth["id"],
        "display": "Sign-in to vpn from 203.0.113.7",
    }
    assert message["android"]["collapse_key"] == auth["id"]
    assert app.answer(auth["id"], "approve") == "approved"
    assert world.outcome(auth["id"]) == "approved"


def test_a_dead_token_is_marked_shown_to_the_admin_and_the_app_polls(world: World) -> None:
    token = secrets.token_hex(32)
    app = world.app("carol", "ios", token)

    async def unregister() -> None:
        world.apns.fail_token(token, 410, "Unregistered")

    world.fakes.run(unregister())
    auth = world.start_push("carol")

    def marked() -> bool:
        return "push token invalid: Unregistered" in world.cli("user", "show", "carol").stdout

    wait_for(marked, timeout=30, what="carol's token to be marked invalid", every=0.2)
    [row] = [r for r in world.audit("push.token_invalid") if r["user_name"] == "carol"]
    assert row["detail"].endswith(" apns Unregistered")

    # The app still sees the challenge by polling, and its answer counts.
    assert [c["id"] for c in app.pending()] == [auth["id"]]
    assert app.answer(auth["id"], "approve") == "approved"
    assert world.outcome(auth["id"]) == "approved"

    # A new token from the app: pushes are tried again.
    app.update_push_token(secrets.token_hex(32))
    assert "push (not tried yet)" in world.cli("user", "show", "carol").stdout


def test_a_push_service_that_is_down_for_a_moment_is_retried(world: World) -> None:
    token = secrets.token_hex(32)
    world.app("dave", "ios", token)
    before = len(world.apns.requests)

    async def unavailable_once() -> None:
        world.apns.fail_next(1, 503, "ServiceUnavailable")

    world.fakes.run(unavailable_once())
    auth = world.start_push("dave")
    requests = world.fakes.run(world.apns.wait_for(before + 2, timeout=15))[before:]
    assert [r.payload["challenge_id"] for r in requests] == [auth["id"]] * 2

    def both_recorded() -> bool:
        rows = [r for r in world.audit("push.send") if r["detail"].startswith(auth["id"])]
        return [r["result"] for r in rows] == ["retry", "delivered"]

    wait_for(both_recorded, timeout=30, what="both attempts in the audit trail", every=0.2)


def test_a_bad_key_file_stops_openmfa_run_with_one_line_but_not_other_commands(
    tmp_path: Path,
) -> None:
    key = tmp_path / "AuthKey_ABCDEFGHIJ.p8"
    key.write_text("-----BEGIN PRIVATE KEY-----\nnot really\n-----END PRIVATE KEY-----\n")
    key.chmod(0o600)
    cli = Cli(
        tmp_path,
        OPENMFA_RADIUS_PORT="0",
        OPENMFA_APNS_KEY_FILE=str(key),
        OPENMFA_APNS_KEY_ID="ABCDEFGHIJ",
        OPENMFA_APNS_TEAM_ID="TEAM123456",
        OPENMFA_APNS_TOPIC=TOPIC,
    )
    cli("db", "upgrade")
    error = cli.fails("run", "--port", str(free_port()))
    assert "is not an APNs auth key" in error
    assert len(error.strip().splitlines()) == 1
    cli("user", "add", "erin")  # no push connection needed, so no key read
