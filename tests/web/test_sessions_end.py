"""Finding 6: a change to the account ends the user's web sessions, from every path.

A password reset (CLI or any service caller), an accepted invitation, a device removed
(portal, console, CLI, the app's own DELETE) or marked lost, a block (by an administrator or
by a fraud report) and a disable each end every portal and admin session of the user; a
change the user makes in the portal keeps the session that made it. Each test opens sessions
in separate cookie jars over real HTTP and checks that the next request of the others is sent
to the sign-in page.
"""

from __future__ import annotations

import httpx

from backend.authenticator.client import AppClient
from backend.domain.stepup import ADMINISTRATOR
from tests.support.api import ADMIN
from tests.support.web import WebHarness, post_form, sign_in, step_up


def portal(web: WebHarness, name: str) -> httpx.Client:
    """A browser signed in to the portal as ``name``."""
    browser = web.browser()
    assert sign_in(browser, name).status_code == 303
    assert browser.get("/portal/").status_code == 200
    return browser


def signed_out(browser: httpx.Client, area: str = "portal") -> bool:
    """True when the browser's next page of ``area`` sends it to the sign-in page."""
    response = browser.get(f"/{area}/")
    return response.status_code == 303 and "/sign-in" in response.headers["location"]


def active_phone(web: WebHarness, name: str) -> AppClient:
    """An app device of ``name`` made active by one approved push."""
    phone = web.device(name)
    started = web.start(name)
    assert phone.answer(started["id"], "approve") == "approved"
    return phone


def device_id(phone: AppClient) -> str:
    assert phone.device is not None
    return phone.device.device_id


def ended_rows(web: WebHarness, name: str) -> list[str]:
    return [row.detail for row in web.audit("web.sessions_end", name)]


def test_a_password_reset_ends_every_portal_and_admin_session(web: WebHarness) -> None:
    console = web.admin_browser("alice")  # password and a code: the console needs both
    first, second = portal(web, "alice"), portal(web, "alice")
    assert console.get("/admin/").status_code == 200

    # What `openmfa user set-password alice` does.
    web.run(web.services.users.set_password(ADMIN, "alice", "a brand new password"))

    assert signed_out(first)
    assert signed_out(second)
    assert signed_out(console, "admin")
    assert ended_rows(web, "alice") == ["3 (password reset)"]
    assert web.audit("web.sessions_end", "alice")[0].actor == ADMIN.name


def test_an_accepted_invitation_ends_the_sessions_that_were_open(web: WebHarness) -> None:
    web.add_user("alice")
    old = portal(web, "alice")
    offer = web.run(web.services.invitations.create(ADMIN, "alice"))
    path = offer.url.split(":8080", 1)[1]
    invited = web.browser()
    response = post_form(
        invited, path, {"password": "another good password", "confirm": "another good password"}
    )
    assert response.status_code == 303
    assert signed_out(old)
    assert invited.get("/portal/").status_code == 200  # the new sign-in stays
    assert ended_rows(web, "alice") == ["1 (invitation accepted)"]


def test_removing_a_device_in_the_portal_keeps_only_the_session_that_did_it(
    web: WebHarness,
) -> None:
    web.add_user("alice")
    phone = active_phone(web, "alice")
    acting, other = portal(web, "alice"), portal(web, "alice")
    path = f"/portal/devices/{device_id(phone)}/remove"
    assert step_up(acting, phone.code(web.clock.now), path).status_code == 303
    assert post_form(acting, path, {}).status_code == 303
    assert signed_out(other)
    assert acting.get("/portal/devices").status_code == 200
    assert ended_rows(web, "alice") == ["1 (device removed)"]


def test_marking_a_device_lost_in_the_portal_ends_the_other_sessions(web: WebHarness) -> None:
    web.add_user("alice")
    phone = active_phone(web, "alice")
    acting, other = portal(web, "alice"), portal(web, "alice")
    path = f"/portal/devices/{device_id(phone)}/lost"
    assert step_up(acting, phone.code(web.clock.now), path).status_code == 303
    assert post_form(acting, path, {}).status_code == 303
    assert signed_out(other)
    assert acting.get("/portal/devices").status_code == 200
    assert ended_rows(web, "alice") == ["1 (device lost)"]


def test_the_console_removing_a_device_ends_the_users_sessions(web: WebHarness) -> None:
    console = web.admin_browser("root")
    web.add_user("alice")
    phone = active_phone(web, "alice")
    session = portal(web, "alice")
    path = f"/admin/users/alice/devices/{device_id(phone)}/remove"
    assert post_form(console, path, {}, page="/admin/users/alice").status_code == 303
    assert signed_out(session)
    assert console.get("/admin/").status_code == 200  # the administrator's own is untouched
    assert web.audit("web.sessions_end", "alice")[0].actor == "admin:root"


def test_the_cli_removing_a_device_ends_the_users_sessions(web: WebHarness) -> None:
    web.add_user("alice")
    phone = active_phone(web, "alice")
    session = portal(web, "alice")
    # What `openmfa user remove-device alice <id>` does.
    web.run(web.services.devices.remove(ADMIN, ADMINISTRATOR, device_id(phone), user_name="alice"))
    assert signed_out(session)


def test_the_app_deleting_itself_ends_the_users_sessions(web: WebHarness) -> None:
    web.add_user("alice")
    phone = active_phone(web, "alice")
    session = portal(web, "alice")
    phone.deactivate()
    assert signed_out(session)
    row = web.audit("web.sessions_end", "alice")[0]
    assert row.actor == f"device:{device_id(phone)}"


def test_a_fraud_report_that_blocks_the_user_ends_their_sessions(web: WebHarness) -> None:
    web.add_user("alice")  # fraud_blocks_user is on by default
    phone = active_phone(web, "alice")
    session = portal(web, "alice")
    started = web.start("alice")
    assert phone.answer(started["id"], "fraud") == "fraud"
    assert web.user("alice").blocked
    assert signed_out(session)
    assert ended_rows(web, "alice") == ["1 (fraud reported)"]


def test_block_and_disable_end_sessions_of_both_kinds(web: WebHarness) -> None:
    for action in ("block", "disable"):
        name = f"admin-{action}"
        web.add_user(name, admin=True)
        session = portal(web, name)
        console = web.browser()
        assert sign_in(console, name, area="admin").status_code == 303
        web.run(getattr(web.services.access, action)(ADMIN, name))
        assert signed_out(session)
        response = console.get("/admin/")
        assert response.status_code in (303, 403)
        assert ended_rows(web, name) == [f"2 ({action})"]


def test_a_pin_change_in_the_portal_does_not_sign_anyone_out(web: WebHarness) -> None:
    # A PIN is not a sign-in secret of the web sessions: changing it mails the user (see
    # test_account_notices) but leaves their sessions alone.
    web.add_user("alice")
    web.allow_enrolment("alice")  # no factor yet: a PIN is set inside an administrator's window
    acting, other = portal(web, "alice"), portal(web, "alice")
    response = post_form(acting, "/portal/pin", {"pin": "583719", "confirm": "583719"})
    assert response.status_code == 303
    assert other.get("/portal/").status_code == 200
    assert ended_rows(web, "alice") == []


def test_this_wasnt_me_in_the_portal_blocks_and_keeps_only_the_reporting_session(
    web: WebHarness,
) -> None:
    web.add_user("alice")
    phone = active_phone(web, "alice")
    started = web.start("alice")
    assert phone.answer(started["id"], "approve") == "approved"
    reporting, other = portal(web, "alice"), portal(web, "alice")
    path = f"/portal/sign-ins/{started['id']}/report"
    assert post_form(reporting, path, {}).status_code == 303
    assert web.user("alice").blocked
    assert signed_out(other)
    assert reporting.get("/portal/sign-ins").status_code == 200  # it sees what it did
    assert ended_rows(web, "alice") == ["1 (fraud reported)"]
