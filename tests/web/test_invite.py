"""Invitations: the one-time link where a user sets their password, and the CLI that makes it."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from tests.conftest import openmfa
from tests.support.api import ADMIN
from tests.support.web import (
    PASSWORD,
    WebHarness,
    post_form,
    sign_in,
)


def invite(web: WebHarness, name: str = "alice", hours: int = 72) -> str:
    offer = web.run(web.services.invitations.create(ADMIN, name, hours))
    assert offer.url.startswith(web.settings.resolved_public_url + "/portal/invite/")
    return offer.url.removeprefix(web.settings.resolved_public_url)


def test_invited_user_sets_a_password_and_is_signed_in(web: WebHarness) -> None:
    web.add_user("alice", password=None, display_name="Alice Liddell")
    path = invite(web)
    browser = web.browser()
    page = browser.get(path)
    assert page.status_code == 200
    assert "Welcome, Alice Liddell" in page.text
    assert 'autocomplete="new-password"' in page.text
    mismatch = post_form(browser, path, {"password": PASSWORD, "confirm": PASSWORD + "!"})
    assert mismatch.status_code == 400
    assert "not the same" in mismatch.text
    short = post_form(browser, path, {"password": "short", "confirm": "short"})
    assert short.status_code == 400
    assert "at least 8 characters" in short.text
    done = post_form(browser, path, {"password": PASSWORD, "confirm": PASSWORD})
    assert done.status_code == 303
    assert done.headers["location"] == "/portal/"
    home = browser.get("/portal/")
    assert home.status_code == 200
    assert "Your password is set" in home.text
    # The password works from another browser; the link does not work twice.
    assert sign_in(web.browser(), "alice").status_code == 303
    reused = web.browser().get(path)
    assert reused.status_code == 410
    assert "already used" in reused.text
    assert [r.action for r in web.audit(user="alice")][:2] == ["web.sign_in", "password.verify"]
    assert "invitation.accept" in [r.action for r in web.audit(user="alice")]


def test_expired_and_unknown_links_are_refused_clearly(web: WebHarness) -> None:
    web.add_user("alice", password=None)
    path = invite(web, hours=1)
    web.clock.advance(3601)
    expired = web.browser().get(path)
    assert expired.status_code == 410
    assert "expired" in expired.text
    assert expired.headers["content-type"].startswith("text/html")
    unknown = web.browser().get("/portal/invite/not-a-token")
    assert unknown.status_code == 404
    assert "not valid" in unknown.text
    assert [r.result for r in web.refusals()][:2] == ["invitation-invalid", "invitation-expired"]


def test_a_new_invitation_replaces_the_unused_one(web: WebHarness) -> None:
    web.add_user("alice", password=None)
    first, second = invite(web), invite(web)
    assert web.browser().get(first).status_code == 404
    assert web.browser().get(second).status_code == 200


def test_invitation_post_needs_csrf(web: WebHarness) -> None:
    web.add_user("alice", password=None)
    path = invite(web)
    browser = web.browser()
    browser.get(path)
    response = browser.post(path, data={"password": PASSWORD, "confirm": PASSWORD})
    assert response.status_code == 403
    assert browser.get(path).status_code == 200  # still unused


def test_cli_invite_prints_the_link(tmp_path: Path) -> None:
    openmfa(tmp_path, "db", "upgrade")
    openmfa(tmp_path, "user", "add", "alice")
    result = openmfa(tmp_path, "user", "invite", "alice", "--hours", "24")
    url = result.stdout.strip()
    assert url.startswith("http://127.0.0.1:8080/portal/invite/")
    assert len(url.rsplit("/", 1)[1]) >= 27
    assert "expires" in result.stderr
    bad = openmfa(tmp_path, "user", "invite", "alice", "--hours", "0", check=False)
    assert bad.returncode == 1
    assert "1 to 720 hours" in bad.stderr
    missing = openmfa(tmp_path, "user", "invite", "nobody", check=False)
    assert missing.returncode == 1


class _AccessLines(logging.Handler):
    """The access log's lines, with an event per page seen (the server thread logs each line
    after its response has gone out, so the test waits for the line itself)."""

    def __init__(self, *pages: str) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self.seen = {page: threading.Event() for page in pages}

    def emit(self, record: logging.LogRecord) -> None:
        line = record.getMessage()
        self.lines.append(line)
        for page, event in self.seen.items():
            if page in line:
                event.set()


def test_the_access_log_never_shows_a_link_token(web: WebHarness) -> None:
    """Links are credentials: whoever reads the log must not be able to use them."""
    web.add_user("alice", password=None)
    path = invite(web)
    bootstrap = web.run(web.services.invitations.bootstrap_link(ADMIN))
    assert bootstrap is not None
    tokens = (path.rsplit("/", 1)[1], bootstrap.rsplit("/", 1)[1])
    access = logging.getLogger("openmfa.access")
    lines = _AccessLines("/portal/invite/", "/admin/bootstrap/")
    level = access.level
    access.setLevel(logging.INFO)
    access.addHandler(lines)
    try:
        browser = web.browser()
        assert browser.get(path).status_code == 200
        assert (
            browser.get(bootstrap.removeprefix(web.settings.resolved_public_url)).status_code == 200
        )
        assert all(event.wait(10) for event in lines.seen.values()), lines.lines
    finally:
        access.removeHandler(lines)
        access.setLevel(level)
    assert "GET /portal/invite/<token> 200" in lines.lines
    assert "GET /admin/bootstrap/<token> 200" in lines.lines
    assert not [line for line in lines.lines if any(token in line for token in tokens)]
