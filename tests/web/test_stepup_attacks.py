"""Issue 13, findings 1 and 5: a password alone never adds or changes a second factor.

Each test is an attack from the security review, replayed over HTTP against a live server: a
portal session opened with only the password POSTs straight to the form that adds or changes
a factor (no step-up page in between), a code from a pending OATH seed is tried where sign-ins
are checked, and an administrator whose only app is pending opens console pages.
"""

from __future__ import annotations

import re

import httpx
import pytest

from backend.authenticator.client import AppClient
from backend.domain import totp
from backend.services.context import SignInContext
from tests.support.api import ADMIN
from tests.support.web import PASSWORD, WebHarness, csrf_from, post_form, sign_in

SECRET = re.compile(r'id="oath-secret">([A-Z2-7 ]+)<')


def with_active_phone(web: WebHarness, name: str = "alice", pin: str | None = None) -> AppClient:
    """``name`` with an app that has answered once (a live factor)."""
    phone = web.device(name, pin=pin)
    result = web.run(
        web.services.otp.verify(ADMIN, name, phone.code(web.clock.now), SignInContext())
    )
    assert result.accepted
    web.clock.advance(30)
    return phone


def password_only(web: WebHarness, name: str = "alice") -> tuple[httpx.Client, str]:
    """A portal session opened with the password alone, and a valid CSRF token of it."""
    browser = web.browser()
    assert sign_in(browser, name).status_code == 303
    home = browser.get("/portal/")
    assert home.status_code == 200
    return browser, csrf_from(home.text)


def live_devices(web: WebHarness, name: str = "alice") -> list[tuple[str, str, str]]:
    return [
        (d.id, d.state, d.name) for d in web.run(web.services.devices.list_for_user(name, True))
    ]


def test_password_alone_cannot_enrol_an_oath_token(web: WebHarness) -> None:
    web.add_user("alice")
    with_active_phone(web)
    before = live_devices(web)
    browser, token = password_only(web)
    response = browser.post("/portal/oath", data={"csrf_token": token, "name": "attacker"})
    assert response.status_code == 403
    assert "oath-secret" not in response.text
    assert live_devices(web) == before
    refusal = web.audit("factor.refuse", "alice")[0]
    assert "enrol-oath" in refusal.detail
    assert "step-up" in refusal.detail


def test_password_alone_cannot_make_an_activation_code(web: WebHarness) -> None:
    web.add_user("alice")
    with_active_phone(web)
    browser, token = password_only(web)
    response = browser.post("/portal/activate", data={"csrf_token": token})
    assert response.status_code == 403
    assert "openmfa://activate" not in response.text
    assert [r.actor for r in web.audit("activation.create", "alice")] == ["test:admin"]
    assert web.audit("factor.refuse", "alice")


def test_password_alone_cannot_enrol_the_privacyidea_app(web: WebHarness) -> None:
    web.add_user("alice")
    with_active_phone(web)
    browser, token = password_only(web)
    response = browser.post("/portal/activate/privacyidea", data={"csrf_token": token})
    assert response.status_code == 403
    assert [k for _, _, k in live_devices(web)] == ["alice's phone"]


def test_password_is_no_longer_taken_in_place_of_the_pin(web: WebHarness) -> None:
    web.add_user("alice")
    with_active_phone(web, pin="4711")
    assert web.user("alice").has_pin
    browser, token = password_only(web)
    response = browser.post(
        "/portal/pin",
        data={"csrf_token": token, "pin": "8403", "confirm": "8403", "password": PASSWORD},
    )
    assert response.status_code == 403
    assert web.audit("user.set_pin", "alice") == []


@pytest.mark.parametrize("act", ["rename", "remove", "lost"])
def test_password_alone_cannot_rename_remove_or_lose_a_device(web: WebHarness, act: str) -> None:
    web.add_user("alice")
    phone = with_active_phone(web)
    assert phone.device is not None
    before = live_devices(web)
    browser, token = password_only(web)
    response = browser.post(
        f"/portal/devices/{phone.device.device_id}/{act}",
        data={"csrf_token": token, "name": "renamed"},
    )
    assert response.status_code == 403
    assert live_devices(web) == before


def test_the_protected_pages_send_a_password_only_session_to_the_step_up(
    web: WebHarness,
) -> None:
    web.add_user("alice")
    with_active_phone(web)
    browser, _ = password_only(web)
    for path in ("/portal/activate", "/portal/oath", "/portal/pin"):
        response = browser.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/portal/step-up?next="), path


def test_no_live_factor_and_no_grant_means_no_enrolment(web: WebHarness) -> None:
    web.add_user("alice")
    web.device("alice")  # pending: never answered, so no factor
    browser, token = password_only(web)
    response = browser.post("/portal/activate", data={"csrf_token": token})
    assert response.status_code == 403
    assert "openmfa://activate" not in response.text
    page = browser.get("/portal/activate")
    assert page.status_code == 200
    assert "ask your help desk" in page.text.lower()


def _invited_session(web: WebHarness, name: str) -> httpx.Client:
    offer = web.run(web.services.invitations.create(ADMIN, name, 24))
    path = offer.url.removeprefix(web.settings.resolved_public_url)
    browser = web.browser()
    done = post_form(browser, path, {"password": PASSWORD, "confirm": PASSWORD})
    assert done.status_code == 303
    return browser


def _pending_oath_seed(browser: httpx.Client) -> str:
    page = post_form(browser, "/portal/oath", {"name": "new app"})
    assert page.status_code == 200, page.text
    found = SECRET.search(page.text)
    assert found is not None
    return found.group(1).replace(" ", "")


def test_a_pending_oath_code_is_refused_at_the_gateway(web: WebHarness) -> None:
    web.add_user("alice", password=None)
    seed = _pending_oath_seed(_invited_session(web, "alice"))
    response = web.gateway.post(
        "/gateway/v1/otp/verify",
        json={"user": "alice", "code": totp.current_code(seed, web.clock.now)},
    )
    assert response.status_code in (200, 409), response.text
    if response.status_code == 200:
        assert response.json()["result"] == "reject"
    assert [state for _, state, _ in live_devices(web)] == ["pending"]


def test_a_pending_oath_code_does_not_answer_a_gateway_challenge(web: WebHarness) -> None:
    """The RADIUS challenge/otp modes go through the gateway API's code step."""
    web.add_user("alice", password=None)
    seed = _pending_oath_seed(_invited_session(web, "alice"))
    started = web.gateway.post(
        "/gateway/v1/authentications", json={"user": "alice", "method": "otp"}
    )
    if started.status_code == 201:
        answered = web.gateway.post(
            f"/gateway/v1/authentications/{started.json()['id']}/code",
            json={"code": totp.current_code(seed, web.clock.now)},
        )
        # Refused: as a wrong code (200, reject) or as a user with no factor in use (409).
        assert answered.status_code in (200, 409), answered.text
        if answered.status_code == 200:
            assert answered.json()["result"] == "reject"
    else:  # or no code challenge is started at all: the user has no factor in use
        assert started.status_code == 409, started.text
    assert [state for _, state, _ in live_devices(web)] == ["pending"]


def test_a_pending_oath_code_does_not_pass_the_admin_sign_in(web: WebHarness) -> None:
    web.add_user("root", password=None, admin=True)
    seed = _pending_oath_seed(_invited_session(web, "root"))
    with_active_phone(web, "root")
    browser = web.browser()
    assert sign_in(browser, "root", area="admin").headers["location"] == "/admin/sign-in/verify"
    verify = browser.get("/admin/sign-in/verify")
    response = browser.post(
        "/admin/sign-in/code",
        data={"csrf_token": csrf_from(verify.text), "code": totp.current_code(seed, web.clock.now)},
    )
    assert response.status_code == 401
    assert browser.get("/admin/").status_code == 303


ADMIN_PAGES = (
    "/admin/",
    "/admin/users",
    "/admin/users/root",
    "/admin/clients",
    "/admin/audit",
    "/admin/policies",
    "/admin/tokens",
    "/admin/fraud",
)


@pytest.mark.parametrize("pending_app", [True, False])
def test_an_admin_without_a_live_factor_reaches_no_console_page(
    web: WebHarness, pending_app: bool
) -> None:
    web.add_user("root", admin=True)
    if pending_app:
        web.device("root")  # activated, never used: pending
    browser = web.browser()
    sign_in(browser, "root", area="admin")
    for path in ADMIN_PAGES:
        response = browser.get(path)
        assert response.status_code != 200, path
    landing = browser.get("/admin/", follow_redirects=True)
    token = csrf_from(landing.text)
    made = browser.post("/admin/tokens", data={"csrf_token": token, "name": "mallory"})
    assert made.status_code in (303, 403)
    assert web.audit("token.create") == []


def test_an_admin_with_only_a_pending_app_cannot_push_their_way_in(web: WebHarness) -> None:
    web.add_user("root", admin=True)
    phone = web.device("root")  # pending
    browser = web.browser()
    sign_in(browser, "root", area="admin")
    token = csrf_from(browser.get("/admin/", follow_redirects=True).text)
    sent = browser.post("/admin/sign-in/push", data={"csrf_token": token})
    assert sent.status_code == 303
    assert sent.headers["location"] == "/admin/sign-in/enrol"
    assert phone.pending() == []
    assert browser.get("/admin/").status_code == 303
