"""Portal and console sign-in of users from a directory: their password is checked by the
directory (a fake speaking the reader interface, installed in the server's container),
never against a local hash; the directory's refusals read as the page says; an invitation
asks for the directory password instead of a new one; an unreachable directory costs no
attempt. The same in Chromium against a real directory: tests/browser/."""

from __future__ import annotations

import pytest

from backend.errors import BadRequest
from tests.support.api import ADMIN
from tests.support.directory_binds import (
    FakeDirectories,
    FakeReader,
    add_directory,
    add_directory_user,
)
from tests.support.web import PASSWORD, WebHarness, csrf_from, post_form, sign_in

RIGHT = "Directory-Passw0rd!"
WRONG = "The user name or password is wrong."


@pytest.fixture
def corp(web: WebHarness) -> FakeReader:
    directory_id = web.run(add_directory(web.services, "corp"))
    reader = FakeReader(
        {
            "alice": (RIGHT, "ok"),
            "root2": (RIGHT, "ok"),
            "grace": (RIGHT, "password-expired"),
            "heidi": (RIGHT, "must-change"),
            "dave": (RIGHT, "disabled"),
            "newbie": (RIGHT, "ok"),
        }
    )
    for name in ("alice", "grace", "heidi", "dave", "newbie"):
        # alice keeps a stale local hash: it must never let her in.
        stale = PASSWORD if name == "alice" else None
        web.run(add_directory_user(web.services, name, directory_id, local_password=stale))
    web.server_services.users.directories = FakeDirectories({directory_id: reader})
    return reader


def test_directory_user_signs_in_with_the_directory_password(
    web: WebHarness, corp: FakeReader
) -> None:
    assert sign_in(web.browser(), "alice", PASSWORD).status_code == 401  # the stale local one
    browser = web.browser()
    response = sign_in(browser, "Alice", RIGHT)
    assert response.status_code == 303
    assert response.headers["location"] == "/portal/"
    assert "Hello, alice" in browser.get("/portal/").text
    assert [c[:2] for c in corp.calls] == [("alice", PASSWORD), ("alice", RIGHT)]
    rows = web.audit("password.verify", "alice")
    assert [(r.result, r.detail) for r in rows] == [
        ("accept", "directory corp: ok"),
        ("reject", "directory corp: wrong-password (data 52e) failures=1"),
    ]
    # Local users are unchanged.
    web.add_user("lena")
    assert sign_in(web.browser(), "lena").status_code == 303


@pytest.mark.parametrize(
    ("name", "status", "shown", "reason"),
    [
        (
            "grace",
            403,
            "Your password has expired. Change it in your directory",
            "password-expired",
        ),
        ("heidi", 403, "You must change your password first", "must-change"),
        ("dave", 403, "This account cannot sign in right now", "disabled"),
        ("ivan", 401, WRONG, "no-such-user"),  # tied here, gone from the directory
    ],
)
def test_directory_refusals_as_the_page_shows_them(
    web: WebHarness, corp: FakeReader, name: str, status: int, shown: str, reason: str
) -> None:
    if name == "ivan":
        web.run(add_directory_user(web.services, "ivan", 1))
    response = sign_in(web.browser(), name, RIGHT)
    assert response.status_code == status
    assert shown in response.text
    assert web.audit("web.sign_in", name)[0].detail == f"portal: {reason}"


def test_wrong_directory_password_reads_like_a_wrong_local_one(
    web: WebHarness, corp: FakeReader
) -> None:
    response = sign_in(web.browser(), "grace", "not her password")
    assert response.status_code == 401
    assert WRONG in response.text
    assert "expired" not in response.text


def test_unreachable_directory_costs_no_attempt(web: WebHarness, corp: FakeReader) -> None:
    corp.down = True
    web.set_policy("otp_max_failures", 3)
    for _ in range(5):
        response = sign_in(web.browser(), "alice", RIGHT)
        assert response.status_code == 503
        assert "cannot reach the directory" in response.text
    corp.down = False
    assert sign_in(web.browser(), "alice", RIGHT).status_code == 303


def test_directory_guesses_lock_like_local_ones(web: WebHarness, corp: FakeReader) -> None:
    web.set_policy("otp_max_failures", 3)
    for n in range(3):
        assert sign_in(web.browser(), "alice", f"guess {n}").status_code == 401
    locked = sign_in(web.browser(), "alice", RIGHT)
    assert locked.status_code == 429
    assert "locked for a while" in locked.text
    assert RIGHT not in [c[1] for c in corp.calls]  # the lock is ours: no bind was tried


def test_console_takes_the_directory_password_of_an_administrator(
    web: WebHarness, corp: FakeReader
) -> None:
    web.run(add_directory_user(web.services, "root2", 1, admin=True))
    browser = web.browser()
    assert sign_in(browser, "root2", "guess", area="admin").status_code == 401
    response = sign_in(browser, "root2", RIGHT, area="admin")
    assert response.status_code == 303
    # The password alone is not enough: the console's second step follows (here: enrol one).
    assert response.headers["location"] == "/admin/sign-in/enrol"


def test_invitation_of_a_directory_user_takes_the_directory_password(
    web: WebHarness, corp: FakeReader
) -> None:
    offer = web.run(web.services.invitations.create(ADMIN, "newbie", 24))
    path = offer.url.removeprefix(web.settings.resolved_public_url)
    browser = web.browser()
    page = browser.get(path)
    assert page.status_code == 200
    assert "password of your corp account" in page.text
    assert 'autocomplete="new-password"' not in page.text
    wrong = post_form(browser, path, {"password": "not it"})
    assert wrong.status_code == 401
    assert WRONG in wrong.text
    done = post_form(browser, path, {"password": RIGHT})
    assert done.status_code == 303
    home = browser.get("/portal/")
    assert "signed in with your directory password" in home.text
    assert web.user("newbie").has_password is False  # nothing local was set
    rows = web.audit("invitation.accept", "newbie")
    assert [(r.result, r.detail) for r in rows] == [
        ("ok", "directory corp: password checked there")
    ]
    assert web.browser().get(path).status_code == 410  # spent
    # The service refuses to set a local password for a directory user, and leaves the link
    # usable; a local user's invitation needs one.
    offer = web.run(web.services.invitations.create(ADMIN, "alice", 24))
    token = offer.url.rsplit("/", 1)[1]
    with pytest.raises(BadRequest, match="corp directory account; change it there"):
        web.run(web.services.invitations.accept(ADMIN, token, "a local password"))
    assert web.run(web.services.invitations.check(token)).directory == "corp"
    web.add_user("lena", password=None)
    offer = web.run(web.services.invitations.create(ADMIN, "lena", 24))
    with pytest.raises(BadRequest, match="a password is needed"):
        web.run(web.services.invitations.accept(ADMIN, offer.url.rsplit("/", 1)[1], None))


# -- the console's client form with primary ldap -------------------------------------------------


def test_console_client_form_with_primary_ldap(web: WebHarness, corp: FakeReader) -> None:
    from tests.web.test_admin_clients import add, edit, field_error

    admin = web.admin_browser()
    missing = add(admin, primary="ldap")
    assert missing.status_code == 400
    assert "Primary ldap needs the directory" in field_error(missing.text, "directory")
    unknown = add(admin, primary="ldap", directory="nope")
    assert unknown.status_code == 400
    assert field_error(unknown.text, "directory") == "No directory named 'nope'"
    added = add(admin, primary="ldap", directory="CORP", mode="challenge")
    assert added.status_code == 200, added.text
    record = web.run(web.services.radius_clients.get("asa1"))
    assert (record.primary, record.directory) == ("ldap", "corp")
    listing = admin.get("/admin/clients").text
    assert "ldap (corp)" in listing
    page = admin.get("/admin/clients/asa1/edit").text
    assert 'value="corp"' in page
    # Another primary: the directory typed in the form is ignored and dropped.
    assert edit(admin, "asa1", primary="local", directory="corp").status_code in (200, 303)
    record = web.run(web.services.radius_clients.get("asa1"))
    assert (record.primary, record.directory) == ("local", None)


# -- the step-up rules hold for the directory password too ----------------------------------------


def test_the_directory_password_alone_never_changes_a_factor(
    web: WebHarness, corp: FakeReader
) -> None:
    """The attack of issue 13 with a directory password: a session opened with it POSTs
    straight to the forms that add a factor; refused, nothing added."""
    from backend.services.context import SignInContext
    from tests.web.test_stepup_attacks import live_devices

    phone = web.device("alice")
    assert web.run(
        web.services.otp.verify(ADMIN, "alice", phone.code(web.clock.now), SignInContext())
    ).accepted
    web.clock.advance(30)
    before = live_devices(web)
    browser = web.browser()
    assert sign_in(browser, "alice", RIGHT).status_code == 303
    token = csrf_from(browser.get("/portal/").text)
    oath = browser.post("/portal/oath", data={"csrf_token": token, "name": "attacker"})
    assert oath.status_code == 403
    assert "oath-secret" not in oath.text
    assert live_devices(web) == before
    assert web.audit("factor.refuse", "alice")
