"""The web authenticator's push leg in headless Chromium.

Chromium here cannot reach a push service, so (see tests/browser/webapp_support.py) the
subscription comes from the page's test hook, and pushes are handed to the app's service
worker through the DevTools protocol (``ServiceWorker.deliverPushMessage``), the way the
browser hands over a decrypted push. The server's side (encrypting, VAPID, sending) is tested
against a fake push service in tests/test_push_webpush*.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.webapp_support import (
    WAIT_MS,
    PushLeg,
    activate,
    gateway_state,
    open_phone,
    start_push,
    watch_console,
)
from tests.support.web import WebHarness


@pytest.fixture
def phone(chromium: Browser, live_app: WebHarness) -> Iterator[Page]:
    with open_phone(chromium, live_app) as page:
        yield page


def push_token(app: WebHarness, user: str) -> str | None:
    [device] = app.run(app.services.devices.list_for_user(user))
    return device.push_token


def payload(challenge: dict[str, Any], display: str, user: str = "alice") -> dict[str, Any]:
    """The decrypted Web Push payload as the server sends it (I15 contract, item 4)."""
    expires = datetime.now(UTC) + timedelta(seconds=60)
    return {
        "v": 1,
        "challenge_id": challenge["id"],
        "display": display,
        "expires_at": expires.isoformat().replace("+00:00", "Z"),
        "user": user,
    }


def test_activation_registers_the_subscription(live_app: WebHarness, phone: Page) -> None:
    problems = watch_console(phone)
    live_app.add_user("alice")
    with phone.expect_request(lambda r: r.url.endswith("/app/v1/device/push-token")) as sent:
        activate(phone, live_app, "alice")
    body = json.loads(sent.value.post_data or "")
    token = body["push_token"]
    # Compact JSON of PushSubscription.toJSON() without expirationTime, nothing else.
    assert token == json.dumps(json.loads(token), separators=(",", ":"))
    subscription = json.loads(token)
    assert set(subscription) == {"endpoint", "keys"}
    assert set(subscription["keys"]) == {"p256dh", "auth"}
    assert subscription["endpoint"].endswith("/openmfa-test-1")
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
    live_app: WebHarness, phone: Page
) -> None:
    live_app.add_user("alice")
    activate(phone, live_app, "alice")
    expect(phone.locator("#push-status")).to_have_text("Notifications: on")
    first = push_token(live_app, "alice")
    assert first is not None
    assert "openmfa-test-1" in first

    # The browser dropped the subscription (expired, or the push service forgot it).
    phone.evaluate("localStorage.removeItem('openmfa-test-subscription')")
    with phone.expect_request(lambda r: r.url.endswith("/app/v1/device/push-token")) as sent:
        phone.reload()
    token = json.loads(sent.value.post_data or "")["push_token"]
    assert "openmfa-test-2" in token
    expect(phone.locator("#push-status")).to_contain_text("registered again")
    expect(phone.locator("#push-status")).to_have_attribute("data-state", "ok")
    assert push_token(live_app, "alice") == token


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


def test_push_shows_a_notification_and_tapping_it_opens_the_challenge(
    live_app: WebHarness, phone: Page
) -> None:
    problems = watch_console(phone)
    live_app.add_user("alice", number_matching=True)
    activate(phone, live_app, "alice")
    started = start_push(
        live_app, "alice", context={"client_name": "vpn-asa", "client_ip": "203.0.113.7"}
    )
    leg = PushLeg(phone, live_app)
    leg.deliver(payload(started, "Sign in to VPN-ASA from 203.0.113.7"))

    [shown] = leg.notifications()
    assert shown["title"] == "Sign-in request for alice"
    assert shown["body"] == "Sign in to VPN-ASA from 203.0.113.7"
    assert shown["tag"] == started["id"]
    assert shown["data"] == {"challenge_id": started["id"], "user": "alice"}
    assert shown["actions"] == ["approve", "deny"]

    leg.tap(started["id"])
    view = phone.locator("#view-challenge")
    expect(view).to_be_visible(timeout=WAIT_MS)
    assert phone.evaluate("location.hash") == f"#challenge={started['id']}"
    # What the screen shows comes from the server, not from the push payload.
    expect(view.locator("#ch-display")).to_have_text("Sign-in to vpn-asa from 203.0.113.7")
    expect(phone.get_by_label("Number shown on the sign-in screen")).to_be_visible()
    phone.get_by_label("Number shown on the sign-in screen").fill(str(started["number"]))
    phone.get_by_role("button", name="Approve").click()
    expect(phone.locator("#ch-result")).to_have_text("Approved.")
    assert gateway_state(live_app, started["id"]) == "approved"
    assert leg.notifications(0) == []  # tapping closed it
    assert problems == []


def test_notification_buttons_answer_only_without_number_or_pin(
    live_app: WebHarness, phone: Page
) -> None:
    live_app.add_user("alice")
    activate(phone, live_app, "alice")
    leg = PushLeg(phone, live_app)

    # No number, no PIN: Approve on the notification answers from the service worker.
    plain = start_push(live_app, "alice")
    leg.deliver(payload(plain, "Sign in to VPN-ASA"))
    leg.notifications()
    leg.tap(plain["id"], "approve")
    wait_for_state(live_app, plain["id"], "approved")
    expect(phone.locator("#view-challenge")).to_be_hidden()

    denied = start_push(live_app, "alice")
    leg.deliver(payload(denied, "Sign in to VPN-ASA"))
    leg.notifications()
    leg.tap(denied["id"], "deny")
    wait_for_state(live_app, denied["id"], "denied")

    # Number matching: the button does not answer; the app opens on the challenge instead.
    matched = start_push(live_app, "alice", number_matching=True)
    leg.deliver(payload(matched, "Sign in to VPN-ASA"))
    leg.notifications()
    leg.tap(matched["id"], "approve")
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
