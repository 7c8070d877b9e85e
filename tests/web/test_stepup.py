"""The portal's step-up page and the first-enrolment windows, walked as a user does: the page
a protected form sends you to, a push approved (with the number to pick), a code, and the
invitation that lets exactly one session enrol a first factor."""

from __future__ import annotations

import re
from urllib.parse import urlencode

import httpx

from backend.authenticator.client import AppClient
from backend.services.context import SignInContext
from tests.conftest import openmfa
from tests.support.api import ADMIN
from tests.support.web import PASSWORD, WebHarness, csrf_from, post_form, sign_in, step_up

NUMBER = re.compile(r'class="big-number">(\d+)<')


def with_active_phone(web: WebHarness, name: str = "alice") -> AppClient:
    phone = web.device(name)
    result = web.run(
        web.services.otp.verify(ADMIN, name, phone.code(web.clock.now), SignInContext())
    )
    assert result.accepted
    web.clock.advance(30)
    return phone


def signed_in(web: WebHarness, name: str = "alice") -> httpx.Client:
    browser = web.browser()
    assert sign_in(browser, name).status_code == 303
    return browser


def test_a_protected_page_goes_to_the_step_up_and_back_after_a_code(web: WebHarness) -> None:
    web.add_user("alice")
    phone = with_active_phone(web)
    browser = signed_in(web)
    sent = browser.get("/portal/oath")
    assert sent.headers["location"] == "/portal/step-up?" + urlencode({"next": "/portal/oath"})
    page = browser.get(sent.headers["location"])
    assert page.status_code == 200
    assert "Confirm it's you" in page.text
    assert "Send a push to my phone" in page.text
    wrong = step_up(browser, "000000", "/portal/oath")
    assert wrong.status_code == 401
    done = step_up(browser, phone.code(web.clock.now), "/portal/oath")
    assert done.status_code == 303
    assert done.headers["location"] == "/portal/oath"
    assert browser.get("/portal/oath").status_code == 200
    enrolled = post_form(browser, "/portal/oath", {"name": "Aegis"})
    assert enrolled.status_code == 200
    assert 'id="oath-secret"' in enrolled.text
    details = [r.detail for r in web.audit("web.sign_in", "alice")]
    assert "portal: step-up: code" in details
    assert "portal: step-up: code wrong-code" in details
    # Another session of alice (the password only) has not stepped up.
    other = signed_in(web)
    assert other.get("/portal/oath").status_code == 303


def test_a_push_approved_with_the_number_steps_up(web: WebHarness) -> None:
    web.add_user("alice", number_matching="true")
    phone = with_active_phone(web)
    browser = signed_in(web)
    page = browser.get("/portal/step-up?next=/portal/pin")
    sent = browser.post(
        "/portal/step-up/push",
        data={"csrf_token": csrf_from(page.text), "next": "/portal/pin"},
    )
    assert sent.status_code == 303
    waiting = browser.get(sent.headers["location"])
    assert 'data-poll-url="/portal/step-up/push/status"' in waiting.text
    shown = NUMBER.search(waiting.text)
    assert shown is not None
    [challenge] = phone.pending()
    assert "portal" in challenge["display"]
    assert browser.get("/portal/step-up/push/status").json() == {"state": "pending"}
    token = csrf_from(waiting.text)
    early = browser.post("/portal/step-up/push/done", data={"csrf_token": token})
    assert early.headers["location"].startswith("/portal/step-up?")
    assert phone.answer(challenge["id"], "approve", number=int(shown.group(1))) == "approved"
    done = browser.post(
        "/portal/step-up/push/done", data={"csrf_token": token, "next": "/portal/pin"}
    )
    assert done.headers["location"] == "/portal/pin"
    assert browser.get("/portal/pin").status_code == 200


def test_a_denied_push_does_not_step_up(web: WebHarness) -> None:
    web.add_user("alice")
    phone = with_active_phone(web)
    browser = signed_in(web)
    page = browser.get("/portal/step-up")
    browser.post("/portal/step-up/push", data={"csrf_token": csrf_from(page.text)})
    [challenge] = phone.pending()
    phone.answer(challenge["id"], "deny")
    done = browser.post("/portal/step-up/push/done", data={"csrf_token": csrf_from(page.text)})
    assert done.headers["location"].startswith("/portal/step-up?")
    assert "not confirmed (denied)" in browser.get(done.headers["location"]).text
    assert browser.get("/portal/activate").status_code == 303


def test_a_pending_app_cannot_step_up_with_its_code(web: WebHarness) -> None:
    web.add_user("alice")
    with_active_phone(web)
    fresh = web.device("alice")  # pending
    browser = signed_in(web)
    refused = step_up(browser, fresh.code(web.clock.now))
    assert refused.status_code == 401
    assert browser.get("/portal/activate").status_code == 303


def test_the_invitation_session_may_enrol_and_only_that_session(web: WebHarness) -> None:
    web.add_user("alice", password=None)
    offer = web.run(web.services.invitations.create(ADMIN, "alice", 24))
    path = offer.url.removeprefix(web.settings.resolved_public_url)
    invited = web.browser()
    assert post_form(invited, path, {"password": PASSWORD, "confirm": PASSWORD}).status_code == 303
    assert "may enrol until" in web.audit("web.sign_in", "alice")[0].detail
    # Another browser with the (new) password alone may not enrol.
    other = signed_in(web)
    assert "ask your help desk" in other.get("/portal/activate").text.lower()
    token = csrf_from(other.get("/portal/").text)
    assert other.post("/portal/activate", data={"csrf_token": token}).status_code == 403
    assert web.audit("factor.refuse", "alice")[0].result == "enrolment-not-allowed"
    # The invited session may, for first_enrolment_minutes.
    page = post_form(invited, "/portal/activate", {})
    assert page.status_code == 200
    assert "activation-code" in page.text
    web.clock.advance(61 * 60)
    late = invited.post("/portal/activate", data={"csrf_token": csrf_from(page.text)})
    assert late.status_code == 403


def test_without_a_factor_removing_a_pending_device_needs_no_step_up(web: WebHarness) -> None:
    web.add_user("alice")
    phone = web.device("alice")  # pending: alice has no live factor
    assert phone.device is not None
    browser = signed_in(web)
    removed = post_form(
        browser,
        f"/portal/devices/{phone.device.device_id}/remove",
        {},
    )
    assert removed.status_code == 303
    assert web.run(web.services.devices.get(phone.device.device_id)).state == "removed"


def test_the_cli_opens_an_enrolment_window(web: WebHarness) -> None:
    web.add_user("alice")
    result = openmfa(web.settings.home, "user", "allow-enrolment", "alice", "--hours", "2")
    assert "may enrol a first authenticator" in result.stdout
    assert web.audit("user.allow_enrolment", "alice")[0].actor.startswith("cli:")
    browser = signed_in(web)
    assert post_form(browser, "/portal/activate", {}).status_code == 200
    bad = openmfa(
        web.settings.home, "user", "allow-enrolment", "alice", "--hours", "0", check=False
    )
    assert bad.returncode != 0


def test_the_app_removes_itself_but_no_other_device(web: WebHarness) -> None:
    web.add_user("alice")
    first = with_active_phone(web)
    second = with_active_phone(web)
    assert first.device is not None
    assert second.device is not None
    first.deactivate()
    assert web.run(web.services.devices.get(first.device.device_id)).state == "removed"
    assert web.run(web.services.devices.get(second.device.device_id)).state == "active"
    web.clock.advance(30)
    browser = signed_in(web)
    done = step_up(browser, second.code(web.clock.now), "/portal/devices")
    assert done.status_code == 303


def test_the_console_allows_enrolment_for_a_user(web: WebHarness) -> None:
    admin = web.admin_browser("root")
    web.add_user("alice")
    page = admin.get("/admin/users/alice")
    assert "Allow enrolment" in page.text
    done = admin.post(
        "/admin/users/alice/allow-enrolment", data={"csrf_token": csrf_from(page.text)}
    )
    assert done.status_code == 303
    assert "may activate a first authenticator" in admin.get("/admin/users/alice").text
    assert web.audit("user.allow_enrolment", "alice")[0].actor == "admin:root"
    assert post_form(signed_in(web), "/portal/activate", {}).status_code == 200
