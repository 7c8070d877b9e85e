"""What the two throw-away directory servers (samba_dc.py, slapd.py) share: a user record,
unique names, an administrator connection over verified TLS, and the bounded wait for a
server to answer a real bind."""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import ldap3
from ldap3.core.exceptions import (
    LDAPException,
    LDAPSessionTerminatedByServerError,
    LDAPSocketOpenError,
    LDAPSocketReceiveError,
    LDAPSocketSendError,
)

from tests.support.process import wait_for

Scope = Literal["BASE", "LEVEL", "SUBTREE"]


class DirectoryServer(Protocol):
    """What :func:`directory_add_args` reads of a test directory server (slapd, Samba DC)."""

    @property
    def url(self) -> str: ...
    @property
    def ca_file(self) -> Path: ...
    @property
    def bind_dn(self) -> str: ...
    @property
    def base_dn(self) -> str: ...


def directory_add_args(
    server: DirectoryServer, name: str = "corp", *, base_dn: str | None = None
) -> list[str]:
    """``openmfa directory add NAME`` towards ``server`` (its URL, CA and service account,
    the password read from stdin) with base ``base_dn`` or the server's."""
    return [
        "directory",
        "add",
        name,
        "--url",
        server.url,
        "--ca-file",
        str(server.ca_file),
        "--bind-dn",
        server.bind_dn,
        "--bind-password-stdin",
        "--base-dn",
        base_dn or server.base_dn,
    ]


@dataclass(frozen=True, slots=True)
class DirectoryUser:
    """A user a test created: its login name, its DN and the password it was given."""

    name: str
    dn: str
    password: str


def unique_name(prefix: str, limit: int = 20) -> str:
    """``prefix`` plus 8 random hex digits, at most ``limit`` characters (AD's
    sAMAccountName holds 20), so tests sharing one server never collide."""
    suffix = uuid.uuid4().hex[:8]
    return f"{prefix[: max(1, limit - 9)]}-{suffix}"


class VerifiedTls(ldap3.Tls):
    """ldap3's TLS with the standard library doing the whole check in the handshake.

    ldap3 2.9.1 turns ``check_hostname`` off and calls ``ssl.match_hostname`` afterwards,
    which is deprecated (a warning, an error under this suite's filters) and gone in Python
    3.12, where ldap3's fallback ignores IP addresses in the certificate. A default context
    with ``server_hostname`` checks the chain and the name (DNS or IP) itself.
    """

    def __init__(self, ca_file: Path) -> None:
        super().__init__(validate=ssl.CERT_REQUIRED, ca_certs_file=str(ca_file))
        self._context = ssl.create_default_context(cafile=str(ca_file))

    def wrap_socket(self, connection: ldap3.Connection, do_handshake: bool = False) -> None:
        """Wrap the connection's socket, verifying the server as ``connection.server.host``."""
        connection.socket = self._context.wrap_socket(
            connection.socket,
            server_side=False,
            do_handshake_on_connect=do_handshake,
            server_hostname=connection.server.host,
        )


def tls_for(ca_file: Path) -> ldap3.Tls:
    """A verifying TLS set-up that trusts only ``ca_file`` (host names are checked)."""
    return VerifiedTls(ca_file)


def connect(
    url: str, ca_file: Path, user: str, password: str, *, start_tls: bool = False
) -> ldap3.Connection:
    """A bound connection to ``url`` (``ldaps://`` or ``ldap://`` + StartTLS); raises
    :class:`ldap3.core.exceptions.LDAPException` when it cannot bind."""
    server = ldap3.Server(
        url,
        use_ssl=url.startswith("ldaps://"),
        tls=tls_for(ca_file),
        connect_timeout=5,
        get_info=ldap3.NONE,
    )
    conn = ldap3.Connection(
        server,
        user=user,
        password=password,
        receive_timeout=30,
        raise_exceptions=True,
        auto_bind=ldap3.AUTO_BIND_NONE,
    )
    try:
        conn.open()
        if start_tls:
            conn.start_tls()
        conn.bind()
    except BaseException:
        # ldap3 leaves the socket open when the handshake or the bind fails
        if conn.socket is not None:
            conn.socket.close()
        raise
    return conn


def wait_for_bind(
    url: str,
    ca_file: Path,
    user: str,
    password: str,
    *,
    deadline: float,
    alive: Callable[[], bool],
    log: Callable[[], str],
) -> None:
    """Poll with a real bind until it succeeds; fail with the server's log when the process
    has died or ``deadline`` (a :func:`time.monotonic` value) has passed."""
    last = ""

    def bound() -> bool:
        nonlocal last
        if not alive():
            raise RuntimeError(f"the directory server at {url} exited while starting:\n{log()}")
        try:
            connect(url, ca_file, user, password).unbind()
            return True
        except (LDAPException, OSError) as exc:
            last = f"{type(exc).__name__}: {exc}"
            return False

    wait_for(
        bound,
        deadline - time.monotonic(),
        f"the directory server at {url} to accept a bind",
        every=0.2,
        detail=lambda: f"{last}\n{log()}",
    )


class Admin:
    """One administrator connection, re-opened when it drops; calls are serialised because
    ldap3's synchronous strategy is not thread-safe and tests may call from several threads."""

    def __init__(self, opener: Callable[[], ldap3.Connection]) -> None:
        self._opener = opener
        self._conn: ldap3.Connection | None = None
        self._lock = threading.Lock()

    def run(self, operation: Callable[[ldap3.Connection], Any]) -> Any:
        """Run ``operation`` on the connection (one retry on a fresh connection if the old
        one was closed by the server)."""
        with self._lock:
            for attempt in (1, 2):
                if self._conn is None or self._conn.closed:
                    self._conn = self._opener()
                try:
                    return operation(self._conn)
                except LDAPSocketOpenError:
                    raise
                except (
                    LDAPSessionTerminatedByServerError,
                    LDAPSocketSendError,
                    LDAPSocketReceiveError,
                ):
                    self._conn = None
                    if attempt == 2:
                        raise
        raise AssertionError("unreachable")

    def search(
        self, base: str, filter_: str, attributes: Sequence[str] = (), scope: Scope = "SUBTREE"
    ) -> list[dict[str, Any]]:
        """Entries under ``base`` matching ``filter_``: ``{"dn": ..., "attributes": {...}}``."""

        def op(conn: ldap3.Connection) -> list[dict[str, Any]]:
            conn.search(base, filter_, search_scope=scope, attributes=list(attributes) or None)
            return [
                {"dn": e["dn"], "attributes": dict(e.get("attributes", {}))}
                for e in conn.response or []
                if e.get("type") == "searchResEntry"
            ]

        result: list[dict[str, Any]] = self.run(op)
        return result

    # ldap3's stubs leave add/modify/delete unannotated: the calls are wrapped here once
    def add(self, dn: str, object_class: list[str], attributes: dict[str, Any]) -> None:
        """Add an entry."""
        self.run(lambda c: c.add(dn, object_class, attributes))  # type: ignore[no-untyped-call]

    def modify(self, dn: str, changes: dict[str, Any]) -> None:
        """Modify an entry (``{attr: [(MODIFY_REPLACE, [values])]}``)."""
        self.run(lambda c: c.modify(dn, changes))  # type: ignore[no-untyped-call]

    def delete(self, dn: str) -> None:
        """Delete an entry."""
        self.run(lambda c: c.delete(dn))  # type: ignore[no-untyped-call]

    def modify_dn(self, dn: str, new_rdn: str) -> None:
        """Rename an entry in place (the old RDN value is removed)."""
        self.run(lambda c: c.modify_dn(dn, new_rdn, delete_old_dn=True))

    def close(self) -> None:
        """Unbind (best effort: the server may already be gone)."""
        with self._lock:
            if self._conn is not None and not self._conn.closed:
                with contextlib.suppress(LDAPException):
                    self._conn.unbind()
            self._conn = None
