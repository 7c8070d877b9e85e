"""The doctor's I/O: gather the facts each check in :mod:`.checks` needs, then run it.

Nothing here changes the set-up: the database is only read (a missing SQLite file is not
created), the server key is never created, ports are bound and released at once, and the
SMTP probe sends no message. Every network step has a short timeout; an unresolvable host
is a warning (this machine may sit behind split DNS), never a crash.

Extension point: each step in :data:`STEPS` is ``async (Context) -> list[Finding]``. Web Push
(VAPID keys) and LDAP directories get a step of their own here when they exist.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import socket
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from backend.config import Settings
from backend.doctor import checks
from backend.doctor.checks import Finding
from backend.doctor.settings_view import mask_url

NETWORK_TIMEOUT = 3.0  # seconds for each probe: a doctor that hangs is no help at 3 a.m.
LOCAL_TIMEOUT = 1.0  # asking our own host whether the process on a port is OpenMFA


@dataclass
class Context:
    """The settings and what earlier steps learnt (the open database, the key)."""

    settings: Settings
    db: object | None = None  # backend.store.database.Database once the schema is current
    key: bytes | None = None  # once it loads and matches the database


def _my_uid() -> int:
    return os.geteuid()


async def _resolves(host: str) -> str | None:
    """``None`` when ``host`` resolves, else why not."""
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(loop.getaddrinfo(host, None), NETWORK_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        return str(exc) or type(exc).__name__
    return None


# -- steps -----------------------------------------------------------------------------------


async def data_dir(ctx: Context) -> list[Finding]:
    """The data directory: exists, writable, private."""
    home = ctx.settings.home
    try:
        info = home.stat()
    except FileNotFoundError:
        return [checks.check_data_dir(checks.DirFacts(str(home), exists=False))]
    except OSError:  # a parent this user cannot enter
        return [checks.check_data_dir(checks.DirFacts(str(home), True, writable=False))]
    facts = checks.DirFacts(
        str(home),
        exists=True,
        is_dir=home.is_dir(),
        mode=info.st_mode,
        owner_uid=info.st_uid,
        my_uid=_my_uid(),
        writable=os.access(home, os.W_OK | os.X_OK),
    )
    return [checks.check_data_dir(facts)]


async def database(ctx: Context) -> list[Finding]:
    """The database answers and its schema is current; keeps it open for the next steps."""
    from backend.store import migrations
    from backend.store.database import Database
    from backend.store.urls import display_url

    settings = ctx.settings
    url = settings.resolved_database_url
    shown = display_url(url)
    head = migrations.SCHEMA_REVISION
    sqlite_file = Path(url.split("///", 1)[1]) if settings.uses_sqlite and "///" in url else None
    if sqlite_file is not None and not sqlite_file.exists():
        return [checks.check_database(checks.DatabaseFacts(shown, head, missing_file=True))]
    db = Database(
        url,
        settings.sqlite_busy_timeout_ms,
        settings.db_pool_size,
        settings.sqlite_synchronous,
        settings.db_connect_timeout_seconds,
    )
    try:
        async with asyncio.timeout(NETWORK_TIMEOUT * 2):
            async with db.read() as conn:
                revision = await migrations.current_revision(conn)
    except Exception as exc:  # whatever the driver raises (no route, auth, TLS) is the finding
        await db.dispose()
        error = mask_url(str(exc).splitlines()[0]) if str(exc) else type(exc).__name__
        return [checks.check_database(checks.DatabaseFacts(shown, head, error=error))]
    finding = checks.check_database(checks.DatabaseFacts(shown, head, revision=revision))
    if finding.level == "ok":
        ctx.db = db
    else:
        await db.dispose()
    return [finding]


async def server_key(ctx: Context) -> list[Finding]:
    """The key file: present, 0600, ours, and the one the database recorded."""
    from backend.crypto import key_fingerprint, read_key
    from backend.errors import ServerKeyError
    from backend.services import KEY_ID
    from backend.store.database import Database

    path = ctx.settings.resolved_key_file
    recorded = None
    if isinstance(ctx.db, Database):
        recorded = await ctx.db.get_meta(KEY_ID)
    try:
        info = path.stat()
    except FileNotFoundError:
        return checks.check_server_key(checks.KeyFacts(str(path), False, recorded=recorded))
    except OSError as exc:
        error = f"cannot read the server key {path}: {exc}"
        return checks.check_server_key(checks.KeyFacts(str(path), True, read_error=error))
    try:
        key = read_key(path)
    except ServerKeyError as exc:
        return checks.check_server_key(
            checks.KeyFacts(str(path), True, read_error=str(exc), recorded=recorded)
        )
    facts = checks.KeyFacts(
        str(path),
        True,
        mode=info.st_mode,
        owner_uid=info.st_uid,
        my_uid=_my_uid(),
        fingerprint=key_fingerprint(key),
        recorded=recorded,
        database_read=ctx.db is not None,
    )
    findings = checks.check_server_key(facts)
    if recorded == facts.fingerprint:
        ctx.key = key
    return findings


async def public_url(ctx: Context) -> list[Finding]:
    """``public_url``: set, https where needed, answering ``/healthz``."""
    import httpx

    settings = ctx.settings
    url = settings.resolved_public_url
    pipush = await _pipush_devices(ctx)
    host = urlsplit(url).hostname or ""
    unresolved = await _resolves(host)
    if unresolved is not None:
        probe = checks.UrlProbe(url, error=unresolved, unresolved=True)
    else:
        # The system's trust store, as a phone has its own: a certificate from a private CA
        # installed on this machine passes, one only certifi knows does not matter here.
        verify = ssl.create_default_context()
        try:
            async with httpx.AsyncClient(
                timeout=NETWORK_TIMEOUT, trust_env=False, verify=verify
            ) as client:
                response = await client.get(f"{url}/healthz")
            probe = checks.UrlProbe(url, status=response.status_code)
        except httpx.HTTPError as exc:
            probe = checks.UrlProbe(url, error=str(exc) or type(exc).__name__)
    return checks.check_public_url(settings.public_url, pipush, probe)


async def _pipush_devices(ctx: Context) -> int | None:
    from sqlalchemy import func, select

    from backend.store.database import Database
    from backend.store.tables import devices_t

    if not isinstance(ctx.db, Database):
        return None
    async with ctx.db.read() as conn:
        query = select(func.count()).select_from(devices_t).where(devices_t.c.kind == "pipush")
        return int((await conn.execute(query)).scalar_one())


async def _server_running(settings: Settings) -> bool:
    """An OpenMFA server answers ``/healthz`` on this configuration's HTTP address.

    Over http, then https without verifying the certificate: this only asks whether the
    process on the port is ours, and sends nothing secret.
    """
    import httpx

    local = settings.model_copy(update={"public_url": ""}).resolved_public_url
    for url in (local, "https://" + local.removeprefix("http://")):
        try:
            async with httpx.AsyncClient(
                timeout=LOCAL_TIMEOUT,
                trust_env=False,
                verify=False,  # noqa: S501 (see above)
            ) as client:
                response = await client.get(f"{url}/healthz")
            if response.status_code == 200 and response.json().get("status") == "ok":
                return True
        except (httpx.HTTPError, ValueError, AttributeError):
            continue
    return False


def _bind_error(host: str, port: int, kind: socket.SocketKind) -> OSError | None:
    """Bind ``host:port`` as ``openmfa run`` would and let it go; the error, if any."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, kind) as sock:
            if kind == socket.SOCK_STREAM:
                # As the server binds (backend/server.py): a port in TIME_WAIT is free.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as exc:
        return exc
    return None


async def _port_facts(
    settings: Settings, host: str, port: int, kind: socket.SocketKind
) -> checks.PortFacts:
    protocol = "udp" if kind == socket.SOCK_DGRAM else "tcp"
    error = _bind_error(host, port, kind)
    if error is None:
        return checks.PortFacts(host, port, protocol=protocol)
    return checks.PortFacts(
        host,
        port,
        bind_error=error.strerror or str(error),
        permission_denied=error.errno in (errno.EACCES, errno.EPERM),
        server_running=await _server_running(settings),
        protocol=protocol,
    )


async def ports(ctx: Context) -> list[Finding]:
    """The HTTP port, the metrics listener (when set) and the built-in bridge's UDP port."""
    settings = ctx.settings
    findings = [
        checks.check_port(
            "http port",
            await _port_facts(settings, settings.host, settings.port, socket.SOCK_STREAM),
        )
    ]
    metrics = settings.metrics_address
    if metrics is not None:
        facts = await _port_facts(settings, metrics[0], metrics[1], socket.SOCK_STREAM)
        findings.append(checks.check_port("metrics port", facts))
    host, port = settings.resolved_radius_host, settings.radius_port
    if port == 0:
        findings.append(checks.check_radius_port(checks.PortFacts(host, 0)))
    else:
        facts = await _port_facts(settings, host, port, socket.SOCK_DGRAM)
        findings.append(checks.check_radius_port(facts))
    return findings


async def tls(ctx: Context) -> list[Finding]:
    """The HTTPS certificate and key load as the server loads them."""
    from backend import tls as server_tls
    from backend.errors import ConfigurationError

    cert, key = ctx.settings.tls_cert_file, ctx.settings.tls_key_file
    if cert is None:
        return [checks.check_tls(checks.TlsFacts(None), datetime.now(UTC))]
    try:
        subject, not_after = server_tls.describe(cert, key)
    except ConfigurationError as exc:
        return [checks.check_tls(checks.TlsFacts(str(cert), error=str(exc)), datetime.now(UTC))]
    facts = checks.TlsFacts(str(cert), subject, not_after)
    return [checks.check_tls(facts, datetime.now(UTC))]


async def geoip(ctx: Context) -> list[Finding]:
    """The GeoIP database opens as the server opens it."""
    from backend.errors import ConfigurationError
    from backend.services.geoip import GeoIp

    path = ctx.settings.geoip_database
    if path is None:
        return [checks.check_geoip(None, None)]
    try:
        opened = GeoIp.open(path)
    except ConfigurationError as exc:
        return [checks.check_geoip(str(path), str(exc))]
    if opened is not None:
        opened.close()
    return [checks.check_geoip(str(path), None)]


async def radius_clients(ctx: Context) -> list[Finding]:
    """Each RADIUS client's secret length and Message-Authenticator setting."""
    from backend.crypto import SecretBox
    from backend.services.audit import AuditLog
    from backend.services.radius_clients import RadiusClientService
    from backend.store.database import Database
    from backend.store.tables import now

    if not isinstance(ctx.db, Database):
        return checks.check_radius_clients(None, "the database is not usable (see above)")
    if ctx.key is None:
        return checks.check_radius_clients(None, "the server key is not usable (see above)")
    service = RadiusClientService(ctx.db, SecretBox(ctx.key), AuditLog(ctx.db, now), now)
    records = await service.list()
    return checks.check_radius_clients(
        [
            checks.ClientFacts(
                r.name,
                r.secret_bytes,
                r.secret_short,
                r.require_message_authenticator,
                upstream_secret_short=r.upstream is not None and r.upstream.secret_short,
            )
            for r in records
        ]
    )


async def push(ctx: Context) -> list[Finding]:
    """APNs and FCM: the keys load (as the server loads them) and the hosts resolve."""
    from backend.errors import ConfigurationError
    from backend.push.dispatcher import close_transports
    from backend.push.factory import apns_configured, build_transports, fcm_configured

    settings = ctx.settings
    findings: list[Finding] = []
    for name, configured, default_host, url in (
        ("APNs", apns_configured, "", settings.apns_url),
        ("FCM", fcm_configured, "fcm.googleapis.com", settings.fcm_url),
    ):
        key = name.lower()
        try:
            if not configured(settings):
                findings += checks.check_push(checks.PushFacts(name, configured=False))
                continue
            only = settings.model_copy(update=_without_other_transport(key))
            transports = await build_transports(only)
        except ConfigurationError as exc:
            findings += checks.check_push(checks.PushFacts(name, True, load_error=str(exc)))
            continue
        try:
            host = urlsplit(url).hostname if url else None
            host = host or str(getattr(transports.get(key), "host", "")) or default_host
        finally:
            await close_transports(transports)
        facts = checks.PushFacts(name, True, host=host, resolve_error=await _resolves(host))
        findings += checks.check_push(facts)
    return findings


async def webpush(ctx: Context) -> list[Finding]:
    """Web Push: the VAPID key in the database opens with the server key; subject, HTTPS."""
    from backend.crypto import SecretBox
    from backend.errors import OpenMFAError
    from backend.push.vapid import META_KEY, VapidKey
    from backend.push.webpush import subject_of
    from backend.store.database import Database

    settings = ctx.settings
    if not settings.webpush_enabled:
        return checks.check_webpush(checks.WebPushFacts(enabled=False))
    try:
        subject = subject_of(settings)
    except ValueError as exc:
        return checks.check_webpush(checks.WebPushFacts(True, subject_error=str(exc)))
    key = "none"
    if isinstance(ctx.db, Database) and ctx.key is not None:
        stored = await ctx.db.get_meta(META_KEY)
        if stored is not None:
            try:
                VapidKey.unseal(stored, SecretBox(ctx.key))
                key = "ok"
            except OpenMFAError as exc:
                key = exc.detail
    https = settings.resolved_public_url.startswith("https://")
    return checks.check_webpush(checks.WebPushFacts(True, key, subject, https))


def _without_other_transport(keep: str) -> dict[str, object]:
    """Settings updates that switch off the transport other than ``keep`` (each is checked
    on its own, so one's error is not reported under the other's name)."""
    if keep == "apns":
        return {"fcm_service_account_file": None, "fcm_url": "", "fcm_ca_file": None}
    return {
        "apns_key_file": None,
        "apns_key_id": "",
        "apns_team_id": "",
        "apns_topic": "",
        "apns_url": "",
        "apns_ca_file": None,
    }


async def smtp(ctx: Context) -> list[Finding]:
    """The mail server answers (connect, STARTTLS / TLS, login), when one is configured."""
    import aiosmtplib

    from backend.errors import ConfigurationError
    from backend.notify.mail import MailSender

    settings = ctx.settings
    try:
        sender = MailSender.from_settings(settings)
    except (ConfigurationError, OSError) as exc:
        facts = checks.SmtpFacts(settings.smtp_host, settings.smtp_port, error=str(exc))
        return [checks.check_smtp(facts)]
    if sender is None:
        return [checks.check_smtp(None)]
    unresolved = await _resolves(sender.host)
    if unresolved is not None:
        facts = checks.SmtpFacts(sender.host, sender.port, error=unresolved, unresolved=True)
        return [checks.check_smtp(facts)]
    try:
        async with asyncio.timeout(NETWORK_TIMEOUT * 2):
            await sender.probe()
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        error = str(exc) or type(exc).__name__
        return [checks.check_smtp(checks.SmtpFacts(sender.host, sender.port, error=error))]
    return [checks.check_smtp(checks.SmtpFacts(sender.host, sender.port))]


async def clock(ctx: Context) -> list[Finding]:
    """NTP synchronisation (timedatectl, where present) and the PostgreSQL server's clock."""
    synced, note = _ntp_state()
    return checks.check_clock(checks.ClockFacts(synced, note, await _database_offset(ctx)))


def _ntp_state() -> tuple[bool | None, str]:
    exe = shutil.which("timedatectl")
    if exe is None:
        return None, "timedatectl is not installed (check chrony / ntpd yourself)"
    try:
        result = subprocess.run(  # noqa: S603 - a fixed command, found on PATH
            [exe, "show", "--property=NTPSynchronized", "--value"],
            capture_output=True,
            text=True,
            timeout=NETWORK_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"timedatectl failed: {exc}"
    value = result.stdout.strip()
    if result.returncode != 0 or value not in ("yes", "no"):
        return None, "timedatectl cannot tell (no systemd-timedated here, e.g. a container)"
    return value == "yes", ""


async def _database_offset(ctx: Context) -> float | None:
    """The database server's clock minus ours, in seconds (PostgreSQL; SQLite shares ours)."""
    from sqlalchemy import text

    from backend.store.database import Database

    if not isinstance(ctx.db, Database) or ctx.settings.uses_sqlite:
        return None
    async with ctx.db.read() as conn:
        before = datetime.now(UTC)
        theirs = (await conn.execute(text("SELECT now()"))).scalar_one()
        after = datetime.now(UTC)
    ours = before + (after - before) / 2
    return float((theirs - ours).total_seconds())


Step = Callable[[Context], Awaitable[list[Finding]]]
#: In order: later steps use the database and key the earlier ones opened.
STEPS: tuple[Step, ...] = (
    data_dir,
    database,
    server_key,
    public_url,
    tls,
    ports,
    radius_clients,
    push,
    webpush,
    smtp,
    geoip,
    clock,
)


async def run_checks(
    settings: Settings, source: str, steps: tuple[Step, ...] = STEPS
) -> list[Finding]:
    """Every check against ``settings`` (already loaded from ``source``), in order."""
    from backend.store.database import Database

    ctx = Context(settings)
    findings = [checks.check_settings(source, None)]
    try:
        for step in steps:
            try:
                findings += await step(ctx)
            except Exception as exc:  # one broken check must not hide the others' findings
                findings.append(
                    Finding(
                        step.__name__.replace("_", " "),
                        "error",
                        f"the check itself failed: {type(exc).__name__}: {mask_url(str(exc))}",
                        "fix what it names; if it names nothing of yours, report it as a bug",
                    )
                )
    finally:
        if isinstance(ctx.db, Database):
            await ctx.db.dispose()
    return findings
