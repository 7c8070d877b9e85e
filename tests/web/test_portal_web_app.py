"""The web app in the portal and the console: "Use this phone's browser" on the activation page
(a link and a QR code of ``<public URL>/app/#activate=<code>``, the same single-use code), and
the platform and push state of a web device in "My devices" and on the console's user page."""

from __future__ import annotations

import base64
import html
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlencode, urlsplit

import httpx
import pytest
from sqlalchemy import update

from backend.authenticator.client import AppClient
from backend.config import Settings
from backend.store.tables import devices_t
from tests.support.clock import FakeClock
from tests.support.web import WebHarness, csrf_from, sign_in

CODE = re.compile(r'id="activation-code">([^<]+)<')
WEB_LINK = re.compile(r'id="web-app-link" class="button primary" href="([^"]+)"')
WEB_QR = re.compile(r'id="web-app-qr" class="pt-qr" src="data:image/png;base64,([^"]+)"')
STATUS_URL = re.compile(r'data-poll-url="(/portal/activate/status\?ref=[0-9a-f]+)"')


def signed_in(web: WebHarness, name: str = "alice") -> httpx.Client:
    web.add_user(name)
    web.allow_enrolment(name)
    browser = web.browser()
    assert sign_in(browser, name).status_code == 303
    return browser


def choose_the_browser(browser: httpx.Client) -> str:
    """The choice page's "Use this phone's browser" form, submitted as a browser would."""
    choices = browser.get("/portal/activate")
    assert choices.status_code == 200
    assert 'action="/portal/activate#web-app"' in choices.text
    assert "Use this phone's browser" in choices.text
    # The fragment stays in the browser: the server sees the same POST as "Generate".
    page = browser.post("/portal/activate", data={"csrf_token": csrf_from(choices.text)})
    assert page.status_code == 200, page.text
    return page.text


def code_and_link(page: str) -> tuple[str, str]:
    code, link = CODE.search(page), WEB_LINK.search(page)
    assert code is not None
    assert link is not None, "no web app link on the page"
    return code.group(1), html.unescape(link.group(1))


def zbarimg(png: bytes, tmp_path: Path) -> str:
    image = tmp_path / "qr.png"
    image.write_bytes(png)
    return subprocess.run(
        ["zbarimg", "-q", "--raw", str(image)], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_the_offer_links_the_web_app_with_the_same_code(web: WebHarness, tmp_path: Path) -> None:
    browser = signed_in(web)
    page = choose_the_browser(browser)
    code, link = code_and_link(page)
    assert 'id="web-app"' in page  # the fragment the choice form jumps to
    base = web.settings.resolved_public_url.rstrip("/")
    assert link == f"{base}/app/#activate={code}"
    parts = urlsplit(link)
    assert (parts.path, parts.query) == ("/app/", "")  # the code only in the fragment
    assert unquote(parts.fragment) == f"activate={code}"

    if shutil.which("zbarimg") is None:
        pytest.skip("zbarimg is needed to read the QR code (apt-get install zbar-tools)")
    png = WEB_QR.search(page)
    assert png is not None
    assert zbarimg(base64.b64decode(png.group(1)), tmp_path) == link


def test_the_web_link_activates_a_p256_web_device_and_the_status_follows(
    web: WebHarness,
) -> None:
    """What the web app does with the link: the code from the fragment, a P-256 key (where
    the browser has no Ed25519), platform "web"; the portal's live status sees it."""
    browser = signed_in(web)
    page = choose_the_browser(browser)
    code, link = code_and_link(page)
    status = STATUS_URL.search(page)
    assert status is not None
    fragment_code = unquote(urlsplit(link).fragment).removeprefix("activate=")
    assert fragment_code == code

    phone = AppClient(transport=web.transport)
    uri = f"openmfa://activate?{urlencode({'url': web.url, 'code': fragment_code})}"
    phone.activate(uri, "Browser on Pixel", platform="web", key_type="p256")
    progress = browser.get(status.group(1)).json()
    assert progress["state"] == "activated"
    assert phone.device is not None
    device = web.run(web.services.devices.get(phone.device.device_id))
    assert (device.platform, len(device.public_key or b"")) == ("web", 65)
    # Single use, whichever app redeemed it.
    again = AppClient(transport=web.transport)
    with pytest.raises(Exception, match="activation-code-used"):
        again.activate(uri, "second", platform="web", key_type="p256")


def test_the_web_option_does_not_bypass_the_enrolment_rules(web: WebHarness) -> None:
    """A user with only a password (no invitation, no administrator's leave) gets no code
    from the browser option either: the POST is the same one, refused and audited."""
    web.add_user("mallory")
    browser = web.browser()
    assert sign_in(browser, "mallory").status_code == 303
    choices = browser.get("/portal/activate")
    assert "#web-app" not in choices.text
    refused = browser.post("/portal/activate", data={"csrf_token": csrf_from(choices.text)})
    assert refused.status_code == 403
    assert WEB_LINK.search(refused.text) is None
    assert web.run(web.services.devices.list_for_user("mallory")) == []


@pytest.fixture
def plain_http(settings: Settings, clock: FakeClock) -> Iterator[WebHarness]:
    changed = settings.model_copy(update={"public_url": "http://mfa.example.com"})
    web = WebHarness(changed, clock)
    with web:
        yield web


def test_no_web_app_link_without_https(plain_http: WebHarness) -> None:
    """Browsers give WebCrypto, service workers and push only to https:// (and loopback):
    with an http:// public URL the page says why instead of linking an app that cannot work.
    The store app's code is still offered."""
    browser = signed_in(plain_http)
    page = choose_the_browser(browser)
    assert WEB_LINK.search(page) is None
    assert WEB_QR.search(page) is None
    assert "needs this server's https:// address" in page
    assert CODE.search(page) is not None


# -- "My devices" and the console -------------------------------------------------------------


def set_push(web: WebHarness, device_id: str, token: str | None, status: str, error: str) -> None:
    async def write() -> None:
        async with web.services.db.write() as conn:
            await conn.execute(
                update(devices_t)
                .where(devices_t.c.id == device_id)
                .values(push_token=token, push_status=status, push_error=error)
            )

    web.run(write())


SUBSCRIPTION = (
    '{"endpoint":"https://fcm.googleapis.com/fcm/send/abc","keys":{"p256dh":"BNc","auth":"x"}}'
)


def push_cell(page: str, device_id: str) -> str:
    row = re.search(rf'<tr id="device-{device_id}".*?</tr>', page, re.S)
    assert row is not None
    cell = re.search(r'<td data-label="Push"[^>]*>(.*?)</td>', row.group(0), re.S)
    assert cell is not None
    return cell.group(0)


def test_my_devices_shows_the_web_app_and_its_push_state(web: WebHarness) -> None:
    browser = signed_in(web)
    phone = AppClient(transport=web.transport)
    phone.activate(
        f"openmfa://activate?{urlencode({'url': web.url, 'code': web.activation_code('alice')})}",
        "Browser",
        platform="web",
        key_type="p256",
    )
    assert phone.device is not None
    dev = phone.device.device_id

    page = browser.get("/portal/devices").text
    assert "(Web app (browser))" in page
    assert 'data-push="none"' in push_cell(page, dev)
    assert "no push (polling)" in push_cell(page, dev)

    set_push(web, dev, SUBSCRIPTION, "", "")
    cell = push_cell(browser.get("/portal/devices").text, dev)
    assert 'data-push="ok"' in cell
    assert "push on" in cell
    set_push(web, dev, SUBSCRIPTION, "ok", "")
    assert "push on" in push_cell(browser.get("/portal/devices").text, dev)

    set_push(web, dev, SUBSCRIPTION, "invalid", "410 Gone")
    cell = push_cell(browser.get("/portal/devices").text, dev)
    assert 'data-push="lost"' in cell
    assert '<strong class="pt-push-invalid">push lost — open the app to renew</strong>' in cell


def test_the_console_shows_the_web_app_and_a_lost_push(web: WebHarness) -> None:
    admin = web.admin_browser()
    web.add_user("alice")
    phone = AppClient(transport=web.transport)
    phone.activate(
        f"openmfa://activate?{urlencode({'url': web.url, 'code': web.activation_code('alice')})}",
        "Browser",
        platform="web",
        key_type="p256",
    )
    assert phone.device is not None
    dev = phone.device.device_id

    page = admin.get("/admin/users/alice").text
    assert "app (Web app (browser))" in page
    assert 'data-push="none"' in page
    assert "no push (polling)" in page

    set_push(web, dev, SUBSCRIPTION, "invalid", "410 Gone")
    page = admin.get("/admin/users/alice").text
    assert 'data-push="lost"' in page
    assert '<strong class="ax-push-lost">push lost — open the app to renew</strong>' in page
    assert "(410 Gone)" in page  # the administrator sees why

    set_push(web, dev, SUBSCRIPTION, "ok", "")
    page = admin.get("/admin/users/alice").text
    assert 'data-push="ok"' in page
    assert "push on" in page
