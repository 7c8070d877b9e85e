"""The fraud e-mail: when a user reports fraud, tell the support address (``fraud_notify_to``).

:class:`FraudMailer` implements :class:`backend.notify.base.FraudNotifier`. ``report_filed``
only schedules a task and returns, so the answer that filed the report never waits for SMTP.
The task loads the report, writes the message and sends it, retrying with backoff (five
attempts over about four minutes by default) when the server is unreachable or answers 4xx;
a 5xx reply ends it at once, since the server has said it will not take the message. Each
attempt is one audit row (``fraud.notify``: ``sent``, ``retry`` or ``failed``) and updates the
report's ``notify_state`` / ``notify_attempts`` / ``notified_at``.

Nothing is lost across restarts: a report is stored ``pending`` in the transaction that files
it, and :meth:`FraudMailer.start` resends every report still ``pending`` (at worst a report is
mailed twice, if the process died between the server's "250" and the database update). The
mail names who, when, where from and with which device, and never carries a secret: no code,
no seed, no PIN, no number-matching number.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage

from sqlalchemy import select, update

from backend.config import Settings
from backend.errors import ConfigurationError, NotFound
from backend.notify.mail import MailError, MailSender, parse_addresses
from backend.services.audit import AuditLog
from backend.services.context import Actor, Clock
from backend.services.fraud import FraudReportView, load_report
from backend.services.geoip import GeoIp
from backend.store.database import Database
from backend.store.tables import fraud_reports_t
from backend.tasks import finish_within

log = logging.getLogger("openmfa.notify")

#: Pauses between attempts: 5 attempts over 3¾ minutes, then the report is marked "failed".
RETRY_DELAYS: tuple[float, ...] = (15.0, 30.0, 60.0, 120.0)
ACTOR = Actor("system:mail")


@dataclass(frozen=True, slots=True)
class FraudMailSetup:
    """A complete fraud-mail configuration: where to send and how."""

    sender: MailSender
    recipients: tuple[str, ...]


def configure(settings: Settings) -> FraudMailSetup | None:
    """Check the mail settings; ``None`` when fraud reports are not to be e-mailed.

    Raises :class:`ConfigurationError` for a half-configured setup, so that ``openmfa run``
    refuses to start instead of failing at the first fraud report.
    """
    sender = MailSender.from_settings(settings)
    if not settings.fraud_notify_to:
        return None
    if sender is None:
        raise ConfigurationError(
            "fraud_notify_to is set but smtp_host is not: set smtp_host (and smtp_port, "
            "smtp_security, mail_from) so fraud reports can be e-mailed, or clear fraud_notify_to"
        )
    return FraudMailSetup(
        sender, tuple(parse_addresses("fraud_notify_to", settings.fraud_notify_to))
    )


def status_line(settings: Settings, setup: FraudMailSetup | None) -> str:
    """What happens to fraud reports, for the start-up log."""
    if setup is not None:
        return (
            f"fraud reports are e-mailed to {', '.join(setup.recipients)} "
            f"via {setup.sender.describe()}"
        )
    if settings.smtp_host:
        return "smtp_host is set but fraud_notify_to is empty: fraud reports are not e-mailed"
    return "fraud reports are not e-mailed (fraud_notify_to is empty); they are stored and audited"


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


class FraudMailer:
    """E-mails each fraud report in the background, with bounded retries."""

    def __init__(
        self,
        db: Database,
        audit: AuditLog,
        clock: Clock,
        setup: FraudMailSetup,
        *,
        issuer: str = "OpenMFA",
        geoip: GeoIp | None = None,
        retry_delays: Sequence[float] = RETRY_DELAYS,
        close_grace: float = 5.0,
    ) -> None:
        self._db = db
        self._audit = audit
        self._clock = clock
        self._sender = setup.sender
        self._recipients = setup.recipients
        self._issuer = issuer
        self._geoip = geoip
        self._delays = tuple(retry_delays)
        self._close_grace = close_grace
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._busy: set[int] = set()  # reports in an SMTP conversation or its bookkeeping
        self._closed = False
        self.counts: Counter[str] = Counter()  # attempts by result, for metrics

    @property
    def attempts(self) -> int:
        """How many times one report is tried at most."""
        return len(self._delays) + 1

    async def start(self, resend: bool = True) -> int:
        """Start; with ``resend``, resend the reports an earlier process left ``pending``:
        how many there were. On several nodes only the holder of the "fraud-mail" lease
        resends (:meth:`resend_pending`, run by ``openmfa run`` as a leased duty)."""
        return await self.resend_pending() if resend else 0

    async def resend_pending(self) -> int:
        """Schedule the e-mail of every report still ``pending``: how many there were.

        Reports are not claimed row by row (no ``next_attempt_at`` like account notices have):
        a report that another live node is still retrying is mailed once more by the resender.
        Hence the lease: only one node resends, once when it takes the lease over."""
        async with self._db.read() as conn:
            ids = [
                int(row.id)
                for row in (
                    await conn.execute(
                        select(fraud_reports_t.c.id)
                        .where(fraud_reports_t.c.notify_state == "pending")
                        .order_by(fraud_reports_t.c.id)
                    )
                ).all()
            ]
        if ids:
            log.info("resending the e-mail of %d fraud report(s) left pending", len(ids))
        for report_id in ids:
            self.report_filed(report_id)
        return len(ids)

    def report_filed(self, report_id: int) -> None:
        """Schedule the e-mail of report ``report_id`` and return at once."""
        if self._closed:
            # Shutting down: the report stays "pending" and the next start sends it.
            log.warning("fraud report %d: e-mail deferred to the next start", report_id)
            return
        if report_id in self._tasks:
            return  # already on its way
        task = asyncio.get_running_loop().create_task(
            self._deliver(report_id), name=f"fraud-mail-{report_id}"
        )
        self._tasks[report_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(report_id, None))

    async def wait_idle(self) -> None:
        """Until every scheduled e-mail is sent or given up (tests, orderly shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)

    async def close(self) -> None:
        """Stop: an e-mail in the middle of its SMTP conversation gets ``close_grace`` seconds
        to finish; one waiting to retry is stopped at once (it stays ``pending`` and the next
        start sends it)."""
        self._closed = True
        tasks = dict(self._tasks)
        for report_id, task in tasks.items():
            if report_id not in self._busy:
                task.cancel()
        await finish_within(
            tasks.values(),
            self._close_grace,
            log,
            "fraud report e-mail cut short at shutdown; resent at the next start",
        )

    # -- one report -------------------------------------------------------------------------

    async def _deliver(self, report_id: int) -> None:
        try:
            report = await self._load(report_id)
            if report is None or report.notify_state != "pending":
                return  # gone with its user, or handled by another process meanwhile
            message = self.compose(report)
            for attempt in range(1, self.attempts + 1):
                self._busy.add(report_id)
                try:
                    delay = await self._attempt(report, message, attempt)
                finally:
                    self._busy.discard(report_id)
                if delay is None:
                    return
                await asyncio.sleep(delay)  # the backoff itself, not a synchronisation
        except asyncio.CancelledError:
            raise
        except Exception:
            # A database failure while recording: the report stays "pending" for the next start.
            log.exception(
                "fraud report %d: e-mail not completed; retried at the next start", report_id
            )

    async def _attempt(
        self, report: FraudReportView, message: EmailMessage, attempt: int
    ) -> float | None:
        """One send, recorded; the pause before the next attempt, or ``None`` when done."""
        try:
            reply = await self._sender.send(self._recipients, message)
        except MailError as exc:
            if exc.permanent or attempt == self.attempts:
                await self._record(report, attempt, "failed", exc.reason)
                return None
            delay = self._delays[attempt - 1]
            await self._record(
                report, attempt, "retry", f"{exc.reason}; next attempt in {delay:g} s"
            )
            return delay
        await self._record(report, attempt, "sent", reply)
        return None

    async def _load(self, report_id: int) -> FraudReportView | None:
        async with self._db.read() as conn:
            try:
                return await load_report(conn, report_id)
            except NotFound:
                return None

    def compose(self, report: FraudReportView) -> EmailMessage:
        """The message for ``report``: plain text, facts only, no secret of any kind."""
        where = report.client_ip or "-"
        location = self._geoip.locate(report.client_ip) if self._geoip else None
        if location is not None:
            where += " (" + ", ".join(part for part in location if part) + ")"
        if report.device_id:
            device = f"{report.device_name or 'unnamed device'} ({report.device_id}"
            device += f", {report.device_platform})" if report.device_platform else ")"
            reported_with = ["the app", f"Device:       {device}"]
        else:
            reported_with = ['the user portal ("this wasn\'t me")']
        user = report.user_name
        if report.display_name:
            user += f" ({report.display_name})"
        if report.user_email:
            user += f" <{report.user_email}>"
        ended = ""
        if report.challenge_state and report.challenge_state != "fraud":
            # Reported afterwards ("this wasn't me"): say how the sign-in had ended.
            ended = report.challenge_state
            if report.answered_by:
                ended += f" (by {report.answered_by})"
        account = (
            ["BLOCKED until an administrator unblocks the user"]
            if report.user_blocked
            else [
                "not blocked (policy fraud_blocks_user is off);",
                "pushes stay muted while the report is open",
            ]
        )
        # Lines under 78 characters: the message then goes as plain 7-bit text.
        lines = [
            f"{report.user_name} reported a sign-in they did not start.",
            "",
            f"Report:       #{report.id}",
            f"Reported at:  {_when(report.created_at)}",
            f"User:         {user}",
            f"Reported via: {reported_with[0]}",
            *reported_with[1:],
            f"Sign-in:      {report.challenge_id} ({report.method or '-'})",
            f"Started:      {_when(report.started_at)}",
            *([f"Ended as:     {ended}"] if ended else []),
            f"Gateway:      {report.client_name or '-'}",
            f"Client IP:    {where}",
            f"NAS:          {report.nas_identifier or '-'}",
            f"Account:      {account[0]}",
            *(f"              {more}" for more in account[1:]),
            "",
            "Someone may know this user's password. Check the gateway's logs",
            "for the client IP, have the password reset, then act on the report:",
            "",
            "  openmfa fraud list",
            f"  openmfa user show {report.user_name}",
            f"  openmfa fraud review {report.id}",
            f"  openmfa user unblock {report.user_name}   # once the account is safe",
            "",
            f"-- {self._issuer} (this message is sent automatically; it holds no secret)",
        ]
        return self._sender.compose(
            self._recipients,
            f"[{self._issuer}] Fraud reported by {report.user_name} (report #{report.id})",
            "\n".join(lines) + "\n",
            {"X-OpenMFA-Fraud-Report": str(report.id)},
        )

    async def _record(
        self, report: FraudReportView, attempt: int, result: str, detail: str
    ) -> None:
        self.counts[result] += 1
        values: dict[str, object] = {"notify_attempts": fraud_reports_t.c.notify_attempts + 1}
        if result == "sent":
            values |= {"notify_state": "sent", "notified_at": self._clock()}
        elif result == "failed":
            values["notify_state"] = "failed"
        text = (
            f"report {report.id} attempt {attempt}/{self.attempts} "
            f"to {', '.join(self._recipients)}: {detail}"
        )
        async with self._db.write() as conn:
            await conn.execute(
                update(fraud_reports_t).where(fraud_reports_t.c.id == report.id).values(**values)
            )
            await self._audit.add(conn, ACTOR, "fraud.notify", result, report.user_key, text)
        level = logging.INFO if result == "sent" else logging.WARNING
        log.log(level, "fraud e-mail %s: %s", result, text)
