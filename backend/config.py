"""The one settings object: defaults < TOML file < ``OPENMFA_*`` environment < explicit overrides.

The data directory (``OPENMFA_HOME``) holds the SQLite database, the server key and the
optional ``openmfa.toml``. The server and every ``openmfa`` command resolve it the same way,
so a command run in a second terminal works on the database the server uses.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from backend.domain.webpush import DEFAULT_ALLOWED_ORIGINS, check_subject, parse_origin_rule
from backend.errors import ConfigurationError
from backend.store.urls import connect_timeout, sqlalchemy_url

ENV_PREFIX = "OPENMFA_"
CONFIG_FILE_NAME = "openmfa.toml"


def default_home() -> Path:
    """``$XDG_DATA_HOME/openmfa``, falling back to ``~/.local/share/openmfa``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "openmfa"


class Settings(BaseModel):
    """Everything the server and the CLI can be told. Field names map to ``OPENMFA_<NAME>``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    home: Path = Field(default_factory=default_home)
    database_url: str = ""
    key_file: Path | None = None
    # Where apps reach this server (it goes into activation QR codes). Empty: derived from
    # host and port, which only suits a server that phones reach at that address.
    public_url: str = ""
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    # RADIUS bridge started by `openmfa run` (UDP); 0 turns it off. Empty host: the HTTP host.
    radius_port: int = Field(default=1812, ge=0, le=65535)
    radius_host: str = ""
    # RadSec (RADIUS over TLS, RFC 6614) of the built-in bridge: TCP addresses "HOST[:PORT]"
    # (port 2083 by default), comma-separated; empty: off. Needs the three files below.
    radius_radsec_listen: str = ""
    # The bridge's TLS certificate and key (PEM) for RadSec.
    radius_radsec_cert_file: Path | None = None
    radius_radsec_key_file: Path | None = None
    # CA certificate(s) (PEM) that sign the gateways' RadSec client certificates.
    radius_radsec_client_ca_file: Path | None = None
    issuer: str = "OpenMFA"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"
    # OWASP's minimum for argon2id; never the library defaults (64 MiB, p=4), see DESIGN.md.
    argon2_memory_kib: int = Field(default=19456, ge=19456)
    argon2_time_cost: int = Field(default=2, ge=2)
    argon2_parallelism: int = Field(default=1, ge=1)
    hash_workers: int = Field(default=2, ge=1, le=64)
    # argon2id checks waiting beyond the running ones before more are refused at once (429):
    # at ~80 checks/s for the box (DESIGN.md), 40 is half a second of work queued at most.
    hash_queue_limit: int = Field(default=40, ge=0, le=10000)
    # Checks for unknown (or disabled, blocked, password-less) users spend a dummy argon2id
    # check each, at most this many a second per process; past it they wait without the CPU.
    unknown_user_checks_per_second: int = Field(default=20, ge=1, le=10000)
    # How much lower the hashing threads' CPU priority is (Linux nice) than the event loop's,
    # so codes, pushes and refusals are served first while the CPUs hash; 0 leaves it equal.
    hash_nice: int = Field(default=10, ge=0, le=19)
    max_body_bytes: int = Field(default=65536, ge=1024)
    signature_skew_seconds: int = Field(default=300, ge=30, le=3600)
    long_poll_max_seconds: int = Field(default=60, ge=1, le=600)
    shutdown_grace_seconds: float = Field(default=5.0, ge=0)
    sqlite_busy_timeout_ms: int = Field(default=5000, ge=0)
    # NORMAL: a commit survives a crash of the process; FULL: also a power cut (an fsync per
    # commit, per batch on the hot path), at a measured ~35% of the OTP throughput.
    sqlite_synchronous: Literal["normal", "full"] = "normal"
    db_pool_size: int = Field(default=10, ge=1)
    # PostgreSQL: seconds to wait for each host of database_url to connect before trying the
    # next (libpq's connect_timeout); a hung first host must not keep the replica unused.
    db_connect_timeout_seconds: float = Field(default=5.0, ge=0.5, le=120)

    # -- the HTTP server's limits (docs/configuration.md, "HTTP limits") --
    # Request line and headers together; beyond, 431 and the connection is closed.
    http_max_header_bytes: int = Field(default=16384, ge=1024, le=1048576)
    http_max_headers: int = Field(default=100, ge=10, le=1000)
    # From the connection's opening (a later request: its first byte) to the end of the
    # request's body; never the response, so long-polls are not cut. Beyond, 408 and close.
    http_request_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    # Connections open at once in this process (each held long-poll is one); beyond, 503.
    http_max_connections: int = Field(default=30000, ge=10, le=1000000)
    # Prometheus metrics on a listener of their own (HOST:PORT); empty: not served at all.
    metrics_listen: str = ""

    # -- HTTPS and reverse proxies (docs/operations.md, "TLS" and "Behind a reverse proxy") --
    # PEM certificate (then its chain) and key: `openmfa run` serves HTTPS itself; SIGHUP
    # reloads both. Without a key file the key is read from the certificate file.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # Peers (CIDRs or addresses) whose forwarding header names the client; empty: none, the
    # TCP peer is the client. Only the header named in trusted_proxy_header is read.
    trusted_proxies: tuple[str, ...] = ()
    trusted_proxy_header: Literal["x-forwarded-for", "forwarded"] = "x-forwarded-for"

    # -- push (docs/push.md). A transport left unconfigured is reported at start; its
    # devices are served by polling. --
    # APNs, token-based: the team's .p8 key, its key id, the team id and the app's bundle id.
    apns_key_file: Path | None = None
    apns_key_id: str = ""
    apns_team_id: str = ""
    apns_topic: str = ""
    apns_sandbox: bool = False
    # Another APNs endpoint (https://host:port) and a CA file to trust for it: for tests and
    # for a relay; empty means Apple's own endpoint with the system's trust store.
    apns_url: str = ""
    apns_ca_file: Path | None = None
    # FCM HTTP v1: the service-account JSON of the Firebase project (its token_uri is used as is).
    fcm_service_account_file: Path | None = None
    fcm_url: str = ""  # another endpoint base than https://fcm.googleapis.com (tests, relays)
    fcm_ca_file: Path | None = None
    fcm_workers: int = Field(default=4, ge=1, le=64)  # threads for the synchronous FCM client
    push_concurrency: int = Field(default=200, ge=1, le=10000)  # sends in flight at once
    # Web Push to the web app (/app/): no account anywhere, the server's own VAPID key (made at
    # the first start, kept in the database sealed with the server key).
    webpush_enabled: bool = True
    # The VAPID contact (mailto:... or https://...); empty: the public URL when it is https.
    webpush_subject: str = ""
    # Push-service origins a subscription may point at ("https://*.suffix": any name below).
    webpush_allowed_origins: tuple[str, ...] = DEFAULT_ALLOWED_ORIGINS
    webpush_ca_file: Path | None = None  # a CA to trust besides the system's (tests, relays)

    # -- fraud e-mail (docs/security.md) --
    smtp_host: str = ""  # empty: no e-mail is sent (reports are still stored and audited)
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_security: Literal["starttls", "tls", "none"] = "starttls"
    smtp_username: str = ""
    smtp_password_file: Path | None = None
    smtp_ca_file: Path | None = None
    mail_from: str = ""
    fraud_notify_to: str = ""  # the support address that gets fraud reports
    # E-mail each user about changes to their sign-in methods (needs smtp_host).
    notify_users: bool = True

    # -- context shown with a challenge --
    geoip_database: Path | None = None  # a MaxMind-format City database (GeoLite2-City.mmdb)

    # -- user portal and admin console (docs/portal.md) --
    web_session_idle_minutes: int = Field(default=30, ge=1, le=1440)
    web_session_max_hours: int = Field(default=12, ge=1, le=720)
    # How long a portal session's proof of a factor (step-up) lets it change factors, and how
    # long an invitation or an administrator's grant lets a user with none enrol a first one.
    step_up_minutes: int = Field(default=5, ge=1, le=60)
    first_enrolment_minutes: int = Field(default=60, ge=5, le=7 * 24 * 60)
    # Failed sign-ins from one address within the window before that address must wait; counted
    # in the database (address_limits), shared by every node.
    web_sign_in_address_limit: int = Field(default=20, ge=1, le=1000)
    web_sign_in_address_window_seconds: int = Field(default=900, ge=10, le=86400)

    # -- retention (docs/operations.md, "Retention"): what `openmfa run` prunes, and when --
    # Days to keep finished sign-ins (challenges: the sign-in history) with their
    # privacyIDEA push nonces; one still open is kept until it expired as long ago. 0: for ever.
    retention_challenge_days: int = Field(default=180, ge=0, le=36500)
    # Days to keep audit events. 0: keep for ever.
    retention_audit_days: int = Field(default=400, ge=0, le=36500)
    # Days after they expired that replay nonces, activation codes,
    # invitations and web sessions are removed; a nonce always stays until it expires.
    retention_expired_days: int = Field(default=7, ge=0, le=36500)
    # Days to keep account notices that were sent or given up. 0: keep for ever.
    retention_notice_days: int = Field(default=90, ge=0, le=36500)
    # Directory sync reports kept per directory (the newest). 0: keep all.
    retention_directory_syncs: int = Field(default=100, ge=0, le=100000)
    # Minutes between pruning passes in `openmfa run`; 0: only `openmfa prune` prunes.
    retention_interval_minutes: int = Field(default=60, ge=0, le=10080)
    # Rows deleted per statement, each in a short transaction of its own.
    retention_batch_size: int = Field(default=1000, ge=10, le=100000)
    # Seconds of pause between two batches, so the hot paths get the database in between.
    retention_batch_pause_seconds: float = Field(default=0.05, ge=0, le=10)

    # -- several nodes on one database (docs/operations.md, "Several nodes") --
    # How this node names itself in `openmfa nodes`; empty: the host name.
    node_name: str = Field(default="", max_length=128)
    # Seconds between a node's heartbeats; a node silent for node_timeout_seconds is dead:
    # its leases and the pushes it was sending are taken over by a live node.
    node_heartbeat_seconds: float = Field(default=5.0, ge=0.5, le=60)
    node_timeout_seconds: float = Field(default=20.0, ge=2, le=600)

    @field_validator("public_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("public_url must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("radius_host")
    @classmethod
    def _ip_literal(cls, value: str) -> str:
        # An address literal: a listen address that depends on name resolution would move.
        if value:
            try:
                ipaddress.ip_address(value)
            except ValueError:
                raise ValueError("radius_host must be an IP address (or empty)") from None
        return value

    @field_validator("radius_radsec_listen")
    @classmethod
    def _radsec_listen(cls, value: str) -> str:
        from radius_bridge.config import BridgeConfigError

        try:
            radsec_addresses(value)
        except BridgeConfigError as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _radsec_files(self) -> Settings:
        if self.radius_radsec_listen and None in (
            self.radius_radsec_cert_file,
            self.radius_radsec_key_file,
            self.radius_radsec_client_ca_file,
        ):
            raise ValueError(
                "radius_radsec_listen needs radius_radsec_cert_file, radius_radsec_key_file "
                "and radius_radsec_client_ca_file"
            )
        if self.radius_radsec_listen and not self.radius_port:
            # RadSec runs in the built-in bridge, which radius_port = 0 turns off.
            raise ValueError("radius_radsec_listen needs the built-in bridge (radius_port not 0)")
        return self

    @field_validator("metrics_listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        if value:
            _metrics_address(value)
        return value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _networks(cls, value: object) -> tuple[str, ...]:
        # The environment gives one string: "10.0.0.0/8, 192.0.2.7" (commas or spaces).
        items = value.replace(",", " ").split() if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            raise ValueError('trusted_proxies is a list of CIDRs, e.g. ["10.0.0.0/8"]')
        return tuple(_network(item) for item in items)

    @model_validator(mode="after")
    def _node_timeout(self) -> Settings:
        if self.node_timeout_seconds < 2 * self.node_heartbeat_seconds:
            # One late heartbeat must not make a live node look dead.
            raise ValueError("node_timeout_seconds must be at least twice node_heartbeat_seconds")
        return self

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if self.tls_key_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_key_file is set without tls_cert_file")
        return self

    @field_validator("webpush_subject")
    @classmethod
    def _vapid_subject(cls, value: str) -> str:
        return check_subject(value) if value else value

    @field_validator("webpush_allowed_origins", mode="before")
    @classmethod
    def _push_origins(cls, value: object) -> tuple[str, ...]:
        # The environment gives one string: "https://a.example, https://*.b.example".
        items = value.replace(",", " ").split() if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
            raise ValueError(
                'webpush_allowed_origins is a list, e.g. ["https://fcm.googleapis.com"]'
            )
        for item in items:
            parse_origin_rule(item)
        return tuple(item.strip() for item in items)

    @field_validator("database_url")
    @classmethod
    def _known_database_url(cls, value: str) -> str:
        # Parse now, so a malformed host list fails at start with the reason, not on first use.
        if value.lower().startswith("postgres"):
            connect_timeout(sqlalchemy_url(value))  # ValueError: other drivers, malformed
        return value

    @field_validator("issuer")
    @classmethod
    def _plain_issuer(cls, value: str) -> str:
        # The otpauth label is "ISSUER:ACCOUNT"; a colon in the issuer makes it ambiguous.
        if not value or ":" in value or len(value) > 64:
            raise ValueError("issuer is 1-64 characters without ':'")
        return value

    @property
    def resolved_public_url(self) -> str:
        """``public_url``, or ``http://HOST:PORT`` of this server when it is not set."""
        if self.public_url:
            return self.public_url
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host  # noqa: S104
        host = "[::1]" if host == "::" else host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    @property
    def tls(self) -> bool:
        """True when ``openmfa run`` serves HTTPS itself."""
        return self.tls_cert_file is not None

    @property
    def trusted_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """``trusted_proxies`` as networks."""
        return tuple(ipaddress.ip_network(item) for item in self.trusted_proxies)

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """``metrics_listen`` as (host, port), or ``None`` when metrics are off."""
        return _metrics_address(self.metrics_listen) if self.metrics_listen else None

    @property
    def resolved_radius_host(self) -> str:
        """Where ``openmfa run`` serves RADIUS: ``radius_host``, else the HTTP host."""
        return self.radius_host or self.host

    @property
    def resolved_database_url(self) -> str:
        """The SQLAlchemy URL of the database: the configured one (libpq's multi-host form
        converted, see backend/store/urls.py), or the SQLite file inside the data directory."""
        if not self.database_url:
            return f"sqlite+aiosqlite:///{self.home / 'openmfa.db'}"
        return sqlalchemy_url(self.database_url)

    @property
    def resolved_key_file(self) -> Path:
        """Where the server key lives (``home/server.key`` unless configured)."""
        return self.key_file or self.home / "server.key"

    @property
    def uses_sqlite(self) -> bool:
        """True for the embedded default."""
        return self.resolved_database_url.startswith("sqlite")


def _split_host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` with an IP address literal and a port 1-65535."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError("must be IP:PORT (an IP address, e.g. 127.0.0.1:9108)") from None
    if not sep or not re.fullmatch(r"[0-9]{1,5}", port) or not 1 <= int(port) <= 65535:
        raise ValueError("must be IP:PORT with a port from 1 to 65535")
    return host, int(port)


def _network(item: object) -> str:
    """One ``trusted_proxies`` entry, checked and written in its canonical form."""
    text = item.strip() if isinstance(item, str) else ""
    if not re.fullmatch(r"[0-9A-Fa-f:.]{2,45}(/[0-9]{1,3})?", text):
        raise ValueError(f"{item!r} is not an IP address or CIDR (e.g. 10.0.0.0/8)")
    try:
        return str(ipaddress.ip_network(text, strict=True))
    except ValueError as exc:
        raise ValueError(f"{text!r}: {exc}") from None


def _metrics_address(text: str) -> tuple[str, int]:
    """``IP:PORT``, or a bare ``PORT`` on 127.0.0.1: the figures show the load and name the
    RADIUS clients, so they are never served beyond this host unless an address says so."""
    if re.fullmatch(r"[0-9]{1,5}", text):
        return _split_host_port(f"127.0.0.1:{text}")
    return _split_host_port(text)


def _from_environment() -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in Settings.model_fields:
        raw = os.environ.get(ENV_PREFIX + name.upper())
        if raw is not None:
            values[name] = raw
    return values


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings; a bad file or value raises :class:`ConfigurationError`."""
    env = _from_environment()
    home = Path(overrides.get("home") or env.get("home") or default_home())
    # A file named on purpose (argument or OPENMFA_CONFIG) must exist; the default may not.
    named = config_file or (
        Path(os.environ[ENV_PREFIX + "CONFIG"]) if os.environ.get(ENV_PREFIX + "CONFIG") else None
    )
    path = named or home / CONFIG_FILE_NAME
    from_file: dict[str, Any] = {}
    if path.is_file():
        try:
            from_file = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigurationError(f"cannot read settings file {path}: {exc}") from exc
    elif named is not None:
        raise ConfigurationError(f"settings file {path} does not exist")
    if "home" in from_file:
        raise ConfigurationError(
            f"'home' cannot be set in {path}: the file lives in the data directory; "
            "set OPENMFA_HOME or pass --home instead"
        )
    merged = {**from_file, **env, **{k: v for k, v in overrides.items() if v is not None}}
    merged["home"] = home
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(
            ".".join(str(p) for p in err["loc"]) + ": " * bool(err["loc"]) + err["msg"]
            for err in exc.errors()
        )
        raise ConfigurationError(f"invalid settings: {problems}") from exc


def radsec_addresses(text: str) -> tuple[Any, ...]:
    """``radius_radsec_listen`` as the bridge's listen addresses (port 2083 by default).
    Raises radius_bridge.config.BridgeConfigError."""
    from radius_bridge.config import DEFAULT_RADSEC_PORT, parse_host_port

    items = [item for item in text.replace(",", " ").split() if item]
    return tuple(
        parse_host_port(item, "radius_radsec_listen", DEFAULT_RADSEC_PORT) for item in items
    )
