"""The doctor's checks: facts in, findings out, no I/O (so each is unit-tested directly).

Each check returns one or more :class:`Finding`: ``ok``, ``warning`` (works, but fix it),
``error`` (something will fail; ``openmfa doctor`` exits non-zero) or ``skip`` (could not be
checked here, with why). A warning or an error always says what to do.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from backend.domain.radius import SHORT_SECRET_CHARS

Level = Literal["ok", "warning", "error", "skip"]

# Beyond this the offline codes of the 30 s TOTP step and the app's signed requests
# (signature_skew_seconds) start failing; a few seconds is already worth a warning.
CLOCK_WARN_SECONDS = 2.0
CLOCK_ERROR_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class Finding:
    """One line of the report: which check, how it went, and what to do about it."""

    check: str
    level: Level
    message: str
    fix: str = ""


def _ok(check: str, message: str) -> Finding:
    return Finding(check, "ok", message)


# -- settings --------------------------------------------------------------------------------


def check_settings(source: str, error: str | None) -> Finding:
    """The settings load and validate (``source`` says from where)."""
    if error is not None:
        return Finding(
            "settings",
            "error",
            error,
            "correct the setting named (docs/configuration.md lists every one)",
        )
    return _ok("settings", f"valid ({source})")


# -- public_url ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UrlProbe:
    """The answer to ``GET <url>/healthz``: a status, or why there was none."""

    url: str
    status: int | None = None
    error: str | None = None
    unresolved: bool = False  # the host name did not resolve (DNS), as opposed to refused


def check_public_url(public_url: str, pipush_devices: int | None, probe: UrlProbe) -> list[Finding]:
    """``public_url`` set, https where the apps need it, and answering ``/healthz``."""
    findings: list[Finding] = []
    if not public_url:
        findings.append(
            Finding(
                "public_url",
                "warning",
                f"not set: activation QR codes carry {probe.url}, which only phones on this "
                "machine's network reach",
                "set public_url to the https:// address phones reach (docs/configuration.md)",
            )
        )
    elif public_url.startswith("http://"):
        if pipush_devices:
            findings.append(
                Finding(
                    "public_url",
                    "error",
                    f"{public_url} is not https, but {pipush_devices} privacyIDEA app "
                    "token(s) are enrolled: that app only talks https",
                    "serve https (openmfa run with a certificate, or a TLS proxy) and set "
                    "public_url to the https:// address",
                )
            )
        else:
            findings.append(
                Finding(
                    "public_url",
                    "warning",
                    f"{public_url} is not https: codes and answers cross the network in clear, "
                    "and the privacyIDEA app cannot be enrolled",
                    "serve https and set public_url to the https:// address",
                )
            )
    else:
        findings.append(_ok("public_url", f"{public_url} is https"))
    target = f"{probe.url}/healthz"
    if probe.status == 200:
        findings.append(_ok("public_url", f"{target} answers"))
    elif probe.unresolved:
        findings.append(
            Finding(
                "public_url",
                "warning",
                f"{target}: the host name does not resolve from here ({probe.error})",
                "check that phones can resolve it (DNS); from this machine it may be "
                "expected (split DNS)",
            )
        )
    elif probe.status is not None:
        findings.append(
            Finding(
                "public_url",
                "error",
                f"{target} answered {probe.status}, not 200: it reaches something else",
                "point public_url (and the proxy) at this OpenMFA server",
            )
        )
    else:
        findings.append(
            Finding(
                "public_url",
                "error",
                f"{target} is unreachable: {probe.error}",
                "start the server (openmfa run), or fix public_url, the proxy, the firewall or "
                "the TLS certificate (it must be one phones trust)",
            )
        )
    return findings


# -- database --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DatabaseFacts:
    """What opening the database showed: its revision, or why it could not be read."""

    display_url: str
    head: str
    missing_file: bool = False
    error: str | None = None
    revision: str | None = None


def check_database(facts: DatabaseFacts) -> Finding:
    """The database answers and is at the schema this version needs."""
    where = facts.display_url
    if facts.missing_file:
        return Finding(
            "database", "error", f"{where} does not exist", "run `openmfa db upgrade` to create it"
        )
    if facts.error is not None:
        return Finding(
            "database",
            "error",
            f"{where} does not answer: {facts.error}",
            "check database_url, that the database server runs and the credentials",
        )
    if facts.revision is None:
        return Finding("database", "error", f"{where} has no schema", "run `openmfa db upgrade`")
    if facts.revision != facts.head:
        return Finding(
            "database",
            "error",
            f"{where} is at schema {facts.revision}, this version needs {facts.head}",
            "run `openmfa db upgrade` (a newer schema than this version knows: run the newer "
            "version, or restore a backup)",
        )
    return _ok("database", f"{where} answers, schema {facts.revision} (current)")


# -- server key ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyFacts:
    """The server key file as found, and the fingerprint the database recorded."""

    path: str
    exists: bool
    mode: int | None = None
    owner_uid: int | None = None
    my_uid: int | None = None
    read_error: str | None = None
    fingerprint: str | None = None
    recorded: str | None = None  # None: none recorded yet (or the database was not read)
    database_read: bool = False


def check_server_key(facts: KeyFacts) -> list[Finding]:
    """Present, 0600, owned by the user running this, and the key the database was sealed with."""
    if not facts.exists:
        if facts.recorded is not None:
            return [
                Finding(
                    "server key",
                    "error",
                    f"{facts.path} is missing, and the database holds secrets sealed with it",
                    "restore the key file from your backup (docs/operations.md)",
                )
            ]
        return [
            Finding(
                "server key",
                "warning",
                f"{facts.path} does not exist yet",
                "it is created at the first start (`openmfa run`); then back it up",
            )
        ]
    if facts.read_error is not None:
        return [Finding("server key", "error", facts.read_error, "restore the key file")]
    findings: list[Finding] = []
    if facts.mode is not None and facts.mode & 0o077:
        findings.append(
            Finding(
                "server key",
                "error",
                f"{facts.path} has mode {stat.filemode(facts.mode)[1:]} ({facts.mode & 0o777:o}): "
                "others can read the key that decrypts every seed",
                f"chmod 600 {facts.path}",
            )
        )
    if facts.owner_uid is not None and facts.owner_uid != facts.my_uid:
        findings.append(
            Finding(
                "server key",
                "error",
                f"{facts.path} belongs to uid {facts.owner_uid}, not to the user running this "
                f"(uid {facts.my_uid})",
                "run the doctor as the server's user (sudo -u openmfa openmfa doctor), or "
                f"chown that user {facts.path}",
            )
        )
    if facts.database_read and facts.recorded is not None and facts.recorded != facts.fingerprint:
        findings.append(
            Finding(
                "server key",
                "error",
                f"{facts.path} is not the key this database was encrypted with",
                "restore the matching key file from the backup taken with this database",
            )
        )
    if not findings:
        matched = " and matches the database" if facts.recorded is not None else ""
        findings.append(_ok("server key", f"{facts.path} is private (0600){matched}"))
    return findings


# -- RADIUS ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PortFacts:
    """Whether a listening port could be bound, and whether OpenMFA answers on the HTTP port."""

    host: str
    port: int
    bind_error: str | None = None
    permission_denied: bool = False
    server_running: bool = False  # an OpenMFA server answers /healthz on host:port
    protocol: str = "udp"


def check_port(check: str, facts: PortFacts) -> Finding:
    """A port ``openmfa run`` listens on is free, or held by the running OpenMFA server."""
    host = f"[{facts.host}]" if ":" in facts.host else facts.host
    where = f"{facts.protocol} {host}:{facts.port}"
    if facts.bind_error is None:
        return _ok(check, f"{where} is free to bind")
    if facts.permission_denied:
        return Finding(
            check,
            "error",
            f"{where} cannot be bound: {facts.bind_error}",
            "ports below 1024 need CAP_NET_BIND_SERVICE (AmbientCapabilities= in the unit), "
            "or use a port above 1023",
        )
    if facts.server_running:
        return _ok(check, f"{where} is in use by the running OpenMFA server")
    flags = "ulpn" if facts.protocol == "udp" else "tlpn"
    return Finding(
        check,
        "error",
        f"{where} is in use by another process",
        f"find it with `ss -{flags} 'sport = :{facts.port}'`, stop it, or choose another port",
    )


def check_radius_port(facts: PortFacts) -> Finding:
    """The built-in bridge's port is free (or held by the running OpenMFA server)."""
    if facts.port == 0:
        return Finding("radius port", "skip", "RADIUS is off (radius_port = 0)")
    return check_port("radius port", facts)


@dataclass(frozen=True, slots=True)
class ClientFacts:
    """A RADIUS client as far as the doctor cares: its secret's length and M-A setting."""

    name: str
    secret_bytes: int
    secret_short: bool
    require_message_authenticator: bool
    upstream_secret_short: bool = False  # primary ``radius``: the upstream server's secret


def check_radius_clients(clients: list[ClientFacts] | None, why_not: str = "") -> list[Finding]:
    """Each client's secret is long enough and it requires Message-Authenticator."""
    if clients is None:
        return [Finding("radius clients", "skip", f"not read: {why_not}")]
    if not clients:
        return [_ok("radius clients", "none configured (add gateways with `openmfa client add`)")]
    findings: list[Finding] = []
    for client in clients:
        problems: list[Finding] = []
        if client.secret_short:
            problems.append(
                Finding(
                    "radius clients",
                    "warning",
                    f"{client.name}: the shared secret is shorter than {SHORT_SECRET_CHARS} "
                    f"characters ({client.secret_bytes} bytes): a captured packet lets it be "
                    "guessed offline",
                    f"set a random one of 32+ characters: openssl rand -base64 24 | "
                    f"openmfa client set {client.name} --secret-stdin (and on the gateway)",
                )
            )
        if client.upstream_secret_short:
            problems.append(
                Finding(
                    "radius clients",
                    "warning",
                    f"{client.name}: the upstream server's secret is shorter than "
                    f"{SHORT_SECRET_CHARS} characters",
                    f"set a random one of 32+ characters on the upstream server and with "
                    f"openmfa client set {client.name} --upstream-secret-file FILE",
                )
            )
        if not client.require_message_authenticator:
            problems.append(
                Finding(
                    "radius clients",
                    "warning",
                    f"{client.name}: Message-Authenticator is not required: spoofed requests "
                    "can start pushes (BlastRADIUS, docs/radius-clients.md)",
                    f"openmfa client set {client.name} --require-message-authenticator once the "
                    "gateway sends it",
                )
            )
        findings.extend(problems)
        if not problems:
            findings.append(
                _ok(
                    "radius clients",
                    f"{client.name}: {client.secret_bytes}-byte secret, "
                    "Message-Authenticator required",
                )
            )
    return findings


# -- push ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PushFacts:
    """One push transport: configured or not, whether its keys load, whether its host resolves."""

    transport: str  # "APNs", "FCM"
    configured: bool
    load_error: str | None = None
    host: str = ""
    resolve_error: str | None = None


def check_push(facts: PushFacts) -> list[Finding]:
    """The transport's key loads and its service's host name resolves."""
    check = f"push {facts.transport}"
    if facts.load_error is not None:
        return [Finding(check, "error", facts.load_error, "fix the setting named (docs/push.md)")]
    if not facts.configured:
        return [Finding(check, "skip", "not configured: its devices are served by polling")]
    findings = [_ok(check, "the key loads")]
    if facts.resolve_error is not None:
        findings.append(
            Finding(
                check,
                "warning",
                f"{facts.host} does not resolve from here ({facts.resolve_error}): pushes will "
                "fail and devices fall back to polling",
                "check DNS and the outbound firewall (HTTPS to the push service)",
            )
        )
    else:
        findings.append(_ok(check, f"{facts.host} resolves"))
    return findings


@dataclass(frozen=True, slots=True)
class WebPushFacts:
    """Web Push: on or off, the VAPID key's state, the subject sent, the public URL's scheme."""

    enabled: bool
    key: str = "none"  # "ok", "none" (made at the next start) or why it does not open
    subject: str = ""
    https: bool = True
    subject_error: str | None = None


def check_webpush(facts: WebPushFacts) -> list[Finding]:
    """The VAPID key opens with the server key, the subject is valid, the site is HTTPS."""
    check = "push Web Push"
    if not facts.enabled:
        return [Finding(check, "skip", "off (webpush_enabled): web devices are served by polling")]
    if facts.subject_error is not None:
        return [Finding(check, "error", facts.subject_error, "set webpush_subject (docs/push.md)")]
    findings = []
    if facts.key == "ok":
        findings.append(_ok(check, "the VAPID key is stored and opens with the server key"))
    elif facts.key == "none":
        findings.append(_ok(check, "no VAPID key yet: `openmfa run` makes it at its next start"))
    else:
        findings.append(
            Finding(
                check,
                "error",
                f"the stored VAPID key does not open: {facts.key}",
                "restore the server key this database was encrypted with (docs/operations.md)",
            )
        )
    findings.append(_ok(check, f"pushes name the contact {facts.subject}"))
    if not facts.https:
        findings.append(
            Finding(
                check,
                "warning",
                "public_url is not https: browsers run the web app's service worker, and so "
                "receive pushes, only over HTTPS",
                "serve the site over HTTPS and set public_url to that address (docs/push.md)",
            )
        )
    return findings


# -- SMTP ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SmtpFacts:
    """The SMTP conversation the doctor held: connect, EHLO (and STARTTLS when asked for)."""

    host: str
    port: int
    error: str | None = None
    unresolved: bool = False


def check_smtp(facts: SmtpFacts | None) -> Finding:
    """The mail server answers when one is configured."""
    if facts is None:
        return Finding("smtp", "skip", "not configured: no e-mail is sent (smtp_host)")
    where = f"{facts.host}:{facts.port}"
    if facts.error is None:
        return _ok("smtp", f"{where} answers EHLO")
    if facts.unresolved:
        return Finding(
            "smtp",
            "warning",
            f"{facts.host} does not resolve from here ({facts.error})",
            "check smtp_host and DNS",
        )
    return Finding(
        "smtp",
        "error",
        f"{where}: {facts.error}",
        "check smtp_host, smtp_port, smtp_security and the firewall",
    )


# -- clock -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClockFacts:
    """NTP synchronisation as the system reports it, and the database server's clock offset."""

    ntp_synchronized: bool | None
    ntp_note: str = ""
    database_offset_seconds: float | None = None  # database clock minus ours (PostgreSQL)


def check_clock(facts: ClockFacts) -> list[Finding]:
    """The clock is synchronised, and agrees with the database server's."""
    findings: list[Finding] = []
    if facts.ntp_synchronized is None:
        findings.append(Finding("clock", "skip", f"NTP state unknown: {facts.ntp_note}"))
    elif facts.ntp_synchronized:
        findings.append(_ok("clock", "synchronised (NTP)"))
    else:
        findings.append(
            Finding(
                "clock",
                "warning",
                "the system clock is not NTP-synchronised: codes drift out of their 30 s window",
                "enable time synchronisation (timedatectl set-ntp true, chrony)",
            )
        )
    offset = facts.database_offset_seconds
    if offset is not None:
        shown = f"{offset:+.1f} s"
        if abs(offset) >= CLOCK_ERROR_SECONDS:
            level: Level = "error"
        elif abs(offset) >= CLOCK_WARN_SECONDS:
            level = "warning"
        else:
            findings.append(_ok("clock", f"agrees with the database server ({shown})"))
            return findings
        findings.append(
            Finding(
                "clock",
                level,
                f"the database server's clock is {shown} from this one",
                "synchronise both machines with NTP",
            )
        )
    return findings


# -- TLS -------------------------------------------------------------------------------------

#: A certificate that ends sooner than this is worth a warning: renewals fail quietly.
TLS_RENEW_WARNING = timedelta(days=14)


@dataclass(frozen=True, slots=True)
class TlsFacts:
    """The HTTPS listener's certificate as the server would load it (``None``: no TLS)."""

    cert_file: str | None
    subject: str = ""
    not_after: datetime | None = None
    error: str | None = None


def check_tls(facts: TlsFacts, now: datetime) -> Finding:
    """The certificate and key load and the certificate is not about to end."""
    if facts.cert_file is None:
        return Finding(
            "tls", "skip", "off: plain HTTP (tls_cert_file), fine behind a TLS reverse proxy"
        )
    if facts.error is not None:
        return Finding("tls", "error", facts.error, "fix tls_cert_file / tls_key_file")
    assert facts.not_after is not None  # noqa: S101 - set whenever there is no error
    left = facts.not_after - now
    if left <= timedelta(0):
        return Finding(
            "tls",
            "error",
            f"the certificate for {facts.subject} ended {facts.not_after:%Y-%m-%d %H:%M} UTC",
            "renew it, then `systemctl reload openmfa` (SIGHUP loads it without a restart)",
        )
    if left < TLS_RENEW_WARNING:
        return Finding(
            "tls",
            "warning",
            f"the certificate for {facts.subject} ends in {left.days} day(s)",
            "renew it, then `systemctl reload openmfa` (SIGHUP loads it without a restart)",
        )
    return _ok("tls", f"{facts.subject}, valid until {facts.not_after:%Y-%m-%d}")


# -- GeoIP -----------------------------------------------------------------------------------


def check_geoip(path: str | None, error: str | None) -> Finding:
    """The GeoIP database opens, when one is configured."""
    if path is None:
        return Finding("geoip", "skip", "not configured: challenges show no place (geoip_database)")
    if error is not None:
        return Finding("geoip", "error", error, "fix geoip_database (docs/operations.md, GeoIP)")
    return _ok("geoip", f"{path} opens")


# -- directories -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DirFacts:
    """The data directory as found."""

    path: str
    exists: bool
    is_dir: bool = True
    mode: int | None = None
    owner_uid: int | None = None
    my_uid: int | None = None
    writable: bool = True


def check_data_dir(facts: DirFacts) -> Finding:
    """The data directory exists, is writable and private."""
    check = "data directory"
    if not facts.exists:
        return Finding(check, "error", f"{facts.path} does not exist", "run `openmfa db upgrade`")
    if not facts.is_dir:
        return Finding(check, "error", f"{facts.path} is not a directory", "set OPENMFA_HOME")
    if not facts.writable:
        return Finding(
            check,
            "error",
            f"{facts.path} is not writable by this user (SQLite writes its journal there)",
            "run as the server's user, or chown the directory to it",
        )
    if facts.mode is not None and facts.mode & 0o077:
        return Finding(
            check,
            "warning",
            f"{facts.path} has mode {facts.mode & 0o777:o}: other users can list it",
            f"chmod 700 {facts.path}",
        )
    if facts.owner_uid is not None and facts.owner_uid != facts.my_uid:
        return Finding(
            check,
            "warning",
            f"{facts.path} belongs to uid {facts.owner_uid}, not to this user",
            "run the doctor as the server's user",
        )
    return _ok(check, f"{facts.path} is private and writable")


def exit_status(findings: list[Finding]) -> int:
    """1 when any finding is an error, else 0 (warnings do not fail the doctor)."""
    return 1 if any(f.level == "error" for f in findings) else 0
