"""Helpers for the portal and admin-console tests: the app on a live HTTP server with a fresh
database and a fake clock, browsers (httpx clients with their own cookies), signing in, and
reading CSRF tokens off pages.

Starlette's TestClient warns (an error here) unless the ``httpx2`` package is installed, and
the house rule is real sockets anyway: :class:`WebHarness` is :class:`ApiHarness` (uvicorn on
127.0.0.1, a second services container on its own loop for set-up and inspection) plus what
web tests need. In a test module::

    @pytest.fixture
    def web(settings: Settings, clock: FakeClock) -> Iterator[WebHarness]:
        yield from web_harness(settings, clock)

    def test_x(web: WebHarness) -> None:
        web.add_user("alice")
        browser = web.browser()
        assert sign_in(browser, "alice").status_code == 303
        page = browser.get("/portal/")
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from backend.config import Settings
from backend.domain import totp
from backend.domain.stepup import ADMINISTRATOR
from backend.services.audit import AuditEntry
from backend.store.queries import UserRecord
from tests.support.api import ADMIN, ApiHarness
from tests.support.clock import FakeClock
from tests.support.database import migrated_sqlite

PASSWORD = "correct horse battery staple"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


class WebHarness(ApiHarness):
    """``with WebHarness(settings, clock) as web: web.browser().get("/portal/")``."""

    def add_user(  # type: ignore[override]
        self,
        name: str = "alice",
        password: str | None = PASSWORD,
        admin: bool = False,
        display_name: str = "",
        **policy: object,
    ) -> str:
        """A user with a local password (``None``: without one), optionally an admin."""
        self.run(
            self.services.users.add(
                ADMIN, name, f"{name}@example.com", display_name, password, admin
            )
        )
        for key, value in policy.items():
            self.set_policy(key, value, user=name)
        return name

    def allow_enrolment(self, name: str, hours: float = 1) -> None:
        """An administrator lets ``name`` (with no live factor yet) enrol a first one."""
        self.run(self.services.factors.allow_enrolment(ADMIN, name, hours))

    def user(self, name: str) -> UserRecord:
        return self.run(self.services.users.get(name))

    def audit(self, action: str | None = None, user: str | None = None) -> list[AuditEntry]:
        """Audit rows, newest first."""
        return self.run(self.services.audit.query(user, None, action, 1000))

    def browser(self, **kwargs: Any) -> httpx.Client:
        """A browser: an HTTP client with its own cookie jar that does not follow redirects."""
        return self.client(follow_redirects=False, **kwargs)

    def admin_browser(self, name: str = "root", password: str = PASSWORD) -> httpx.Client:
        """A browser signed in to the admin console as a new administrator: the password,
        then a code from an OATH token an administrator gave them (active at once)."""
        self.add_user(name, password, admin=True)
        oath = self.run(self.services.activation.enrol_oath(ADMIN, ADMINISTRATOR, name))
        browser = self.browser()
        response = sign_in(browser, name, password, area="admin")
        assert response.status_code == 303, response.text
        assert response.headers["location"] == "/admin/sign-in/verify"
        verify = browser.get("/admin/sign-in/verify")
        code = totp.current_code(oath.seed, self.clock.now)
        done = browser.post(
            "/admin/sign-in/code", data={"csrf_token": csrf_from(verify.text), "code": code}
        )
        assert done.status_code == 303, done.text
        assert done.headers["location"] == "/admin/"
        return browser


def sqlite_database(tmp_path: Path) -> str:
    """A migrated SQLite database in ``tmp_path`` (for a module's ``database_url`` fixture)."""
    return migrated_sqlite(tmp_path)


def web_harness(settings: Settings, clock: FakeClock) -> Iterator[WebHarness]:
    """Body of a module's ``web`` fixture."""
    with WebHarness(settings, clock) as web:
        yield web


def csrf_from(html: str) -> str:
    """The CSRF token of the first form on a page."""
    match = _CSRF.search(html)
    assert match is not None, "no csrf_token field on the page"
    return match.group(1)


def post_form(
    browser: httpx.Client, path: str, data: dict[str, str], page: str | None = None
) -> httpx.Response:
    """GET ``page`` (default: ``path``) for its CSRF token, then POST ``data`` with it."""
    form_page = browser.get(page or path)
    assert form_page.status_code == 200, form_page.text
    return browser.post(path, data={"csrf_token": csrf_from(form_page.text), **data})


def sign_in(
    browser: httpx.Client,
    name: str,
    password: str = PASSWORD,
    area: str = "portal",
    next_path: str | None = None,
) -> httpx.Response:
    """Sign in through the form of ``area``; the POST's response (303 on success; for an
    admin with an authenticator, to ``/admin/sign-in/verify``)."""
    params = {"next": next_path} if next_path else {}
    form = browser.get(f"/{area}/sign-in", params=params)
    assert form.status_code == 200, form.text
    data = {"csrf_token": csrf_from(form.text), "username": name, "password": password}
    if next_path:
        data["next"] = next_path
    return browser.post(f"/{area}/sign-in", data=data)


def step_up(browser: httpx.Client, code: str, next_path: str = "/portal/") -> httpx.Response:
    """Prove a live factor in a portal session with ``code`` (the step-up page's code form)."""
    page = browser.get("/portal/")
    return browser.post(
        "/portal/step-up/code",
        data={"csrf_token": csrf_from(page.text), "code": code, "next": next_path},
    )


def cookie(response: httpx.Response, name: str) -> str | None:
    """The ``Set-Cookie`` line for ``name`` in a response, or ``None``."""
    for line in response.headers.get_list("set-cookie"):
        if line.startswith(name + "="):
            return line
    return None
