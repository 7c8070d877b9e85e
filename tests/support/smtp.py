"""A real SMTP server on 127.0.0.1 (``aiosmtpd`` in a thread of its own) that records what it
receives, for the fraud e-mail tests.

    with SmtpServer() as smtp:
        ...  # point smtp_host / smtp_port at smtp.port
        smtp.wait_for(1)
        message = smtp.messages[0].message

It can refuse the next messages with a reply of your choice, hold a message in the middle of
its SMTP conversation until the test releases it (to show that nothing waits for the mail),
require STARTTLS with a certificate from :mod:`tests.fakes.tls`, and require a login.
"""

from __future__ import annotations

import email
import email.policy
import threading
from dataclasses import dataclass
from email.message import EmailMessage
from types import TracebackType
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.fakes.tls import TlsFiles
from tests.support.process import free_port


@dataclass(frozen=True, slots=True)
class Received:
    """One accepted message: the envelope and the parsed message."""

    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    raw: str
    tls: bool
    login: str | None


class _Handler:
    def __init__(self, server: SmtpServer) -> None:
        self._server = server

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        owner = self._server
        with owner._lock:
            owner.conversations += 1
            reply = owner._refusals.pop(0) if owner._refusals else None
            hold = owner._hold
        if hold is not None:
            owner.held.set()
            # Waits in a worker thread so the test thread can release it; bounded.
            released = await server.loop.run_in_executor(None, hold.wait, 30)
            if not released:
                return "451 4.3.0 held too long by the test"
        if reply is not None:
            return reply
        raw = envelope.content.decode("utf-8") if isinstance(envelope.content, bytes) else ""
        parsed = email.message_from_string(raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        login = session.auth_data if isinstance(session.auth_data, str) else None
        received = Received(
            envelope.mail_from,
            list(envelope.rcpt_tos),
            parsed,
            raw,
            session.ssl is not None,
            login,
        )
        with owner._changed:
            owner.messages.append(received)
            owner._changed.notify_all()
        return "250 2.0.0 OK queued as test"


class SmtpServer:
    """``with SmtpServer(tls=..., login=("user", "pw")) as smtp:`` (STARTTLS required when
    ``tls`` is given; AUTH required when ``login`` is)."""

    def __init__(
        self, tls: TlsFiles | None = None, login: tuple[str, str] | None = None, port: int = 0
    ) -> None:
        self.port = port or free_port()
        self.messages: list[Received] = []
        self.conversations = 0  # DATA commands seen, accepted or not
        self.failed_logins = 0
        self.held = threading.Event()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._refusals: list[str] = []
        self._hold: threading.Event | None = None
        self._login = login
        kwargs: dict[str, Any] = {}
        if tls is not None:
            kwargs |= {"tls_context": tls.server_context(), "require_starttls": True}
        if login is not None:
            kwargs |= {
                "authenticator": self._authenticate,
                "auth_required": True,
                "auth_require_tls": tls is not None,
            }
        self._controller = Controller(
            _Handler(self), hostname="127.0.0.1", port=self.port, **kwargs
        )

    def _authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = (
            isinstance(auth_data, LoginPassword)
            and self._login is not None
            and (auth_data.login.decode(), auth_data.password.decode()) == self._login
        )
        if not ok:
            with self._lock:
                self.failed_logins += 1
        return AuthResult(
            success=ok, handled=False, auth_data=auth_data.login.decode() if ok else None
        )

    def refuse_next(self, count: int, reply: str = "451 4.3.0 try again later") -> None:
        """Answer the next ``count`` messages' DATA with ``reply`` instead of accepting them."""
        with self._lock:
            self._refusals.extend([reply] * count)

    def hold(self) -> None:
        """Keep the next messages waiting after DATA until :meth:`release`."""
        with self._lock:
            self._hold = threading.Event()
        self.held.clear()

    def release(self) -> None:
        with self._lock:
            hold, self._hold = self._hold, None
        if hold is not None:
            hold.set()

    def wait_for(self, count: int, timeout: float = 30) -> list[Received]:
        """Until ``count`` messages were accepted (fails after ``timeout`` seconds)."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.messages) >= count, timeout):
                raise AssertionError(
                    f"timed out after {timeout} s waiting for {count} e-mail(s); "
                    f"got {len(self.messages)}"
                )
            return list(self.messages)

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self.release()
        self._controller.stop()

    def __enter__(self) -> SmtpServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
