"""The web authenticator's push leg in headless Chromium, through the whole chain.

The subscription the page registers is one of the Web Push fake's (tests/fakes/
webpush_service.py; headless Chromium cannot subscribe to a real push service, so the page's
test hook hands it to the app). A sign-in started at the gateway makes the server push to the
fake over TLS; the fake verifies the VAPID JWT and decrypts the body with the subscription's
private key; the test hands that plaintext to the app's service worker through the DevTools
protocol (``ServiceWorker.deliverPushMessage``), as the browser does with a push it received,
and checks the notification and what tapping it (or its buttons) does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from backend.config import Settings
from tests.browser.webapp_support import (
    WAIT_MS,
    LivePushService,
    PushLeg,
    activate,
    gateway_state,
    open_phone,
    start_push,
    watch_console,
)
from tests.support.web import WebHarness


@pytest.fixture
def push(tmp_path: Path) -> Iterator[LivePushService]:
    with LivePushService(tmp_path / "push") as service:
        yield service


@pytest.fixture
def settings(settings: Settings, push: LivePushService) -> Settings:
    """The server pushes to the fake (the only allowed push-service origin here)."""
    return push.settings(settings)


@pytest.fixture
def tokens(push: LivePushService) -> list[str]:
    """The subscriptions the browser will get, in turn (a second after losing the first)."""
    return [push.fake.subscription(), push.fake.subscription()]


@pytest.fixture
def phone(chromium: Browser, live_app: WebHarness, tokens: list[str]) -> Iterator[Page]:
    with open_phone(chromium, live_app, subscriptions=tokens) as page:
        yield page


def push_token(app: WebHarness, user: str) -> str | None:
    [device] = app.run(app.services.devices.list_for_user(user))
    return device.push_token


def test_activation_registers_the_subscription(
    live_app: WebHarness, phone: Page, tokens: list[str]
) -> None:
    problems = watch_console(phone)
    live_app.add_user("alice")
    with phone.expect_request(lambda r: r.url.endswith("/app/v1/device/push-token")) as sent:
        activate(phone, live_app, "alice")
    # Compact JSON of PushSubscription.toJSON() without expirationTime, nothing else.
    token = json.loads(sent.value.post_data or "")["push_token"]
    assert token == tokens[0]
    expect(phone.locator("#push-status")).to_have_text("Notifications: on")
    assert push_token(live_app, "alice") == token
    # The applicationServerKey the app subscribed with is the server's VAPID key.
    served = phone.evaluate("fetch('/app/v1/webpush/key').then((r) => r.json())")
    assert (
        phone.evaluate("localStorage.getItem('openmfa-test-subscription-vapid')")
        == served["vapid_public_key"]
    )
    assert problems == []


def test_a_lost_subscription_is_noticed_at_start_and_registered_again(
    live_app: WebHarness, phone: Page, tokens: list[str]
) -> None:
    live_app.add_user("alice")
    activate(phone, live_app, "alice")
    expect(phone.locator("#push-status")).to_have_text("Notifications: on")
    assert push_token(live_app, "alice") == tokens[0]

    # The browser dropped the subscription (expired, or the push service forgot it).
    phone.evaluate("localStorage.removeItem('openmfa-test-subscription')")
    with phone.expect_request(lambda r: r.url.endswith("/app/v1/device/push-token")) as sent:
        phone.reload()
    assert json.loads(sent.value.post_data or "") == {"push_token": tokens[1]}
    expect(phone.locator("#push-status")).to_contain_text("registered again")
    expect(phone.locator("#push-status")).to_have_attribute("data-state", "ok")
    assert push_token(live_app, "alice") == tokens[1]


def test_revoked_permission_clears_the_token_and_is_shown(
    live_app: WebHarness, phone: Page
) -> None:
    live_app.add_user("alice")
    activate(phone, live_app, "alice")
    expect(phone.locator("#push-status")).to_have_text("Notifications: on")
    assert push_token(live_app, "alice") is not None

    # The user blocked notifications in the browser's settings.
    phone.context.add_init_script("window.__OPENMFA_TEST__.push.permission = 'denied';")
    with phone.expect_request(lambda r: r.url.endswith("/app/v1/device/push-token")) as sent:
        phone.reload()
    assert json.loads(sent.value.post_data or "") == {"push_token": None}
    expect(phone.locator("#push-status")).to_contain_text("blocked")
    assert push_token(live_app, "alice") is None  # the server falls back to polling


def test_a_sign_in_arrives_as_a_notification_and_tapping_it_opens_the_challenge(
    live_app: WebHarness, phone: Page, push: LivePushService
) -> None:
    problems = watch_console(phone)
    live_app.add_user("alice", number_matching=True)
    activate(phone, live_app, "alice")
    expect(phone.locator("#push-status")).to_have_text("Notifications: on")
    leg = PushLeg(phone, live_app)
    started = start_push(
        live_app,
        "alice",
        context={
            "client_name": "vpn-asa",
            "client_ip": "203.0.113.7",
            "display": "Sign in to VPN-ASA from 203.0.113.7",
        },
    )
    sent = push.push_for(started["id"])  # verified and decrypted by the fake
    assert sent.payload["display"] == "Sign in to VPN-ASA from 203.0.113.7"
    # The contract's fields and no more: never a secret, never the number to match.
    assert set(sent.payload) == {"v", "challenge_id", "display", "expires_at", "user"}
    leg.deliver(sent.plaintext)

    [shown] = leg.notifications()
    assert shown["title"] == "Sign-in request for alice"
    assert shown["body"] == "Sign in to VPN-ASA from 203.0.113.7"
    assert shown["tag"] == started["id"]
    assert shown["data"] == {"challenge_id": started["id"], "user": "alice"}
    assert shown["actions"] == ["approve", "deny"]

    leg.tap(shown)
    view = phone.locator("#view-challenge")
    expect(view).to_be_visible(timeout=WAIT_MS)
    assert phone.evaluate("location.hash") == f"#challenge={started['id']}"
    expect(view.locator("#ch-display")).to_have_text("Sign in to VPN-ASA from 203.0.113.7")
    expect(view.locator("#ch-context")).to_contain_text("vpn-asa")
    expect(phone.get_by_label("Number shown on the sign-in screen")).to_be_visible()
    phone.get_by_label("Number shown on the sign-in screen").fill(str(started["number"]))
    phone.get_by_role("button", name="Approve").click()
    expect(phone.locator("#ch-result")).to_have_text("Approved.")
    assert gateway_state(live_app, started["id"]) == "approved"
    assert problems == []


def test_notification_buttons_answer_only_without_number_or_pin(
    live_app: WebHarness, phone: Page, push: LivePushService
) -> None:
    live_app.add_user("alice")
    activate(phone, live_app, "alice")
    expect(phone.locator("#push-status")).to_have_text("Notifications: on")
    leg = PushLeg(phone, live_app)

    # No number, no PIN: Approve on the notification answers from the service worker.
    plain = start_push(live_app, "alice")
    leg.deliver(push.push_for(plain["id"]).plaintext)
    leg.tap(leg.notifications(1)[0], "approve")
    wait_for_state(live_app, plain["id"], "approved")
    expect(phone.locator("#view-challenge")).to_be_hidden()

    denied = start_push(live_app, "alice")
    leg.deliver(push.push_for(denied["id"]).plaintext)
    leg.tap(leg.notifications(2)[1], "deny")
    wait_for_state(live_app, denied["id"], "denied")

    # Number matching: the button does not answer; the app opens on the challenge instead.
    matched = start_push(live_app, "alice", number_matching=True)
    leg.deliver(push.push_for(matched["id"]).plaintext)
    leg.tap(leg.notifications(3)[2], "approve")
    expect(phone.locator("#view-challenge")).to_be_visible(timeout=WAIT_MS)
    expect(phone.get_by_label("Number shown on the sign-in screen")).to_be_visible()
    assert gateway_state(live_app, matched["id"]) == "pending"


def test_a_push_with_a_bad_id_shows_a_plain_notification(live_app: WebHarness, phone: Page) -> None:
    live_app.add_user("alice")
    activate(phone, live_app, "alice")
    leg = PushLeg(phone, live_app)
    leg.deliver({"v": 1, "challenge_id": "../../v1/device", "display": "x", "user": "alice"})
    [shown] = leg.notifications()
    assert (shown["tag"], shown["actions"]) == ("openmfa", [])
    assert shown["data"]["challenge_id"] is None


def wait_for_state(app: WebHarness, challenge_id: str, state: str) -> None:
    """Long-poll the gateway until the sign-in is final (the gateway's own wait)."""
    response = app.gateway.get(
        f"/gateway/v1/authentications/{challenge_id}", params={"wait": WAIT_MS / 1000}
    )
    assert response.json()["state"] == state, response.text
