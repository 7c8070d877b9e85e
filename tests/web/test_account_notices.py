"""Every change to a user's second factors e-mails the user (issue 13, finding 1's last
sentence), over a real SMTP conversation with a local ``aiosmtpd`` server.

An app activated, an OATH token enrolled, a PIN set or changed, a device removed or marked
lost, an administrator's "reset devices": each queues one notice in the database (table
``account_notices``) in the action's own service call, and the server's mail worker sends it.
The message says what changed, when, who did it and from where, and "if this wasn't you,
contact your help desk" — never a seed, a code, an activation link or a PIN. Sending never
blocks or fails the action: a refusing server leaves the notice pending and it is retried; a
notice recorded by another process (an ``openmfa`` command) is sent by the running server.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import select, update

from backend.authenticator.client import AppClient
from backend.config import Settings
from backend.domain.stepup import ADMINISTRATOR
from backend.services import Services
from backend.services.context import Actor
from backend.store.tables import account_notices_t, users_t
from tests.support.api import ADMIN
from tests.support.clock import FakeClock
from tests.support.piapp import PiLab
from tests.support.process import wait_for
from tests.support.smtp import Received, SmtpServer
from tests.support.web import WebHarness, post_form, sign_in

PIN = "583719"
HELP = "If this wasn't you, contact your help desk"


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with SmtpServer() as server:
        yield server


def with_mail(settings: Settings, port: int) -> Settings:
    return settings.model_copy(
        update={
            "smtp_host": "127.0.0.1",
            "smtp_port": port,
            "smtp_security": "none",
            "mail_from": "OpenMFA <mfa@example.com>",
        }
    )


@pytest.fixture
def web(settings: Settings, clock: FakeClock, smtp: SmtpServer) -> Iterator[WebHarness]:
    with WebHarness(with_mail(settings, smtp.port), clock) as harness:
        yield harness


def portal(web: WebHarness, name: str) -> httpx.Client:
    browser = web.browser()
    assert sign_in(browser, name).status_code == 303
    return browser


def body(received: Received) -> str:
    message = received.message
    assert isinstance(message, EmailMessage)
    content = message.get_content()
    assert isinstance(content, str)
    return content


def assert_no_secret(received: Received, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in received.raw


def test_an_activated_app_mails_the_user_without_the_seed_or_code(
    web: WebHarness, smtp: SmtpServer
) -> None:
    web.add_user("alice", display_name="Alice Liddell")
    offer = web.run(web.services.activation.create_code(ADMIN, ADMINISTRATOR, "alice"))
    phone = AppClient(transport=web.transport)
    uri = f"openmfa://activate?url={web.url}&code={offer.code}"
    stored = phone.activate(uri, name="Alice's iPhone", pin=PIN)

    received = smtp.wait_for(1)[0]
    text = body(received)
    assert received.rcpt_tos == ["alice@example.com"]
    assert "new authenticator app" in str(received.message["Subject"]).lower()
    assert "Alice Liddell" in text
    assert "Alice's iPhone" in text
    assert stored.device_id in text
    assert "When:" in text
    assert "UTC" in text
    assert "From:" in text
    assert "127.0.0.1" in text
    assert HELP in text
    assert_no_secret(received, stored.totp_secret, offer.code, PIN, phone.code())
    # The audit row is written after the server's "250": wait for it, not for the mail.
    wait_for(lambda: bool(web.audit("notice.mail", "alice")), 30, "the notice.mail row")
    row = web.audit("notice.mail", "alice")[0]
    assert (row.result, row.actor) == ("sent", "system:mail")


def test_an_oath_enrolment_mails_the_user_without_the_seed(
    web: WebHarness, smtp: SmtpServer
) -> None:
    web.add_user("alice")
    operator = Actor("cli:root", "local")  # `openmfa activation create alice --oath`
    enrolment = web.run(
        web.services.activation.enrol_oath(operator, ADMINISTRATOR, "alice", "Aegis")
    )
    received = smtp.wait_for(1)[0]
    text = body(received)
    assert "OATH" in text
    assert "Aegis" in text
    assert "an administrator, on the server's command line (root)" in text
    assert_no_secret(received, enrolment.seed, enrolment.uri)


def test_a_pin_change_in_the_portal_mails_the_user_without_the_pin(
    web: WebHarness, smtp: SmtpServer
) -> None:
    web.add_user("alice")
    web.allow_enrolment("alice")  # no factor yet: a PIN is set inside an administrator's window
    browser = portal(web, "alice")
    response = post_form(browser, "/portal/pin", {"pin": PIN, "confirm": PIN})
    assert response.status_code == 303
    received = smtp.wait_for(1)[0]
    text = body(received)
    assert "PIN" in str(received.message["Subject"])
    assert "you, in the user portal" in text
    assert HELP in text
    assert_no_secret(received, PIN)


def test_removed_lost_and_reset_each_mail_the_user(web: WebHarness, smtp: SmtpServer) -> None:
    web.add_user("alice")
    first, second, third = (web.device("alice") for _ in range(3))
    for phone in (first, second, third):
        started = web.start("alice")
        assert phone.answer(started["id"], "approve") == "approved"
    smtp.wait_for(3)  # the three activations
    assert first.device is not None
    assert second.device is not None
    web.run(
        web.services.devices.mark_lost(
            ADMIN, ADMINISTRATOR, first.device.device_id, user_name="alice"
        )
    )
    web.run(
        web.services.devices.remove(
            ADMIN, ADMINISTRATOR, second.device.device_id, user_name="alice"
        )
    )
    web.run(web.services.access.reset_devices(ADMIN, ADMINISTRATOR, "alice"))
    messages = smtp.wait_for(6)[3:]
    subjects = [str(m.message["Subject"]).lower() for m in messages]
    assert "marked lost" in subjects[0]
    assert "removed" in subjects[1]
    assert "all your devices were removed" in subjects[2]
    assert first.device.device_id in body(messages[0])
    assert second.device.device_id in body(messages[1])


def test_a_refusing_mail_server_never_blocks_the_change_and_the_notice_is_retried(
    web: WebHarness, smtp: SmtpServer, clock: FakeClock
) -> None:
    web.add_user("alice")
    web.allow_enrolment("alice")  # no factor yet: a PIN is set inside an administrator's window
    browser = portal(web, "alice")
    smtp.refuse_next(1, "451 4.3.0 try again later")
    response = post_form(browser, "/portal/pin", {"pin": PIN, "confirm": PIN})
    assert response.status_code == 303  # the PIN is set whatever the mail does
    wait_for(lambda: bool(web.audit("notice.mail", "alice")), 30, "the first attempt")
    assert web.audit("notice.mail", "alice")[0].result == "retry"
    clock.advance(60)  # past the first backoff pause
    received = smtp.wait_for(1, timeout=30)[0]
    assert "PIN" in str(received.message["Subject"])
    wait_for(lambda: len(web.audit("notice.mail", "alice")) == 2, 30, "the sent row")
    assert [row.result for row in web.audit("notice.mail", "alice")] == ["sent", "retry"]


def test_a_notice_recorded_by_a_command_is_sent_by_the_running_server(
    web: WebHarness, smtp: SmtpServer, settings: Settings, clock: FakeClock
) -> None:
    web.add_user("alice")
    # An `openmfa user set-pin` process: no mail worker of its own.
    mail = with_mail(settings, smtp.port)
    command = web.run(Services.open(mail, clock=clock, push=False, notify=False))
    try:
        web.run(command.users.set_pin(ADMIN, ADMINISTRATOR, "alice", PIN))
    finally:
        web.run(command.close())
    received = smtp.wait_for(1, timeout=30)[0]
    assert "PIN" in str(received.message["Subject"])
    assert_no_secret(received, PIN)


def test_no_address_no_notice_and_a_bad_address_is_never_used(web: WebHarness) -> None:
    web.run(web.services.users.add(ADMIN, "bare"))
    web.run(web.services.users.set_pin(ADMIN, ADMINISTRATOR, "bare", PIN))
    web.add_user("old")

    async def plant() -> None:  # stored by a version that checked only for "@"
        async with web.services.db.write() as conn:
            await conn.execute(
                update(users_t).where(users_t.c.name == "old").values(email="a@b\r\nBcc: x@y")
            )

    web.run(plant())
    web.run(web.services.users.set_pin(ADMIN, ADMINISTRATOR, "old", PIN))

    async def rows() -> list[object]:
        async with web.services.db.read() as conn:
            return list((await conn.execute(select(account_notices_t))).all())

    assert web.run(rows()) == []


def test_the_text_names_the_change_and_nothing_more() -> None:
    from datetime import UTC, datetime

    from backend.domain.notices import AccountChange, compose_notice

    subject, text = compose_notice(
        AccountChange.DEVICE_LOST,
        user_name="alice",
        display_name="",
        when=datetime(2026, 12, 6, 10, 0, tzinfo=UTC),
        actor="portal:alice",
        source="203.0.113.9",
        detail="dev_abc “Pixel”",
        issuer="OpenMFA",
    )
    assert subject == "[OpenMFA] A device was marked lost on your account"
    assert "2026-12-06 10:00:00 UTC" in text
    assert "you, in the user portal" in text
    assert "203.0.113.9" in text
    assert HELP in text
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", text)


def test_notify_users_off_queues_nothing(
    settings: Settings, clock: FakeClock, smtp: SmtpServer
) -> None:
    quiet = with_mail(settings, smtp.port).model_copy(update={"notify_users": False})
    with WebHarness(quiet, clock) as web:
        web.add_user("alice")
        web.run(web.services.users.set_pin(ADMIN, ADMINISTRATOR, "alice", PIN))

        async def rows() -> list[object]:
            async with web.services.db.read() as conn:
                return list((await conn.execute(select(account_notices_t))).all())

        assert web.run(rows()) == []
        assert web.server_services.notice_mailer is None


def test_a_privacyidea_rollout_mails_the_user(
    settings: Settings, clock: FakeClock, smtp: SmtpServer, tmp_path: Path
) -> None:
    with PiLab(with_mail(settings, smtp.port), clock, tmp_path, WebHarness) as lab:
        lab.api.add_user("alice")
        offer = lab.api.run(
            lab.api.services.pipush.create_enrollment(ADMIN, ADMINISTRATOR, "alice", "Pixel")
        )
        app = lab.phone()
        app.scan(offer.uri)
        assert app.rollout().status_code == 200
        received = smtp.wait_for(1)[0]
        text = body(received)
        assert "privacyIDEA Authenticator" in str(received.message["Subject"])
        assert offer.device_id in text
        assert "the device itself" in text
        credential = parse_qs(urlsplit(offer.uri).query)["enrollment_credential"][0]
        assert_no_secret(received, credential, offer.uri)
