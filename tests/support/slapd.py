"""A throw-away OpenLDAP server (``slapd``) for the plain-LDAP directory tests.

    def test_x(slapd: Slapd) -> None:
        bob = slapd.add_user(slapd.new_name("bob"), "pw", email="bob@example.test")
        staff = slapd.add_group(slapd.new_name("staff"), bob.name)   # groupOfNames
        # connect to slapd.url (LDAPS) or slapd.starttls_url (ldap:// + StartTLS), trusting
        # slapd.ca_file, as slapd.bind_dn / slapd.bind_password (read-only)

How it runs: a generated ``slapd.conf`` (schemas core, cosine, inetorgperson, nis; an ``mdb``
database in a temporary directory; overlays ``memberof`` for groupOfNames and ``refint``),
base entries loaded with ``slapadd``, then ``slapd -d 0`` in the foreground as our child, in
its own process group, listening on 127.0.0.1 only: LDAPS and plain LDAP (for StartTLS) on
ports the OS handed out just before (a watchdog, watchdog.py, stops it if the worker dies
without running its finalizers). The certificate comes from a throw-away CA
(``ca_file``). Readiness is a real LDAPS bind, polled until a deadline. Unlike Samba, slapd is
cheap to start (well under a second), so each xdist worker runs its own, and
:func:`running_slapd` gives a test or a benchmark a private one. ``entryUUID`` is
operational and always there.

Accounts: ``admin_dn`` is the rootdn (writes everything); ``bind_dn`` is an ACL-limited
service account that reads entries but not passwords; users may bind (``userPassword`` is
usable for authentication only) and read their own entry.

``bulk_add(n)`` stops the server, loads ``n`` users with ``slapadd -q`` (seconds for 10,000;
``userPassword`` pre-hashed as {SSHA}) and starts it again on the same ports.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ldap3
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import escape_rdn

from backend.directory.config import DEFAULT_ATTRIBUTES, DirectoryConfig
from backend.directory.settings import DirectorySettings
from tests.fakes.tls import make_tls
from tests.support.ldapops import Admin, DirectoryUser, connect, unique_name, wait_for_bind
from tests.support.process import free_port, require_program, wait_for
from tests.support.watchdog import start_watchdog

BASE_DN = "dc=openmfa,dc=test"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
#: Every :meth:`Slapd.bulk_add` user's password unless the test gives one.
BULK_PASSWORD = "bulk-Passw0rd"
SCHEMAS = ("core", "cosine", "inetorgperson", "nis")


def slapd_binary() -> str:
    """The ``slapd`` binary; fails (not skips) when OpenLDAP is not installed."""
    return require_program(
        "slapd",
        "OpenLDAP is not installed: the directory tests need `slapd` and `slapadd` "
        "(Debian: slapd ldap-utils; see .ci/install-tools)",
    )


def ssha(password: str) -> str:
    """``password`` as an RFC 2307 {SSHA} value, as slapd checks it on bind."""
    salt = secrets.token_bytes(8)
    digest = hashlib.sha1(password.encode() + salt, usedforsecurity=False).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def _ldif_value(attribute: str, value: str) -> str:
    """One LDIF line, base64 when the value is not safe as plain text."""
    safe = value.isascii() and value == value.strip() and not value.startswith((":", "<"))
    safe = safe and "\n" not in value and "\r" not in value
    if safe:
        return f"{attribute}: {value}"
    return f"{attribute}:: {base64.b64encode(value.encode()).decode()}"


class Slapd:
    """A running slapd and helpers that change its directory (as the rootdn, over LDAPS)."""

    base_dn = BASE_DN
    people_dn = f"ou=people,{BASE_DN}"
    groups_dn = f"ou=groups,{BASE_DN}"
    admin_dn = f"cn=admin,{BASE_DN}"
    bind_dn = f"cn=openmfa-reader,ou=service,{BASE_DN}"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ldap_port = free_port()
        self.ldaps_port = free_port()
        self.url = f"ldaps://127.0.0.1:{self.ldaps_port}"
        self.starttls_url = f"ldap://127.0.0.1:{self.ldap_port}"
        self.admin_password = "adm-" + secrets.token_urlsafe(12)
        self.bind_password = "rd-" + secrets.token_urlsafe(12)
        tls = make_tls(directory / "tls")
        self.ca_file = tls.ca_file
        self._tls = tls
        self._process: subprocess.Popen[bytes] | None = None
        self._admin = Admin(
            lambda: connect(self.url, self.ca_file, self.admin_dn, self.admin_password)
        )

    # -- lifecycle -------------------------------------------------------------------------
    def setup(self) -> None:
        """Write the configuration and load the base entries (server not running)."""
        (self.directory / "data").mkdir(parents=True, exist_ok=True)
        schemas = "\n".join(f"include /etc/ldap/schema/{name}.schema" for name in SCHEMAS)
        config = f"""\
{schemas}
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload memberof
moduleload refint
pidfile {self.directory}/slapd.pid
argsfile {self.directory}/slapd.args
TLSCACertificateFile {self._tls.ca_file}
TLSCertificateFile {self._tls.cert_file}
TLSCertificateKeyFile {self._tls.key_file}
sizelimit unlimited

database mdb
maxsize 4294967296
suffix "{BASE_DN}"
rootdn "{self.admin_dn}"
rootpw {ssha(self.admin_password)}
directory {self.directory}/data
index objectClass eq
index uid,cn,mail eq,sub
index member,memberUid,memberOf eq
index entryUUID eq

overlay memberof
memberof-group-oc groupOfNames
memberof-member-ad member
memberof-memberof-ad memberOf
memberof-refint TRUE

overlay refint
refint_attributes member
refint_nothing "{self.admin_dn}"

access to attrs=userPassword
    by self auth
    by anonymous auth
    by * none
access to *
    by dn.exact="{self.bind_dn}" read
    by self read
    by * none
"""
        (self.directory / "slapd.conf").write_text(config)
        base = [
            f"dn: {BASE_DN}", "objectClass: dcObject", "objectClass: organization",
            "dc: openmfa", "o: OpenMFA tests", "",
            f"dn: {self.people_dn}", "objectClass: organizationalUnit", "ou: people", "",
            f"dn: {self.groups_dn}", "objectClass: organizationalUnit", "ou: groups", "",
            f"dn: ou=service,{BASE_DN}", "objectClass: organizationalUnit", "ou: service", "",
            f"dn: {self.bind_dn}", "objectClass: person", "cn: openmfa-reader",
            "sn: reader", f"userPassword: {ssha(self.bind_password)}", "",
        ]  # fmt: skip
        self._slapadd("\n".join(base) + "\n")

    def start(self) -> None:
        """Start slapd and wait (bounded) until the service account can bind over LDAPS."""
        log = (self.directory / "slapd.out").open("ab")
        urls = f"ldap://127.0.0.1:{self.ldap_port}/ ldaps://127.0.0.1:{self.ldaps_port}/"
        self._process = subprocess.Popen(
            [slapd_binary(), "-d", "0", "-h", urls, "-f", str(self.directory / "slapd.conf")],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        log.close()
        process = self._process
        # stops slapd should this worker die without running its finalizers
        start_watchdog(process.pid, "--owner", str(os.getpid()))
        try:
            wait_for_bind(
                self.url, self.ca_file, self.bind_dn, self.bind_password,
                deadline=time.monotonic() + START_TIMEOUT,
                alive=lambda: process.poll() is None, log=self._log_tail,
            )  # fmt: skip
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM to slapd's process group, SIGKILL after :data:`STOP_TIMEOUT` seconds."""
        self._admin.close()
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_TIMEOUT)

    def _log_tail(self) -> str:
        try:
            return (self.directory / "slapd.out").read_text(errors="replace")[-4000:]
        except OSError:
            return "(no log)"

    def _slapadd(self, ldif: str) -> None:
        path = self.directory / "load.ldif"
        path.write_text(ldif)
        result = subprocess.run(
            ["slapadd", "-q", "-f", str(self.directory / "slapd.conf"), "-b", BASE_DN,
             "-l", str(path)],
            capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        path.unlink()
        if result.returncode != 0:
            raise RuntimeError(f"slapadd failed ({result.returncode}):\n{result.stderr[-3000:]}")

    # -- names -----------------------------------------------------------------------------
    def directory_settings(self, name: str, *, group_dn: str = "") -> DirectorySettings:
        """This server as an administrator adds it: kind ``ldap``, its CA, the read-only
        service account (whose password is :attr:`bind_password`)."""
        return DirectorySettings(
            name=name,
            urls=(self.url,),
            bind_dn=self.bind_dn,
            base_dn=self.base_dn,
            kind="ldap",
            ca_pem=Path(self.ca_file).read_text(encoding="ascii"),
            group_dn=group_dn,
        )

    def directory_config(self, name: str, *, page_size: int) -> DirectoryConfig:
        """This server as a reader's configuration (id 1, the default ``ldap`` attributes)."""
        return DirectoryConfig(
            id=1,
            name=name,
            kind="ldap",
            urls=(self.url,),
            ca_pem=Path(self.ca_file).read_text(encoding="ascii"),
            bind_dn=self.bind_dn,
            base_dn=self.base_dn,
            attributes=DEFAULT_ATTRIBUTES["ldap"],
            page_size=page_size,
        )

    @staticmethod
    def new_name(prefix: str = "user") -> str:
        """A name no other test uses."""
        return unique_name(prefix, limit=40)

    def dn_of(self, name: str) -> str:
        """``uid=name`` under people, else ``cn=name`` under groups (a DN passes through)."""
        if "=" in name:
            return name
        escaped = escape_filter_chars(name)
        found = self._admin.search(
            BASE_DN,
            f"(|(uid={escaped})(&(cn={escaped})"
            "(|(objectClass=groupOfNames)(objectClass=posixGroup))))",
        )
        if not found:
            raise KeyError(f"no user or group {name!r} in the test slapd")
        dn: str = found[0]["dn"]
        return dn

    def attributes(self, name: str, *attributes: str) -> dict[str, Any]:
        """Attributes of ``name``'s entry (operational ones such as ``entryUUID`` and
        ``memberOf`` only when named)."""
        found = self._admin.search(
            self.dn_of(name), "(objectClass=*)", list(attributes) or ["*"], scope=ldap3.BASE
        )
        attrs: dict[str, Any] = found[0]["attributes"]
        return attrs

    def value(self, name: str, attribute: str) -> Any:
        """One attribute's single value as text (``None`` when absent)."""
        raw = self.attributes(name, attribute).get(attribute)
        if isinstance(raw, list):
            raw = raw[0] if raw else None
        return raw.decode() if isinstance(raw, bytes) else raw

    def entry_uuid(self, name: str) -> str:
        """``name``'s entryUUID (what a sync ties the user by)."""
        return str(self.value(name, "entryUUID"))

    def member_of(self, name: str) -> set[str]:
        """The group DNs the memberof overlay lists on ``name``'s entry."""
        raw = self.attributes(name, "memberOf").get("memberOf") or []
        return {v.decode() if isinstance(v, bytes) else str(v) for v in raw}

    # -- users -----------------------------------------------------------------------------
    def add_user(
        self,
        name: str,
        password: str,
        *,
        email: str | None = None,
        display_name: str | None = None,
        phone: str | None = None,
        cn: str | None = None,
        sn: str | None = None,
        parent: str | None = None,
    ) -> DirectoryUser:
        """An inetOrgPerson ``uid=name`` in ou=people (or ``parent``, e.g. from
        :meth:`add_ou`) with ``password`` (stored as {SSHA})."""
        dn = f"uid={escape_rdn(name)},{parent or self.people_dn}"
        attrs: dict[str, Any] = {
            "uid": name,
            "cn": cn or display_name or name,
            "sn": sn or name,
            "userPassword": ssha(password),
        }
        if email is not None:
            attrs["mail"] = email
        if display_name is not None:
            attrs["displayName"] = display_name
        if phone is not None:
            attrs["telephoneNumber"] = phone
        self._admin.add(dn, ["inetOrgPerson"], attrs)
        return DirectoryUser(name=name, dn=dn, password=password)

    def set_password(self, name: str, password: str) -> None:
        """Replace the user's password."""
        self._modify(self.dn_of(name), {"userPassword": [(ldap3.MODIFY_REPLACE, [ssha(password)])]})

    def set_attributes(self, name: str, **values: str | None) -> None:
        """Replace (a value) or clear (``None``) attributes, e.g. ``mail="x@y"``."""
        changes = {
            attr: [(ldap3.MODIFY_REPLACE, [] if value is None else [value])]
            for attr, value in values.items()
        }
        self._modify(self.dn_of(name), changes)

    def rename(self, old: str, new: str) -> str:
        """modrdn ``uid=old`` to ``uid=new`` (the old RDN value removed; entryUUID stays);
        returns the new DN."""
        dn = self.dn_of(old)
        rdn = f"uid={escape_rdn(new)}"
        self._admin.modify_dn(dn, rdn)
        self._wait_unreferenced(dn)
        return f"{rdn},{dn.split(',', 1)[1]}"

    def delete(self, name: str) -> None:
        """Delete the user or group entry (refint drops it from groups' ``member``; a group
        left empty gets the placeholder, see :meth:`add_group`)."""
        dn = self.dn_of(name)
        self._admin.delete(dn)
        self._wait_unreferenced(dn)

    def _wait_unreferenced(self, dn: str) -> None:
        """refint rewrites the groups in a background thread after the operation has
        returned: poll (bounded) until no group's ``member`` names ``dn`` any more, so a test
        sees the directory as a client would a moment later."""
        query = f"(member={escape_filter_chars(dn)})"
        wait_for(
            lambda: not self._admin.search(self.groups_dn, query, ["cn"]),
            10,
            f"refint to drop {dn} from every group's member",
            every=0.02,
        )

    delete_user = remove = delete

    # -- containers and groups ---------------------------------------------------------------
    def add_ou(self, name: str, parent: str | None = None) -> str:
        """An organizationalUnit under the base (or ``parent``); returns its DN. Tests that
        count users give themselves one and use it as the base DN."""
        dn = f"ou={escape_rdn(name)},{parent or BASE_DN}"
        self._admin.add(dn, ["organizationalUnit"], {"ou": name})
        return dn

    def add_group(self, name: str, *members: str, parent: str | None = None) -> str:
        """A groupOfNames ``cn=name,ou=groups`` with ``members`` (names or DNs); returns its
        DN. groupOfNames must have a member: an empty group holds the rootdn, which is no
        entry (the memberof overlay ignores it)."""
        dn = f"cn={escape_rdn(name)},{parent or self.groups_dn}"
        member = [self.dn_of(m) for m in members] or [self.admin_dn]
        self._admin.add(dn, ["groupOfNames"], {"cn": name, "member": member})
        return dn

    def add_posix_group(self, name: str, *uids: str, gid: int | None = None) -> str:
        """A posixGroup ``cn=name,ou=groups`` listing ``uids`` in memberUid; returns its DN."""
        dn = f"cn={escape_rdn(name)},{self.groups_dn}"
        attrs: dict[str, Any] = {"cn": name, "gidNumber": gid or 10000 + secrets.randbelow(50000)}
        if uids:
            attrs["memberUid"] = list(uids)
        self._admin.add(dn, ["posixGroup"], attrs)
        return dn

    def add_members(self, group: str, *members: str) -> None:
        """Add users or groups (names or DNs) to a groupOfNames, or uids to a posixGroup."""
        dn = self.dn_of(group)
        if self._is_posix(dn):
            self._modify(dn, {"memberUid": [(ldap3.MODIFY_ADD, list(members))]})
            return
        add = [self.dn_of(m) for m in members]
        self._modify(dn, {"member": [(ldap3.MODIFY_ADD, add)]})
        current = self._members(dn)
        if self.admin_dn in current and len(current) > 1:
            self._modify(dn, {"member": [(ldap3.MODIFY_DELETE, [self.admin_dn])]})

    def remove_members(self, group: str, *members: str) -> None:
        """Remove members (names or DNs; uids for a posixGroup)."""
        dn = self.dn_of(group)
        if self._is_posix(dn):
            self._modify(dn, {"memberUid": [(ldap3.MODIFY_DELETE, list(members))]})
            return
        drop = {self.dn_of(m).lower() for m in members}
        if {m.lower() for m in self._members(dn)} <= drop:
            # keep groupOfNames valid (MUST member): the placeholder goes in first
            self._modify(dn, {"member": [(ldap3.MODIFY_ADD, [self.admin_dn])]})
        self._modify(dn, {"member": [(ldap3.MODIFY_DELETE, [self.dn_of(m) for m in members])]})

    def _members(self, dn: str) -> list[str]:
        found = self._admin.search(dn, "(objectClass=*)", ["member"], scope=ldap3.BASE)
        raw = found[0]["attributes"].get("member") or []
        return [v.decode() if isinstance(v, bytes) else str(v) for v in raw]

    def _is_posix(self, dn: str) -> bool:
        found = self._admin.search(dn, "(objectClass=posixGroup)", ["cn"], scope=ldap3.BASE)
        return bool(found)

    # -- bulk ------------------------------------------------------------------------------
    def bulk_add(
        self, n: int, *, prefix: str | None = None, password: str = BULK_PASSWORD
    ) -> list[str]:
        """Load ``n`` inetOrgPerson users offline (stop, ``slapadd -q``, start on the same
        ports); returns their uids (``prefix-000001`` ...). Every user has ``password`` (one
        salted hash shared by all: hashing 10,000 times would dominate the load)."""
        prefix = prefix or unique_name("bulk", limit=14)
        hashed = ssha(password)
        lines: list[str] = []
        names = [f"{prefix}-{i:06d}" for i in range(1, n + 1)]
        for i, name in enumerate(names, 1):
            lines += [
                f"dn: uid={name},{self.people_dn}", "objectClass: inetOrgPerson",
                f"uid: {name}", f"cn: Bulk User {i}", f"sn: User {i}",
                f"displayName: Bulk User {i}", f"mail: {name}@example.test",
                f"telephoneNumber: +1 555 {i:07d}", f"userPassword: {hashed}", "",
            ]  # fmt: skip
        self.stop()
        try:
            self._slapadd("\n".join(lines) + "\n")
        finally:
            self.start()
        return names

    def close(self) -> None:
        """Stop the server."""
        self.stop()

    def _modify(self, dn: str, changes: dict[str, Any]) -> None:
        self._admin.modify(dn, changes)


@contextlib.contextmanager
def running_slapd(directory: Path) -> Iterator[Slapd]:
    """A private slapd in ``directory`` (created), stopped on exit."""
    slapd_binary()
    directory.mkdir(parents=True, exist_ok=True)
    server = Slapd(directory)
    server.setup()
    server.start()
    try:
        yield server
    finally:
        server.stop()
