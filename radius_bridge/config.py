"""The bridge's own settings: where the backend is, the credential, where to listen.

Standalone (``openmfa radius``) they come from the command line and ``OPENMFA_BRIDGE_*``
environment variables; inside ``openmfa run`` the backend builds them directly. Nothing here
imports the backend: a bridge on its own host needs only this.

Every bad value is reported as one :class:`BridgeConfigError` naming the setting, never with
the token in it.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

ENV_PREFIX = "OPENMFA_BRIDGE_"
DEFAULT_PORT = 1812
#: Both address families on the standard port, as FreeRADIUS listens by default. When a
#: default address cannot be bound (a host without IPv6), the bridge warns and goes on with
#: the others; an address the operator named must bind or the bridge does not start.
DEFAULT_LISTEN = ("0.0.0.0:1812", "[::]:1812")
#: RadSec (RFC 6614) listens on TCP 2083 when asked to; off unless an address is given.
DEFAULT_RADSEC_PORT = 2083
#: ``--channel``: the wait channel when the backend serves it, or never.
CHANNEL_MODES = ("auto", "off")
#: Backend URLs a bridge may be given: a few nodes, not a fleet (each one is health-checked).
MAX_BACKENDS = 16


class BridgeConfigError(Exception):
    """A setting is missing or invalid. The message names it and never holds a secret."""


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """One UDP socket to serve RADIUS on."""

    host: str
    port: int

    @property
    def family_v6(self) -> bool:
        """True for an IPv6 address."""
        return ":" in self.host

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if self.family_v6 else f"{self.host}:{self.port}"


def parse_host_port(text: str, what: str, default_port: int | None = None) -> ListenAddress:
    """``HOST:PORT``, ``[V6]:PORT`` (or a bare host when ``default_port`` is given).

    HOST must be an IP address literal: a listen address that depends on name resolution
    changes under the operator's feet.
    """
    raw = text.strip()
    host, port_text = raw, ""
    if raw.startswith("["):
        end = raw.find("]")
        if end < 0:
            raise BridgeConfigError(f"{what}: {text!r} lacks the closing ']'")
        host, rest = raw[1:end], raw[end + 1 :]
        if rest and not rest.startswith(":"):
            raise BridgeConfigError(f"{what}: {text!r} is not [ADDRESS]:PORT")
        port_text = rest[1:]
    elif raw.count(":") == 1:
        host, port_text = raw.split(":")
    elif raw.count(":") > 1:
        raise BridgeConfigError(
            f"{what}: write an IPv6 address in brackets with its port, e.g. [::1]:1812"
        )
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise BridgeConfigError(f"{what}: {host!r} is not an IP address") from None
    if not port_text:
        if default_port is None:
            raise BridgeConfigError(f"{what}: {text!r} needs a port (HOST:PORT)")
        port = default_port
    else:
        if not port_text.isdigit():
            raise BridgeConfigError(f"{what}: port {port_text!r} is not a number")
        port = int(port_text)
    if not 0 <= port <= 65535:
        raise BridgeConfigError(f"{what}: port {port} is outside 0-65535")
    return ListenAddress(str(address), port)


def _number(
    raw: str | float | int, what: str, low: float, high: float, integer: bool = False
) -> float:
    try:
        value = float(raw) if not integer else int(str(raw))
    except ValueError:
        kind = "a whole number" if integer else "a number"
        raise BridgeConfigError(f"{what}: {raw!r} is not {kind}") from None
    if not low <= value <= high:
        raise BridgeConfigError(f"{what}: {value:g} is outside {low:g}-{high:g}")
    return value


@dataclass(frozen=True, slots=True)
class BridgeSettings:
    """Everything a bridge is told. ``token`` is kept out of ``repr``.

    * ``backend_urls``: where the gateway API lives (``https://mfa.example.com``), one URL
      per backend node, the preferred one first (:mod:`radius_bridge.backends` says how
      calls move between them); ``backend_url`` is the first.
    * ``token``: a bearer token with scope ``bridge``.
    * ``listen``: UDP addresses (IPv4 and IPv6; several allowed).
    * ``clients_file``: read the RADIUS clients from this JSON file (the clients document)
      instead of fetching them from the backend.
    * ``clients_cache``: keep the last clients document fetched from the backend in this file
      (sealed with a key derived from the token), and serve from it when the bridge starts
      while the backend cannot be reached (see :mod:`radius_bridge.cache`).
    * ``refresh_seconds``: how often the clients are re-read (ETag / mtime), so changes take
      effect within seconds.
    * ``http_timeout``: the longest any single short backend call may take (long-polls are
      bounded by the client's push timeout instead).
    * ``long_poll_seconds``: the slice of one long-poll; must not exceed the backend's
      ``long_poll_max_seconds`` (60 by default) nor the idle timeout of a proxy in between
      (60 s is common). Each held push re-polls once per slice, so longer is cheaper.
    * ``cut_grace_seconds``: when a held push's long-poll is cut (the backend gone, the
      connection reset), re-attach to the same authentication for this long; then the
      client's failmode answers at once. Long enough for a backend restart to pass unnoticed,
      short enough to answer before the gateway gives up (:mod:`.protocol.reattach`).
    * ``channel``: ``auto`` (default): held pushes and code / password checks go over one
      WebSocket to the backend (the wait channel, :mod:`radius_bridge.channel`) while it is
      open, plain HTTP otherwise (an older backend, a proxy without WebSocket); ``off``:
      always HTTP.
    * ``metrics_listen``: serve ``/metrics`` here (standalone only).
    * ``max_held``: requests in progress at once, shared between clients and users
      (:mod:`radius_bridge.protocol.shares`); beyond a share, new requests are dropped (the
      gateway retransmits) instead of letting memory grow without bound.
    * ``backend_connections``: the pool for short calls (start, verify, submit, cancel,
      audit, clients). Long-polls have their own pool of up to ``max_held`` connections.
    * ``radsec_listen``: TCP addresses for RadSec (RADIUS over TLS, RFC 6614); empty: off.
      Needs ``radsec_cert_file`` / ``radsec_key_file`` (the bridge's certificate) and
      ``radsec_client_ca_file`` (the CA that signs gateways' client certificates); the
      timeouts and bounds are described in :mod:`radius_bridge.radsec`.
    """

    backend_urls: tuple[str, ...]
    token: str = field(repr=False)
    listen: tuple[ListenAddress, ...] = ()
    listen_is_default: bool = False
    clients_file: Path | None = None
    clients_cache: Path | None = None
    refresh_seconds: float = 5.0
    http_timeout: float = 10.0
    long_poll_seconds: float = 50.0
    cut_grace_seconds: float = 5.0
    channel: str = "auto"
    metrics_listen: ListenAddress | None = None
    max_held: int = 20_000
    backend_connections: int = 64
    receive_buffer_bytes: int = 4 * 1024 * 1024
    log_level: str = "info"
    log_format: str = "json"
    radsec_listen: tuple[ListenAddress, ...] = ()
    radsec_cert_file: Path | None = None
    radsec_key_file: Path | None = None
    radsec_client_ca_file: Path | None = None
    radsec_handshake_timeout: float = 10.0
    radsec_idle_timeout: float = 120.0
    radsec_max_connections: int = 256
    radsec_max_in_flight: int = 256

    def __post_init__(self) -> None:
        if not isinstance(self.backend_urls, tuple):  # a str would be taken letter by letter
            raise BridgeConfigError("backend_urls is a tuple of URLs")
        if not self.backend_urls:
            raise BridgeConfigError("at least one backend URL is needed")
        if len(self.backend_urls) > MAX_BACKENDS:
            raise BridgeConfigError(f"at most {MAX_BACKENDS} backend URLs")
        for url in self.backend_urls:
            check_backend_url(url)
        if len({normal_url(u) for u in self.backend_urls}) != len(self.backend_urls):
            raise BridgeConfigError("a backend URL is given twice")
        if not self.token or any(c.isspace() for c in self.token) or len(self.token) > 512:
            raise BridgeConfigError("the bridge token is empty or malformed")
        if not self.listen:
            raise BridgeConfigError("at least one listen address is needed")
        if len(set(self.listen)) != len(self.listen):
            raise BridgeConfigError("a listen address is given twice")
        if self.clients_cache is not None and self.clients_file is not None:
            raise BridgeConfigError(
                "a clients cache only keeps what the backend sends; with a clients file "
                "there is nothing to cache (drop one of the two)"
            )
        _number(self.refresh_seconds, "refresh seconds", 0.1, 3600)
        _number(self.http_timeout, "HTTP timeout", 0.5, 120)
        _number(self.long_poll_seconds, "long-poll seconds", 1, 600)
        _number(self.cut_grace_seconds, "cut grace seconds", 0, 120)
        _number(self.max_held, "max held requests", 1, 1_000_000, integer=True)
        _number(self.backend_connections, "backend connections", 1, 10_000, integer=True)
        if self.channel not in CHANNEL_MODES:
            raise BridgeConfigError(f"channel {self.channel!r}: auto or off")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise BridgeConfigError(f"log level {self.log_level!r}: debug, info, warning, error")
        if self.log_format not in ("json", "text"):
            raise BridgeConfigError(f"log format {self.log_format!r}: json or text")
        if self.radsec_listen:
            missing = [
                what
                for what, value in (
                    ("RadSec certificate file", self.radsec_cert_file),
                    ("RadSec key file", self.radsec_key_file),
                    ("RadSec client CA file", self.radsec_client_ca_file),
                )
                if value is None
            ]
            if missing:
                raise BridgeConfigError(f"RadSec needs: {', '.join(missing)}")
            if len(set(self.radsec_listen)) != len(self.radsec_listen):
                raise BridgeConfigError("a RadSec listen address is given twice")
        _number(self.radsec_handshake_timeout, "RadSec handshake timeout", 0.5, 120)
        _number(self.radsec_idle_timeout, "RadSec idle timeout", 1, 86_400)
        _number(self.radsec_max_connections, "RadSec max connections", 1, 100_000, integer=True)
        _number(self.radsec_max_in_flight, "RadSec max in flight", 1, 100_000, integer=True)

    @property
    def backend_url(self) -> str:
        """The first (preferred) backend URL."""
        return self.backend_urls[0]

    @property
    def base_url(self) -> str:
        """The first backend URL without a trailing slash."""
        return normal_url(self.backend_url)

    @property
    def base_urls(self) -> tuple[str, ...]:
        """Every backend URL without a trailing slash, in order of preference."""
        return tuple(normal_url(u) for u in self.backend_urls)


def normal_url(url: str) -> str:
    """``url`` without a trailing slash (how calls are built on it)."""
    return url.rstrip("/")


def check_backend_url(url: str) -> None:
    """Raise :class:`BridgeConfigError` unless ``url`` is a plain http(s) base URL.

    No user name or password in it (they would show in logs and ``ps``; the token is the
    credential), no query or fragment (calls are appended to the path), no commas or spaces
    (lists of URLs are split on them).
    """
    shown = url if len(url) <= 200 else url[:200] + "..."
    if not url or any(c.isspace() or c == "," for c in url):
        raise BridgeConfigError(f"backend URL {shown!r} is empty or holds a space or comma")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise BridgeConfigError(f"backend URL {shown!r} is malformed") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BridgeConfigError(f"backend URL {shown!r} must start with http:// or https://")
    if parts.username is not None or parts.password is not None:
        # Never echo it: the part before @ may be a password.
        raise BridgeConfigError(
            "a backend URL holds a user name or password; the bridge token is the only "
            "credential (--token-file)"
        )
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise BridgeConfigError(f"backend URL {shown!r} must not have a query or fragment")
    if port == 0:
        raise BridgeConfigError(f"backend URL {shown!r}: port 0")


def split_backend_urls(values: str | Sequence[str]) -> tuple[str, ...]:
    """The URLs in ``values``: each item may list several, separated by commas or spaces
    (``OPENMFA_BRIDGE_BACKEND="https://mfa1.example,https://mfa2.example"``)."""
    items = [values] if isinstance(values, str) else list(values)
    return tuple(u for item in items for u in item.replace(",", " ").split() if u)


def read_token_file(path: Path) -> str:
    """The token in ``path`` (surrounding whitespace dropped). The file must be private."""
    try:
        info = path.stat()
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BridgeConfigError(f"token file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BridgeConfigError(f"cannot read token file {path}: {exc}") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        # A bridge token can start authentications for any user: keep it like a key.
        raise BridgeConfigError(
            f"token file {path} is readable by others; chmod 600 it (mode "
            f"{stat.S_IMODE(info.st_mode):04o})"
        )
    token = text.strip()
    if not token:
        raise BridgeConfigError(f"token file {path} is empty")
    return token


def load_bridge_settings(
    *,
    backend_url: str | Sequence[str] | None = None,
    token_file: Path | None = None,
    listen: Sequence[str] = (),
    clients_file: Path | None = None,
    clients_cache: Path | None = None,
    refresh_seconds: float | None = None,
    http_timeout: float | None = None,
    long_poll_seconds: float | None = None,
    cut_grace_seconds: float | None = None,
    channel: str | None = None,
    metrics_listen: str | None = None,
    max_held: int | None = None,
    log_level: str | None = None,
    log_format: str | None = None,
    radsec_listen: Sequence[str] = (),
    radsec_cert_file: Path | None = None,
    radsec_key_file: Path | None = None,
    radsec_client_ca_file: Path | None = None,
    radsec_idle_timeout: float | None = None,
    environ: Mapping[str, str] | None = None,
) -> BridgeSettings:
    """Arguments win over ``OPENMFA_BRIDGE_*`` variables, which win over the defaults.

    ``backend_url``: one URL or several (``--backend`` repeated); each item, like
    ``OPENMFA_BRIDGE_BACKEND``, may also list several separated by commas.
    The token comes from ``token_file`` (``--token-file`` / ``OPENMFA_BRIDGE_TOKEN_FILE``)
    or from ``OPENMFA_BRIDGE_TOKEN``; never from the command line, where ``ps`` shows it.
    """
    env = os.environ if environ is None else environ

    def pick(value: object, name: str) -> str | None:
        if value is not None:
            return str(value)
        return env.get(ENV_PREFIX + name) or None

    urls = split_backend_urls(backend_url) if backend_url else ()
    if not urls:
        urls = split_backend_urls(env.get(ENV_PREFIX + "BACKEND", ""))
    if not urls:
        raise BridgeConfigError("the backend URL is required (--backend or OPENMFA_BRIDGE_BACKEND)")
    token_path = pick(token_file, "TOKEN_FILE")
    if token_path:
        token = read_token_file(Path(token_path))
    elif env.get(ENV_PREFIX + "TOKEN"):
        token = env[ENV_PREFIX + "TOKEN"].strip()
    else:
        raise BridgeConfigError(
            "a bridge token is required (--token-file FILE or OPENMFA_BRIDGE_TOKEN)"
        )
    listen_texts = list(listen)
    if not listen_texts and env.get(ENV_PREFIX + "LISTEN"):
        listen_texts = [t for t in env[ENV_PREFIX + "LISTEN"].replace(",", " ").split() if t]
    is_default = not listen_texts
    addresses = tuple(
        parse_host_port(t, "listen address", DEFAULT_PORT) for t in (listen_texts or DEFAULT_LISTEN)
    )
    clients_text = pick(clients_file, "CLIENTS_FILE")
    cache_text = pick(clients_cache, "CLIENTS_CACHE")
    metrics_text = pick(metrics_listen, "METRICS_LISTEN")

    def number(arg: float | None, env_name: str, default: float) -> float:
        raw = pick(arg, env_name)
        return (
            default if raw is None else _number(raw, env_name.lower().replace("_", " "), -1e9, 1e9)
        )

    held = pick(max_held, "MAX_HELD")
    radsec_texts = list(radsec_listen)
    if not radsec_texts and env.get(ENV_PREFIX + "RADSEC_LISTEN"):
        radsec_texts = [t for t in env[ENV_PREFIX + "RADSEC_LISTEN"].replace(",", " ").split() if t]

    def path(value: Path | None, name: str) -> Path | None:
        text = pick(value, name)
        return Path(text) if text else None

    return BridgeSettings(
        backend_urls=urls,
        token=token,
        listen=addresses,
        listen_is_default=is_default,
        clients_file=Path(clients_text) if clients_text else None,
        clients_cache=Path(cache_text) if cache_text else None,
        refresh_seconds=number(refresh_seconds, "REFRESH_SECONDS", 5.0),
        http_timeout=number(http_timeout, "HTTP_TIMEOUT", 10.0),
        long_poll_seconds=number(long_poll_seconds, "LONG_POLL_SECONDS", 50.0),
        cut_grace_seconds=number(cut_grace_seconds, "CUT_GRACE_SECONDS", 5.0),
        channel=(pick(channel, "CHANNEL") or "auto").lower(),
        metrics_listen=parse_host_port(metrics_text, "metrics address") if metrics_text else None,
        max_held=20_000
        if held is None
        else int(_number(held, "max held requests", 1, 1_000_000, integer=True)),
        log_level=(pick(log_level, "LOG_LEVEL") or "info").lower(),
        log_format=(pick(log_format, "LOG_FORMAT") or "json").lower(),
        radsec_listen=tuple(
            parse_host_port(t, "RadSec listen address", DEFAULT_RADSEC_PORT) for t in radsec_texts
        ),
        radsec_cert_file=path(radsec_cert_file, "RADSEC_CERT_FILE"),
        radsec_key_file=path(radsec_key_file, "RADSEC_KEY_FILE"),
        radsec_client_ca_file=path(radsec_client_ca_file, "RADSEC_CLIENT_CA_FILE"),
        radsec_idle_timeout=number(radsec_idle_timeout, "RADSEC_IDLE_TIMEOUT", 120.0),
    )
