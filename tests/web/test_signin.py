"""Portal sign-in: passwords, lockout, the per-address limit, sessions and their timeouts."""

from __future__ import annotations

from pathlib import Path

import pytest

from backend.config import Settings
from tests.support.api import ADMIN
from tests.support.clock import FakeClock
from tests.support.web import (
    PASSWORD,
    WebHarness,
    cookie,
    csrf_from,
    sign_in,
)


def test_sign_in_starts_a_new_session_with_safe_cookie_flags(web: WebHarness) -> None:
    web.add_user("alice")
    browser = web.browser()
    form = browser.get("/portal/sign-in")
    anonymous = cookie(form, "omfa_portal")
    assert anonymous is not None
    response = browser.post(
        "/portal/sign-in",
        data={"csrf_token": csrf_from(form.text), "username": "alice", "password": PASSWORD},
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/portal/"
    line = cookie(response, "omfa_portal")
    assert line is not None
    flags = [part.strip() for part in line.split(";")[1:]]
    assert sorted(flags) == ["HttpOnly", "Path=/portal", "SameSite=Lax"]  # no Secure on http
    assert line.split(";")[0] != anonymous.split(";")[0], "the session id is rotated"
    page = browser.get("/portal/")
    assert page.status_code == 200
    assert "Hello, alice" in page.text
    rows = web.audit("web.sign_in")
    assert [(r.result, r.detail) for r in rows] == [("accept", "portal: password")]
    # The pre-sign-in value is dead: planting it in a victim's browser gains nothing.
    old = web.browser(cookies={"omfa_portal": anonymous.split(";")[0].split("=", 1)[1]})
    assert old.get("/portal/").status_code == 303


def test_wrong_password_and_unknown_user_read_the_same(web: WebHarness) -> None:
    web.add_user("alice")
    web.add_user("nopass", password=None)
    for name, password, reason in (
        ("alice", "wrong password!", "wrong-password"),
        ("bob", PASSWORD, "unknown-user"),
        ("nopass", PASSWORD, "no-password"),
        ("bad name!", PASSWORD, "unknown-user"),
    ):
        response = sign_in(web.browser(), name, password)
        assert response.status_code == 401, name
        assert "The user name or password is wrong." in response.text
        assert web.audit("web.sign_in")[0].detail == f"portal: {reason}"
    assert all(r.result == "reject" for r in web.audit("web.sign_in"))


def test_the_form_keeps_the_name_but_never_the_password(web: WebHarness) -> None:
    response = sign_in(web.browser(), "alice", "hunter2-secret")
    assert 'value="alice"' in response.text
    assert "hunter2-secret" not in response.text


def test_disabled_user_cannot_sign_in(web: WebHarness) -> None:
    web.add_user("alice")
    web.run(web.services.users.set_disabled(ADMIN, "alice", True))
    response = sign_in(web.browser(), "alice")
    assert response.status_code == 403
    assert "contact your help desk" in response.text


def test_lockout_per_user(web: WebHarness) -> None:
    web.add_user("alice", otp_max_failures=3, otp_lockout_seconds=300)
    for _ in range(3):
        assert sign_in(web.browser(), "alice", "wrong password!").status_code == 401
    locked = sign_in(web.browser(), "alice")  # the right password, too late
    assert locked.status_code == 429
    assert "locked for a while" in locked.text
    assert web.audit("web.sign_in")[0].detail == "portal: locked"
    web.clock.advance(301)
    assert sign_in(web.browser(), "alice").status_code == 303


def test_limit_per_source_address(settings: Settings, clock: FakeClock, tmp_path: Path) -> None:
    limited = settings.model_copy(
        update={"web_sign_in_address_limit": 3, "web_sign_in_address_window_seconds": 600}
    )
    with WebHarness(limited, clock) as web:
        web.add_user("alice")
        for name in ("bob", "carol", "dave"):  # different users, one address
            assert sign_in(web.browser(), name, "guess").status_code == 401
        refused = sign_in(web.browser(), "alice")
        assert refused.status_code == 429
        assert "Too many failed sign-ins from your network" in refused.text
        assert "10 minutes" in refused.text
        assert web.audit("web.sign_in")[0].detail == "portal: address-limited"
        clock.advance(601)  # the window slides past the failures
        assert sign_in(web.browser(), "alice").status_code == 303


@pytest.mark.parametrize(
    "target",
    [
        "//evil.example/portal/",
        "https://evil.example/portal/",
        "/portal//evil.example",
        "/portal/\\evil.example",
        "/\\evil.example",
        "/admin/",
        "javascript:alert(1)",
        "/portal/\r\nSet-Cookie: x=1",
        "portal/",
        "",
    ],
)
def test_next_never_leaves_the_portal(web: WebHarness, target: str) -> None:
    web.add_user("alice")
    response = sign_in(web.browser(), "alice", next_path=target or None)
    assert response.status_code == 303
    assert response.headers["location"] == "/portal/"


def test_next_within_the_portal_is_followed(web: WebHarness) -> None:
    web.add_user("alice")
    browser = web.browser()
    first = browser.get("/portal/devices?tab=all")
    assert first.status_code in (303, 404)
    response = sign_in(browser, "alice", next_path="/portal/devices?tab=all")
    assert response.headers["location"] == "/portal/devices?tab=all"


def test_pages_redirect_to_sign_in_with_next(web: WebHarness) -> None:
    response = web.browser().get("/portal/")
    assert response.status_code == 303
    assert response.headers["location"] == "/portal/sign-in"


def test_sign_out_destroys_the_session(web: WebHarness) -> None:
    web.add_user("alice")
    browser = web.browser()
    sign_in(browser, "alice")
    value = browser.cookies.get("omfa_portal")
    token = csrf_from(browser.get("/portal/").text)
    response = browser.post("/portal/sign-out", data={"csrf_token": token})
    assert response.status_code == 303
    assert response.headers["location"] == "/portal/sign-in"
    assert "You are signed out." in browser.get("/portal/sign-in").text
    replay = web.browser(cookies={"omfa_portal": value or ""})
    assert replay.get("/portal/").status_code == 303


def test_idle_timeout(web: WebHarness) -> None:
    web.add_user("alice")
    browser = web.browser()
    sign_in(browser, "alice")
    web.clock.advance(29 * 60)
    assert browser.get("/portal/").status_code == 200  # activity keeps it alive
    web.clock.advance(29 * 60)
    assert browser.get("/portal/").status_code == 200
    web.clock.advance(30 * 60)
    assert browser.get("/portal/").status_code == 303


def test_absolute_timeout(web: WebHarness) -> None:
    web.add_user("alice")
    browser = web.browser()
    sign_in(browser, "alice")
    for _ in range(12 * 60 // 25):  # active every 25 minutes for almost 12 hours
        web.clock.advance(25 * 60)
        assert browser.get("/portal/").status_code == 200
    web.clock.advance(25 * 60)
    response = browser.get("/portal/")
    assert response.status_code == 303
    assert response.headers["location"] == "/portal/sign-in"


def test_a_signed_in_user_visiting_sign_in_goes_home(web: WebHarness) -> None:
    web.add_user("alice")
    browser = web.browser()
    sign_in(browser, "alice")
    response = browser.get("/portal/sign-in")
    assert response.status_code == 303
    assert response.headers["location"] == "/portal/"
