"""Helpers for the web authenticator's browser tests (tests/browser/test_webapp*.py).

``open_phone``: a browser context at a phone's size with notification permission granted,
and the page's test hook (``window.__OPENMFA_TEST__``, set before the app's scripts run by
``add_init_script``) that stands in for the browser's push service: headless Chromium cannot
reach one. The hook's ``subscribe`` returns a subscription whose endpoint is on loopback
(port 9, discard: nothing listens, so no push ever leaves this machine) and whose keys are a
real P-256 point and 16 random bytes, as the server's validation wants. It keeps the
subscription in ``localStorage`` so that it survives reloads like a real one; a test removes
it there to simulate a lost subscription.

``PushLeg`` delivers a push message to the app's service worker through the DevTools protocol
(``ServiceWorker.deliverPushMessage``), as the browser's push service would after decrypting.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from playwright.sync_api import (
    Browser,
    BrowserContext,
    CDPSession,
    ConsoleMessage,
    Page,
    ViewportSize,
    Worker,
)

from backend.domain.signing import b64u_encode
from tests.support.web import WebHarness

WAIT_MS = 15_000
START = "/gateway/v1/authentications"
PHONE: ViewportSize = {"width": 390, "height": 844}
#: A made-up VAPID public key for pages whose server has Web Push off (GET
#: /app/v1/webpush/key answers 404): the browser side of subscribing is what is tested here.
TEST_VAPID_KEY = b64u_encode(
    ec.generate_private_key(ec.SECP256R1())
    .public_key()
    .public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
)

HOOK = """
(() => {
  const STORE = "openmfa-test-subscription";
  window.__OPENMFA_TEST__ = {
    keyAlgorithm: %(key_algorithm)s,
    push: {
      get subscription() {
        const text = localStorage.getItem(STORE);
        return text ? JSON.parse(text) : null;
      },
      subscribe(key) {
        const count = Number(localStorage.getItem(STORE + "-count") || "0") + 1;
        localStorage.setItem(STORE + "-count", String(count));
        const subscription = {
          endpoint: "https://127.0.0.1:9/push/openmfa-test-" + count,
          expirationTime: null,
          keys: { p256dh: %(p256dh)s, auth: %(auth)s },
        };
        localStorage.setItem(STORE, JSON.stringify(subscription));
        localStorage.setItem(STORE + "-vapid", key);
        return subscription;
      },
    },
  };
})();
"""


def subscription_keys() -> tuple[str, str]:
    """A real P-256 point and 16 bytes, base64url, as a browser's subscription has them."""
    point = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    )
    return b64u_encode(point), b64u_encode(b"openmfa-test-16b")


def watch_console(page: Page) -> list[str]:
    """Collect CSP violations and uncaught errors (the tests assert there are none)."""
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text or "Uncaught" in message.text:
            problems.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda error: problems.append(str(error)))
    return problems


@contextmanager
def open_phone(
    chromium: Browser,
    app: WebHarness,
    locale: str = "en-GB",
    key_algorithm: str | None = None,
    push_hook: bool = True,
    user_agent: str | None = None,
) -> Iterator[Page]:
    """A phone-sized page in a fresh context (own storage and service workers)."""
    context = chromium.new_context(
        viewport=PHONE,
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
        locale=locale,
        service_workers="allow",
        user_agent=user_agent,
    )
    context.grant_permissions(["notifications"], origin=app.url)
    p256dh, auth = subscription_keys()
    if push_hook:
        context.add_init_script(
            HOOK
            % {
                "key_algorithm": json.dumps(key_algorithm),
                "p256dh": json.dumps(p256dh),
                "auth": json.dumps(auth),
            }
        )
    if app.http.get("/app/v1/webpush/key").status_code == 404:
        serve_test_vapid_key(context)
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    try:
        yield page
    finally:
        context.close()


def serve_test_vapid_key(context: BrowserContext) -> None:
    """Answer GET /app/v1/webpush/key in the browser when the server has Web Push off."""
    context.route(
        "**/app/v1/webpush/key",
        lambda route: route.fulfill(
            status=200,
            content_type="application/json",
            body=json.dumps({"vapid_public_key": TEST_VAPID_KEY}),
        ),
    )


def activate(page: Page, app: WebHarness, user: str) -> dict[str, Any]:
    """Open the app from the portal's link for a new code of ``user``; the activation
    response's body (it carries the TOTP seed the test checks codes against)."""
    code = app.activation_code(user)
    with page.expect_response(lambda r: r.url.endswith("/app/v1/activate")) as info:
        page.goto(f"{app.url}/app/#activate={code}")
    response = info.value
    assert response.status == 201, response.text()
    page.locator(f'#account-list li:has(.account-user:text-is("{user}"))').wait_for()
    body: dict[str, Any] = response.json()
    return body


def start_push(app: WebHarness, user: str, **body: Any) -> dict[str, Any]:
    """Start a push sign-in through the gateway API, as a VPN or RADIUS bridge would."""
    response: httpx.Response = app.gateway.post(
        START, json={"user": user, "method": "push", **body}
    )
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()
    return data


def gateway_state(app: WebHarness, challenge_id: str) -> str:
    """The sign-in's state as the gateway sees it."""
    response = app.gateway.get(f"{START}/{challenge_id}")
    assert response.status_code == 200, response.text
    return str(response.json()["state"])


def oathtool(seed: str, at_seconds: int) -> str:
    """The TOTP code for ``seed`` at ``at_seconds`` by oath-toolkit (an independent one)."""
    result = subprocess.run(
        ["oathtool", "--totp", "-b", f"--now=@{at_seconds}", seed],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


class PushLeg:
    """The app's service worker as the push service and the notification tray see it."""

    def __init__(self, page: Page, app: WebHarness) -> None:
        self.page = page
        self.app = app
        self.cdp: CDPSession = page.context.new_cdp_session(page)
        self.registrations: dict[str, str] = {}  # scope URL -> registration id
        self.cdp.on("ServiceWorker.workerRegistrationUpdated", self._updated)
        page.evaluate("navigator.serviceWorker.ready.then(() => true)")
        self.cdp.send("ServiceWorker.enable")

    def _updated(self, event: dict[str, Any]) -> None:
        for registration in event["registrations"]:
            if not registration.get("isDeleted"):
                self.registrations[registration["scopeURL"]] = registration["registrationId"]

    def registration_id(self) -> str:
        """The id of the /app/ registration, from the events ``ServiceWorker.enable`` sends."""
        scope = f"{self.app.url}/app/"
        deadline = time.monotonic() + WAIT_MS / 1000
        while scope not in self.registrations:
            assert time.monotonic() < deadline, f"no service worker registration for {scope}"
            self.page.evaluate("1")  # lets Playwright dispatch the pending CDP events
        return self.registrations[scope]

    def deliver(self, payload: dict[str, Any]) -> None:
        """What the browser's push service hands the worker after decryption."""
        self.cdp.send(
            "ServiceWorker.deliverPushMessage",
            {
                "origin": self.app.url,
                "registrationId": self.registration_id(),
                "data": json.dumps(payload),
            },
        )

    def notifications(self, count: int = 1) -> list[dict[str, Any]]:
        """The notifications the worker shows, once there are ``count``."""
        script = """async () => (await (await navigator.serviceWorker.ready).getNotifications())
            .map((n) => ({title: n.title, body: n.body, tag: n.tag, data: n.data,
                          actions: n.actions.map((a) => a.action)}))"""
        deadline = time.monotonic() + WAIT_MS / 1000
        while True:
            shown: list[dict[str, Any]] = self.page.evaluate(script)
            if len(shown) >= count:
                return shown
            assert time.monotonic() < deadline, f"{len(shown)} notifications, wanted {count}"
            self.page.wait_for_function("() => true")  # one round trip to the page

    def worker(self) -> Worker:
        workers = [w for w in self.page.context.service_workers if w.url.endswith("/app/sw.js")]
        assert workers, "the app's service worker is not running"
        return workers[0]

    def tap(self, tag: str, action: str = "") -> None:
        """Tap the notification ``tag`` (or one of its buttons): the worker's
        notificationclick handler runs as on a phone (the event is dispatched in the worker)."""
        self.worker().evaluate(
            """async ([tag, action]) => {
                const shown = await self.registration.getNotifications({tag});
                if (!shown.length) throw new Error("no notification " + tag);
                self.dispatchEvent(new NotificationEvent("notificationclick",
                    {notification: shown[0], action}));
            }""",
            [tag, action],
        )
