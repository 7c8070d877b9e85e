"""Admin console, users: search and paging, add, invite (link and e-mail), disable / enable,
block / unblock, reset devices, one device, policy overrides; per-user page; access control."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html import unescape

import httpx
import pytest

from backend.config import Settings
from backend.domain.challenge import Answer
from backend.domain.stepup import ADMINISTRATOR, SessionProof
from backend.services.context import SignInContext
from tests.support.api import ADMIN
from tests.support.clock import FakeClock
from tests.support.smtp import SmtpServer
from tests.support.web import (
    WebHarness,
    csrf_from,
    post_form,
    sign_in,
)


def act(browser: httpx.Client, user: str, action: str, **data: str) -> httpx.Response:
    return post_form(browser, f"/admin/users/{user}/{action}", data, page=f"/admin/users/{user}")


def portal_session(web: WebHarness, name: str) -> httpx.Client:
    browser = web.browser()
    assert sign_in(browser, name).status_code == 303
    assert browser.get("/portal/").status_code == 200
    return browser


def listed(html: str) -> list[str]:
    return re.findall(r'<td data-label="User"><a href="/admin/users/[^"]+">([^<]+)</a>', html)


# -- list, search, add ----------------------------------------------------------------------------


def test_search_by_name_display_name_and_email_and_page_through(web: WebHarness) -> None:
    browser = web.admin_browser("root")
    for i in range(55):
        web.run(web.services.users.add(ADMIN, f"user{i:02d}", f"u{i:02d}@corp.test"))
    web.run(web.services.users.add(ADMIN, "carol", "carol@example.org", "Carol 100%"))

    first = browser.get("/admin/users")
    assert first.status_code == 200
    names = listed(first.text)
    assert len(names) == 50
    assert names[0] == "carol"
    assert names[1] == "root"
    assert names[2] == "user00"
    more = re.search(r'href="(/admin/users\?[^"]+)" rel="next"', first.text)
    assert more is not None
    second = browser.get(unescape(more.group(1)))
    assert listed(second.text) == [f"user{i:02d}" for i in range(48, 55)]
    assert 'rel="next"' not in second.text
    assert "First page" in second.text

    assert listed(browser.get("/admin/users", params={"q": "CAROL 1"}).text) == ["carol"]
    assert listed(browser.get("/admin/users", params={"q": "u07@corp"}).text) == ["user07"]
    assert listed(browser.get("/admin/users", params={"q": "100%"}).text) == ["carol"]
    # % and _ are matched literally, not as wildcards.
    assert listed(browser.get("/admin/users", params={"q": "%"}).text) == ["carol"]
    assert listed(browser.get("/admin/users", params={"q": "_"}).text) == []
    nothing = browser.get("/admin/users", params={"q": "zebra"})
    assert "No user matches “zebra”" in nothing.text


def test_add_a_user(web: WebHarness) -> None:
    browser = web.admin_browser("root")
    response = post_form(
        browser,
        "/admin/users",
        {"name": "dave", "display_name": "Dave D", "email": "dave@example.com", "admin": ""},
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/admin/users/dave"
    page = browser.get("/admin/users/dave")
    assert "User dave added" in page.text
    assert "Dave D" in page.text
    assert "not set (invite them)" in page.text
    user = web.user("dave")
    assert (user.email, user.is_admin, user.has_password) == ("dave@example.com", False, False)
    row = web.audit("user.add", "dave")[0]
    assert row.actor == "admin:root"
    assert row.result == "ok"

    taken = post_form(browser, "/admin/users", {"name": "DAVE", "email": ""})
    assert taken.status_code == 400
    assert "already exists" in taken.text
    assert 'value="DAVE"' in taken.text  # what was typed is kept
    bad = post_form(browser, "/admin/users", {"name": "no spaces", "email": ""})
    assert bad.status_code == 400
    assert "User names are" in bad.text
    bad_mail = post_form(browser, "/admin/users", {"name": "erin", "email": "nope"})
    assert bad_mail.status_code == 400
    assert "e-mail address is not valid" in bad_mail.text


def test_forms_refuse_a_missing_or_wrong_csrf_token(web: WebHarness) -> None:
    browser = web.admin_browser("root")
    web.add_user("alice")
    for path, data in (
        ("/admin/users", {"name": "mallory"}),
        ("/admin/users/alice/disable", {}),
        ("/admin/users/alice/reset-devices", {}),
        ("/admin/users/alice/invite", {}),
        ("/admin/users/alice/policies", {"policy_require_pin": "true"}),
    ):
        assert browser.post(path, data=data).status_code == 403
        assert browser.post(path, data={**data, "csrf_token": "x" * 43}).status_code == 403
    assert not web.user("alice").disabled
    assert web.run(web.services.users.search("mallory")) == []
    assert web.audit("invitation.create") == []
    assert len([r for r in web.refusals() if r.result == "csrf-failed"]) == 10


def test_portal_sessions_and_strangers_get_no_user_pages(web: WebHarness) -> None:
    web.add_user("alice")
    portal = portal_session(web, "alice")
    for path in ("/admin/users", "/admin/users/alice"):
        response = portal.get(path)
        assert response.status_code == 303
        assert response.headers["location"].startswith("/admin/sign-in")
        forged = web.browser(cookies={"omfa_admin": portal.cookies.get("omfa_portal") or ""})
        assert forged.get(path).status_code == 303
    # A POST without an admin session changes nothing (no session: no CSRF token either).
    assert web.browser().post("/admin/users/alice/disable").status_code == 403
    assert not web.user("alice").disabled


def test_unknown_user_is_404(web: WebHarness) -> None:
    browser = web.admin_browser("root")
    response = browser.get("/admin/users/nobody")
    assert response.status_code == 404
    assert "text/html" in response.headers["content-type"]


# -- the user's page -----------------------------------------------------------------------------


def test_user_page_shows_devices_tokens_sign_ins_and_audit(web: WebHarness) -> None:
    browser = web.admin_browser("root")
    web.add_user("alice")
    web.device("alice")
    # A pending OATH token: enrolled in alice's portal session (an administrator's is active).
    web.allow_enrolment("alice")
    web.run(web.services.activation.enrol_oath(ADMIN, SessionProof(web.user("alice").id), "alice"))
    view = web.run(
        web.services.challenges.start(
            ADMIN, "alice", "push", SignInContext("vpn-gw", "198.51.100.9", "nas-1")
        )
    )
    device = web.run(web.services.devices.list_for_user("alice"))[0]
    web.run(web.services.challenges.answer(ADMIN, device, view.id, Answer.APPROVE))
    page = browser.get("/admin/users/alice")
    assert page.status_code == 200
    html = page.text
    devices = html.split('id="devices-heading"')[1].split('id="oath-heading"')[0]
    assert "alice&#39;s phone" in devices
    assert "reference" in devices
    oath = html.split('id="oath-heading"')[1].split('id="signins-heading"')[0]
    assert "(until confirmed in the portal)" in oath
    sign_ins = html.split('id="signins-heading"')[1].split('id="audit-heading"')[0]
    assert "vpn-gw" in sign_ins
    assert "198.51.100.9" in sign_ins
    assert "nas-1" in sign_ins
    assert "approved" in sign_ins
    audit = html.split('id="audit-heading"')[1].split('id="policies-heading"')[0]
    assert "challenge.answer" in audit
    assert "auth.start" in audit
    assert 'href="/admin/audit?user=alice"' in audit
    assert "E-mail is not configured" in html  # no smtp_host in these settings


def test_remove_one_device_of_the_user_only(web: WebHarness) -> None:
    browser = web.admin_browser("root")
    web.add_user("alice")
    web.add_user("bob")
    web.device("alice")
    web.device("bob")
    bobs = web.run(web.services.devices.list_for_user("bob"))[0]
    alices = web.run(web.services.devices.list_for_user("alice"))[0]
    wrong = post_form(
        browser, f"/admin/users/alice/devices/{bobs.id}/remove", {}, page="/admin/users/alice"
    )
    assert wrong.status_code == 404  # bob's device is not alice's
    assert web.run(web.services.devices.list_for_user("bob"))[0].state != "removed"
    ok = post_form(
        browser, f"/admin/users/alice/devices/{alices.id}/remove", {}, page="/admin/users/alice"
    )
    assert ok.status_code == 303
    assert web.run(web.services.devices.list_for_user("alice")) == []
    assert web.audit("device.remove", "alice")[0].actor == "admin:root"


# -- invitations ---------------------------------------------------------------------------------


def test_invite_shows_the_link_once_and_it_works(web: WebHarness) -> None:
    browser = web.admin_browser("root")
    web.add_user("alice", password=None)
    response = act(browser, "alice", "invite", hours="24", send="show")
    assert response.status_code == 200
    match = re.search(r'id="offer-url" type="text" readonly value="([^"]+)"', response.text)
    assert match is not None
    url = match.group(1)
    assert "/portal/invite/" in url
    assert "shown <strong>only now</strong>" in response.text
    token = url.rsplit("/", 1)[1]
    assert web.browser().get(f"/portal/invite/{token}").status_code == 200
    assert token not in browser.get("/admin/users/alice").text  # never shown again
    row = web.audit("invitation.create", "alice")[0]
    assert (row.actor, row.detail) == ("admin:root", "hours=24")
    # A new invitation replaces the old link.
    act(browser, "alice", "invite", send="show")
    assert web.browser().get(f"/portal/invite/{token}").status_code != 200

    assert act(browser, "alice", "invite", hours="0").status_code == 400
    assert act(browser, "alice", "invite", hours="abc").status_code == 400
    refused = act(browser, "alice", "invite", send="mail")
    assert refused.status_code == 400
    assert "not configured" in refused.text


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with SmtpServer() as server:
        yield server


def test_invite_by_email_when_smtp_is_configured(
    settings: Settings, clock: FakeClock, smtp: SmtpServer
) -> None:
    mail = settings.model_copy(
        update={
            "smtp_host": "127.0.0.1",
            "smtp_port": smtp.port,
            "smtp_security": "none",
            "mail_from": "OpenMFA <mfa@example.com>",
            # only the invitation here: the admin's own account notices are not counted
            "notify_users": False,
        }
    )
    with WebHarness(mail, clock) as web:
        browser = web.admin_browser("root")
        web.add_user("alice", password=None, display_name="Alice A")
        web.add_user("nomail", password=None)
        web.run(web.services.users.add(ADMIN, "bare"))
        page = browser.get("/admin/users/alice")
        assert "E-mail it to alice@example.com" in page.text
        assert "No e-mail address" in browser.get("/admin/users/bare").text
        response = act(browser, "alice", "invite", send="mail")
        assert response.status_code == 303
        assert len(smtp.messages) == 1  # sent before the answer came back
        received = smtp.messages[0]
        assert received.rcpt_tos == ["alice@example.com"]
        body = received.message.get_content()
        link = re.search(r"(http://\S+/portal/invite/\S+)", body)
        assert link is not None
        assert "Hello Alice A" in body
        assert web.browser().get(link.group(1).split(":8080", 1)[1]).status_code == 200
        assert "Invitation e-mailed to alice@example.com" in browser.get("/admin/users/alice").text
        sent = web.audit("invitation.mail", "alice")[0]
        assert (sent.result, sent.actor) == ("sent", "admin:root")
        assert link.group(1) not in sent.detail

        smtp.refuse_next(1, "554 5.7.1 no thanks")
        failed = act(browser, "alice", "invite", send="mail")
        assert failed.status_code == 502
        assert "could not be sent" in failed.text
        assert "554" in failed.text
        assert 'id="offer-url"' in failed.text  # the link is not lost
        assert web.audit("invitation.mail", "alice")[0].result == "failed"
        assert act(browser, "bare", "invite", send="mail").status_code == 400


# -- state changes ---------------------------------------------------------------------------------


def test_disable_ends_sessions_and_pending_sign_ins_then_enable(web: WebHarness) -> None:
    browser = web.admin_browser("root")
    web.add_user("alice")
    web.device("alice")
    portal = portal_session(web, "alice")
    pending = web.start("alice")
    response = act(browser, "alice", "disable")
    assert response.status_code == 303
    assert web.user("alice").disabled
    assert web.status(pending["id"])["state"] == "cancelled"
    assert portal.get("/portal/").status_code == 303  # signed out
    page = browser.get("/admin/users/alice").text
    assert "alice is now disabled" in page
    assert "1 pending sign-in(s) cancelled" in page
    assert "1 web session(s) ended" in page
    assert web.audit("user.disable", "alice")[0].actor == "admin:root"
    assert web.audit("web.sessions_end", "alice")[0].actor == "admin:root"
    assert "Enable" in page
    assert act(browser, "alice", "enable").status_code == 303
    assert not web.user("alice").disabled
    assert web.audit("user.enable", "alice")[0].actor == "admin:root"


def test_block_with_reason_and_unblock_reviews_open_reports(web: WebHarness) -> None:
    browser = web.admin_browser("root")
    web.add_user("alice")
    web.device("alice")
    portal = portal_session(web, "alice")
    assert act(browser, "alice", "block", reason="phone stolen").status_code == 303
    user = web.user("alice")
    assert user.blocked
    assert user.blocked_reason == "phone stolen"
    assert portal.get("/portal/").status_code == 303
    assert web.audit("user.block", "alice")[0].detail == "phone stolen"

    # A fraud report while blocked stays open until the unblock.
    web.run(web.services.users.set_blocked(ADMIN, "alice", False))
    view = web.run(web.services.challenges.start(ADMIN, "alice", "push", SignInContext()))
    device = web.run(web.services.devices.list_for_user("alice"))[0]
    web.run(web.services.challenges.answer(ADMIN, device, view.id, Answer.FRAUD))
    assert web.user("alice").blocked
    assert act(browser, "alice", "unblock").status_code == 303
    assert not web.user("alice").blocked
    page = browser.get("/admin/users/alice").text
    assert re.search(r"Open fraud report\(s\) \d+ marked reviewed", page)
    assert [r.state for r in web.fraud_reports()] == ["reviewed"]
    assert web.audit("fraud.review", "alice")[0].actor == "admin:root"


def test_reset_devices_removes_all_and_ends_sessions(web: WebHarness) -> None:
    browser = web.admin_browser("root")
    web.add_user("alice")
    web.device("alice")
    web.run(web.services.activation.enrol_oath(ADMIN, ADMINISTRATOR, "alice"))
    portal = portal_session(web, "alice")
    page = browser.get("/admin/users/alice").text
    assert 'data-confirm="Remove all 2 device(s) of alice?' in page
    response = act(browser, "alice", "reset-devices")
    assert response.status_code == 303
    assert web.run(web.services.devices.list_for_user("alice")) == []
    assert portal.get("/portal/").status_code == 303
    row = web.audit("user.reset_devices", "alice")[0]
    assert row.actor == "admin:root"
    assert row.detail.startswith("removed 2: ")
    assert "2 device(s) of alice removed" in browser.get("/admin/users/alice").text


def test_an_admin_cannot_lock_themselves_out(web: WebHarness) -> None:
    browser = web.admin_browser("root")
    for action in ("disable", "block", "reset-devices"):
        assert act(browser, "root", action).status_code == 400
    assert web.user("root").state == "active"
    assert act(browser, "root", "frobnicate").status_code == 400


# -- policy overrides ---------------------------------------------------------------------------


def test_policy_overrides_set_validate_and_clear(web: WebHarness) -> None:
    browser = web.admin_browser("root")
    web.add_user("alice")
    web.set_policy("pin_min_length", 5)  # global
    page = browser.get("/admin/users/alice").text
    assert "No overrides: the global policy applies." in page
    assert 'placeholder="global (5)"' in page

    def save(**values: str) -> httpx.Response:
        return post_form(
            browser,
            "/admin/users/alice/policies",
            {f"policy_{k}": v for k, v in values.items()},
            page="/admin/users/alice",
        )

    ok = save(pin_min_length="6", require_pin="true")
    assert ok.status_code == 303
    assert ok.headers["location"] == "/admin/users/alice#policies"
    lines = {p.key: p for p in web.run(web.services.policies.show("alice"))}
    assert (lines["pin_min_length"].value, lines["pin_min_length"].source) == ("6", "user")
    assert (lines["require_pin"].value, lines["require_pin"].source) == ("true", "user")
    global_lines = {p.key: p for p in web.run(web.services.policies.show())}
    assert global_lines["require_pin"].value == "false"
    rows = web.audit("policy.set", "alice")
    assert {r.actor for r in rows} == {"admin:root"}
    assert len(rows) == 2
    page = browser.get("/admin/users/alice").text
    assert "Overridden for alice: " in page
    assert "pin_min_length" in page

    bad = save(pin_min_length="99", require_pin="true", otp_max_failures="lots")
    assert bad.status_code == 400
    assert 'aria-invalid="true"' in bad.text
    assert "expected a whole number from 4 to 12" in bad.text
    assert "expected a whole number from 1 to 100" in bad.text
    assert 'value="99"' in bad.text  # kept as typed
    lines = {p.key: p for p in web.run(web.services.policies.show("alice"))}
    assert lines["pin_min_length"].value == "6"  # nothing stored

    cleared = save(pin_min_length="", require_pin="true")
    assert cleared.status_code == 303
    lines = {p.key: p for p in web.run(web.services.policies.show("alice"))}
    assert (lines["pin_min_length"].value, lines["pin_min_length"].source) == ("5", "global")
    assert web.audit("policy.unset", "alice")[0].actor == "admin:root"
    assert "Policy of alice changed: pin_min_length." in browser.get("/admin/users/alice").text
    assert csrf_from(page)
