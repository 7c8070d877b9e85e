"""Portal: activating the app (code, QR, live status, expiry), the test push (live result,
number matching), and that one user can never reach another's codes or pushes."""

from __future__ import annotations

import base64
import contextlib
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from backend.authenticator.client import AppClient
from backend.config import Settings
from backend.services.context import SignInContext
from tests.support.api import ADMIN
from tests.support.clock import FakeClock
from tests.support.piapp import PiLab
from tests.support.web import WebHarness, csrf_from, sign_in

CODE = re.compile(r'id="activation-code">([^<]+)<')
STATUS_URL = re.compile(r'data-poll-url="(/portal/activate/status\?ref=[0-9a-f]+)"')
QR = re.compile(r'id="activation-qr" class="pt-qr" src="data:image/png;base64,([^"]+)"')
JSON = {"Accept": "application/json"}


def signed_in(web: WebHarness, name: str = "alice", **policy: object) -> httpx.Client:
    web.add_user(name, **policy)
    web.allow_enrolment(name)  # no factor yet: an administrator lets them enrol one
    browser = web.browser()
    assert sign_in(browser, name).status_code == 303
    return browser


def generate(browser: httpx.Client) -> tuple[str, str, str]:
    """POST "Generate activation code": (the page, the code shown, the status URL)."""
    form = browser.get("/portal/activate")
    assert form.status_code == 200
    page = browser.post("/portal/activate", data={"csrf_token": csrf_from(form.text)})
    assert page.status_code == 200, page.text
    code, status = CODE.search(page.text), STATUS_URL.search(page.text)
    assert code is not None
    assert status is not None
    return page.text, code.group(1), status.group(1)


def phone_from_code(web: WebHarness, code: str) -> AppClient:
    phone = AppClient(transport=web.transport)
    phone.activate(f"openmfa://activate?{urlencode({'url': web.url, 'code': code})}", "Pixel")
    return phone


def test_the_code_activates_and_the_status_follows_until_the_test_push(web: WebHarness) -> None:
    browser = signed_in(web)
    page, code, status_url = generate(browser)
    assert "Generate activation code" not in page
    assert 'data-expires-in="600"' in page  # the policy's 10 minutes, counted down by the page
    assert "/static/js/portal-activate.js" in page

    waiting = browser.get(status_url)
    assert waiting.status_code == 200
    assert waiting.headers["cache-control"] == "no-store"
    assert waiting.json()["state"] == "waiting"
    assert waiting.json()["expires_in"] == 600
    web.clock.advance(100)
    assert browser.get(status_url).json()["expires_in"] == 500

    phone = phone_from_code(web, code)
    activated = browser.get(status_url).json()
    assert activated["state"] == "activated"
    assert activated["tone"] == "ok"
    assert "Pixel" in activated["message"]
    assert phone.device is not None
    assert activated["device_id"] == phone.device.device_id

    # "Send test push" from the same page, as portal-push.js does it: JSON, CSRF header.
    sent = browser.post("/portal/test/push", headers={**JSON, "X-CSRF-Token": csrf_from(page)})
    assert sent.status_code == 200, sent.text
    push = sent.json()
    assert push["state"] == "pending"
    assert push["number"] is None
    [pending] = phone.pending()
    assert pending["id"] == push["id"]
    assert "portal" in pending["display"]
    assert browser.get(push["status_url"]).json()["state"] == "pending"
    assert phone.answer(push["id"], "approve") == "approved"
    result = browser.get(push["status_url"]).json()
    assert (result["state"], result["tone"], result["final"]) == ("approved", "ok", True)
    final = browser.get(status_url).json()
    assert (final["state"], final["final"]) == ("active", True)
    assert phone.device is not None
    assert web.run(web.services.devices.get(phone.device.device_id)).state == "active"
    starts = web.audit("auth.start", "alice")
    assert starts[0].actor == "portal:alice"
    assert "portal test push" in starts[0].detail
    assert web.audit("activation.create", "alice")[0].actor == "portal:alice"


def test_the_qr_code_holds_the_activation_uri(web: WebHarness, tmp_path: Path) -> None:
    if shutil.which("zbarimg") is None:
        pytest.skip("zbarimg is needed to read the QR code (apt-get install zbar-tools)")
    browser = signed_in(web)
    page, code, _ = generate(browser)
    png = QR.search(page)
    assert png is not None
    image = tmp_path / "qr.png"
    image.write_bytes(base64.b64decode(png.group(1)))
    decoded = subprocess.run(
        ["zbarimg", "-q", "--raw", str(image)], capture_output=True, text=True, check=True
    ).stdout.strip()
    parts = urlsplit(decoded)
    assert (parts.scheme, parts.netloc) == ("openmfa", "activate")
    query = parse_qs(parts.query)
    assert query["code"] == [code]
    assert query["url"] == [web.settings.resolved_public_url]


def test_an_unused_code_expires_and_a_new_one_can_be_made(web: WebHarness) -> None:
    browser = signed_in(web)
    _, code, status_url = generate(browser)
    web.clock.advance(601)
    expired = browser.get(status_url).json()
    assert (expired["state"], expired["final"], expired["expires_in"]) == ("expired", True, 0)
    assert "New code" in generate(browser)[0]  # the button that makes another
    _, second, second_url = generate(browser)
    assert second != code
    assert browser.get(second_url).json()["state"] == "waiting"


def test_number_matching_shows_the_number_to_pick(web: WebHarness) -> None:
    browser = signed_in(web, number_matching="true")
    phone = web.device("alice")
    form = browser.get("/portal/test")
    assert "Send test push" in form.text
    sent = browser.post("/portal/test/push", data={"csrf_token": csrf_from(form.text)})
    assert sent.status_code == 303  # without script: to the push's own page
    page = browser.get(sent.headers["location"])
    number = re.search(r'id="push-number">(\d+)<', page.text)
    assert number is not None
    [pending] = phone.pending()
    assert "number" not in pending  # the phone is not told: the user types what the page shows
    assert phone.answer(pending["id"], "approve", number=int(number.group(1))) == "approved"
    done = browser.get(sent.headers["location"])
    assert "Approved." in done.text
    assert "data-poll-url" not in done.text  # final: nothing left to poll


@pytest.mark.parametrize(
    ("answer", "state", "words"),
    [("deny", "denied", "Denied on the phone"), (None, "expired", "Timed out")],
)
def test_the_test_push_reports_denied_and_timed_out(
    web: WebHarness, answer: str | None, state: str, words: str
) -> None:
    browser = signed_in(web)
    phone = web.device("alice")
    form = browser.get("/portal/test")
    sent = browser.post(
        "/portal/test/push", headers={**JSON, "X-CSRF-Token": csrf_from(form.text)}
    ).json()
    if answer is None:
        web.clock.advance(61)
    else:
        phone.answer(sent["id"], answer)
    result = browser.get(sent["status_url"]).json()
    assert (result["state"], result["tone"], result["final"]) == (state, "failed", True)
    assert words in result["message"]


def test_without_a_device_there_is_nothing_to_test(web: WebHarness) -> None:
    browser = signed_in(web)
    page = browser.get("/portal/test")
    assert "None of your devices can answer a push yet" in page.text
    refused = browser.post(
        "/portal/test/push", headers={**JSON, "X-CSRF-Token": csrf_from(page.text)}
    )
    assert refused.status_code == 409
    assert refused.json()["state"] == "refused"
    assert "Activate the OpenMFA app first" in refused.json()["message"]


def test_another_user_cannot_reach_my_code_or_my_push(web: WebHarness) -> None:
    alice = signed_in(web, "alice")
    _, _, status_url = generate(alice)
    web.device("alice")
    form = alice.get("/portal/test")
    push = alice.post(
        "/portal/test/push", headers={**JSON, "X-CSRF-Token": csrf_from(form.text)}
    ).json()
    bob = signed_in(web, "bob")
    for path in (status_url, push["status_url"], f"/portal/test/push/{push['id']}"):
        assert bob.get(path).status_code == 404, path
        assert alice.get(path).status_code == 200, path
    assert bob.get("/portal/activate/status?ref=nope").status_code == 404
    # A gateway sign-in of bob's is not alice's test page either, and vice versa.
    web.device("bob")
    bobs = web.run(web.services.challenges.start(ADMIN, "bob", "push", SignInContext("vpn")))
    assert alice.get(f"/portal/test/push/{bobs.id}/status").status_code == 404


def test_forms_and_fetches_need_the_csrf_token(web: WebHarness) -> None:
    browser = signed_in(web)
    web.device("alice")
    assert browser.post("/portal/activate", data={}).status_code == 403
    assert browser.post("/portal/activate", data={"csrf_token": "forged"}).status_code == 403
    wrong = browser.post("/portal/test/push", headers={**JSON, "X-CSRF-Token": "forged"})
    assert wrong.status_code == 403
    assert browser.post("/portal/activate/privacyidea", data={}).status_code == 403
    assert [r.result for r in web.refusals()] == ["csrf-failed"] * 4
    assert [r for r in web.audit() if r.actor == "portal:alice"] == []  # nothing ran


def test_pages_need_a_signed_in_user(web: WebHarness) -> None:
    anonymous = web.browser()
    for path in ("/portal/activate", "/portal/test", "/portal/activate/status?ref=x"):
        response = anonymous.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/portal/sign-in")


def test_privacyidea_needs_an_https_public_url(web: WebHarness) -> None:
    browser = signed_in(web)
    form = browser.get("/portal/activate")
    assert "privacyIDEA Authenticator" in form.text
    page = browser.post("/portal/activate/privacyidea", data={"csrf_token": csrf_from(form.text)})
    assert page.status_code == 503
    assert "needs the server&#39;s public https:// address" in page.text
    assert web.run(web.services.devices.list_for_user("alice")) == []


PI_QR = re.compile(r'id="pi-qr" class="pt-qr" src="data:image/png;base64,([^"]+)"')
PI_STATUS = re.compile(r'data-poll-url="(/portal/activate/privacyidea/[^"/]+/status)"')


def test_the_portal_enrols_the_privacyidea_app_and_follows_its_rollout(
    settings: Settings, clock: FakeClock, tmp_path: Path
) -> None:
    """The unmodified store app, as tests/support/piapp.py plays it: the QR read off the
    portal page, rollout over TLS, the page's status turning active, then a push approved."""
    if shutil.which("zbarimg") is None:
        pytest.skip("zbarimg is needed to read the QR code (apt-get install zbar-tools)")
    with contextlib.ExitStack() as stack:
        lab = stack.enter_context(PiLab(settings, clock, tmp_path, harness=WebHarness))
        web = lab.api
        assert isinstance(web, WebHarness)
        web.add_user("alice")
        web.allow_enrolment("alice")
        # Through the https front, as a browser reaches the portal at public_url: the
        # session cookie is Secure there.
        browser = httpx.Client(
            base_url=lab.front.url, verify=lab.tls.client_context(), timeout=30.0
        )
        stack.callback(browser.close)
        assert sign_in(browser, "alice").status_code == 303
        form = browser.get("/portal/activate")
        page = browser.post(
            "/portal/activate/privacyidea", data={"csrf_token": csrf_from(form.text)}
        )
        assert page.status_code == 200, page.text
        png, status = PI_QR.search(page.text), PI_STATUS.search(page.text)
        assert png is not None
        assert status is not None
        image = tmp_path / "pi.png"
        image.write_bytes(base64.b64decode(png.group(1)))
        uri = subprocess.run(
            ["zbarimg", "-q", "--raw", str(image)], capture_output=True, text=True, check=True
        ).stdout.strip()
        assert uri.startswith("otpauth://pipush/")
        assert "open the app" in page.text  # no background polling: the user must know
        assert 'href="/portal/oath"' in page.text  # offline codes in the same app
        assert browser.get(status.group(1), headers=JSON).json()["state"] == "waiting"

        app = lab.phone()
        app.scan(uri)
        assert app.rollout().status_code == 200
        assert browser.get(status.group(1), headers=JSON).json()["state"] == "active"

        view = web.start("alice", "push")
        [request] = app.poll()
        assert app.accept(request).json()["result"]["value"] is True
        assert web.run(web.services.challenges.get(view["id"])).state.value == "approved"
