"""A throw-away Samba Active Directory domain controller for the directory tests.

    def test_x(samba_dc: SambaDC) -> None:
        alice = samba_dc.add_user(samba_dc.new_name("alice"), "Corr3ct-Horse!", email=...)
        vpn = samba_dc.add_group(samba_dc.new_name("vpn"))
        samba_dc.add_members(vpn, alice.name)
        # connect to samba_dc.url, trusting samba_dc.ca_file, as samba_dc.bind_dn

How it runs (decisions, and why):

* ``samba-tool domain provision --server-role=dc --dns-backend=NONE --use-rfc2307``, once
  per machine and Samba version into a cached template (``$OPENMFA_TEST_CACHE``, default
  ``~/.cache/openmfa-tests``; see :func:`_template`), copied into the run's directory, then
  ``samba -i -M single`` in the foreground as our child, in its own process group. A DC
  answers about 3 s after the fixture is asked for (20-40 s when the template is built).
  Only the ``ldap`` service runs (no KDC, DNS, SMB, RPC, NetBIOS): the tests speak LDAP, and
  every other service would claim more fixed ports.
* Samba's LDAP ports are fixed (389, 636 and the global catalogue's 3268/3269; smb.conf has no
  option to move them). So instead of moving the port, each DC gets **its own loopback
  address**, a random 127.x.y.z (Linux routes all of 127.0.0.0/8 to ``lo``), with
  ``interfaces = 127.x.y.z/8`` and ``bind interfaces only``: test runs in several worktrees at
  once each have their DC, and nothing listens outside loopback. The address is probed free
  first (a wildcard listener on 636 makes the fixture fail with a clear message). The URL is
  ``ldaps://127.x.y.z:636``; the certificate names that address plus 127.0.0.1, ::1 and
  localhost, signed by a throw-away CA (``ca_file``), and clients verify it as a site would.
* One DC per test run, not per xdist worker: each costs memory and start-up. Workers share
  ``getbasetemp().parent`` (the run's directory); the first worker to take the file lock
  starts the DC and writes its state there, each worker counts itself in, and the last one
  out stops it (SIGTERM to the process group, SIGKILL after a bounded wait). A watchdog
  (watchdog.py) stops it too if every worker using it has died without cleaning up. Without
  xdist the run's own base directory is used. Tests create uniquely named users and groups
  (:meth:`SambaDC.new_name`), so sharing the DC is safe.
* Readiness is a real LDAPS bind as Administrator, polled until a deadline; no sleeps.
* Domain policy: lockout after :data:`LOCKOUT_THRESHOLD` bad passwords (so
  :meth:`SambaDC.lock_out` works), no minimum password age, no history.
* Root is needed (ports below 1024, and Samba insists); a missing ``samba`` fails the tests
  rather than skipping them: .ci/install-tools installs it.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import random
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ldap3
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import escape_rdn

from tests.fakes.tls import make_tls
from tests.support.ldapops import Admin, DirectoryUser, connect, unique_name, wait_for_bind
from tests.support.process import require_program
from tests.support.watchdog import alive as _alive
from tests.support.watchdog import start_watchdog, stop

REALM = "CORP.OPENMFA.TEST"
DOMAIN = "OPENMFATEST"
BASE_DN = "DC=corp,DC=openmfa,DC=test"
#: Bad passwords before AD locks an account (set on the domain at start).
LOCKOUT_THRESHOLD = 3
#: Service account: a plain domain user (AD lets any authenticated user read the directory).
SERVICE_ACCOUNT = "svc-openmfa"
START_TIMEOUT = 120.0
STOP_TIMEOUT = 15.0

UF_ACCOUNTDISABLE = 0x0002
UF_NORMAL_ACCOUNT = 0x0200
#: Windows FILETIME epoch (1601-01-01) to the Unix epoch, in 100 ns units.
_FILETIME_UNIX = 116444736000000000


def samba_binary() -> str:
    """The ``samba`` server binary; fails (not skips) when Samba is not installed."""
    return require_program(
        "samba",
        "Samba is not installed: the directory tests need `samba` "
        "(Debian: samba samba-ad-provision samba-dsdb-modules; see .ci/install-tools)",
    )


def filetime(when: datetime.datetime) -> int:
    """``when`` as AD's ``accountExpires`` value (100 ns since 1601, UTC)."""
    return int(when.timestamp() * 10_000_000) + _FILETIME_UNIX


@dataclass(frozen=True, slots=True)
class DcState:
    """What the worker that started the DC tells the others (JSON in the run's directory)."""

    pid: int
    address: str
    directory: str
    admin_password: str
    bind_password: str
    #: pids of the processes using the DC (the watchdog stops it when none is alive)
    users: list[int]

    def as_json(self) -> str:
        """The state file's text."""
        return json.dumps(
            {
                "pid": self.pid,
                "address": self.address,
                "directory": self.directory,
                "admin_password": self.admin_password,
                "bind_password": self.bind_password,
                "users": self.users,
            }
        )


class SambaDC:
    """A running DC and helpers that change its directory (as Administrator, over LDAPS)."""

    realm = REALM
    domain = DOMAIN
    base_dn = BASE_DN
    users_dn = f"CN=Users,{BASE_DN}"

    def __init__(self, state: DcState) -> None:
        self.address = state.address
        self.directory = Path(state.directory)
        self.url = f"ldaps://{state.address}:636"
        #: plain LDAP, for StartTLS (simple binds without TLS are refused by the DC)
        self.starttls_url = f"ldap://{state.address}:389"
        self.ca_file = self.directory / "dc" / "tls" / "test-ca.pem"
        self.admin_user = f"Administrator@{REALM}"
        self.admin_password = state.admin_password
        self.bind_dn = f"CN={SERVICE_ACCOUNT},{self.users_dn}"
        self.bind_password = state.bind_password
        self.lockout_threshold = LOCKOUT_THRESHOLD
        self._admin = Admin(
            lambda: connect(self.url, self.ca_file, self.admin_user, self.admin_password)
        )

    # -- names ---------------------------------------------------------------------------
    @staticmethod
    def new_name(prefix: str = "user") -> str:
        """A name no other test uses (fits sAMAccountName's 20 characters)."""
        return unique_name(prefix)

    def dn_of(self, name: str) -> str:
        """The DN of the user or group whose sAMAccountName is ``name`` (a DN passes through)."""
        if "=" in name:
            return name
        found = self._admin.search(
            BASE_DN, f"(sAMAccountName={escape_filter_chars(name)})", ["distinguishedName"]
        )
        if not found:
            raise KeyError(f"no user or group {name!r} in the test DC")
        dn: str = found[0]["dn"]
        return dn

    def attributes(self, name: str, *attributes: str) -> dict[str, Any]:
        """Attributes of ``name``'s entry (e.g. ``objectGUID``, ``userAccountControl``)."""
        found = self._admin.search(
            BASE_DN, f"(sAMAccountName={escape_filter_chars(name)})", list(attributes) or ["*"]
        )
        if not found:
            raise KeyError(f"no user or group {name!r} in the test DC")
        attrs: dict[str, Any] = found[0]["attributes"]
        return attrs

    def value(self, name: str, attribute: str) -> Any:
        """One attribute's single value (``None`` when absent); without a schema ldap3 hands
        every attribute back as a list of raw values."""
        raw = self.attributes(name, attribute).get(attribute)
        if isinstance(raw, list):
            return raw[0] if raw else None
        return raw

    def guid(self, name: str) -> str:
        """``name``'s objectGUID as text (what a sync ties the user by)."""
        raw = self.value(name, "objectGUID")
        return str(uuid.UUID(bytes_le=raw)) if isinstance(raw, bytes) else str(raw)

    # -- users -----------------------------------------------------------------------------
    def add_user(
        self,
        name: str,
        password: str,
        *,
        email: str | None = None,
        display_name: str | None = None,
        phone: str | None = None,
        must_change: bool = False,
        disabled: bool = False,
        parent: str | None = None,
    ) -> DirectoryUser:
        """Create an enabled (or ``disabled``) user with ``password`` in CN=Users, or in
        ``parent`` (e.g. an OU from :meth:`add_ou`)."""
        dn = f"CN={escape_rdn(name)},{parent or self.users_dn}"
        attrs: dict[str, Any] = {
            "sAMAccountName": name,
            "userPrincipalName": f"{name}@{REALM.lower()}",
            "unicodePwd": _unicode_pwd(password),
            "userAccountControl": UF_NORMAL_ACCOUNT | (UF_ACCOUNTDISABLE if disabled else 0),
        }
        if email is not None:
            attrs["mail"] = email
        if display_name is not None:
            attrs["displayName"] = display_name
        if phone is not None:
            attrs["telephoneNumber"] = phone
        self._admin.add(dn, ["top", "person", "organizationalPerson", "user"], attrs)
        if must_change:
            self.must_change(name)
        return DirectoryUser(name=name, dn=dn, password=password)

    def set_password(self, name: str, password: str) -> None:
        """An administrator's password reset."""
        dn = self.dn_of(name)
        self._modify(dn, {"unicodePwd": [(ldap3.MODIFY_REPLACE, [_unicode_pwd(password)])]})

    def must_change(self, name: str) -> None:
        """Make the user change the password at next sign-in (pwdLastSet = 0)."""
        self._modify(self.dn_of(name), {"pwdLastSet": [(ldap3.MODIFY_REPLACE, [0])]})

    def set_attributes(self, name: str, **values: str | None) -> None:
        """Replace (a value) or clear (``None``) attributes, e.g. ``mail="x@y"``."""
        changes = {
            attr: [(ldap3.MODIFY_REPLACE, [] if value is None else [value])]
            for attr, value in values.items()
        }
        self._modify(self.dn_of(name), changes)

    def disable(self, name: str) -> None:
        """Set the ACCOUNTDISABLE bit of userAccountControl."""
        self._set_uac(name, set_bits=UF_ACCOUNTDISABLE)

    def enable(self, name: str) -> None:
        """Clear the ACCOUNTDISABLE bit of userAccountControl."""
        self._set_uac(name, clear_bits=UF_ACCOUNTDISABLE)

    def rename(self, old: str, new: str) -> str:
        """Rename a user as an administrator does in AD: sAMAccountName, UPN and the CN (so the
        DN changes too; the objectGUID stays). Returns the new DN."""
        dn = self.dn_of(old)
        self._modify(
            dn,
            {
                "sAMAccountName": [(ldap3.MODIFY_REPLACE, [new])],
                "userPrincipalName": [(ldap3.MODIFY_REPLACE, [f"{new}@{REALM.lower()}"])],
            },
        )
        self._admin.modify_dn(dn, f"CN={escape_rdn(new)}")
        return f"CN={escape_rdn(new)},{dn.split(',', 1)[1]}"

    def set_expiry(self, name: str, days: float | None) -> None:
        """Account expires ``days`` from now (negative or 0: already expired); ``None``:
        never."""
        if days is None:
            value = 0
        else:
            when = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=days)
            value = filetime(when)
        self._modify(self.dn_of(name), {"accountExpires": [(ldap3.MODIFY_REPLACE, [value])]})

    def expire(self, name: str) -> None:
        """The account expired a minute ago."""
        self.set_expiry(name, -1 / 1440)

    def lock_out(self, name: str) -> None:
        """Bind with wrong passwords until the DC locks the account (``lockoutTime`` set)."""
        dn = self.dn_of(name)
        for _ in range(self.lockout_threshold):
            with contextlib.suppress(LDAPException):
                connect(self.url, self.ca_file, dn, "wrong-" + secrets.token_hex(8)).unbind()
        locked = self.value(name, "lockoutTime")
        if locked is None or int(locked) == 0:
            raise AssertionError(f"the test DC did not lock {name!r} out (lockoutTime={locked})")

    def unlock(self, name: str) -> None:
        """Clear a lock-out (lockoutTime = 0)."""
        self._modify(self.dn_of(name), {"lockoutTime": [(ldap3.MODIFY_REPLACE, [0])]})

    def delete_user(self, name: str) -> None:
        """Delete the user (or group) entry."""
        dn = self.dn_of(name)
        self._admin.delete(dn)

    delete = delete_user

    # -- containers and groups ---------------------------------------------------------------
    def add_ou(self, name: str, parent: str | None = None) -> str:
        """An organizational unit under the domain (or ``parent``); returns its DN. The DC is
        shared by the whole run, so a test that counts users gives itself an OU (or a group)
        and uses it as the base DN."""
        dn = f"OU={escape_rdn(name)},{parent or BASE_DN}"
        self._admin.add(dn, ["top", "organizationalUnit"], {"ou": name})
        return dn

    def add_group(self, name: str, parent: str | None = None) -> str:
        """A global security group in CN=Users (or ``parent``); returns its DN."""
        dn = f"CN={escape_rdn(name)},{parent or self.users_dn}"
        self._admin.add(dn, ["top", "group"], {"sAMAccountName": name})
        return dn

    def add_members(self, group: str, *members: str) -> None:
        """Add users or groups (names or DNs) to ``group`` (a name or DN): groups nest."""
        dns = [self.dn_of(m) for m in members]
        self._modify(self.dn_of(group), {"member": [(ldap3.MODIFY_ADD, dns)]})

    def remove_members(self, group: str, *members: str) -> None:
        """Remove users or groups (names or DNs) from ``group``."""
        dns = [self.dn_of(m) for m in members]
        self._modify(self.dn_of(group), {"member": [(ldap3.MODIFY_DELETE, dns)]})

    def members_in_chain(self, group: str) -> set[str]:
        """DNs of users in ``group`` directly or through nested groups (in-chain rule)."""
        rule = f"(memberOf:1.2.840.113556.1.4.1941:={escape_filter_chars(self.dn_of(group))})"
        found = self._admin.search(BASE_DN, f"(&(objectClass=user){rule})", ["cn"])
        return {e["dn"] for e in found}

    def close(self) -> None:
        """Drop this worker's administrator connection."""
        self._admin.close()

    # -- internals ---------------------------------------------------------------------------
    def _modify(self, dn: str, changes: dict[str, Any]) -> None:
        self._admin.modify(dn, changes)

    def _set_uac(self, name: str, *, set_bits: int = 0, clear_bits: int = 0) -> None:
        dn = self.dn_of(name)
        current = int(self.value(name, "userAccountControl"))
        value = (current | set_bits) & ~clear_bits
        self._modify(dn, {"userAccountControl": [(ldap3.MODIFY_REPLACE, [value])]})


def _unicode_pwd(password: str) -> bytes:
    """AD's password attribute: the quoted password in UTF-16-LE (settable only over TLS)."""
    return f'"{password}"'.encode("utf-16-le")


# -- process management ----------------------------------------------------------------------
def _free_loopback_address() -> str:
    """A random 127.x.y.z where nothing holds 389 or 636 (nor a wildcard listener)."""
    rng = random.SystemRandom()
    for _ in range(50):
        address = f"127.{rng.randint(1, 254)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
        try:
            for port in (389, 636, 3268, 3269):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                    probe.bind((address, port))
        except PermissionError as exc:
            raise RuntimeError(
                "the Samba test DC needs root (it listens on ports 389/636)"
            ) from exc
        except OSError as exc:
            last = exc
            continue
        return address
    raise RuntimeError(
        f"no loopback address with LDAP ports 389/636 free ({last}); is a "
        "directory server listening on 0.0.0.0:636?"
    )


def _log_tail(directory: Path) -> str:
    try:
        return (directory / "samba.out").read_text(errors="replace")[-4000:]
    except OSError:
        return "(no log)"


#: Changes whenever what _provision writes changes, so that stale templates are not used.
TEMPLATE_FORMAT = "2"
#: The address a template is provisioned with; each copy gets its own.
_TEMPLATE_ADDRESS = "127.0.0.1"


def _provision(target: Path, admin_password: str) -> None:
    """Provision the domain into ``target``/dc (smb.conf holds all our options; the address
    and the certificate are set per copy by :func:`_instantiate`)."""
    dc = target / "dc"
    options = {
        "interfaces": f"{_TEMPLATE_ADDRESS}/8",
        "bind interfaces only": "yes",
        "server services": "ldap",
        "tls enabled": "yes",
        "tls certfile": str(dc / "tls" / "server.pem"),
        "tls keyfile": str(dc / "tls" / "server.key"),
        "tls cafile": str(dc / "tls" / "test-ca.pem"),
        "log file": str(dc / "log.samba"),
        # the defaults are machine-wide (/run/samba): a second DC would refuse to start
        "pid directory": str(dc / "run"),
        "ncalrpc dir": str(dc / "run" / "ncalrpc"),
        "winbindd socket directory": str(dc / "run" / "winbindd"),
        "ntp signd socket directory": str(dc / "run" / "ntp_signd"),
        "prefork children": "1",
    }
    command = [
        "samba-tool", "domain", "provision", f"--targetdir={dc}",
        f"--realm={REALM}", f"--domain={DOMAIN}", "--server-role=dc", "--dns-backend=NONE",
        "--use-rfc2307", "--host-name=dc1", f"--adminpass={admin_password}",
        *(f"--option={key}={value}" for key, value in options.items()),
    ]  # fmt: skip
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=300, check=False, env=_env()
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"samba-tool domain provision failed ({result.returncode}):\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}\n"
            "(Debian needs samba, samba-ad-provision, samba-dsdb-modules, samba-vfs-modules)"
        )


def _template() -> Path:
    """A provisioned domain, made once per machine and Samba version and copied for each run.

    Provisioning costs 10-40 s of CPU on the 2-core machine; copying the 35 MB takes a
    fraction of a second. Only smb.conf names paths and the address (checked: the databases
    hold none), so a copy is a complete DC once smb.conf is rewritten. The cache lives in
    ``$OPENMFA_TEST_CACHE`` (default ``~/.cache/openmfa-tests``), built under a lock into a
    temporary directory and renamed into place, so a half-built template is never used.
    """
    version = subprocess.run(
        [samba_binary(), "--version"], capture_output=True, text=True, check=True, env=_env()
    ).stdout.strip()
    key = hashlib.sha256(f"{TEMPLATE_FORMAT}|{version}|{REALM}|{DOMAIN}".encode()).hexdigest()
    root = Path(os.environ.get("OPENMFA_TEST_CACHE", Path.home() / ".cache" / "openmfa-tests"))
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    template = root / f"samba-dc-{key[:16]}"
    with _locked(root / "samba-dc-template.lock"):
        if (template / "admin-password").is_file():
            return template
        building = Path(tempfile.mkdtemp(prefix="samba-dc-build-", dir=root))
        try:
            admin_password = "Adm-" + secrets.token_urlsafe(12) + "-9x"
            _provision(building, admin_password)
            conf = building / "dc" / "etc" / "smb.conf"
            conf.write_text(conf.read_text().replace(str(building / "dc"), str(template / "dc")))
            password_file = building / "admin-password"
            password_file.write_text(admin_password)
            password_file.chmod(0o600)
            building.rename(template)
        finally:
            shutil.rmtree(building, ignore_errors=True)
    return template


def _instantiate(template: Path, directory: Path, address: str) -> str:
    """Copy the template's DC into ``directory``/dc for ``address``, with a certificate of
    its own; returns the Administrator's password."""
    dc = directory / "dc"
    shutil.copytree(template / "dc", dc, symlinks=True)
    make_tls(dc / "tls", hosts=(address, "127.0.0.1", "localhost", "::1"))
    conf = dc / "etc" / "smb.conf"
    text = conf.read_text().replace(str(template / "dc"), str(dc))
    text = re.sub(r"(?m)^(\s*interfaces\s*=).*$", rf"\g<1> {address}/8", text)
    conf.write_text(text)
    return (template / "admin-password").read_text().strip()


def _env() -> dict[str, str]:
    # samba-tool is Debian's Python; our venv's variables must not leak into it
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = env.get("PATH", "") + ":/usr/sbin:/sbin"
    return env


def _start(directory: Path, state_file: Path, lock_file: Path) -> DcState:
    """Start and configure a DC in a new directory under ``directory`` (with a watchdog that
    reads the owners from ``state_file``); return its state."""
    binary = samba_binary()
    if os.geteuid() != 0:
        raise RuntimeError("the Samba test DC needs root (Samba's LDAP ports are 389/636)")
    # a fresh directory each time: a DC a watchdog is still stopping may hold the last one
    directory = Path(tempfile.mkdtemp(prefix="samba-dc-", dir=directory))
    address = _free_loopback_address()
    bind_password = "Svc-" + secrets.token_urlsafe(12) + "-7y"
    admin_password = _instantiate(_template(), directory, address)
    with (directory / "samba.out").open("wb") as out:
        process = subprocess.Popen(
            [binary, "-i", "-M", "single", "--debug-stdout", "-d", "1",
             "-s", str(directory / "dc" / "etc" / "smb.conf")],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, env=_env(),
        )  # fmt: skip
    _STARTED[process.pid] = process
    start_watchdog(
        process.pid, "--owner", str(os.getpid()), "--state", str(state_file),
        "--lock", str(lock_file),
    )  # fmt: skip
    state = DcState(process.pid, address, str(directory), admin_password, bind_password, [])
    try:
        dc = SambaDC(state)
        wait_for_bind(
            dc.url, dc.ca_file, dc.admin_user, admin_password,
            deadline=time.monotonic() + START_TIMEOUT,
            alive=lambda: process.poll() is None, log=lambda: _log_tail(directory),
        )  # fmt: skip
        _configure(dc)
        dc.close()
    except BaseException:
        _stop(process.pid)
        raise
    return state


def _configure(dc: SambaDC) -> None:
    """Domain policy for the tests, and the read-only service account."""
    policy = {
        "lockoutThreshold": [(ldap3.MODIFY_REPLACE, [LOCKOUT_THRESHOLD])],
        # 30 minutes, in negative 100 ns units as AD keeps durations
        "lockoutDuration": [(ldap3.MODIFY_REPLACE, [-30 * 60 * 10_000_000])],
        "lockOutObservationWindow": [(ldap3.MODIFY_REPLACE, [-30 * 60 * 10_000_000])],
        "minPwdAge": [(ldap3.MODIFY_REPLACE, [0])],
        "pwdHistoryLength": [(ldap3.MODIFY_REPLACE, [0])],
    }
    dc._modify(BASE_DN, policy)
    dc.add_user(SERVICE_ACCOUNT, dc.bind_password, display_name="OpenMFA service account")
    # the service account never expires its password: a site's would not either
    dc._modify(dc.bind_dn, {"userAccountControl": [(ldap3.MODIFY_REPLACE, [0x10200])]})


_STARTED: dict[int, subprocess.Popen[bytes]] = {}


def _stop(pid: int) -> None:
    """Stop the DC's process group as the watchdog does (SIGTERM, SIGKILL after a bounded
    wait), then reap it when this process started it."""
    stop(pid)
    own = _STARTED.pop(pid, None)
    if own is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            own.wait(timeout=STOP_TIMEOUT)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_state(path: Path) -> DcState | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return DcState(**data)


@contextlib.contextmanager
def running_samba_dc(run_directory: Path) -> Iterator[SambaDC]:
    """A DC shared by every process that enters with the same ``run_directory``: the first
    starts it, the last one out stops it (see the module's docstring)."""
    run_directory.mkdir(parents=True, exist_ok=True)
    lock, state_file = run_directory / "samba-dc.lock", run_directory / "samba-dc.json"
    with _locked(lock):
        state = _read_state(state_file)
        if state is None or not _alive(state.pid):
            state = _start(run_directory, state_file, lock)
        state = DcState(**{**json.loads(state.as_json()), "users": [*state.users, os.getpid()]})
        state_file.write_text(state.as_json())
        state_file.chmod(0o600)
    dc = SambaDC(state)
    try:
        yield dc
    finally:
        dc.close()
        with _locked(lock):
            current = _read_state(state_file)
            if current is not None and current.pid == state.pid:
                others = [p for p in current.users if p != os.getpid() and _alive(p)]
                if others:
                    left = {**json.loads(current.as_json()), "users": others}
                    state_file.write_text(DcState(**left).as_json())
                else:
                    state_file.unlink()
                    _stop(current.pid)
