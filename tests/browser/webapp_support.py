"""Helpers for the web authenticator's browser tests (tests/browser/test_webapp*.py).

``open_phone``: a browser context at a phone's size with notification permission granted,
and the page's test hook (``window.__OPENMFA_TEST__``, set before the app's scripts run by
``add_init_script``) that stands in for the browser's side of the push service: headless
Chromium cannot subscribe to one. ``pushManager.subscribe`` is answered, in turn, with the
subscriptions the test passes (made by the Web Push fake, tests/fakes/webpush_service.py, which
holds their private keys); with none left it fails as a browser without a push service does.
The current subscription is kept in ``localStorage`` so that it survives reloads like a real
one; a test removes it there to simulate a lost subscription.

``LivePushService``: that fake on an event loop of its own, for these synchronous tests; the
server's pushes to it are verified (VAPID JWT) and decrypted there. ``PushLeg`` hands such a
decrypted push to the app's service worker through the DevTools protocol
(``ServiceWorker.deliverPushMessage``), which is what the browser does with a push it received.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
from collections.abc import Coroutine, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx
from playwright.sync_api import (
    Browser,
    CDPSession,
    ConsoleMessage,
    Page,
    ViewportSize,
    Worker,
)

from backend.config import Settings
from tests.fakes.webpush_service import FakePushService, PushRequest
from tests.support.web import WebHarness

T = TypeVar("T")
WAIT_MS = 15_000
START = "/gateway/v1/authentications"
PHONE: ViewportSize = {"width": 390, "height": 844}

HOOK = """
(() => {
  const STORE = "openmfa-test-subscription";
  const TOKENS = %(tokens)s;
  window.__OPENMFA_TEST__ = {
    keyAlgorithm: %(key_algorithm)s,
    push: {
      get subscription() {
        const text = localStorage.getItem(STORE);
        return text ? JSON.parse(text) : null;
      },
      subscribe(key) {
        const count = Number(localStorage.getItem(STORE + "-count") || "0");
        if (count >= TOKENS.length) throw new Error("no push service (test)");
        localStorage.setItem(STORE + "-count", String(count + 1));
        // What PushSubscription.toJSON() gives: the fake's subscription plus expirationTime.
        const subscription = { ...JSON.parse(TOKENS[count]), expirationTime: null };
        localStorage.setItem(STORE, JSON.stringify(subscription));
        localStorage.setItem(STORE + "-vapid", key);
        return subscription;
      },
    },
  };
})();
"""


class LivePushService:
    """``with LivePushService(tmp_path) as push: push.fake.subscription()``; stopping checks
    that every push the server sent was well formed (VAPID, headers, decryptable)."""

    def __init__(self, directory: Path) -> None:
        self.fake = FakePushService(directory)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def __enter__(self) -> LivePushService:
        self._thread.start()
        self.run(self.fake.start())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.run(self.fake.stop(check=exc_type is None))
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()

    def settings(self, settings: Settings) -> Settings:
        """``settings`` with the server pushing to this fake (and trusting its CA)."""
        return settings.model_copy(
            update={
                "webpush_allowed_origins": (self.fake.origin,),
                "webpush_ca_file": self.fake.ca_file,
                "webpush_subject": "mailto:ops@example.com",
            }
        )

    def push_for(self, challenge_id: str) -> PushRequest:
        """The (decrypted) push the server sent for ``challenge_id``, once it arrived."""

        def found() -> bool:
            return any(r.payload.get("challenge_id") == challenge_id for r in self.fake.requests)

        self.run(self.fake.wait_until(found, WAIT_MS / 1000, f"a push for {challenge_id}"))
        return next(r for r in self.fake.requests if r.payload["challenge_id"] == challenge_id)


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
    subscriptions: Sequence[str] = (),
    user_agent: str | None = None,
) -> Iterator[Page]:
    """A phone-sized page in a fresh context (own storage and service workers);
    ``subscriptions``: what the page's ``pushManager.subscribe`` answers, in turn."""
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
    context.add_init_script(
        HOOK
        % {
            "key_algorithm": json.dumps(key_algorithm),
            "tokens": json.dumps(list(subscriptions)),
        }
    )
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    try:
        yield page
    finally:
        context.close()


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
        # Pushes go to an activated worker (one still activating may drop them).
        # (Functions, not expressions: Playwright evaluates a polled expression with eval(),
        # which the app's CSP forbids.)
        page.wait_for_function("() => navigator.serviceWorker.controller?.state === 'activated'")
        page.evaluate(
            """() => {
                window.__openmfaShown = [];
                navigator.serviceWorker.addEventListener("message", (event) => {
                    if (event.data.type === "push") window.__openmfaShown.push(event.data.shown);
                });
            }"""
        )
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

    def deliver(self, data: bytes | dict[str, Any]) -> None:
        """Hand the worker a push as the browser does after decrypting it: ``data`` is the
        plaintext the server sent (or, for a message no server would send, a dict)."""
        text = data.decode() if isinstance(data, bytes) else json.dumps(data)
        self.cdp.send(
            "ServiceWorker.deliverPushMessage",
            {"origin": self.app.url, "registrationId": self.registration_id(), "data": text},
        )

    def notifications(self, count: int = 1) -> list[dict[str, Any]]:
        """What the worker showed (title, body, tag, data, action buttons), as it tells the
        open app, once there are ``count``. (Its ``getNotifications()`` is not used: in
        headless Chromium a shown notification is sometimes missing from it.)"""
        self.page.wait_for_function("(n) => window.__openmfaShown.length >= n", arg=count)
        shown: list[dict[str, Any]] = self.page.evaluate("window.__openmfaShown")
        return shown

    def worker(self) -> Worker:
        workers = [w for w in self.page.context.service_workers if w.url.endswith("/app/sw.js")]
        assert workers, "the app's service worker is not running"
        return workers[0]

    def tap(self, shown: dict[str, Any], action: str = "") -> None:
        """Tap the notification ``shown`` (or its button ``action``): the worker runs what its
        notificationclick listener runs, with the notification's data."""
        self.worker().evaluate(
            "([data, action]) => self.openmfaNotificationClick(data, action)",
            [shown["data"], action],
        )
