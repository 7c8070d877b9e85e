"""The web authenticator (``/app/``, issue 15) end to end in headless Chromium.

The app runs as a phone runs it: served by the live server, its service worker installed, its
keys made by the browser's WebCrypto and kept in IndexedDB. Sign-ins are started through the
gateway API and their outcome read there. Offline codes are checked against ``oathtool``.
Every wait is on something the page shows or the server answers, with bounded timeouts.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Dialog, Page, Route, expect

from backend.config import Settings
from backend.domain.signing import b64u_encode
from backend.domain.stepup import ADMINISTRATOR
from tests.browser.webapp_support import (
    WAIT_MS,
    activate,
    gateway_state,
    oathtool,
    open_phone,
    start_push,
    watch_console,
)
from tests.support.api import ADMIN
from tests.support.geoip import write_database
from tests.support.web import PASSWORD, WebHarness

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; manifest-src 'self'; worker-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    """With a small GeoIP database, so sign-ins from 203.0.113.0/24 show Berlin, Germany."""
    return settings.model_copy(update={"geoip_database": write_database(tmp_path / "city.mmdb")})


@pytest.fixture
def phone(chromium: Browser, live_app: WebHarness) -> Iterator[Page]:
    with open_phone(chromium, live_app) as page:
        page.on("dialog", Dialog.accept)  # "This wasn't me" and "Remove" ask first
        yield page


def shown_code(page: Page, user: str) -> str:
    return page.locator(f'li:has(.account-user:text-is("{user}")) .code').inner_text()


def assert_code_matches_oathtool(page: Page, user: str, seed: str) -> None:
    """The code on screen is oathtool's for the page's clock (retried across a 30 s edge)."""
    for _ in range(3):
        before = int(page.evaluate("Date.now()") // 1000)
        code = shown_code(page, user)
        after = int(page.evaluate("Date.now()") // 1000)
        if before // 30 == after // 30 and code.isdigit():
            assert code == oathtool(seed, before)
            return
        page.wait_for_function("() => true")
    pytest.fail("the code could not be read within one 30 s period")


# -- serving ----------------------------------------------------------------------------------


def test_app_files_are_served_with_the_strict_headers(live_app: WebHarness) -> None:
    page = live_app.http.get("/app/")
    assert page.status_code == 200
    assert page.headers["content-security-policy"] == CSP
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "<script" in page.text
    assert "<script>" not in page.text  # no inline script
    worker = live_app.http.get("/app/sw.js")
    assert worker.status_code == 200
    assert worker.headers["service-worker-allowed"] == "/app/"
    assert worker.headers["cache-control"] == "no-cache"
    assert worker.headers["content-type"].startswith("text/javascript")
    manifest = live_app.http.get("/app/manifest.webmanifest")
    assert manifest.json()["scope"] == "./"
    missing = live_app.http.get("/app/nothing.js")
    assert missing.status_code == 404
    assert missing.headers["content-security-policy"] == CSP
    # The API under /app/v1 is routed before the app's files and keeps its own answers.
    assert live_app.http.get("/app/v1/challenges").status_code == 401


def test_requests_are_signed_exactly_as_the_documented_test_vector(
    live_app: WebHarness, phone: Page
) -> None:
    """docs/app-api.md's Ed25519 test vector, through the app's own canonical request and
    signing (Ed25519 signatures are deterministic, so the bytes must match)."""
    phone.goto(f"{live_app.url}/app/")
    signatures = phone.evaluate(
        """async () => {
            const C = OpenMFACore;
            const jwk = {kty: "OKP", crv: "Ed25519",
                         d: "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
                         x: "A6EHv_POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg"};
            const key = await crypto.subtle.importKey(
                "jwk", jwk, {name: "Ed25519"}, false, ["sign"]);
            const device = "dev_W7-7AKI1EPyIyCkSjWNTLA";
            const answer = await C.canonicalRequest("POST",
                "/app/v1/challenges/ch_kIos3zCGyF8YGxFM-WFrHQ/answer", device, "1767225600",
                "q7X2mS9dLk3vPz8wRt5yUa", new TextEncoder().encode('{"answer":"approve"}'));
            const list = await C.canonicalRequest("get", "/app/v1/challenges", device,
                "1767225600", "bW9uZGF5LW1vcm5pbmc", new Uint8Array(0));
            return [C.b64uEncode(await C.signBytes("Ed25519", key, answer)),
                    C.b64uEncode(await C.signBytes("Ed25519", key, list))];
        }"""
    )
    assert signatures == [
        "hFY8thfHD--m5OY5u2AZsP1_nWTRidI8c8rqXrRHfqjTRQOjLcAxVibwsuQqKaMo-ER9VLO7Tl19tU3rA_yMBA",
        "dawjmq12GRNC7aBFydNHiMLAsqzR_6wSPIZfz0dbF3ca-505wZUwOjukAGD039IKrMUGZkK5cWgom33BWTw6Dg",
    ]


# -- activation, keys and offline codes -------------------------------------------------------


def test_activation_from_the_portal_link_makes_a_non_extractable_key_and_offline_codes(
    live_app: WebHarness, phone: Page
) -> None:
    if shutil.which("oathtool") is None:
        pytest.skip("oathtool is needed to check the offline codes (apt-get install oathtool)")
    problems = watch_console(phone)
    live_app.add_user("alice")
    body = activate(phone, live_app, "alice")

    # The code left the address bar and the history entry at once.
    assert "activate" not in phone.url
    assert phone.evaluate("location.hash") == ""
    # One web device with the browser's public key (Ed25519 in this Chromium: 32 bytes).
    [device] = live_app.run(live_app.services.devices.list_for_user("alice"))
    assert (device.id, device.platform) == (body["device_id"], "web")
    stored = phone.evaluate(
        """async () => {
            const [account] = await OpenMFACore.store.accounts();
            let exported = "exported";
            try { await crypto.subtle.exportKey("pkcs8", account.privateKey); }
            catch (error) { exported = error.name; }
            return {algorithm: account.algorithm, extractable: account.privateKey.extractable,
                    totpExtractable: account.totpKey.extractable, exported,
                    publicKey: account.publicKey, keys: Object.keys(account)};
        }"""
    )
    assert stored["algorithm"] == "Ed25519"
    assert (stored["extractable"], stored["totpExtractable"]) == (False, False)
    assert stored["exported"] == "InvalidAccessError"
    assert device.public_key is not None
    assert stored["publicKey"] == b64u_encode(device.public_key)
    assert "secret" not in str(stored["keys"])  # the base32 seed is not kept, only the key

    assert_code_matches_oathtool(phone, "alice", body["totp"]["secret"])
    expect(phone.locator(".countdown")).to_have_text(re.compile(r"^\d+ s$"))
    # The server takes the code the app shows (the gateway's code check).
    verified = live_app.gateway.post(
        "/gateway/v1/otp/verify", json={"user": "alice", "code": shown_code(phone, "alice")}
    )
    assert verified.status_code == 200, verified.text
    assert problems == []


def test_the_portal_link_opens_the_app_which_activates(
    chromium: Browser, live_app: WebHarness
) -> None:
    """The whole hand-off on one phone: the portal's "Use this phone's browser" link opens the
    app, which activates; the portal page, still open in its tab, turns to activated."""
    live_app.add_user("alice")
    live_app.allow_enrolment("alice")
    with open_phone(chromium, live_app) as portal:
        portal.goto(f"{live_app.url}/portal/sign-in?next=/portal/activate")
        portal.get_by_label("User name").fill("alice")
        portal.get_by_label("Password").fill(PASSWORD)
        portal.get_by_role("button", name="Sign in").click()
        portal.get_by_role("button", name="Use this phone's browser").click()
        href = portal.locator("#web-app-link").get_attribute("href")
        assert href is not None
        # The link names the settings' public_url (a port nothing listens on here): the same
        # path and fragment on the live server.
        parts = urlsplit(href)
        assert parts.path == "/app/"
        assert parts.fragment.startswith("activate=")
        app = portal.context.new_page()
        with app.expect_response(lambda r: r.url.endswith("/app/v1/activate")) as info:
            app.goto(f"{live_app.url}{parts.path}#{parts.fragment}")
        assert info.value.status == 201
        app.locator('#account-list li:has(.account-user:text-is("alice"))').wait_for()
        assert app.evaluate("location.hash") == ""
        expect(portal.locator("#activation-status")).to_have_attribute(
            "data-state", "activated", timeout=WAIT_MS
        )
        [device] = live_app.run(live_app.services.devices.list_for_user("alice"))
        assert device.platform == "web"


def test_a_used_activation_code_is_refused_and_shown(live_app: WebHarness, phone: Page) -> None:
    live_app.add_user("alice")
    code = live_app.activation_code("alice")
    with phone.expect_response(lambda r: r.url.endswith("/app/v1/activate")):
        phone.goto(f"{live_app.url}/app/#activate={code}")
    phone.locator("#account-list li").wait_for()
    with phone.expect_response(lambda r: r.url.endswith("/app/v1/activate")) as info:
        phone.goto(f"{live_app.url}/app/#activate={code}")
    assert info.value.status == 400
    expect(phone.locator("#activate-status")).to_contain_text("Activation failed")
    assert len(live_app.run(live_app.services.devices.list_for_user("alice"))) == 1


IPHONE_SAFARI = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
)


def test_iphone_safari_keeps_the_code_for_the_home_screen_app(
    chromium: Browser, live_app: WebHarness
) -> None:
    """On iOS only the Home Screen app gets pushes, and its storage is not Safari's: the code
    is not spent in the Safari tab but kept for the user to paste there."""
    live_app.add_user("alice")
    code = live_app.activation_code("alice")
    with open_phone(chromium, live_app, user_agent=IPHONE_SAFARI) as page:
        page.goto(f"{live_app.url}/app/#activate={code}")
        expect(page.locator("#install")).to_contain_text("Add to Home Screen")
        expect(page.locator("#activate-status")).to_contain_text("first add this app")
        expect(page.get_by_label("Activation link or code")).to_have_value(code)
        assert page.evaluate("location.hash") == ""
        assert live_app.run(live_app.services.devices.list_for_user("alice")) == []
        # Activating in Safari anyway still works (without notifications).
        page.get_by_role("button", name="Activate").click()
        page.locator("#account-list li").wait_for()
        expect(page.locator("#push-status")).to_contain_text("Home Screen")
        assert len(live_app.run(live_app.services.devices.list_for_user("alice"))) == 1


# -- answering sign-ins -----------------------------------------------------------------------


def test_approve_with_number_matching_and_pin(live_app: WebHarness, phone: Page) -> None:
    problems = watch_console(phone)
    live_app.add_user("alice", number_matching=True, require_pin=True)
    live_app.run(live_app.services.users.set_pin(ADMIN, ADMINISTRATOR, "alice", "4711"))
    activate(phone, live_app, "alice")
    started = start_push(
        live_app, "alice", context={"client_name": "vpn-asa", "client_ip": "203.0.113.7"}
    )
    number = started["number"]
    assert 10 <= number <= 99

    # Listed on the open app by polling, then opened.
    item = phone.locator(f'#pending-list li[data-challenge="{started["id"]}"]')
    expect(item).to_contain_text("Sign-in to vpn-asa from 203.0.113.7", timeout=WAIT_MS)
    item.get_by_role("button", name="Open").click()
    view = phone.locator("#view-challenge")
    expect(view).to_be_visible()
    expect(view.locator("#ch-display")).to_have_text("Sign-in to vpn-asa from 203.0.113.7")
    expect(view.locator("#ch-context")).to_contain_text("vpn-asa")
    expect(view.locator("#ch-context")).to_contain_text("203.0.113.7")
    expect(view.locator("#ch-context")).to_contain_text("alice")
    expect(view.locator("#ch-context")).to_contain_text("Berlin, Germany")
    number_field = phone.get_by_label("Number shown on the sign-in screen")
    pin_field = phone.get_by_label("Your PIN")
    expect(number_field).to_be_visible()
    expect(pin_field).to_be_visible()

    # Approve without a number: refused in the app, nothing sent.
    phone.get_by_role("button", name="Approve").click()
    expect(phone.locator("#ch-result")).to_have_text("Type the number shown on the sign-in screen.")
    assert gateway_state(live_app, started["id"]) == "pending"
    # A wrong PIN: the server refuses, the challenge stays pending and the form stays.
    number_field.fill(str(number))
    pin_field.fill("1111")
    phone.get_by_role("button", name="Approve").click()
    expect(phone.locator("#ch-result")).to_have_text("The PIN is wrong.")
    assert gateway_state(live_app, started["id"]) == "pending"
    # The right number and PIN approve the sign-in.
    number_field.fill(str(number))
    pin_field.fill("4711")
    phone.get_by_role("button", name="Approve").click()
    expect(phone.locator("#ch-result")).to_have_text("Approved.")
    assert gateway_state(live_app, started["id"]) == "approved"
    assert problems == []


def test_a_wrong_number_denies_the_sign_in(live_app: WebHarness, phone: Page) -> None:
    live_app.add_user("alice", number_matching=True)
    activate(phone, live_app, "alice")
    started = start_push(live_app, "alice")
    phone.goto(f"{live_app.url}/app/#challenge={started['id']}")
    phone.get_by_label("Number shown on the sign-in screen").fill(
        str((started["number"] + 1) % 100)
    )
    phone.get_by_role("button", name="Approve").click()
    expect(phone.locator("#ch-result")).to_contain_text("Denied.")
    expect(phone.locator("#ch-form")).to_be_hidden()
    assert gateway_state(live_app, started["id"]) == "denied"


def test_deny_and_this_was_not_me(live_app: WebHarness, phone: Page) -> None:
    live_app.add_user("alice")
    activate(phone, live_app, "alice")
    first = start_push(live_app, "alice")
    phone.goto(f"{live_app.url}/app/#challenge={first['id']}")
    expect(phone.get_by_label("Number shown on the sign-in screen")).to_be_hidden()
    phone.get_by_role("button", name="Deny").click()
    expect(phone.locator("#ch-result")).to_have_text("Denied.")
    assert gateway_state(live_app, first["id"]) == "denied"

    second = start_push(live_app, "alice", context={"display": "Sign in to VPN-ASA"})
    phone.get_by_role("button", name="Back").click()
    item = phone.locator(f'#pending-list li[data-challenge="{second["id"]}"]')
    expect(item).to_contain_text("Sign in to VPN-ASA", timeout=WAIT_MS)
    item.get_by_role("button", name="Open").click()
    phone.get_by_role("button", name="This wasn't me").click()
    expect(phone.locator("#ch-result")).to_contain_text("Reported as not you")
    assert gateway_state(live_app, second["id"]) == "fraud"
    assert len(live_app.fraud_reports()) == 1


def test_a_forged_display_in_the_address_is_not_shown(live_app: WebHarness, phone: Page) -> None:
    """The challenge screen shows what the server sends for the id, nothing from the URL."""
    live_app.add_user("alice")
    activate(phone, live_app, "alice")
    phone.goto(f"{live_app.url}/app/#challenge=ch_nonexistent&display=Approve%20me")
    expect(phone.locator("#ch-result")).to_have_text(
        "This sign-in request is not there (any more)."
    )
    expect(phone.locator("#ch-form")).to_be_hidden()
    assert "Approve me" not in phone.locator("#view-challenge").inner_text()


# -- offline ----------------------------------------------------------------------------------


def test_offline_reload_serves_the_shell_and_codes(live_app: WebHarness, phone: Page) -> None:
    if shutil.which("oathtool") is None:
        pytest.skip("oathtool is needed to check the offline codes (apt-get install oathtool)")
    live_app.add_user("alice")
    body = activate(phone, live_app, "alice")
    phone.evaluate("navigator.serviceWorker.ready.then(() => true)")
    phone.wait_for_function("() => navigator.serviceWorker.controller !== null")

    # Online, the worker fetches the page from the server (the cache is only the fallback).
    fetched: list[str] = []

    def from_the_server(route: Route) -> None:
        fetched.append(route.request.url)
        route.continue_()

    phone.context.route(f"{live_app.url}/app/", from_the_server)
    phone.reload()
    assert fetched == [f"{live_app.url}/app/"]
    phone.locator("#account-list li").wait_for()

    phone.context.set_offline(True)
    phone.reload()
    expect(phone.locator("#offline")).to_be_visible()
    assert_code_matches_oathtool(phone, "alice", body["totp"]["secret"])
    expect(phone.locator("#pending-status")).to_contain_text("Offline")
    # The API is never answered from the cache.
    assert (
        phone.evaluate("fetch('/app/v1/challenges').then(() => 'answered', (e) => 'failed')")
        == "failed"
    )
    phone.context.set_offline(False)


# -- several accounts -------------------------------------------------------------------------


def test_two_accounts_codes_challenges_and_removal(live_app: WebHarness, phone: Page) -> None:
    if shutil.which("oathtool") is None:
        pytest.skip("oathtool is needed to check the offline codes (apt-get install oathtool)")
    live_app.add_user("alice")
    live_app.add_user("bob")
    alice = activate(phone, live_app, "alice")
    bob = activate(phone, live_app, "bob")
    expect(phone.locator("#account-list li")).to_have_count(2)
    assert_code_matches_oathtool(phone, "alice", alice["totp"]["secret"])
    assert_code_matches_oathtool(phone, "bob", bob["totp"]["secret"])

    for_bob = start_push(live_app, "bob", context={"display": "Bob's sign-in"})
    item = phone.locator(f'#pending-list li[data-challenge="{for_bob["id"]}"]')
    expect(item).to_contain_text("bob", timeout=WAIT_MS)
    item.get_by_role("button", name="Open").click()
    expect(phone.locator("#ch-context")).to_contain_text("bob")
    phone.get_by_role("button", name="Approve").click()
    expect(phone.locator("#ch-result")).to_have_text("Approved.")
    assert gateway_state(live_app, for_bob["id"]) == "approved"

    phone.get_by_role("button", name="Back").click()
    phone.locator('li:has(.account-user:text-is("alice"))').get_by_role(
        "button", name="Remove"
    ).click()
    expect(phone.locator("#account-list li")).to_have_count(1)
    assert live_app.run(live_app.services.devices.list_for_user("alice")) == []
    assert len(live_app.run(live_app.services.devices.list_for_user("bob"))) == 1
    assert phone.evaluate("OpenMFACore.store.accounts().then((a) => a.map((x) => x.user))") == [
        "bob"
    ]


# -- language ---------------------------------------------------------------------------------


def test_german_from_the_browser_languages(chromium: Browser, live_app: WebHarness) -> None:
    with open_phone(chromium, live_app, locale="de-DE") as page:
        page.goto(f"{live_app.url}/app/")
        expect(page.get_by_role("heading", name="Konto hinzufügen")).to_be_visible()
        expect(page.get_by_role("button", name="Aktivieren")).to_be_visible()
        assert page.evaluate("document.documentElement.lang") == "de"


def test_catalogue_languages_have_the_same_keys(chromium: Browser, live_app: WebHarness) -> None:
    with open_phone(chromium, live_app) as page:
        page.goto(f"{live_app.url}/app/")
        keys = page.evaluate(
            "Object.fromEntries(Object.entries(OpenMFAI18n.CATALOGUE)"
            ".map(([k, v]) => [k, Object.keys(v).sort()]))"
        )
    assert set(keys) >= {"en", "de"}
    for language, names in keys.items():
        assert names == keys["en"], language


def test_ecdsa_p256_where_ed25519_is_missing(chromium: Browser, live_app: WebHarness) -> None:
    """The P-256 path (browsers without Ed25519): forced by the test hook in this Chromium."""
    live_app.add_user("alice")
    with open_phone(chromium, live_app, key_algorithm="ECDSA") as page:
        activate(page, live_app, "alice")
        [device] = live_app.run(live_app.services.devices.list_for_user("alice"))
        assert device.public_key is not None
        assert (len(device.public_key), device.public_key[0]) == (65, 4)
        started = start_push(live_app, "alice")
        page.goto(f"{live_app.url}/app/#challenge={started['id']}")
        page.get_by_role("button", name="Approve").click()
        expect(page.locator("#ch-result")).to_have_text("Approved.")
        assert gateway_state(live_app, started["id"]) == "approved"
