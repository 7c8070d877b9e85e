"""HTTPS without a proxy: the server's TLS context, and its reload when the files are renewed.

The listening context never changes; a callback run at each ClientHello hands the new
connection the context made from the files as last loaded. A reload builds a whole new
context and swaps it in only once it loaded completely, so a bad renewal (a missing file, a
key that does not match) leaves the old certificate in service, and connections already
open keep the one they were made with. Loading a new chain into the live context instead
would leave it half-changed when the key fails to load, and would keep serving the old
certificate to clients that prefer its key type when the new one's differs.
"""

from __future__ import annotations

import logging
import ssl
from datetime import UTC, datetime
from pathlib import Path

from backend.errors import ConfigurationError

log = logging.getLogger("openmfa.tls")


class _Encrypted(Exception):
    """Raised from the password callback: OpenSSL would otherwise ask on the terminal."""


def _no_password() -> str:
    raise _Encrypted


def _readable(path: Path, what: str) -> None:
    try:
        with path.open("rb") as handle:
            handle.read(1)
    except FileNotFoundError:
        raise ConfigurationError(f"the TLS {what} file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigurationError(f"the TLS {what} file {path} is a directory") from None
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read the TLS {what} file {path}: {exc.strerror or exc}"
        ) from None


def load_context(cert_file: Path, key_file: Path | None) -> ssl.SSLContext:
    """A server context for ``cert_file`` (the certificate, then its chain) and ``key_file``
    (``None``: the key is in ``cert_file``), or :class:`ConfigurationError` saying which
    file is wrong. TLS 1.2 and later, Python's default (server-preferred) cipher choice."""
    return _load(cert_file, key_file)[0]


def describe(cert_file: Path, key_file: Path | None) -> tuple[str, datetime]:
    """The certificate's subject and the end of its validity, after loading it exactly as the
    server does (:class:`ConfigurationError` as :func:`load_context` raises it)."""
    _, subject, not_after = _load(cert_file, key_file)
    return subject, not_after


def _load(cert_file: Path, key_file: Path | None) -> tuple[ssl.SSLContext, str, datetime]:
    """The context, the certificate's subject and the end of its validity."""
    from cryptography import x509

    _readable(cert_file, "certificate")
    if key_file is not None:
        _readable(key_file, "key")
    try:
        first = x509.load_pem_x509_certificates(cert_file.read_bytes())[0]
    except (ValueError, IndexError):
        raise ConfigurationError(
            f"the TLS certificate file {cert_file} holds no PEM certificate"
        ) from None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    key_shown = key_file or cert_file
    try:
        context.load_cert_chain(cert_file, key_file, password=_no_password)
    except _Encrypted:
        raise ConfigurationError(
            f"the TLS key {key_shown} is encrypted; give the server an unencrypted key "
            "(readable only by its user)"
        ) from None
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in (exc.reason or ""):
            problem = f"the TLS key {key_shown} does not belong to the certificate in {cert_file}"
        else:
            problem = (
                f"the TLS key file {key_shown} holds no usable PEM private key "
                f"({exc.reason or exc})"
            )
        raise ConfigurationError(problem) from None
    return context, first.subject.rfc4514_string(), first.not_valid_after_utc


class ServerTls:
    """The HTTPS server's TLS: :attr:`context` for the listener, :meth:`reload` on SIGHUP."""

    def __init__(self, cert_file: Path, key_file: Path | None) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.current, self.subject, self.not_after = _load(cert_file, key_file)
        self.context = self.current
        self.context.sni_callback = self._choose
        self._warn_if_expired()

    def _choose(
        self, connection: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext
    ) -> None:
        # Called at every ClientHello (with None when the client sends no server name).
        if connection.context is not self.current:
            connection.context = self.current

    def reload(self) -> bool:
        """Load the files again; serve them to new connections if they load, else keep the
        certificate in service and log why. True when the new files are in service."""
        try:
            context, subject, not_after = _load(self.cert_file, self.key_file)
        except (ConfigurationError, OSError) as exc:
            log.error("TLS reload failed, still serving %s: %s", self.subject, exc)
            return False
        self.current, self.subject, self.not_after = context, subject, not_after
        log.info("TLS certificate reloaded: %s, valid until %s", subject, not_after.isoformat())
        self._warn_if_expired()
        return True

    def describe(self) -> str:
        """One line for the start-up log."""
        return f"{self.subject}, valid until {self.not_after.isoformat()}"

    def _warn_if_expired(self) -> None:
        if self.not_after <= datetime.now(UTC):
            log.warning(
                "the TLS certificate %s expired on %s: clients will refuse it",
                self.subject,
                self.not_after.isoformat(),
            )
