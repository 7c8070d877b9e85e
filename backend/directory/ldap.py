"""The LDAP adapter: :class:`LdapDirectory` implements :class:`DirectoryReader` with ldap3.

ldap3 is synchronous; every LDAP operation runs in this directory's own small thread pool
(``max_workers`` threads), so a slow or dead domain controller never blocks the event loop and
never holds up anything but its own directory's work. ldap3 is pure Python (no libldap, no C
build), so the wheel and the container stay as they are.

Security, in one place:

- TLS always: ``ldaps://`` from the first byte, ``ldap://`` upgraded with StartTLS before the
  bind (a failed StartTLS is a failed server, never a plain bind). Our own SSL context: the
  configured CA (or the system's trust store), host name checked, TLS 1.2 or newer.
- Every value put into a filter is escaped (RFC 4515); the administrator's own filter was
  checked when stored (:mod:`backend.directory.settings`).
- An empty password is refused before any bind (a simple bind with an empty password is an
  anonymous bind, which "succeeds").
- Passwords are never logged and never put into exceptions or results: the messages built here
  carry the directory's diagnostic text and the URL only.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import re
import ssl
import threading
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import ldap3
from ldap3.core.exceptions import (
    LDAPCommunicationError,
    LDAPException,
    LDAPResponseTimeoutError,
    LDAPStartTLSError,
)
from ldap3.utils.dn import parse_dn

from backend.directory.config import DirectoryConfig, Kind
from backend.directory.entries import (
    DISABLED_IN_DIRECTORY,
    EXPIRED_IN_DIRECTORY,
    DirectoryEntry,
)
from backend.directory.reader import BindOutcome, BindResult, TestReport
from backend.directory.settings import split_url
from backend.errors import DirectoryError, DirectoryUnavailable

log = logging.getLogger("openmfa.directory")
T = TypeVar("T")

AD_CAPABILITY: Final = "1.2.840.113556.1.4.800"  # LDAP_CAP_ACTIVE_DIRECTORY_OID
IN_CHAIN: Final = "1.2.840.113556.1.4.1941"  # LDAP_MATCHING_RULE_IN_CHAIN
PAGED_RESULTS: Final = "1.2.840.113556.1.4.319"  # RFC 2696 simple paged results
AD_USERS: Final = "(&(objectCategory=person)(objectClass=user))"  # not computer accounts
LDAP_USERS: Final = "(|(objectClass=inetOrgPerson)(objectClass=posixAccount))"
UAC_ACCOUNTDISABLE: Final = 0x2
FILETIME_NEVER: Final = (0, 0x7FFFFFFFFFFFFFFF)
FILETIME_EPOCH_OFFSET: Final = 11644473600  # seconds from 1601-01-01 to 1970-01-01
DOWN_FOR: Final = 30.0  # seconds a failed server is tried after the others
CERTIFICATE_HINT: Final = "certificate not trusted: give --ca-file"

#: AD's "data NNN" in the diagnostic message of a refused bind (invalidCredentials, 49).
AD_DATA_CODES: Final[dict[str, BindOutcome]] = {
    "52e": "wrong-password",
    "525": "no-such-user",
    "533": "disabled",
    "775": "locked",
    "701": "expired",
    "532": "password-expired",
    "773": "must-change",
    "530": "not-permitted",  # not permitted to log on at this time
    "531": "not-permitted",  # not permitted to log on at this workstation
}
_DATA_CODE = re.compile(r"\bdata ([0-9a-fA-F]{1,8})\b")


def bind_refusal_outcome(description: str, message: str) -> BindOutcome:
    """What a refused bind means, from the result's description and diagnostic message.

    AD and Samba put the reason into the message (``... AcceptSecurityContext error, data 52e,
    v4563``); OpenLDAP says only ``invalidCredentials`` (49), which is a wrong password (or an
    unknown DN, which the search before the bind has ruled out). Anything else is a refusal we
    do not name more precisely.
    """
    match = _DATA_CODE.search(message)
    if match is not None:
        return AD_DATA_CODES.get(match[1].lower(), "not-permitted")
    if description == "invalidCredentials":
        return "wrong-password"
    return "not-permitted"


_PLAIN = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_@+=, ")


def escape_value(value: str) -> str:
    """A value for an LDAP filter (RFC 4515): every byte of its UTF-8 form that is not a
    letter, digit or one of ``.-_@+=,`` as ``\\xx``. More than the RFC's minimum
    (``*()\\`` and NUL): ldap3 strips surrounding white space and control characters from
    filter values, so those are escaped too and a name is matched exactly as given."""
    data = value.encode("utf-8")
    if value.strip() != value:
        # Leading/trailing spaces escaped as well: ldap3 would trim them.
        return "".join(chr(b) if b in _PLAIN and b != 0x20 else f"\\{b:02x}" for b in data)
    return "".join(chr(b) if b in _PLAIN else f"\\{b:02x}" for b in data)


def escape_bytes(value: bytes) -> str:
    """Raw bytes (AD's objectGUID) for a filter: every byte as ``\\xx``."""
    return "".join(f"\\{b:02x}" for b in value)


def dn_key(dn: str) -> str:
    """A DN in a form two spellings of it compare equal in (case, spaces)."""
    try:
        parts = parse_dn(dn, escape=False, strip=True)
    except (LDAPException, ValueError, IndexError):
        return dn.strip().casefold()
    return ",".join(f"{a.strip().casefold()}={v.strip().casefold()}" for a, v, _ in parts)


def filetime_expired(value: int, now: float) -> bool:
    """AD's ``accountExpires`` (100 ns since 1601; 0 and 2**63-1 mean never) is past."""
    if value in FILETIME_NEVER or value < 0:
        return False
    return value / 10_000_000 - FILETIME_EPOCH_OFFSET <= now


def detect_kind(root_dse: dict[str, list[bytes]]) -> Kind:
    """``ad`` for Active Directory (and Samba AD), from the root DSE; else ``ldap``."""
    capabilities = {v.decode("ascii", "replace") for v in root_dse.get("supportedcapabilities", [])}
    if AD_CAPABILITY in capabilities or root_dse.get("forestfunctionality"):
        return "ad"
    return "ldap"


def describe_vendor(root_dse: dict[str, list[bytes]], kind: Kind) -> str:
    """A line for the operator: vendor name and version, or AD's functional level."""
    vendor = " ".join(
        _text(root_dse.get(k, [])) for k in ("vendorname", "vendorversion") if root_dse.get(k)
    )
    if kind == "ad":
        level = _text(root_dse.get("forestfunctionality", []))
        ad = f"Active Directory (forest functional level {level or '?'})"
        return f"{ad}, {vendor}" if vendor else ad
    return vendor or "LDAP"


def _text(values: list[bytes]) -> str:
    return values[0].decode("utf-8", "replace") if values else ""


def _uid_text(value: bytes) -> str:
    return value.decode("utf-8", "replace").strip()


# -- TLS ------------------------------------------------------------------------------------------


def tls_context(ca_pem: str | None) -> ssl.SSLContext:
    """Verification on, host name checked, TLS >= 1.2; the private CA alone when given."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca_pem or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


class _VerifiedTls(ldap3.Tls):
    """ldap3's TLS with our context: ldap3's own turns the context's host name check off and
    checks afterwards (and only on some paths); here the handshake itself checks it."""

    def __init__(self, context: ssl.SSLContext, host: str) -> None:
        super().__init__(validate=ssl.CERT_REQUIRED)
        self._context = context
        self._host = host

    def wrap_socket(self, connection: Any, do_handshake: bool = False) -> None:
        connection.socket = self._context.wrap_socket(
            connection.socket,
            server_side=False,
            do_handshake_on_connect=do_handshake,
            server_hostname=self._host,
        )


# -- failures -------------------------------------------------------------------------------------


class _Refused(Exception):
    """A bind the server answered with a refusal (not a connection problem)."""

    def __init__(self, description: str, message: str) -> None:
        super().__init__(description)
        self.description = description
        self.message = message


_CONNECTION_ERRORS = (
    LDAPCommunicationError,
    LDAPResponseTimeoutError,
    LDAPStartTLSError,
    ssl.SSLError,
    OSError,
)


def _why(exc: BaseException) -> str:
    """One short line about a connection failure (never holds a password: ldap3's messages
    carry the socket error and the server's address only)."""
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        lowered = text.lower()
        if "mismatch" in lowered:  # "Hostname mismatch" / "IP address mismatch"
            return (
                "the server's certificate does not name the host of the URL: use a name the "
                "certificate has"
            )
        if "expired" in lowered or "not yet valid" in lowered:
            return "the server's certificate has expired or is not yet valid"
        return f"{CERTIFICATE_HINT} (it does not chain to a trusted CA)"
    if isinstance(exc, LDAPStartTLSError):
        return "StartTLS failed: " + (text[:160] or type(exc).__name__)
    return (text or type(exc).__name__)[:200]


# -- the adapter ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Membership:
    """How "member of the group" is decided: a filter clause the server evaluates, or a set
    of DNs / ``uid`` values we check ourselves (LDAP servers without the memberOf overlay)."""

    clause: str = ""
    dns: frozenset[str] | None = None
    uids: frozenset[str] | None = None

    def admits(self, dn: str, attrs: dict[str, list[bytes]]) -> bool:
        if self.dns is not None:
            return dn_key(dn) in self.dns
        if self.uids is not None:
            return any(_uid_text(v) in self.uids for v in attrs.get("uid", []))
        return True


@dataclass(slots=True)
class _Paging:
    url: str
    conn: Any
    kind: Kind
    vendor: str
    filter: str
    attributes: list[str]
    members: _Membership
    admin_dns: frozenset[str] | None
    admin_members: _Membership | None
    cookie: bytes | None = None
    done: bool = False
    healthy: bool = True
    seen: int = field(default=0)


class LdapDirectory:
    """One directory over LDAP: pooled service-account connections, failover across URLs.

    ``max_workers`` threads do this directory's LDAP work; at most ``max_waiting`` password
    checks wait for one (more are answered ``unavailable`` at once: a slow or dead DC must
    not pile up requests). ``clock`` gives Unix seconds (accountExpires is compared to it).
    """

    def __init__(
        self,
        config: DirectoryConfig,
        bind_password: str,
        *,
        max_workers: int = 4,
        max_waiting: int = 64,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._password = bind_password
        self._clock = clock
        self._context = tls_context(config.ca_pem)
        self._executor = ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix=f"ldap-{config.name}"
        )
        self._max_idle = max_workers
        self._admit = max_workers + max_waiting
        self._checking = 0  # password checks running or waiting (event loop only)
        self._idle: list[tuple[str, Any]] = []
        self._lock = threading.Lock()
        self._down: dict[str, float] = {}  # URL -> until when it is tried last (monotonic)
        self._memberof: dict[str, bool] = {}  # group DN key -> the server evaluates memberOf
        self._closed = False

    # -- the thread pool ------------------------------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise DirectoryUnavailable(f"the directory {self.config.name} is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    # -- connections (in threads) ---------------------------------------------------------------

    def _connect(self, url: str, dn: str, password: str) -> Any:
        """A bound connection to ``url``; :class:`_Refused` for a refused bind, a connection
        error (``_CONNECTION_ERRORS``) when the server cannot be used."""
        ldaps, host, port = split_url(url)
        server = ldap3.Server(
            host,
            port=port,
            use_ssl=ldaps,
            tls=_VerifiedTls(self._context, host),
            get_info=ldap3.NONE,
            connect_timeout=self.config.connect_timeout,
        )
        conn = ldap3.Connection(
            server,
            user=dn,
            password=password,
            authentication=ldap3.SIMPLE,
            auto_bind=ldap3.AUTO_BIND_NONE,
            client_strategy=ldap3.SYNC,
            auto_referrals=False,
            read_only=True,
            raise_exceptions=False,
            receive_timeout=math.ceil(self.config.search_timeout),  # ldap3 packs it as an int
            auto_escape=False,  # we escape every value ourselves
            check_names=False,
            return_empty_attributes=False,
        )
        try:
            conn.open(read_server_info=False)
            if not ldaps and not conn.start_tls(read_server_info=False):
                raise LDAPStartTLSError(f"StartTLS refused: {conn.result.get('description')}")
            if not conn.bind(read_server_info=False):
                result = conn.result or {}
                raise _Refused(str(result.get("description", "")), str(result.get("message", "")))
        except BaseException:
            _unbind(conn)
            raise
        return conn

    def _open(self, dn: str, password: str, first: str | None = None) -> tuple[str, Any]:
        """Try the URLs in order (``first`` first): the first that binds."""
        urls = list(self.config.urls)
        if first in urls:
            urls.remove(first)
            urls.insert(0, first)
        # A server that just failed is tried last for a while: with the first DC down (and
        # silent), every new connection would otherwise wait the connect timeout first.
        now = time.monotonic()
        with self._lock:
            urls.sort(key=lambda u: self._down.get(u, 0.0) > now)
        problems: list[str] = []
        for url in urls:
            try:
                conn = self._connect(url, dn, password)
            except _CONNECTION_ERRORS as exc:
                problems.append(f"{url}: {_why(exc)}")
                with self._lock:
                    self._down[url] = time.monotonic() + DOWN_FOR
                continue
            with self._lock:
                self._down.pop(url, None)
            return url, conn
        raise DirectoryUnavailable(
            f"no server of the directory {self.config.name} answered: " + "; ".join(problems)
        )

    def _service(self) -> tuple[str, Any, bool]:
        """A bound service-account connection: (url, connection, from the pool)."""
        with self._lock:
            if self._idle:
                url, conn = self._idle.pop()
                return url, conn, True
        try:
            url, conn = self._open(self.config.bind_dn, self._password)
        except _Refused as exc:
            raise DirectoryError(
                f"the directory {self.config.name} refused the service account's bind "
                f"({exc.description or 'refused'}"
                + (f": {exc.message[:160]}" if exc.message else "")
                + "); check --bind-dn and the bind password"
            ) from None
        return url, conn, False

    def _give_back(self, url: str, conn: Any, healthy: bool) -> None:
        if healthy and not self._closed:
            with self._lock:
                if len(self._idle) < self._max_idle:
                    self._idle.append((url, conn))
                    return
        _unbind(conn)

    def _with_service(self, work: Callable[[str, Any], T]) -> T:
        """Run ``work(url, conn)`` on a service connection; a pooled connection the server
        dropped meanwhile is replaced once, transparently."""
        for attempt in (1, 2):
            url, conn, pooled = self._service()
            try:
                result = work(url, conn)
            except _CONNECTION_ERRORS as exc:
                _unbind(conn)
                if pooled and attempt == 1:
                    continue
                raise DirectoryUnavailable(
                    f"the directory {self.config.name} stopped answering ({url}: {_why(exc)})"
                ) from None
            except BaseException:
                _unbind(conn)
                raise
            self._give_back(url, conn, True)
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    # -- searches (in threads) ------------------------------------------------------------------

    def _search(
        self,
        conn: Any,
        base: str,
        search_filter: str,
        attributes: list[str],
        *,
        scope: str = ldap3.SUBTREE,
        size_limit: int = 0,
        paged_size: int | None = None,
        cookie: bytes | None = None,
    ) -> tuple[list[tuple[str, dict[str, list[bytes]]]], bytes | None]:
        """One search (or one page); entries as (dn, attributes by lower-case name)."""
        ok = conn.search(
            base,
            search_filter,
            search_scope=scope,
            attributes=attributes,
            size_limit=size_limit,
            time_limit=int(self.config.search_timeout),
            paged_size=paged_size,
            paged_cookie=cookie,
        )
        result = conn.result or {}
        description = str(result.get("description", ""))
        if not ok and description not in ("success", "sizeLimitExceeded", "noSuchObject"):
            if description in ("busy", "unavailable", "timeLimitExceeded", "adminLimitExceeded"):
                raise LDAPCommunicationError(f"{description}: {result.get('message', '')}")
            raise DirectoryError(
                f"the directory {self.config.name} refused a search under {base!r}: "
                f"{description} {str(result.get('message', ''))[:160]}".rstrip()
            )
        if description == "noSuchObject" and base and scope != ldap3.BASE:
            raise DirectoryError(
                f"the base DN {base!r} does not exist in the directory {self.config.name}"
            )
        entries: list[tuple[str, dict[str, list[bytes]]]] = []
        for item in conn.response or []:
            if item.get("type") != "searchResEntry":
                continue  # references (AD's ForestDnsZones, ...): not followed
            raw = item.get("raw_attributes") or {}
            entries.append((str(item["dn"]), {str(k).lower(): list(v) for k, v in raw.items()}))
        next_cookie: bytes | None = None
        controls = result.get("controls") or {}
        if PAGED_RESULTS in controls:
            next_cookie = controls[PAGED_RESULTS]["value"]["cookie"] or None
        return entries, next_cookie

    def _root_dse(self, conn: Any) -> dict[str, list[bytes]]:
        entries, _ = self._search(
            conn,
            "",
            "(objectClass=*)",
            [
                "forestFunctionality",
                "supportedCapabilities",
                "vendorName",
                "vendorVersion",
                "defaultNamingContext",
            ],
            scope=ldap3.BASE,
        )
        return entries[0][1] if entries else {}

    def _base_filter(self) -> str:
        return AD_USERS if self.config.kind == "ad" else LDAP_USERS

    def _membership(self, conn: Any, group_dn: str) -> _Membership:
        """How membership of ``group_dn`` is decided on this server (see the class notes)."""
        if not group_dn:
            return _Membership()
        if self.config.kind == "ad":
            # Nested: the in-chain rule follows groups in groups.
            return _Membership(clause=f"(memberOf:{IN_CHAIN}:={escape_value(group_dn)})")
        clause = f"(memberOf={escape_value(group_dn)})"
        key = dn_key(group_dn)
        if self._memberof.get(key):
            return _Membership(clause=clause)
        found, _ = self._search(
            conn,
            group_dn,
            "(objectClass=*)",
            ["member", "uniqueMember", "memberUid"],
            scope=ldap3.BASE,
        )
        if not found:
            raise DirectoryError(
                f"the group {group_dn!r} does not exist in the directory {self.config.name}"
            )
        attrs = found[0][1]
        # uniqueMember values may carry an optional "#'...'B" unique identifier.
        dns = [
            v.decode("utf-8", "replace").split("#", 1)[0]
            for name in ("member", "uniquemember")
            for v in attrs.get(name, [])
        ]
        uids = frozenset(_uid_text(v) for v in attrs.get("memberuid", []))
        if dns:
            probe, _ = self._search(
                conn,
                self.config.base_dn,
                f"(&{self._base_filter()}{clause})",
                ["1.1"],
                size_limit=1,
            )
            if probe:  # the server has the memberOf overlay: let it evaluate membership
                self._memberof[key] = True
                return _Membership(clause=clause)
            return _Membership(dns=frozenset(dn_key(d) for d in dns))
        if uids:
            return _Membership(uids=uids)
        return _Membership(clause=clause)  # an empty group: nobody

    def _selection(self, members: _Membership, extra: str = "") -> str:
        parts = [self._base_filter(), self.config.user_filter, members.clause, extra]
        return "(&" + "".join(p for p in parts if p) + ")"

    def _attributes(self) -> list[str]:
        a = self.config.attributes
        names = [a.name, a.email, a.display_name, a.phone]
        if self.config.kind == "ad":
            names += ["objectGUID", "userAccountControl", "accountExpires"]
        else:
            names += ["entryUUID", "uid"]  # entryUUID is operational: ask for it by name
        return list(dict.fromkeys(names))

    def _admin_dns(self, conn: Any, members: _Membership) -> frozenset[str] | None:
        """The selection's admins as DN keys, when the server evaluates admin membership."""
        admin = self.config.admin_group_dn
        if not admin:
            return frozenset()
        admin_members = self._membership(conn, admin)
        if not admin_members.clause:
            return None  # decided per entry from admin_members
        found: set[str] = set()
        cookie: bytes | None = None
        selection = self._selection(members, admin_members.clause)
        while True:
            entries, cookie = self._search(
                conn,
                self.config.base_dn,
                selection,
                ["1.1"],
                paged_size=self.config.page_size,
                cookie=cookie,
            )
            found.update(dn_key(dn) for dn, _ in entries)
            if not cookie:
                return frozenset(found)

    def _entry(self, dn: str, attrs: dict[str, list[bytes]], admin: bool) -> DirectoryEntry | None:
        a = self.config.attributes

        def text(name: str) -> str:
            return _text(attrs.get(name.lower(), [])).strip()

        enabled, reason = True, ""
        if self.config.kind == "ad":
            raw = attrs.get("objectguid", [])
            if not raw or len(raw[0]) != 16:
                return None
            external_id = str(uuid.UUID(bytes_le=raw[0]))
            try:
                uac = int(text("userAccountControl") or "0")
                expires = int(text("accountExpires") or "0")
            except ValueError:
                uac, expires = 0, 0
            if uac & UAC_ACCOUNTDISABLE:
                enabled, reason = False, DISABLED_IN_DIRECTORY
            elif filetime_expired(expires, self._clock()):
                enabled, reason = False, EXPIRED_IN_DIRECTORY
        else:
            try:
                external_id = str(uuid.UUID(text("entryUUID")))
            except ValueError:
                return None
        return DirectoryEntry(
            external_id=external_id,
            dn=dn,
            name=text(a.name),
            email=text(a.email),
            display_name=text(a.display_name),
            phone=text(a.phone),
            enabled=enabled,
            inactive_reason=reason,
            admin=admin,
        )

    # -- paging (in threads) --------------------------------------------------------------------

    def _start(self) -> _Paging:
        url, conn, _ = self._service_checked()
        try:
            root = self._root_dse(conn)
            kind = detect_kind(root)
            members = self._membership(conn, self.config.group_dn)
            admin_dns = self._admin_dns(conn, members)
            admin_members = (
                self._membership(conn, self.config.admin_group_dn) if admin_dns is None else None
            )
        except _CONNECTION_ERRORS as exc:
            _unbind(conn)
            raise DirectoryUnavailable(
                f"the directory {self.config.name} stopped answering ({url}: {_why(exc)})"
            ) from None
        except BaseException:
            _unbind(conn)
            raise
        return _Paging(
            url=url,
            conn=conn,
            kind=kind,
            vendor=describe_vendor(root, kind),
            filter=self._selection(members),
            attributes=self._attributes(),
            members=members,
            admin_dns=admin_dns,
            admin_members=admin_members,
        )

    def _service_checked(self) -> tuple[str, Any, bool]:
        """A service connection that answers (a pooled one is checked with a root DSE read)."""
        url, conn, pooled = self._service()
        if pooled:
            try:
                self._root_dse(conn)
            except _CONNECTION_ERRORS:
                _unbind(conn)
                url, conn = self._open(self.config.bind_dn, self._password)
                return url, conn, False
        return url, conn, pooled

    def _next(self, state: _Paging) -> list[DirectoryEntry]:
        try:
            entries, state.cookie = self._search(
                state.conn,
                self.config.base_dn,
                state.filter,
                state.attributes,
                paged_size=self.config.page_size,
                cookie=state.cookie,
            )
        except _CONNECTION_ERRORS as exc:
            state.healthy = False
            raise DirectoryUnavailable(
                f"the directory {self.config.name} stopped answering ({state.url}: {_why(exc)})"
            ) from None
        except BaseException:
            state.healthy = False
            raise
        state.done = not state.cookie
        page: list[DirectoryEntry] = []
        for dn, attrs in entries:
            if not state.members.admits(dn, attrs):
                continue
            if state.admin_dns is not None:
                admin = dn_key(dn) in state.admin_dns
            else:
                admin = state.admin_members is not None and state.admin_members.admits(dn, attrs)
            entry = self._entry(dn, attrs, admin)
            if entry is None:
                log.warning("directory %s: %s has no stable id; skipped", self.config.name, dn)
                continue
            page.append(entry)
        state.seen += len(page)
        return page

    def _finish(self, state: _Paging) -> None:
        if state.cookie and state.healthy:
            # Abandon the server-side paged search before the connection is reused.
            try:
                self._search(
                    state.conn, self.config.base_dn, state.filter, ["1.1"],
                    paged_size=0, cookie=state.cookie,
                )  # fmt: skip
            except (*_CONNECTION_ERRORS, DirectoryError):
                state.healthy = False
        self._give_back(state.url, state.conn, state.healthy)

    # -- DirectoryReader ------------------------------------------------------------------------

    async def user_pages(self) -> AsyncGenerator[list[DirectoryEntry], None]:
        """The selection's users, one page at a time (one LDAP page per thread call)."""
        state = await self._call(self._start)
        try:
            while not state.done:
                page = await self._call(self._next, state)
                if page:
                    yield page
        finally:
            await self._release(state)

    async def _release(self, state: _Paging) -> None:
        """End a paged read and give its connection back (or drop it). Not through
        :meth:`_call`: a reader closed meanwhile must still release the connection."""
        if not self._closed:
            try:
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(self._executor, self._finish, state)
                return
            except RuntimeError:  # the executor was shut down meanwhile
                pass
        await asyncio.to_thread(_unbind, state.conn)

    async def test(self) -> TestReport:
        """Connect, bind, read the root DSE, count the selection and its admins."""
        started = time.monotonic()
        state = await self._call(self._start)
        users = admins = 0
        try:
            while not state.done:
                page = await self._call(self._next, state)
                users += len(page)
                admins += sum(1 for e in page if e.admin)
        finally:
            await self._release(state)
        return TestReport(
            url=state.url,
            kind=state.kind,
            vendor=state.vendor,
            users=users,
            admins=admins,
            seconds=round(time.monotonic() - started, 3),
        )

    async def detect(self) -> tuple[str, Kind, str]:
        """(URL that answered, kind, vendor line), from the root DSE; binds as the service
        account, so a wrong bind password is found here too."""

        def work(url: str, conn: Any) -> tuple[str, Kind, str]:
            root = self._root_dse(conn)
            kind = detect_kind(root)
            return url, kind, describe_vendor(root, kind)

        return await self._call(self._with_service, work)

    async def authenticate(
        self, user_name: str, password: str, *, external_id: str | None = None
    ) -> BindResult:
        """Find the user with the service account, then bind as them on a new connection."""
        if not password:
            return BindResult("empty-password", detail="empty password: refused without a bind")
        if self._checking >= self._admit:
            return BindResult(
                "unavailable",
                detail=f"{self._checking} password checks already wait for the directory "
                f"{self.config.name}",
            )
        self._checking += 1
        try:
            return await self._call(self._authenticate, user_name, password, external_id)
        except (DirectoryUnavailable, DirectoryError) as exc:
            return BindResult("unavailable", detail=exc.detail)
        finally:
            self._checking -= 1

    def _find(
        self, user_name: str, external_id: str | None
    ) -> tuple[str, DirectoryEntry | None, str]:
        """(URL, the user's entry or None, why not) with the service account."""
        a = self.config.attributes
        if external_id:
            try:
                wanted = uuid.UUID(external_id)
            except ValueError:
                return "", None, "malformed external id"
            if self.config.kind == "ad":
                clause = f"(objectGUID={escape_bytes(wanted.bytes_le)})"
            else:
                clause = f"(entryUUID={escape_value(str(wanted))})"
        elif user_name:
            clause = f"({a.name}={escape_value(user_name)})"
        else:
            return "", None, "no user name"

        def work(url: str, conn: Any) -> tuple[str, DirectoryEntry | None, str]:
            members = self._membership(conn, self.config.group_dn)
            found, _ = self._search(
                conn,
                self.config.base_dn,
                self._selection(members, clause),
                self._attributes(),
                size_limit=2,
            )
            found = [(dn, attrs) for dn, attrs in found if members.admits(dn, attrs)]
            if not found:
                return url, None, "not in the directory's selection"
            if len(found) > 1:
                return url, None, "more than one entry matches"
            dn, attrs = found[0]
            admin = False
            if self.config.admin_group_dn:
                admin_members = self._membership(conn, self.config.admin_group_dn)
                if admin_members.clause:
                    hit, _ = self._search(conn, dn, admin_members.clause, ["1.1"], scope=ldap3.BASE)
                    admin = bool(hit)
                else:
                    admin = admin_members.admits(dn, attrs)
            entry = self._entry(dn, attrs, admin)
            return url, entry, "" if entry else "the entry has no stable id"

        return self._with_service(work)

    def _authenticate(self, user_name: str, password: str, external_id: str | None) -> BindResult:
        url, entry, why = self._find(user_name, external_id)
        if entry is None:
            return BindResult("no-such-user", detail=why)
        try:
            _, conn = self._open(entry.dn, password, first=url)
        except _Refused as exc:
            outcome = bind_refusal_outcome(exc.description, exc.message)
            if outcome == "ok":  # pragma: no cover - a refusal is never ok
                outcome = "not-permitted"
            detail = exc.description + (f": {exc.message[:160]}" if exc.message else "")
            return BindResult(outcome, entry, detail)
        except DirectoryUnavailable as exc:
            return BindResult("unavailable", entry, exc.detail)
        _unbind(conn)
        return BindResult("ok", entry)

    async def close(self) -> None:
        """Unbind pooled connections and stop the threads."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            idle, self._idle = self._idle, []
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, _unbind_all, [c for _, c in idle])
        self._executor.shutdown(wait=False, cancel_futures=True)


def _unbind(conn: Any) -> None:
    # The connection is being dropped either way; a failing unbind changes nothing.
    with contextlib.suppress(Exception):
        conn.unbind()
    # ldap3 leaves the socket of a failed open (refused, TLS error) to the garbage collector.
    sock = getattr(conn, "socket", None)
    if sock is not None:
        with contextlib.suppress(Exception):
            sock.close()


def _unbind_all(conns: Iterable[Any]) -> None:
    for conn in conns:
        _unbind(conn)


__all__ = [
    "AD_DATA_CODES",
    "LdapDirectory",
    "bind_refusal_outcome",
    "detect_kind",
    "filetime_expired",
    "tls_context",
]
