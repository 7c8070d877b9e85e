"""The fraud e-mail, over a real SMTP conversation with a local ``aiosmtpd`` server.

End to end: an app answers ``fraud`` over the app API and the support address gets the mail,
after the answer (the SMTP server holds the message to prove the answer never waits for it).
At the service level, with short backoff pauses: retries after a refusal, giving up, permanent
refusals, STARTTLS with a login, resending what a previous process left pending, and a
bounded shutdown. Settings that cannot work are refused at start.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from backend.config import Settings
from backend.domain import totp
from backend.domain.challenge import Answer
from backend.domain.stepup import ADMINISTRATOR
from backend.errors import ConfigurationError
from backend.notify.fraud import FraudMailer, configure, status_line
from backend.notify.mail import MailSender
from backend.services import Services
from backend.services.audit import AuditEntry
from backend.services.challenges import ChallengeService
from backend.services.context import Actor, SignInContext
from backend.services.devices import DeviceRecord
from backend.services.fraud import FraudReportView, FraudService
from tests.fakes.tls import TlsFiles, make_tls
from tests.support.api import ApiHarness
from tests.support.clock import FakeClock
from tests.support.geoip import write_database
from tests.support.process import free_port, wait_for
from tests.support.smtp import SmtpServer

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
ADMIN = Actor("test:admin")
FAST = (0.01, 0.02, 0.04, 0.08)  # backoff pauses for tests: the real ones are minutes
SUPPORT = ["soc@example.com", "oncall@example.com"]
PIN = "583719"


def mail_settings(settings: Settings, port: int, **extra: Any) -> Settings:
    """``settings`` with fraud mail to SUPPORT through 127.0.0.1:``port``."""
    values: dict[str, Any] = {
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "smtp_security": "none",
        "mail_from": "OpenMFA <mfa@example.com>",
        "fraud_notify_to": ", ".join(SUPPORT),
        "notify_users": False,  # only the fraud mail here (tests/web/test_account_notices.py)
        **extra,
    }
    return settings.model_copy(update=values)


def login_settings(
    settings: Settings, port: int, tls: TlsFiles, tmp_path: Path, password: str
) -> Settings:
    """Mail over STARTTLS (trusting ``tls``'s CA) with a login as ``openmfa``, the password in
    a file under ``tmp_path``."""
    password_file = tmp_path / "smtp-password"
    password_file.write_text(password + "\n")
    return mail_settings(
        settings,
        port,
        smtp_security="starttls",
        smtp_ca_file=tls.ca_file,
        smtp_username="openmfa",
        smtp_password_file=password_file,
    )


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with SmtpServer() as server:
        yield server


# -- end to end over the app API ----------------------------------------------------------------


@pytest.fixture
def api(settings: Settings, clock: FakeClock, smtp: SmtpServer) -> Iterator[ApiHarness]:
    with ApiHarness(mail_settings(settings, smtp.port), clock) as harness:
        yield harness


def notice_rows(api: ApiHarness) -> list[AuditEntry]:
    """``fraud.notify`` audit rows, oldest first."""
    return list(reversed(api.run(api.services.audit.query(action="fraud.notify"))))


def test_a_fraud_answer_mails_the_support_address_without_secrets(
    api: ApiHarness, smtp: SmtpServer, clock: FakeClock
) -> None:
    api.add_user("alice", number_matching=True)
    phone = api.device("alice", pin=PIN)
    assert phone.device is not None
    started = api.start(
        "alice",
        context={
            "client_name": "vpn-gateway",
            "client_ip": "203.0.113.9",
            "nas_identifier": "asa-1",
        },
    )
    assert started["number"] is not None  # there is a number to match, and it must not leak

    assert phone.answer(started["id"], "fraud") == "fraud"

    received = smtp.wait_for(1)[0]
    (report,) = api.fraud_reports()
    message = received.message
    body = message.get_content().replace("\r\n", "\n")  # as received: CRLF line ends
    assert received.mail_from == "mfa@example.com"
    assert received.rcpt_tos == SUPPORT
    assert message["From"] == "OpenMFA <mfa@example.com>"
    assert [a.addr_spec for a in message["To"].addresses] == SUPPORT
    assert message["Subject"] == f"[OpenMFA] Fraud reported by alice (report #{report.id})"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["X-OpenMFA-Fraud-Report"] == str(report.id)
    assert message["Message-ID"].endswith("@example.com>")
    assert message.get_content_type() == "text/plain"
    for line in (
        f"Report:       #{report.id}",
        "User:         alice <alice@example.com>",
        "Reported via: the app\n",
        f"Device:       alice's phone ({phone.device.device_id}, reference)",
        "Gateway:      vpn-gateway",
        "Client IP:    203.0.113.9",
        "NAS:          asa-1",
        "Account:      BLOCKED",
        f"openmfa fraud review {report.id}",
        "openmfa user unblock alice",
    ):
        assert line in body, (line, body)
    assert f"Sign-in:      {started['id']} (push)\nStarted:      20" in body
    assert "Ended as" not in body
    assert max(len(line) for line in body.splitlines()) <= 78
    assert message["Content-Transfer-Encoding"] == "7bit"
    # Nothing secret: not the seed (in any spelling), not the PIN, not the gateway token, and
    # no mention of the number to match.
    raw = received.raw
    seed = phone.device.totp_secret
    for secret in (seed, seed.lower(), PIN, api.token):
        assert secret not in raw
        assert secret not in body
    assert "number" not in body.lower()

    wait_for(lambda: api.fraud_reports()[0].notify_state == "sent", 30, "notify_state sent")
    (report,) = api.fraud_reports()
    assert (report.notify_attempts, report.notified_at) == (1, clock.now)
    (row,) = notice_rows(api)
    assert (row.action, row.result, row.actor, row.user_name) == (
        "fraud.notify",
        "sent",
        "system:mail",
        "alice",
    )
    assert row.detail.startswith(
        f"report {report.id} attempt 1/5 to soc@example.com, oncall@example.com: "
    )


@sqlite_only
def test_the_answer_returns_before_the_mail_is_sent(api: ApiHarness, smtp: SmtpServer) -> None:
    api.add_user("alice")
    phone = api.device("alice")
    started = api.start("alice")
    smtp.hold()  # the server takes the message but does not answer DATA until released

    assert phone.answer(started["id"], "fraud") == "fraud"

    # The mail is under way only now, and cannot finish before the release below: so the
    # answer above did not wait for it.
    assert smtp.held.wait(30), "the SMTP conversation never reached DATA"
    (report,) = api.fraud_reports()
    assert (report.state, report.notify_state, report.notify_attempts) == ("open", "pending", 0)
    assert smtp.messages == []
    assert api.status(started["id"])["state"] == "fraud"
    smtp.release()
    smtp.wait_for(1)
    wait_for(lambda: api.fraud_reports()[0].notify_state == "sent", 30, "notify_state sent")


# -- the worker, at the service level -----------------------------------------------------------


@dataclass
class Rig:
    services: Services
    mailer: FraudMailer
    challenges: ChallengeService
    fraud: FraudService


@asynccontextmanager
async def rig(
    settings: Settings,
    clock: FakeClock,
    delays: tuple[float, ...] = FAST,
    grace: float = 5.0,
) -> AsyncIterator[Rig]:
    """Services with a FraudMailer on short pauses, and a ChallengeService that uses it."""
    services = await Services.open(settings, clock=clock, push=False, notify=False)
    setup = configure(settings)
    assert setup is not None
    mailer = FraudMailer(
        services.db,
        services.audit,
        clock,
        setup,
        geoip=services.geoip,
        retry_delays=delays,
        close_grace=grace,
    )
    challenges = ChallengeService(
        services.db,
        services.bus,
        services.users,
        services.otp,
        services.audit,
        clock,
        fraud_notifier=mailer,
    )
    try:
        yield Rig(
            services,
            mailer,
            challenges,
            FraudService(services.db, services.audit, clock, challenges),
        )
    finally:
        await mailer.close()
        await services.close()


async def app_device(services: Services, user: str) -> DeviceRecord:
    """An activated app device of ``user`` (a new user)."""
    await services.users.add(ADMIN, user, email=f"{user}@example.com", display_name=user.title())
    offer = await services.activation.create_code(ADMIN, ADMINISTRATOR, user)
    public = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    activated = await services.activation.activate(
        ADMIN, offer.code, public, "ios", name=f"{user}'s iPhone"
    )
    return await services.devices.get(activated.device_id)


async def report_fraud(r: Rig, user: str = "alice") -> FraudReportView:
    """A new user whose phone answers a push with ``fraud``; the report it filed."""
    device = await app_device(r.services, user)
    view = await r.challenges.start(
        ADMIN, user, "push", SignInContext("vpn-gateway", "203.0.113.9", "asa-1")
    )
    await r.challenges.answer(Actor(f"device:{device.id}"), device, view.id, Answer.FRAUD)
    (report,) = await r.fraud.list("all", user)
    return report


async def notices(services: Services) -> list[tuple[str, str]]:
    """(result, detail) of the ``fraud.notify`` rows, oldest first."""
    rows = await services.audit.query(action="fraud.notify")
    return [(row.result, row.detail) for row in reversed(rows)]


class LogSeen(logging.Handler):
    """Sets :attr:`event` when a log line containing ``text`` is written (on the loop)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.event = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


@sqlite_only
@pytest.mark.anyio
async def test_refused_twice_then_accepted_is_sent_on_the_third_attempt(
    settings: Settings, clock: FakeClock, smtp: SmtpServer
) -> None:
    smtp.refuse_next(2, "451 4.3.0 mailbox busy, try again later")
    async with rig(mail_settings(settings, smtp.port), clock) as r:
        report = await report_fraud(r)
        assert report.notify_state == "pending"

        await r.mailer.wait_idle()

        report = await r.fraud.get(report.id)
        assert (report.notify_state, report.notify_attempts) == ("sent", 3)
        assert report.notified_at == clock.now
        assert smtp.conversations == 3
        assert len(smtp.messages) == 1
        rows = await notices(r.services)
        assert [result for result, _ in rows] == ["retry", "retry", "sent"]
        assert rows[0][1] == (
            f"report {report.id} attempt 1/5 to soc@example.com, oncall@example.com: "
            "451 4.3.0 mailbox busy, try again later; next attempt in 0.01 s"
        )
        assert rows[1][1].endswith("next attempt in 0.02 s")
        assert rows[2][1].startswith(f"report {report.id} attempt 3/5 ")


@sqlite_only
@pytest.mark.anyio
async def test_this_wasnt_me_on_an_approved_sign_in_is_mailed_too(
    settings: Settings, clock: FakeClock, smtp: SmtpServer
) -> None:
    async with rig(mail_settings(settings, smtp.port), clock) as r:
        await r.services.users.add(ADMIN, "alice")
        oath = await r.services.activation.enrol_oath(ADMIN, ADMINISTRATOR, "alice")
        signed_in = await r.challenges.start(ADMIN, "alice", "otp", SignInContext("vpn", "::1"))
        await r.challenges.verify_code(ADMIN, signed_in.id, totp.current_code(oath.seed, clock()))

        report = await r.fraud.report_sign_in(Actor("portal:alice"), "alice", signed_in.id)
        await r.mailer.wait_idle()

    body = smtp.messages[0].message.get_content().replace("\r\n", "\n")
    assert f"Report:       #{report.id}" in body
    assert 'Reported via: the user portal ("this wasn\'t me")' in body
    assert f"Sign-in:      {signed_in.id} (otp)" in body
    assert "Ended as:     approved (by otp)" in body
    assert "Client IP:    ::1\n" in body
    assert oath.seed not in smtp.messages[0].raw


@sqlite_only
@pytest.mark.anyio
async def test_the_mail_names_city_and_country_with_a_geoip_database(
    settings: Settings, clock: FakeClock, smtp: SmtpServer, tmp_path: Path
) -> None:
    database = write_database(tmp_path / "city.mmdb")
    configured = mail_settings(settings, smtp.port, geoip_database=database)
    async with rig(configured, clock) as r:
        await report_fraud(r)  # from 203.0.113.9
        await r.mailer.wait_idle()

    assert (
        "Client IP:    203.0.113.9 (Berlin, Germany)\r\n" in smtp.messages[0].message.get_content()
    )


@sqlite_only
@pytest.mark.anyio
async def test_a_server_that_keeps_refusing_gets_five_attempts_then_failed(
    settings: Settings, clock: FakeClock, smtp: SmtpServer
) -> None:
    smtp.refuse_next(10)
    async with rig(mail_settings(settings, smtp.port), clock) as r:
        report = await report_fraud(r)
        await r.mailer.wait_idle()

        report = await r.fraud.get(report.id)
        assert (report.notify_state, report.notify_attempts, report.notified_at) == (
            "failed",
            5,
            None,
        )
        assert smtp.conversations == 5
        results = [result for result, _ in await notices(r.services)]
        assert results == ["retry"] * 4 + ["failed"]


@sqlite_only
@pytest.mark.anyio
async def test_an_unreachable_server_is_retried_then_failed(
    settings: Settings, clock: FakeClock
) -> None:
    nobody = free_port()  # nothing listens there
    async with rig(mail_settings(settings, nobody), clock, delays=(0.01,)) as r:
        report = await report_fraud(r)
        await r.mailer.wait_idle()

        report = await r.fraud.get(report.id)
        assert (report.notify_state, report.notify_attempts) == ("failed", 2)
        rows = await notices(r.services)
        assert [result for result, _ in rows] == ["retry", "failed"]
        assert "attempt 1/2" in rows[0][1]
        assert "Connect" in rows[0][1] or "refused" in rows[0][1].lower(), rows[0][1]


@sqlite_only
@pytest.mark.anyio
async def test_a_permanent_refusal_is_not_retried(
    settings: Settings, clock: FakeClock, smtp: SmtpServer
) -> None:
    smtp.refuse_next(1, "554 5.7.1 relay access denied")
    async with rig(mail_settings(settings, smtp.port), clock) as r:
        report = await report_fraud(r)
        await r.mailer.wait_idle()

        report = await r.fraud.get(report.id)
        assert (report.notify_state, report.notify_attempts) == ("failed", 1)
        ((result, detail),) = await notices(r.services)
        assert result == "failed"
        assert detail.endswith("554 5.7.1 relay access denied")


@sqlite_only
@pytest.mark.anyio
async def test_starttls_and_login_with_the_password_file_and_no_password_anywhere(
    settings: Settings, clock: FakeClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    password = "correct-horse-smtp-4711"
    tls = make_tls(tmp_path / "tls")
    with SmtpServer(tls=tls, login=("openmfa", password)) as server:
        configured = login_settings(settings, server.port, tls, tmp_path, password)
        async with rig(configured, clock) as r:
            report = await report_fraud(r)
            await r.mailer.wait_idle()
            report = await r.fraud.get(report.id)
            detail = "\n".join(d for _, d in await notices(r.services))
            setup = configure(configured)
            assert setup is not None
            shown = repr(setup.sender) + setup.sender.describe() + status_line(configured, setup)

    assert report.notify_state == "sent"
    (received,) = server.messages
    assert (received.tls, received.login) == (True, "openmfa")
    assert server.failed_logins == 0
    encoded = base64.b64encode(f"\0openmfa\0{password}".encode()).decode()
    for text in (caplog.text, detail, shown):
        assert password not in text
        assert encoded not in text


@sqlite_only
@pytest.mark.anyio
async def test_a_wrong_password_fails_at_once(
    settings: Settings, clock: FakeClock, tmp_path: Path
) -> None:
    tls = make_tls(tmp_path / "tls")
    with SmtpServer(tls=tls, login=("openmfa", "the-password")) as server:
        configured = login_settings(settings, server.port, tls, tmp_path, "not-the-password")
        async with rig(configured, clock) as r:
            report = await report_fraud(r)
            await r.mailer.wait_idle()
            report = await r.fraud.get(report.id)
            ((result, detail),) = await notices(r.services)
    assert (report.notify_state, report.notify_attempts, result) == ("failed", 1, "failed")
    assert " 535 " in detail
    assert server.failed_logins >= 1  # one attempt (the client tries each AUTH mechanism)
    assert server.conversations == 0
    assert "not-the-password" not in detail


@sqlite_only
@pytest.mark.anyio
async def test_reports_left_pending_are_sent_at_the_next_start(
    settings: Settings, clock: FakeClock, smtp: SmtpServer
) -> None:
    configured = mail_settings(settings, smtp.port)
    smtp.refuse_next(1)  # what the held conversation gets once released
    smtp.hold()
    async with rig(configured, clock, grace=0.05) as r:
        report = await report_fraud(r)
        assert await asyncio.to_thread(smtp.held.wait, 30)
        # Stopping in the middle of the SMTP conversation: bounded by the grace period.
        await asyncio.wait_for(r.mailer.close(), timeout=10)
        left = await r.fraud.get(report.id)
        r.mailer.report_filed(report.id)  # after close: deferred to the next start
    smtp.release()
    assert (left.notify_state, left.notify_attempts) == ("pending", 0)
    assert smtp.messages == []

    # The next process (default: notify on) finds the pending report and sends it.
    services = await Services.open(configured, clock=clock, push=False)
    try:
        assert services.fraud_mailer is not None
        await services.fraud_mailer.wait_idle()
        sent = await services.fraud.get(report.id)
    finally:
        await services.close()
    assert (sent.notify_state, sent.notify_attempts) == ("sent", 1)
    (received,) = smtp.messages
    assert received.message["X-OpenMFA-Fraud-Report"] == str(report.id)


@sqlite_only
@pytest.mark.anyio
async def test_close_stops_a_mail_waiting_to_retry_at_once(
    settings: Settings, clock: FakeClock, smtp: SmtpServer
) -> None:
    smtp.refuse_next(1)
    seen = LogSeen("fraud e-mail retry")
    logger = logging.getLogger("openmfa.notify")
    logger.addHandler(seen)
    try:
        async with rig(mail_settings(settings, smtp.port), clock, delays=(3600.0,)) as r:
            report = await report_fraud(r)
            await asyncio.wait_for(seen.event.wait(), 30)  # first attempt recorded, now waiting
            await asyncio.wait_for(r.mailer.close(), timeout=10)  # not an hour
            left = await r.fraud.get(report.id)
    finally:
        logger.removeHandler(seen)
    assert (left.notify_state, left.notify_attempts) == ("pending", 1)


@sqlite_only
@pytest.mark.anyio
async def test_without_fraud_mail_reports_are_stored_with_notify_state_none(
    services: Services,
) -> None:
    assert services.fraud_mailer is None
    device = await app_device(services, "alice")
    view = await services.challenges.start(ADMIN, "alice", "push", SignInContext("vpn"))
    await services.challenges.answer(ADMIN, device, view.id, Answer.FRAUD)
    (report,) = await services.fraud.list()
    assert (report.notify_state, report.notify_attempts) == ("none", 0)


# -- settings -----------------------------------------------------------------------------------


@sqlite_only
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"smtp_host": ""}, "fraud_notify_to is set but smtp_host is not"),
        ({"mail_from": ""}, "smtp_host is set but mail_from is not"),
        ({"fraud_notify_to": "soc"}, "fraud_notify_to: 'soc' is not an e-mail address"),
        ({"fraud_notify_to": "soc@example.com\r\nBcc: x@evil.test"}, "control character"),
        ({"mail_from": "OpenMFA"}, "mail_from: 'OpenMFA' is not an e-mail address"),
        ({"smtp_username": "mfa"}, "smtp_username is set but smtp_password_file is not"),
        ({"smtp_password_file": "PW"}, "smtp_password_file is set but smtp_username is not"),
        (
            {"smtp_username": "mfa", "smtp_password_file": "MISSING"},
            "cannot read smtp_password_file",
        ),
        ({"smtp_username": "mfa", "smtp_password_file": "EMPTY"}, "is empty"),
        (
            {"smtp_host": "mail.example.com", "smtp_username": "mfa", "smtp_password_file": "PW"},
            "would send the SMTP password in clear text",
        ),
        ({"smtp_ca_file": "PW"}, "smtp_ca_file is set but smtp_security is none"),
        ({"smtp_security": "starttls", "smtp_ca_file": "PW"}, "cannot use smtp_ca_file"),
    ],
)
def test_a_setup_that_cannot_work_is_refused_at_start(
    settings: Settings, tmp_path: Path, changes: dict[str, str], message: str
) -> None:
    files = {"PW": tmp_path / "pw", "MISSING": tmp_path / "missing", "EMPTY": tmp_path / "empty"}
    files["PW"].write_text("secret-pw\n")
    files["EMPTY"].write_text("\n")
    resolved = {k: files.get(v, v) if k.endswith("_file") else v for k, v in changes.items()}
    broken = mail_settings(settings, 2525, **resolved)

    with pytest.raises(ConfigurationError) as info:
        configure(broken)

    assert message in str(info.value)
    assert "secret-pw" not in str(info.value)


@sqlite_only
def test_smtp_without_a_recipient_is_allowed_and_said_at_start(settings: Settings) -> None:
    configured = mail_settings(settings, 2525, fraud_notify_to="")
    assert configure(configured) is None
    assert "fraud_notify_to is empty" in status_line(configured, None)
    assert configure(settings) is None  # nothing set up at all
    sender = MailSender.from_settings(mail_settings(settings, 2525))
    assert sender is not None
    assert sender.describe() == "127.0.0.1:2525 (none)"


@sqlite_only
@pytest.mark.anyio
async def test_services_refuse_to_open_with_a_half_done_mail_setup(
    settings: Settings, clock: FakeClock
) -> None:
    broken = settings.model_copy(update={"fraud_notify_to": "soc@example.com"})
    with pytest.raises(ConfigurationError, match="smtp_host is not"):
        await Services.open(broken, clock=clock, push=False, notify=False)
