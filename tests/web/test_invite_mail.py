"""Finding 23 in the console: addresses are validated in the user form, and e-mailing an
invitation never destroys the user's earlier invitation before the new one was sent.

Before, the console stored ``a@b\\r\\nBcc: x@y``; sending that user an invitation was a 500
(the message could not be composed), and any failed send had already deleted the invitation
the user held.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import update

from backend.config import Settings
from backend.store.tables import users_t
from tests.support.api import ADMIN
from tests.support.clock import FakeClock
from tests.support.process import free_port
from tests.support.smtp import SmtpServer
from tests.support.web import WebHarness, post_form

INJECTED = "a@b\r\nBcc: x@y"


def mail_settings(settings: Settings, port: int) -> Settings:
    return settings.model_copy(
        update={
            "smtp_host": "127.0.0.1",
            "smtp_port": port,
            "smtp_security": "none",
            "mail_from": "OpenMFA <mfa@example.com>",
            # only the invitation here: the admin's own account notices are not counted
            "notify_users": False,
        }
    )


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with SmtpServer() as server:
        yield server


def invite_by_mail(browser: httpx.Client, user: str) -> httpx.Response:
    return post_form(
        browser, f"/admin/users/{user}/invite", {"send": "mail"}, page=f"/admin/users/{user}"
    )


def still_usable(web: WebHarness, url: str) -> bool:
    return web.browser().get(url.split(":8080", 1)[1]).status_code == 200


def test_the_console_refuses_an_injected_address(web: WebHarness) -> None:
    browser = web.admin_browser("root")
    response = post_form(
        browser, "/admin/users", {"name": "carol", "display_name": "", "email": INJECTED}
    )
    assert response.status_code == 400
    assert "e-mail address" in response.text
    assert browser.get("/admin/users/carol").status_code == 404


def test_a_failed_send_leaves_the_earlier_invitation_usable(
    settings: Settings, clock: FakeClock, smtp: SmtpServer
) -> None:
    with WebHarness(mail_settings(settings, smtp.port), clock) as web:
        browser = web.admin_browser("root")
        web.add_user("alice", password=None)
        earlier = web.run(web.services.invitations.create(ADMIN, "alice"))

        smtp.refuse_next(1, "554 5.7.1 no thanks")
        refused = invite_by_mail(browser, "alice")
        assert refused.status_code == 502
        assert "could not be sent" in refused.text
        assert "earlier invitation still works" in refused.text
        assert still_usable(web, earlier.url)

        # Once a send succeeds, the new link replaces every earlier one.
        assert invite_by_mail(browser, "alice").status_code == 303
        sent = smtp.wait_for(1)[0].message.get_content()
        link = re.search(r"(http://\S+/portal/invite/\S+)", sent)
        assert link is not None
        assert still_usable(web, link.group(1))
        assert not still_usable(web, earlier.url)


def test_an_unreachable_mail_server_leaves_the_earlier_invitation_usable(
    settings: Settings, clock: FakeClock
) -> None:
    with WebHarness(mail_settings(settings, free_port()), clock) as web:
        browser = web.admin_browser("root")
        web.add_user("alice", password=None)
        earlier = web.run(web.services.invitations.create(ADMIN, "alice"))
        response = invite_by_mail(browser, "alice")
        assert response.status_code == 502
        assert still_usable(web, earlier.url)
        assert web.audit("invitation.mail", "alice")[0].result == "failed"


def test_an_address_stored_before_the_rule_is_refused_clearly_not_a_500(
    settings: Settings, clock: FakeClock, smtp: SmtpServer
) -> None:
    with WebHarness(mail_settings(settings, smtp.port), clock) as web:
        browser = web.admin_browser("root")
        web.add_user("alice", password=None)
        earlier = web.run(web.services.invitations.create(ADMIN, "alice"))

        async def plant() -> None:  # an older version stored it
            async with web.services.db.write() as conn:
                await conn.execute(
                    update(users_t).where(users_t.c.name == "alice").values(email=INJECTED)
                )

        web.run(plant())
        response = invite_by_mail(browser, "alice")
        assert response.status_code == 400
        assert "not a valid e-mail address" in response.text
        assert still_usable(web, earlier.url)
        assert smtp.conversations == 0
        row = web.audit("invitation.mail", "alice")[0]
        assert row.result == "failed"
        assert "\r" not in row.detail
        assert "\n" not in row.detail
