"""The portal's web-app option in headless Chromium at phone size: "Use this phone's browser"
jumps to the link and QR code of ``/app/#activate=<code>`` (the QR read off a screenshot with
``zbarimg``, as a phone's camera would), the web app's P-256 device activates with that code and
the page follows; "My devices" then shows it as "Web app (browser)" and a lost push clearly.
Every wait is on something the page shows."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlencode, urlsplit

import pytest
from playwright.sync_api import ConsoleMessage, Page, expect
from sqlalchemy import update

from backend.authenticator.client import AppClient
from backend.store.tables import devices_t
from tests.support.web import PASSWORD, WebHarness

WAIT_MS = 10_000
PHONE_WIDTH = 390


def watch_console(page: Page) -> list[str]:
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text or "Uncaught" in message.text:
            problems.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda error: problems.append(str(error)))
    return problems


def sign_in(page: Page, base: str, next_path: str) -> None:
    page.goto(f"{base}/portal/sign-in?next={next_path}")
    page.get_by_label("User name").fill("alice")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()


def test_use_this_phones_browser_on_a_phone(
    live_app: WebHarness, mobile_page: Page, tmp_path: Path
) -> None:
    if shutil.which("zbarimg") is None:
        pytest.skip("zbarimg is needed to read the QR code (apt-get install zbar-tools)")
    live_app.add_user("alice")
    live_app.allow_enrolment("alice")
    page = mobile_page
    problems = watch_console(page)
    sign_in(page, live_app.url, "/portal/activate")
    page.get_by_role("heading", name="Activate an authenticator app").wait_for()

    page.get_by_role("button", name="Use this phone's browser").click()
    link = page.locator("#web-app-link")
    expect(link).to_be_visible(timeout=WAIT_MS)
    assert urlsplit(page.url).fragment == "web-app"  # the page jumped to the web-app section
    href = link.get_attribute("href")
    assert href is not None
    code = page.locator("#activation-code").inner_text().strip()
    assert href == f"{live_app.settings.resolved_public_url.rstrip('/')}/app/#activate={code}"
    qr = page.locator("#web-app-qr")
    expect(qr).to_be_visible()
    shot = tmp_path / "web-qr.png"
    qr.screenshot(path=str(shot))
    decoded = subprocess.run(
        ["zbarimg", "-q", "--raw", str(shot)], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert decoded == href
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE_WIDTH

    # The web app redeems the code from the fragment with a P-256 key, platform "web". (The
    # settings' public_url names a port nothing listens on: the app talks to the live server.)
    fragment_code = unquote(urlsplit(href).fragment).removeprefix("activate=")
    phone = AppClient(transport=live_app.transport)
    uri = f"openmfa://activate?{urlencode({'url': live_app.url, 'code': fragment_code})}"
    phone.activate(uri, "Web app on Android", platform="web", key_type="p256")
    status = page.locator("#activation-status")
    expect(status).to_have_attribute("data-state", "activated", timeout=WAIT_MS)
    expect(status).to_contain_text("Web app on Android")
    page.screenshot(path=str(tmp_path / "portal-web-app.png"), full_page=True)
    assert problems == []


def test_my_devices_shows_the_web_app_and_a_lost_push_on_a_phone(
    live_app: WebHarness, mobile_page: Page
) -> None:
    live_app.add_user("alice")
    phone = AppClient(transport=live_app.transport)
    code = live_app.activation_code("alice")
    phone.activate(
        f"openmfa://activate?{urlencode({'url': live_app.url, 'code': code})}",
        "Browser",
        platform="web",
        key_type="p256",
    )
    assert phone.device is not None

    async def lost() -> None:
        async with live_app.services.db.write() as conn:
            await conn.execute(
                update(devices_t)
                .where(devices_t.c.id == phone.device.device_id)  # type: ignore[union-attr]
                .values(push_token='{"endpoint":"https://x"}', push_status="invalid")
            )

    live_app.run(lost())
    page = mobile_page
    problems = watch_console(page)
    sign_in(page, live_app.url, "/portal/devices")
    page.get_by_role("heading", name="My devices").wait_for()
    row = page.locator(f"#device-{phone.device.device_id}")
    expect(row).to_contain_text("Web app (browser)")
    warning = row.locator("strong.pt-push-invalid")
    expect(warning).to_have_text("push lost — open the app to renew")
    expect(warning).to_be_visible()
    color = warning.evaluate("el => getComputedStyle(el).color")
    assert color == "rgb(138, 28, 28)"  # --err-text: it reads as a warning, not as data
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE_WIDTH
    assert problems == []
