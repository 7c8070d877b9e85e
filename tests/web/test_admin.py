"""Admin console access: admins only, the second factor, and the bootstrap link."""

from __future__ import annotations

import re
from pathlib import Path

from backend.domain import totp
from backend.domain.stepup import ADMINISTRATOR
from backend.services.context import SignInContext
from tests.support.api import ADMIN
from tests.support.web import (
    PASSWORD,
    WebHarness,
    csrf_from,
    post_form,
    sign_in,
)


def test_admin_without_a_live_factor_gets_only_the_enrolment_page(web: WebHarness) -> None:
    web.add_user("root", admin=True)
    browser = web.browser()
    response = sign_in(browser, "root", area="admin")
    assert response.headers["location"] == "/admin/sign-in/enrol"
    page = browser.get("/admin/sign-in/enrol")
    assert page.status_code == 200
    assert "Activate your authenticator first" in page.text
    assert "openmfa user allow-enrolment root" in page.text
    assert browser.get("/admin/").headers["location"] == "/admin/sign-in/verify"
    assert web.audit("web.sign_in")[0].detail == "admin: password; no live factor: enrolment only"
    # Another administrator allows enrolment: the page says until when, and where.
    web.allow_enrolment("root", 2)
    allowed = browser.get("/admin/sign-in/enrol").text
    assert "You may activate one until" in allowed
    assert 'href="/portal/sign-in"' in allowed


def test_admin_cookie_is_scoped_to_admin(web: WebHarness) -> None:
    web.add_user("root", admin=True)
    response = sign_in(web.browser(), "root", area="admin")
    line = response.headers["set-cookie"]
    assert line.startswith("omfa_admin=")
    assert "Path=/admin" in line
    assert "HttpOnly" in line
    assert "SameSite=Lax" in line


def test_a_portal_session_cannot_open_the_admin_console(web: WebHarness) -> None:
    web.add_user("root", admin=True)  # even an administrator's portal session
    browser = web.browser()
    assert sign_in(browser, "root").status_code == 303
    assert browser.get("/portal/").status_code == 200
    response = browser.get("/admin/")
    assert response.status_code == 303
    assert response.headers["location"] == "/admin/sign-in"
    # The portal cookie's value, sent as the admin cookie, names no admin session.
    value = browser.cookies.get("omfa_portal")
    forged = web.browser(cookies={"omfa_admin": value or ""})
    assert forged.get("/admin/").status_code == 303


def test_a_non_admin_cannot_sign_in_to_the_admin_console(web: WebHarness) -> None:
    web.add_user("alice")
    response = sign_in(web.browser(), "alice", area="admin")
    assert response.status_code == 403
    assert "not an administrator" in response.text
    assert web.audit("web.sign_in")[0].detail == "admin: not-admin"


def test_an_admin_demoted_meanwhile_is_refused(web: WebHarness) -> None:
    browser = web.admin_browser("root")

    async def demote() -> None:
        from sqlalchemy import update

        from backend.store.tables import users_t

        async with web.services.db.write() as conn:
            await conn.execute(update(users_t).values(is_admin=False))

    web.run(demote())
    response = browser.get("/admin/")
    assert response.status_code == 403
    assert browser.get("/admin/").status_code == 303  # the session was ended


def test_admin_with_oath_token_needs_the_code(web: WebHarness) -> None:
    import pyotp

    web.add_user("root", admin=True)
    oath = web.run(web.services.activation.enrol_oath(ADMIN, ADMINISTRATOR, "root"))
    first = pyotp.TOTP(oath.seed).at(web.clock.now)
    result = web.run(web.services.otp.verify(ADMIN, "root", first, SignInContext()))
    assert result.accepted  # the token is active now

    browser = web.browser()
    response = sign_in(browser, "root", area="admin", next_path="/admin/users")
    assert response.status_code == 303
    assert response.headers["location"] == "/admin/sign-in/verify?next=%2Fadmin%2Fusers"
    assert browser.get("/admin/").headers["location"].startswith("/admin/sign-in/verify")
    verify = browser.get(response.headers["location"])
    assert verify.status_code == 200
    assert "Code from your authenticator app" in verify.text
    assert "Send a push" not in verify.text  # an OATH token cannot answer pushes
    token = csrf_from(verify.text)
    wrong = browser.post(
        "/admin/sign-in/code",
        data={"csrf_token": token, "code": "000000", "next": "/admin/users"},
    )
    assert wrong.status_code == 401
    web.clock.advance(30)
    code = pyotp.TOTP(oath.seed).at(web.clock.now)
    ok = browser.post(
        "/admin/sign-in/code", data={"csrf_token": token, "code": code, "next": "/admin/users"}
    )
    assert ok.status_code == 303
    assert ok.headers["location"] == "/admin/users"
    page = browser.get("/admin/")
    assert page.status_code == 200
    details = [r.detail for r in web.audit("web.sign_in")]
    assert details[:3] == [
        "admin: code",
        "admin: code: wrong-code",
        "admin: password; second factor next",
    ]


def test_admin_with_app_approves_a_push(web: WebHarness) -> None:
    web.add_user("root", admin=True)
    phone = web.device("root")
    web.run(web.services.otp.verify(ADMIN, "root", phone.code(web.clock.now), SignInContext()))
    browser = web.browser()
    response = sign_in(browser, "root", area="admin")
    assert response.headers["location"] == "/admin/sign-in/verify"
    verify = browser.get("/admin/sign-in/verify")
    assert "Send a push to my phone" in verify.text
    sent = browser.post("/admin/sign-in/push", data={"csrf_token": csrf_from(verify.text)})
    assert sent.status_code == 303
    waiting = browser.get("/admin/sign-in/verify")
    assert 'data-poll-url="/admin/sign-in/push/status"' in waiting.text
    assert browser.get("/admin/sign-in/push/status").json() == {"state": "pending"}
    # Continuing before the phone answered goes back to waiting.
    early = browser.post("/admin/sign-in/push/done", data={"csrf_token": csrf_from(waiting.text)})
    assert early.headers["location"] == "/admin/sign-in/verify"
    [challenge] = phone.pending()
    assert "admin console" in challenge["display"]
    assert phone.answer(challenge["id"], "approve") == "approved"
    assert browser.get("/admin/sign-in/push/status").json() == {"state": "approved"}
    done = browser.post("/admin/sign-in/push/done", data={"csrf_token": csrf_from(waiting.text)})
    assert done.status_code == 303
    assert done.headers["location"] == "/admin/"
    assert browser.get("/admin/").status_code == 200


def test_a_denied_push_does_not_sign_in(web: WebHarness) -> None:
    web.add_user("root", admin=True)
    phone = web.device("root")
    web.run(web.services.otp.verify(ADMIN, "root", phone.code(web.clock.now), SignInContext()))
    browser = web.browser()
    sign_in(browser, "root", area="admin")
    verify = browser.get("/admin/sign-in/verify")
    browser.post("/admin/sign-in/push", data={"csrf_token": csrf_from(verify.text)})
    [challenge] = phone.pending()
    phone.answer(challenge["id"], "deny")
    done = browser.post("/admin/sign-in/push/done", data={"csrf_token": csrf_from(verify.text)})
    assert done.headers["location"] == "/admin/sign-in/verify"
    again = browser.get("/admin/sign-in/verify")
    assert "not approved (denied)" in again.text
    assert browser.get("/admin/").status_code == 303


# -- bootstrap ------------------------------------------------------------------------------------


def test_bootstrap_link_creates_the_first_admin_once(web: WebHarness) -> None:
    link = web.run(web.services.invitations.bootstrap_link(ADMIN))
    assert link is not None
    path = link.removeprefix(web.settings.resolved_public_url)
    assert path.startswith("/admin/bootstrap/")
    browser = web.browser()
    mismatch = post_form(
        browser, path, {"username": "root", "password": PASSWORD, "confirm": PASSWORD + "x"}
    )
    assert mismatch.status_code == 400
    assert "not the same" in mismatch.text
    created = post_form(
        browser, path, {"username": "root", "password": PASSWORD, "confirm": PASSWORD}
    )
    assert created.status_code == 303
    assert created.headers["location"] == "/admin/sign-in/enrol"
    enrol = browser.get("/admin/sign-in/enrol")
    assert "Administrator root created" in enrol.text
    assert "You may activate one until" in enrol.text  # the bootstrap opened the window
    assert browser.get("/admin/").status_code == 303  # no console page with a password only
    assert web.user("root").is_admin
    assert web.audit("user.allow_enrolment", "root")[0].actor == "web:admin"
    # The window lets the portal enrol a first factor; then the console opens with it.
    portal = web.browser()
    assert sign_in(portal, "root").status_code == 303
    page = post_form(portal, "/portal/oath", {"name": "Aegis"})
    assert page.status_code == 200, page.text
    found = re.search(r'id="oath-secret">([A-Z2-7 ]+)<', page.text)
    device = re.search(r'action="/portal/oath/(dev_[^/"]+)/confirm"', page.text)
    assert found is not None
    assert device is not None
    seed = found.group(1).replace(" ", "")
    confirmed = portal.post(
        f"/portal/oath/{device.group(1)}/confirm",
        data={"csrf_token": csrf_from(page.text), "code": totp.current_code(seed, web.clock.now)},
    )
    assert confirmed.status_code == 303
    web.clock.advance(30)
    admin = web.browser()
    assert sign_in(admin, "root", area="admin").headers["location"] == "/admin/sign-in/verify"
    verify = admin.get("/admin/sign-in/verify")
    done = admin.post(
        "/admin/sign-in/code",
        data={"csrf_token": csrf_from(verify.text), "code": totp.current_code(seed, web.clock.now)},
    )
    assert done.headers["location"] == "/admin/"
    assert admin.get("/admin/").status_code == 200
    # The link is dead now, and no new one is made while an administrator exists.
    reused = web.browser().get(path)
    assert reused.status_code == 404
    assert reused.headers["content-type"].startswith("text/html")
    assert [r.result for r in web.refusals()][:1] == ["bootstrap-invalid"]
    assert web.run(web.services.invitations.bootstrap_link(ADMIN)) is None


def test_a_new_bootstrap_link_replaces_the_old_one(web: WebHarness) -> None:
    first = web.run(web.services.invitations.bootstrap_link(ADMIN))
    second = web.run(web.services.invitations.bootstrap_link(ADMIN))
    assert first
    assert second
    assert first != second
    base = web.settings.resolved_public_url
    assert web.browser().get(first.removeprefix(base)).status_code == 404
    assert web.browser().get(second.removeprefix(base)).status_code == 200
    assert web.browser().get("/admin/bootstrap/guess").status_code == 404


def test_openmfa_run_prints_the_bootstrap_link_until_an_admin_exists(
    tmp_path: Path,
) -> None:
    import re

    import httpx

    from tests.conftest import openmfa
    from tests.support.process import ServerProcess, free_port

    home = tmp_path / "home"
    home.mkdir()
    openmfa(home, "db", "upgrade")
    port = free_port()
    env = {"OPENMFA_PUBLIC_URL": f"http://127.0.0.1:{port}"}
    with ServerProcess(home, port, env) as server:
        printed = server.stdout_path.read_text()
        match = re.search(r"(http://127\.0\.0\.1:\d+/admin/bootstrap/\S+)", printed)
        assert match is not None, printed
        link = match.group(1)
        assert "/admin/bootstrap/" not in server.log  # a credential: printed, never logged
        assert "no administrator exists yet" in server.log
        assert httpx.get(link, timeout=10).status_code == 200
    # A restart replaces the link; once an administrator exists there is none.
    with ServerProcess(home, port, env) as server:
        assert httpx.get(link, timeout=10).status_code == 404
    openmfa(home, "user", "add", "root", "--admin")
    with ServerProcess(home, port, env) as server:
        assert "/admin/bootstrap/" not in server.stdout_path.read_text()
        assert "/admin/bootstrap/" not in server.log
