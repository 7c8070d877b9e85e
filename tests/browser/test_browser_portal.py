"""The user portal end to end in headless Chromium: invitation → password → activation QR →
the reference authenticator activates from the QR decoded off the page → the live status turns
to activated without a reload → "Send test push" → the phone approves → the page shows it.

Every wait is on something the page shows (Playwright's expect with bounded timeouts), never
a sleep. The QR code is read the way a phone reads it: a screenshot of the element, decoded by
``zbarimg``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from playwright.sync_api import ConsoleMessage, Page, expect

from backend.authenticator.client import AppClient
from tests.support.api import ADMIN
from tests.support.web import WebHarness

NEW_PASSWORD = "a long passphrase for alice"
WAIT_MS = 10_000


def read_qr(image: Path) -> str:
    result = subprocess.run(
        ["zbarimg", "-q", "--raw", str(image)], capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def watch_console(page: Page) -> list[str]:
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text or "Uncaught" in message.text:
            problems.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda error: problems.append(str(error)))
    return problems


def test_invitation_to_activated_phone_and_approved_test_push(
    live_app: WebHarness, browser_page: Page, tmp_path: Path
) -> None:
    if shutil.which("zbarimg") is None:
        pytest.skip(
            "zbarimg is needed to read the QR code off the page (apt-get install zbar-tools)"
        )
    page = browser_page
    problems = watch_console(page)
    live_app.add_user("alice", password=None, display_name="Alice Liddell")
    offer = live_app.run(live_app.services.invitations.create(ADMIN, "alice"))
    invite_path = urlsplit(offer.url).path

    # Invitation link → set password → signed in.
    page.goto(live_app.url + invite_path)
    page.get_by_label("New password", exact=True).fill(NEW_PASSWORD)
    page.get_by_label("New password again").fill(NEW_PASSWORD)
    page.get_by_role("button", name="Set password and sign in").click()
    page.get_by_role("heading", name="Hello, Alice Liddell").wait_for()

    # Activation page → QR code.
    page.get_by_role("link", name="Activate the app").first.click()
    page.get_by_role("button", name="Generate activation code").click()
    qr = page.locator("#activation-qr")
    expect(qr).to_be_visible(timeout=WAIT_MS)
    status = page.locator("#activation-status")
    expect(status).to_contain_text("Waiting for your phone", timeout=WAIT_MS)
    expect(page.locator("#countdown")).to_contain_text("Expires in", timeout=WAIT_MS)
    shot = tmp_path / "qr.png"
    qr.screenshot(path=str(shot))
    uri = read_qr(shot)
    parts = urlsplit(uri)
    query = parse_qs(parts.query)
    assert (parts.scheme, parts.netloc) == ("openmfa", "activate")
    assert query["url"] == [live_app.settings.resolved_public_url]
    assert query["code"] == [page.locator("#activation-code").inner_text().strip()]

    # The reference authenticator activates with the decoded URI. The settings' public_url
    # names a port nothing listens on; the phone is pointed at the live server instead, as
    # WebHarness.activation_uri does (the code is the one from the QR code).
    live_uri = f"openmfa://activate?{urlencode({'url': live_app.url, 'code': query['code'][0]})}"
    phone = AppClient(transport=live_app.transport)
    phone.activate(live_uri, name="Alice's phone")

    # The page notices by itself: no reload.
    url_before = page.url
    expect(status).to_have_attribute("data-state", "activated", timeout=WAIT_MS)
    expect(status).to_contain_text("Device activated: “Alice's phone”")
    assert page.url == url_before

    # Send test push → the phone approves → the page shows approved.
    page.get_by_role("button", name="Send test push").click()
    push_status = page.locator("#push-status")
    expect(push_status).to_have_attribute("data-state", "pending", timeout=WAIT_MS)
    [challenge] = phone.pending()
    assert phone.answer(challenge["id"], "approve") == "approved"
    expect(push_status).to_have_attribute("data-state", "approved", timeout=WAIT_MS)
    expect(push_status).to_contain_text("Approved.")
    expect(status).to_have_attribute("data-state", "active", timeout=WAIT_MS)
    assert phone.device is not None
    device = live_app.run(live_app.services.devices.get(phone.device.device_id))
    assert device.state == "active"
    page.screenshot(path=str(tmp_path / "portal-activated.png"), full_page=True)
    assert problems == []


def test_devices_page_reads_on_a_phone(live_app: WebHarness, mobile_page: Page) -> None:
    from tests.support.web import PASSWORD

    live_app.add_user("alice")
    live_app.device("alice")
    page = mobile_page
    problems = watch_console(page)
    page.goto(live_app.url + "/portal/sign-in?next=/portal/devices")
    page.get_by_label("User name").fill("alice")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="My devices").wait_for()
    # Stacked rows: nothing wider than the screen, the actions reachable by keyboard.
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390
    page.get_by_text("Change…").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_label("New name")).to_be_visible()
    page.get_by_role("link", name="Mark lost").click()
    page.get_by_role("button", name="Mark it lost").click()
    expect(page.get_by_role("status").filter(has_text="is marked lost")).to_be_visible()
    assert problems == []
