"""A small e-mail sender over SMTP (``aiosmtplib``), built once from the settings.

Everything that can be wrong with the mail settings is found when the sender is built, at
start: a missing server or sender address, a password file that cannot be read, a CA file
that is not one. Sending then makes exactly one attempt and classifies a failure as worth
retrying (connection trouble, timeouts, 4xx replies) or not (5xx replies, a server without
STARTTLS); retrying is the caller's business. The password is read once and is never logged,
printed or put into an error message.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, getaddresses, make_msgid, parseaddr
from pathlib import Path
from typing import TYPE_CHECKING

from backend.config import Settings
from backend.domain.emails import is_email
from backend.errors import ConfigurationError

if TYPE_CHECKING:
    import aiosmtplib

SEND_TIMEOUT = 30.0  # seconds for one whole SMTP conversation step (connect, each command)

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class MailError(Exception):
    """One send failed. ``reason`` is safe to log and audit (the server's reply or the kind of
    network failure, never a credential); ``permanent`` says a retry cannot help."""

    def __init__(self, reason: str, permanent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


def parse_addresses(setting: str, value: str) -> list[str]:
    """A comma-separated list of plain addresses; :class:`ConfigurationError` names the bad one."""
    if _CONTROL.search(value):
        raise ConfigurationError(f"{setting} contains a control character")
    addresses: list[str] = []
    for name, address in getaddresses([value]):
        # The parser quietly drops what it cannot read ("a@exa mple.com" -> "a@exa"): the
        # address must also stand in the setting exactly as written.
        if not is_email(address) or address not in value:
            shown = f"{name} <{address}>" if name else address
            raise ConfigurationError(f"{setting}: {shown!r} is not an e-mail address")
        addresses.append(address)
    if not addresses:
        raise ConfigurationError(f"{setting} holds no e-mail address")
    return addresses


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read_password(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        # The exception text names the file and the reason, never its content.
        raise ConfigurationError(f"cannot read smtp_password_file {path}: {exc}") from exc
    password = text.rstrip("\r\n")
    if not password:
        raise ConfigurationError(f"smtp_password_file {path} is empty")
    if "\n" in password or "\r" in password:
        raise ConfigurationError(f"smtp_password_file {path} must hold a single line")
    return password


def _tls_context(ca_file: Path | None) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"cannot use smtp_ca_file {ca_file}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class _Credentials:
    username: str
    password: str

    def __repr__(self) -> str:  # keeps the password out of reprs and tracebacks' locals
        return f"_Credentials(username={self.username!r}, password=<hidden>)"


class MailSender:
    """Sends plain-text messages through one SMTP server, one attempt per :meth:`send`."""

    def __init__(
        self,
        host: str,
        port: int,
        security: str,
        mail_from: str,
        username: str = "",
        password: str = "",
        ca_file: Path | None = None,
        timeout: float = SEND_TIMEOUT,
    ) -> None:
        if security not in ("starttls", "tls", "none"):
            raise ConfigurationError("smtp_security must be starttls, tls or none")
        self.host = host
        self.port = port
        self.security = security
        self.mail_from = mail_from
        self.envelope_from = parseaddr(mail_from)[1]
        self._credentials = _Credentials(username, password) if username else None
        self._tls = _tls_context(ca_file) if security != "none" else None
        self._timeout = timeout

    @classmethod
    def from_settings(cls, settings: Settings) -> MailSender | None:
        """The sender the settings describe, or ``None`` when ``smtp_host`` is empty.

        Raises :class:`ConfigurationError` for a setup that cannot work (see the module doc).
        """
        if not settings.smtp_host:
            return None
        if _CONTROL.search(settings.smtp_host) or " " in settings.smtp_host:
            raise ConfigurationError("smtp_host must be a host name or an address")
        if not settings.mail_from:
            raise ConfigurationError(
                "smtp_host is set but mail_from is not: set the sender address of the e-mails"
            )
        parse_addresses("mail_from", settings.mail_from)
        username, password_file = settings.smtp_username, settings.smtp_password_file
        if username and password_file is None:
            raise ConfigurationError(
                "smtp_username is set but smtp_password_file is not: "
                "put the password in a file readable by the server only and name it"
            )
        if password_file is not None and not username:
            raise ConfigurationError("smtp_password_file is set but smtp_username is not")
        if settings.smtp_security == "none":
            if settings.smtp_ca_file is not None:
                raise ConfigurationError(
                    "smtp_ca_file is set but smtp_security is none: nothing would use it"
                )
            if username and not _is_loopback(settings.smtp_host):
                raise ConfigurationError(
                    "smtp_security none would send the SMTP password in clear text over the "
                    "network; use starttls or tls"
                )
        password = _read_password(password_file) if password_file is not None else ""
        return cls(
            settings.smtp_host,
            settings.smtp_port,
            settings.smtp_security,
            settings.mail_from,
            username,
            password,
            settings.smtp_ca_file,
        )

    def describe(self) -> str:
        """Where mail goes, for the start-up log (no credential)."""
        who = f" as {self._credentials.username}" if self._credentials else ""
        return f"{self.host}:{self.port} ({self.security}{who})"

    def __repr__(self) -> str:
        return f"MailSender({self.describe()})"

    def compose(
        self,
        recipients: Sequence[str],
        subject: str,
        body: str,
        headers: Mapping[str, str] | None = None,
    ) -> EmailMessage:
        """A plain-text message from ``mail_from``; header values lose control characters.

        Raises :class:`MailError` (permanent) for a recipient that is not a plain address:
        whatever stored it, it never reaches a header.
        """
        for recipient in recipients:
            if not is_email(recipient):
                raise MailError("the recipient is not a valid e-mail address", permanent=True)
        message = EmailMessage()
        message["From"] = self.mail_from
        message["To"] = ", ".join(recipients)
        message["Subject"] = _CONTROL.sub(" ", subject)
        message["Date"] = formatdate(localtime=False, usegmt=True)
        domain = Address(addr_spec=self.envelope_from).domain if self.envelope_from else None
        message["Message-ID"] = make_msgid(domain=domain or None)
        # RFC 3834: a machine wrote this; auto-responders must not answer it.
        message["Auto-Submitted"] = "auto-generated"
        for name, value in (headers or {}).items():
            message[name] = _CONTROL.sub(" ", value)
        message.set_content(body)
        return message

    def _client(self) -> aiosmtplib.SMTP:
        """A client for one conversation with the configured server and credentials."""
        # Imported here: `openmfa` commands build a sender to check the settings but never send.
        import aiosmtplib

        return aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            username=self._credentials.username if self._credentials else None,
            password=self._credentials.password if self._credentials else None,
            use_tls=self.security == "tls",
            start_tls=self.security == "starttls",
            tls_context=self._tls,
            timeout=self._timeout,
        )

    async def probe(self) -> None:
        """Connect, STARTTLS or TLS and log in as :meth:`send` would, then QUIT; sends nothing.

        For ``openmfa doctor``: raises ``aiosmtplib.SMTPException`` or ``OSError``.
        """
        client = self._client()
        try:
            await client.connect()
            await client.quit()
        finally:
            client.close()

    async def send(self, recipients: Sequence[str], message: EmailMessage) -> str:
        """One attempt to deliver ``message``; the server's final reply, or :class:`MailError`."""
        import aiosmtplib

        client = self._client()
        try:
            try:
                await client.connect()  # and STARTTLS, and the login
                _, reply = await client.send_message(
                    message, sender=self.envelope_from, recipients=list(recipients)
                )
            except BaseException:
                # Drop the connection at once, without a QUIT: after a failure the server's
                # goodbye does not matter, and a cancelled send (shutdown) must not wait for it.
                client.close()
                raise
            try:
                await client.quit()
            except (aiosmtplib.SMTPException, OSError):
                pass  # the message was accepted; how the goodbye went does not matter
            finally:
                client.close()
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            reason = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
            raise MailError(f"recipients refused: {reason}", all(c >= 500 for c in codes)) from exc
        except aiosmtplib.SMTPResponseException as exc:
            # 4xx: the server asks to try later; 5xx: it will not take this message.
            raise MailError(f"{exc.code} {exc.message}", exc.code >= 500) from exc
        except aiosmtplib.SMTPNotSupported as exc:
            # e.g. no STARTTLS or no AUTH on this server: a setting to fix, not a blip.
            raise MailError(f"not supported by the server: {exc}", permanent=True) from exc
        except ssl.SSLError as exc:
            raise MailError(f"TLS failed: {exc}", permanent=False) from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise MailError(f"{type(exc).__name__}: {exc}", permanent=False) from exc
        return str(reply).strip()
