"""The admin console in headless Chromium: block and unblock a user, a user's "this wasn't me"
reaching the admin's fraud list, and a RADIUS client added, its secret seen once, and tested
with Status-Server against a live bridge."""

from __future__ import annotations

import dataclasses
import re
import socket
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Dialog, Page, expect

from backend.config import Settings
from radius_bridge.config import ListenAddress
from tests.support.api import ADMIN
from tests.support.bridge import BridgeThread, bridge_settings
from tests.support.process import wait_for
from tests.support.web import PASSWORD, WebHarness


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The conftest settings, with the RADIUS port on a free loopback UDP port, where
    :func:`bridge` runs the bridge the Status-Server test reaches (create_app alone runs
    none)."""
    return settings.model_copy(update={"radius_host": "127.0.0.1", "radius_port": _free_udp_port()})


@pytest.fixture
def bridge(live_app: WebHarness) -> Iterator[BridgeThread]:
    """A real bridge on ``settings.radius_port``, fetching its clients from ``live_app``."""
    token = live_app.run(live_app.services.tokens.create(ADMIN, "browser-lab", scope="bridge"))
    config = dataclasses.replace(
        bridge_settings(live_app.url, token),
        listen=(ListenAddress("127.0.0.1", live_app.settings.radius_port),),
    )
    with BridgeThread(config) as running:
        yield running


def _watch(page: Page) -> list[str]:
    """CSP violations and script errors on ``page``; confirm dialogs accepted."""
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text or "Uncaught" in message.text:
            problems.append(message.text)

    def on_dialog(dialog: Dialog) -> None:
        if dialog.type != "confirm":
            problems.append(f"unexpected {dialog.type} dialog: {dialog.message}")
        dialog.accept()

    page.on("console", on_console)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("dialog", on_dialog)
    return problems


def _admin_signs_in(page: Page, app: WebHarness, name: str = "root") -> None:
    """An administrator with an OATH token (an administrator's: active at once) signs in with
    the password and a code: the console opens only with a second factor in use."""
    from backend.domain import totp
    from backend.domain.stepup import ADMINISTRATOR
    from tests.support.api import ADMIN

    app.add_user(name, admin=True)
    oath = app.run(app.services.activation.enrol_oath(ADMIN, ADMINISTRATOR, name))
    page.goto(app.url + "/admin/sign-in")
    page.get_by_label("User name").fill(name)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Continue").click()
    page.get_by_label("Code from your authenticator app").fill(
        totp.current_code(oath.seed, app.clock.now)
    )
    page.get_by_role("button", name="Verify code").click()
    page.get_by_role("heading", name="Dashboard").wait_for()


def test_admin_blocks_and_unblocks_a_user(live_app: WebHarness, browser_page: Page) -> None:
    problems = _watch(browser_page)
    live_app.add_user("alice", display_name="Alice Liddell")
    _admin_signs_in(browser_page, live_app)

    browser_page.get_by_role("navigation", name="Main").get_by_role("link", name="Users").click()
    browser_page.get_by_role("link", name="alice", exact=True).click()
    browser_page.get_by_role("heading", name=re.compile("alice")).first.wait_for()
    browser_page.get_by_label("Reason (optional)").fill("lost phone")
    browser_page.get_by_role("button", name="Block", exact=True).click()  # confirm accepted
    browser_page.get_by_role("button", name="Unblock", exact=True).wait_for()
    assert live_app.user("alice").blocked

    browser_page.get_by_role("button", name="Unblock", exact=True).click()
    browser_page.get_by_role("button", name="Block", exact=True).wait_for()
    assert not live_app.user("alice").blocked
    actions = [row.action for row in live_app.audit(user="alice")]
    assert "user.block" in actions
    assert "user.unblock" in actions
    assert problems == []


def test_this_wasnt_me_shows_up_in_the_admin_fraud_list(
    live_app: WebHarness, browser_page: Page, chromium: Browser
) -> None:
    problems = _watch(browser_page)
    live_app.add_user("alice")
    live_app.device("alice")
    started = live_app.start(
        "alice", "push", context={"client_name": "vpn-gw", "client_ip": "203.0.113.9"}
    )

    # Alice, in the portal, reports the sign-in she did not start.
    browser_page.goto(live_app.url + "/portal/sign-in")
    browser_page.get_by_label("User name").fill("alice")
    browser_page.get_by_label("Password").fill(PASSWORD)
    browser_page.get_by_role("button", name="Sign in").click()
    browser_page.goto(live_app.url + "/portal/sign-ins")
    row = browser_page.locator("tr", has_text="203.0.113.9")
    row.get_by_role("link", name="This wasn't me").click()
    browser_page.get_by_role("button", name="Report: this wasn't me").click()
    browser_page.get_by_role("status").filter(has_text="reported as not yours").wait_for()
    assert live_app.status(started["id"])["state"] in ("fraud", "denied")

    # The administrator, in another browser context, sees it in the fraud list.
    context = chromium.new_context(viewport={"width": 1280, "height": 800})
    try:
        admin = context.new_page()
        admin.set_default_timeout(10_000)
        admin_problems = _watch(admin)
        _admin_signs_in(admin, live_app)
        admin.get_by_role("navigation", name="Main").get_by_role(
            "link", name="Fraud reports"
        ).click()
        report = admin.locator(".ax-report", has_text="alice")
        expect(report).to_contain_text("vpn-gw")
        expect(report).to_contain_text("203.0.113.9")
        expect(report).to_contain_text("open")
        assert admin_problems == []
    finally:
        context.close()
    assert problems == []


def test_clients_walk_with_a_live_bridge(
    live_app: WebHarness, bridge: BridgeThread, browser_page: Page
) -> None:
    problems = _watch(browser_page)
    _admin_signs_in(browser_page, live_app)
    page = browser_page
    page.get_by_role("link", name="RADIUS clients").click()
    page.get_by_text("No RADIUS clients yet").wait_for()
    page.get_by_role("link", name="Add the first client").click()

    # A mistake first: the error appears beside the field, what was typed stays.
    page.get_by_label("Name", exact=True).fill("local-test")
    page.get_by_label("Addresses").fill("127.0.0.1\nnot-an-address")
    page.get_by_role("button", name="Add client").click()
    error = page.locator("#f-addresses-error")
    expect(error).to_contain_text("'not-an-address' is not an IP address")
    expect(page.get_by_label("Addresses")).to_have_attribute("aria-invalid", "true")

    page.get_by_label("Addresses").fill("127.0.0.1")
    page.get_by_label("Mode").select_option("challenge")
    page.get_by_label("Reply attributes").fill("Filter-Id=vpn-users")
    page.get_by_role("button", name="Add client").click()
    page.get_by_role("heading", name="RADIUS client local-test added").wait_for()
    secret = page.get_by_label("Shared secret of local-test").input_value()
    assert len(secret) >= 32
    page.get_by_role("link", name="Done: show local-test").click()
    page.get_by_role("heading", name="RADIUS client local-test").wait_for()
    assert secret not in page.content()

    revision = live_app.run(live_app.services.radius_clients.revision())
    wait_for(lambda: bridge.revision == revision, 10, "the bridge to load the new client")
    page.get_by_role("button", name="Test (Status-Server)").click()
    result = page.get_by_role("status").filter(has_text="Status-Server test")
    expect(result).to_contain_text("answered Access-Accept, signed with this client's secret")
    expect(result.locator(".rtt")).to_have_text(re.compile(r"[0-9.]+ ms"))
    assert secret not in page.content()

    # Turning Message-Authenticator off warns.
    page.get_by_label("Require Message-Authenticator").uncheck()
    page.get_by_role("button", name="Save changes").click()
    page.get_by_text("local-test changed: require_message_authenticator.").wait_for()
    page.get_by_text("Message-Authenticator is not required").first.wait_for()

    # Remove (the confirmation is accepted by _watch).
    page.get_by_role("button", name="Remove…").click()
    page.get_by_text("RADIUS client local-test removed.").wait_for()
    page.get_by_text("No RADIUS clients yet").wait_for()
    assert problems == []


def test_token_walk_on_a_phone(live_app: WebHarness, mobile_page: Page) -> None:
    problems = _watch(mobile_page)
    _admin_signs_in(mobile_page, live_app)
    mobile_page.goto(live_app.url + "/admin/tokens")
    mobile_page.get_by_label("Name", exact=True).fill("radius-dmz")
    mobile_page.get_by_role("button", name="Create token").click()
    token = mobile_page.get_by_label("API token radius-dmz").input_value()
    assert token.startswith("omfa_")
    mobile_page.get_by_role("link", name="Done").click()
    assert token not in mobile_page.content()
    mobile_page.get_by_role("button", name="Revoke radius-dmz").click()
    mobile_page.get_by_text("Token radius-dmz revoked").wait_for()
    # Nothing is wider than the phone's screen.
    width = mobile_page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390
    assert problems == []
