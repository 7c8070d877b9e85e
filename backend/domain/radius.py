"""RADIUS client settings: what each may hold, checked and normalised.

Everything a bridge will act on is validated here, once, when an administrator adds or
changes a client, so that the clients document the bridges fetch never holds a value they
would have to second-guess. :func:`merge` applies a partial change to the current settings
(with the rules for settings that only make sense together), :func:`normalise` checks the
result as a whole and returns it in canonical form. No I/O, except that reply attributes are
checked against the RADIUS dictionary the bridge encodes them with (radius_vocabulary's,
a package file read once). The choices and limits the bridge also enforces are
:mod:`radius_vocabulary.settings`'s: one list for both.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TypeVar

from backend.domain.names import object_name, user_key
from backend.errors import InvalidName, InvalidRadiusClient
from radius_vocabulary.certs import format_fingerprint, parse_fingerprint
from radius_vocabulary.dictionary import Attribute, default_dictionary
from radius_vocabulary.settings import (
    DEFAULT_PROMPT,
    DEFAULT_PUSH_TIMEOUT,
    FAILMODES,
    MAX_PROMPT_BYTES,
    MODES,
    NAME_FORMATS,
    NUMBER_MATCHING,
    PRIMARIES,
    PUSH_TIMEOUT,
    UNENROLLED,
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_SECRET_BYTES = 128  # RFC 2865 puts no limit; 128 is what gateways accept in practice
SHORT_SECRET_CHARS = 16  # below this an offline guess of a captured packet is realistic
UPSTREAM_TIMEOUT = (1.0, 60.0)
DEFAULT_UPSTREAM_PORT = 1812
DEFAULT_UPSTREAM_TIMEOUT = 10.0
DEFAULT_SEPARATOR = ","
MAX_NETWORKS = 64
MAX_EXEMPT_USERS = 256
MAX_REALMS = 32
MAX_REPLY_ATTRIBUTES = 32
MAX_CERT_FINGERPRINTS = 16
#: Where a RadSec client may connect from when no address is given: anywhere (the
#: certificate identifies it; give --address to restrict it as well).
RADSEC_ANY_ADDRESS = ("0.0.0.0/0", "::/0")

_HOSTNAME = re.compile(
    r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)
_REALM = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}")
_PLACEHOLDER = "{user}"
_MAPPED_V4 = ipaddress.IPv6Network("::ffff:0:0/96")
T = TypeVar("T")


# -- reply attributes: the names a client may be configured to send ---------------------------

#: Attributes that carry the protocol itself; the bridge writes (or refuses) them on its own.
RESERVED_ATTRIBUTES = frozenset(
    {
        "user-password",
        "chap-password",
        "chap-challenge",
        "state",
        "proxy-state",
        "message-authenticator",
        "eap-message",
        "vendor-specific",
    }
)


def parse_reply_attribute(text: str) -> tuple[str, str]:
    """``Name=value`` (``Name:tag=value`` for tagged attributes) -> ``(name, value)``.

    The name is looked up in the RADIUS dictionary (``radius_vocabulary/dictionary``,
    read once), which is what will encode it: a name or value the bridge could not send is
    refused here, when the operator types it, not at a user's sign-in. The name comes back
    spelled as the dictionary spells it; the value as given.
    """
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise InvalidRadiusClient(f"reply attribute {text!r} is not NAME=VALUE")
    base, colon, tag = name.partition(":")
    dictionary = default_dictionary()
    try:
        definition = dictionary.lookup(base)
    except ValueError:
        raise InvalidRadiusClient(
            f"unknown reply attribute {base!r}: not in the bridge's RADIUS dictionary "
            "(e.g. Class, Filter-Id, Session-Timeout, Tunnel-Private-Group-Id, Cisco-AVPair)"
        ) from None
    if definition.name.lower() in RESERVED_ATTRIBUTES:
        raise InvalidRadiusClient(
            f"{definition.name} is part of the RADIUS exchange and set by the bridge itself"
        )
    if colon and not tag.isdigit():
        raise InvalidRadiusClient(f"the tag of {definition.name} is a number from 0 to 31")
    canonical = definition.name + (f":{tag}" if colon else "")
    if not value:
        raise InvalidRadiusClient(f"reply attribute {canonical} has no value")
    try:
        dictionary.encode(Attribute(canonical, value))
    except ValueError as exc:
        reason = str(exc).removeprefix(f"{definition.name}: ")
        raise InvalidRadiusClient(f"reply attribute {canonical}: {reason}") from None
    return canonical, value


# -- single values ----------------------------------------------------------------------------


def parse_network(text: str, what: str = "address") -> Network:
    """An address or a CIDR network. Host bits are ignored (``10.0.0.5/24`` is 10.0.0.0/24),
    and IPv4 written in IPv6 (``::ffff:10.0.0.0/120``) is taken as IPv4, as the bridge does."""
    try:
        network = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise InvalidRadiusClient(
            f"{what} {text!r} is not an IP address or a network such as 10.0.0.0/24"
        ) from None
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED_V4):
        address = ipaddress.IPv4Address(int(network.network_address) & 0xFFFFFFFF)
        return ipaddress.IPv4Network((address, network.prefixlen - 96))
    return network


def host_bits_ignored(text: str) -> bool:
    """True when ``text`` has host bits set that :func:`parse_network` drops."""
    try:
        ipaddress.ip_network(text.strip(), strict=True)
    except ValueError:
        return True
    return False


def format_network(network: Network) -> str:
    """A single address without its prefix length, a network in CIDR notation."""
    if network.prefixlen == network.max_prefixlen:
        return str(network.network_address)
    return str(network)


def check_secret(secret: str, what: str = "shared secret") -> str:
    """1 to 128 bytes of UTF-8; never empty."""
    if not secret:
        raise InvalidRadiusClient(f"the {what} is empty")
    size = len(secret.encode("utf-8"))
    if size > MAX_SECRET_BYTES:
        raise InvalidRadiusClient(
            f"the {what} has {size} bytes; at most {MAX_SECRET_BYTES} are allowed"
        )
    return secret


def is_short_secret(secret: str) -> bool:
    """Allowed, but worth a warning: a short secret can be guessed from one captured packet."""
    return len(secret) < SHORT_SECRET_CHARS


def check_choice(value: str, choices: Sequence[str], what: str) -> str:
    if value not in choices:
        raise InvalidRadiusClient(f"{what} must be one of {', '.join(choices)}, not {value!r}")
    return value


def check_seconds(value: float, limits: tuple[float, float], what: str) -> float:
    low, high = limits
    if not math.isfinite(value) or not low <= value <= high:
        raise InvalidRadiusClient(f"{what} is from {low:g} to {high:g} seconds, not {value:g}")
    return float(value)


def check_host(host: str) -> str:
    """An IP address or a DNS name."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not _HOSTNAME.fullmatch(host):
        raise InvalidRadiusClient(f"upstream host {host!r} is neither an IP address nor a DNS name")
    return host.rstrip(".").lower()


def check_port(port: int) -> int:
    if not 1 <= port <= 65535:
        raise InvalidRadiusClient(f"upstream port is from 1 to 65535, not {port}")
    return port


def parse_host_port(text: str) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT``, ``[IPv6]:PORT`` or a bare IPv6 address; port 1812 by default."""
    text = text.strip()
    port_text: str | None = None
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise InvalidRadiusClient(f"{text!r} is not HOST:PORT or [IPv6]:PORT")
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host = text  # a name, an IPv4 address, or an IPv6 address without a port
    if port_text is None:
        return check_host(host), DEFAULT_UPSTREAM_PORT
    if not re.fullmatch(r"[0-9]{1,5}", port_text):
        raise InvalidRadiusClient(f"upstream port {port_text!r} is not a number from 1 to 65535")
    return check_host(host), check_port(int(port_text))


def check_prompt(prompt: str) -> str:
    """Reply-Message text: 1-253 bytes of UTF-8, line breaks allowed, no other controls."""
    size = len(prompt.encode("utf-8"))
    if not prompt.strip():
        raise InvalidRadiusClient("the prompt is empty")
    if size > MAX_PROMPT_BYTES:
        raise InvalidRadiusClient(
            f"the prompt has {size} bytes in UTF-8; one Reply-Message holds at most "
            f"{MAX_PROMPT_BYTES}"
        )
    if any((ord(c) < 32 and c != "\n") or ord(c) == 127 for c in prompt):
        raise InvalidRadiusClient("the prompt may not hold control characters other than \\n")
    return prompt


def check_separator(separator: str) -> str:
    """Exactly one printable character that is neither a letter, a digit nor a space."""
    if len(separator) != 1 or separator.isalnum() or not separator.isprintable():
        raise InvalidRadiusClient(
            f"the password separator is one character that is not a letter, digit or space, "
            f"not {separator!r}"
        )
    if separator.isspace():
        raise InvalidRadiusClient("the password separator may not be a space")
    return separator


def parse_realm_map_entry(text: str) -> tuple[str, str]:
    """``REALM=TEMPLATE``, e.g. ``partner.example={user}.partner``."""
    realm, sep, template = text.partition("=")
    if not sep:
        raise InvalidRadiusClient(f"realm map entry {text!r} is not REALM=TEMPLATE")
    return check_realm(realm, template)


def check_realm(realm: str, template: str) -> tuple[str, str]:
    realm = realm.strip()
    if not _REALM.fullmatch(realm):
        raise InvalidRadiusClient(f"realm {realm!r} is not a domain such as contoso.com or CONTOSO")
    if template.count(_PLACEHOLDER) != 1 or "{" in template.replace(_PLACEHOLDER, ""):
        raise InvalidRadiusClient(
            f"the template for realm {realm!r} must hold {_PLACEHOLDER} exactly once "
            "and no other braces"
        )
    try:
        user_key(template.replace(_PLACEHOLDER, "user"))
    except InvalidName:
        raise InvalidRadiusClient(
            f"the template {template!r} for realm {realm!r} does not give valid user names"
        ) from None
    return realm.casefold(), template


def check_exempt_user(name: str) -> str:
    """A valid user name, in the canonical (case-folded) form the bridge compares."""
    try:
        return user_key(name)
    except InvalidName as exc:
        raise InvalidRadiusClient(f"exempt user {name!r}: {exc.detail}") from None


# -- the whole of a client's settings ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    """The RADIUS server that checks passwords when ``primary`` is ``radius``."""

    host: str
    port: int
    timeout: float
    secret: str


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """Everything about one client except its name. Holds secrets: never print or log it."""

    addresses: tuple[str, ...]
    secret: str
    mode: str = "push"
    primary: str = "none"
    upstream: UpstreamSettings | None = None
    require_message_authenticator: bool = True
    failmode: str = "secure"
    unenrolled: str = "reject"
    push_timeout: float = DEFAULT_PUSH_TIMEOUT
    prompt: str = DEFAULT_PROMPT
    name_format: str = "strip"
    realm_map: tuple[tuple[str, str], ...] = ()
    exempt_users: tuple[str, ...] = ()
    exempt_networks: tuple[str, ...] = ()
    password_separator: str = DEFAULT_SEPARATOR
    reply_attributes: tuple[tuple[str, str], ...] = ()
    number_matching: str = "policy"
    #: The directory (by name) whose password is the primary factor; only for primary ldap.
    directory: str | None = None
    #: RadSec: the SHA-256 fingerprints (``SHA256:AB:...``) of the client certificates bound
    #: to this client. Empty: UDP only. A RadSec client may have no secret (``""``): then it
    #: speaks RadSec only.
    radsec_fingerprints: tuple[str, ...] = ()

    def __repr__(self) -> str:  # keep secrets out of tracebacks and debug output
        return f"ClientSettings(mode={self.mode!r}, primary={self.primary!r}, ...)"


@dataclass(frozen=True, slots=True)
class ClientChanges:
    """A partial change: ``None`` leaves a setting as it is; an empty sequence clears a list.

    Plain text as an operator types it (``Name=value``, ``REALM=TEMPLATE``, ``host``).
    """

    addresses: Sequence[str] | None = None
    secret: str | None = None
    mode: str | None = None
    primary: str | None = None
    upstream_host: str | None = None
    upstream_port: int | None = None
    upstream_timeout: float | None = None
    upstream_secret: str | None = None
    require_message_authenticator: bool | None = None
    failmode: str | None = None
    unenrolled: str | None = None
    push_timeout: float | None = None
    prompt: str | None = None
    name_format: str | None = None
    realm_map: Sequence[str] | None = None
    exempt_users: Sequence[str] | None = None
    exempt_networks: Sequence[str] | None = None
    password_separator: str | None = None
    reply_attributes: Sequence[str] | None = None
    number_matching: str | None = None
    directory: str | None = None
    radsec_fingerprints: Sequence[str] | None = None

    def __repr__(self) -> str:
        given = [f.name for f in fields(self) if getattr(self, f.name) is not None]
        return f"ClientChanges({', '.join(given)})"

    @property
    def empty(self) -> bool:
        """True when nothing at all is to change."""
        return all(getattr(self, f.name) is None for f in fields(self))

    @property
    def touches_upstream(self) -> bool:
        return any(
            v is not None
            for v in (
                self.upstream_host,
                self.upstream_port,
                self.upstream_timeout,
                self.upstream_secret,
            )
        )


def _pick(change: T | None, current: T) -> T:
    return current if change is None else change


def merge(current: ClientSettings | None, changes: ClientChanges) -> ClientSettings:
    """Apply ``changes`` to ``current`` (``None``: a new client, defaults for the rest).

    Settings that belong to one choice go when the choice changes: switching ``primary`` away
    from ``radius`` drops the upstream (and its secret), switching ``user_names`` away from
    ``map`` drops the realm map. Giving them without that choice is an error.
    """
    if current is None:
        radsec = bool(changes.radsec_fingerprints)
        if not changes.addresses and not radsec:
            raise InvalidRadiusClient("a client needs at least one address (--address)")
        if changes.secret is None and not radsec:
            raise InvalidRadiusClient("a client needs a shared secret (--secret-stdin)")
        current = ClientSettings(addresses=RADSEC_ANY_ADDRESS if radsec else (), secret="")
    primary = _pick(changes.primary, current.primary)
    upstream: UpstreamSettings | None = None
    if primary == "radius":
        base = current.upstream
        host = _pick(changes.upstream_host, base.host if base else None)
        secret = _pick(changes.upstream_secret, base.secret if base else None)
        if host is None:
            raise InvalidRadiusClient("primary radius needs the upstream server (--upstream)")
        if secret is None:
            raise InvalidRadiusClient(
                "primary radius needs the upstream server's secret (--upstream-secret-file)"
            )
        upstream = UpstreamSettings(
            host=host,
            port=_pick(changes.upstream_port, base.port if base else DEFAULT_UPSTREAM_PORT),
            timeout=_pick(
                changes.upstream_timeout, base.timeout if base else DEFAULT_UPSTREAM_TIMEOUT
            ),
            secret=secret,
        )
    elif changes.touches_upstream:
        raise InvalidRadiusClient("upstream settings are only for primary radius")
    directory: str | None = None
    if primary == "ldap":
        directory = _pick(changes.directory, current.directory)
        if directory is None:
            raise InvalidRadiusClient(
                "primary ldap needs the directory whose passwords it checks (--directory)"
            )
    elif changes.directory is not None:
        # Switching away from ldap drops the directory, as it drops an upstream server.
        raise InvalidRadiusClient("a directory is only for primary ldap")
    name_format = _pick(changes.name_format, current.name_format)
    if changes.realm_map is not None:
        realm_map = tuple(parse_realm_map_entry(e) for e in changes.realm_map)
    else:
        realm_map = current.realm_map if name_format == "map" else ()
    return ClientSettings(
        addresses=tuple(_pick(changes.addresses, current.addresses)),
        secret=_pick(changes.secret, current.secret),
        mode=_pick(changes.mode, current.mode),
        primary=primary,
        upstream=upstream,
        require_message_authenticator=_pick(
            changes.require_message_authenticator, current.require_message_authenticator
        ),
        failmode=_pick(changes.failmode, current.failmode),
        unenrolled=_pick(changes.unenrolled, current.unenrolled),
        push_timeout=_pick(changes.push_timeout, current.push_timeout),
        prompt=_pick(changes.prompt, current.prompt),
        name_format=name_format,
        realm_map=realm_map,
        exempt_users=tuple(_pick(changes.exempt_users, current.exempt_users)),
        exempt_networks=tuple(_pick(changes.exempt_networks, current.exempt_networks)),
        password_separator=_pick(changes.password_separator, current.password_separator),
        reply_attributes=(
            current.reply_attributes
            if changes.reply_attributes is None
            else tuple(parse_reply_attribute(a) for a in changes.reply_attributes)
        ),
        number_matching=_pick(changes.number_matching, current.number_matching),
        directory=directory,
        radsec_fingerprints=tuple(_pick(changes.radsec_fingerprints, current.radsec_fingerprints)),
    )


def check_directory(name: str) -> str:
    """A directory's name, as ``openmfa directory add`` takes it."""
    try:
        return object_name(name, "directory")
    except InvalidName as exc:
        raise InvalidRadiusClient(f"directory {name!r}: {exc.detail}") from None


def check_fingerprints(texts: Sequence[str]) -> tuple[str, ...]:
    """SHA-256 certificate fingerprints, deduplicated, in the canonical ``SHA256:AB:...``."""
    seen: dict[str, None] = {}
    for text in texts:
        try:
            seen.setdefault(format_fingerprint(parse_fingerprint(text)), None)
        except ValueError as exc:
            raise InvalidRadiusClient(f"certificate fingerprint: {exc}") from None
    if len(seen) > MAX_CERT_FINGERPRINTS:
        raise InvalidRadiusClient(f"at most {MAX_CERT_FINGERPRINTS} certificate fingerprints")
    return tuple(seen)


def _networks(texts: Sequence[str], what: str, limit: int) -> tuple[str, ...]:
    seen: dict[Network, None] = {}
    for text in texts:
        seen.setdefault(parse_network(text, what), None)
    if len(seen) > limit:
        raise InvalidRadiusClient(f"at most {limit} entries for {what}")
    return tuple(format_network(n) for n in seen)


def normalise(settings: ClientSettings) -> ClientSettings:
    """Check every setting and the rules between them; return the canonical form."""
    addresses = _networks(settings.addresses, "address", MAX_NETWORKS)
    if not addresses:
        raise InvalidRadiusClient("a client needs at least one address")
    exempt_networks = _networks(settings.exempt_networks, "exempt network", MAX_NETWORKS)
    for text in exempt_networks:
        if parse_network(text).prefixlen == 0:
            raise InvalidRadiusClient(
                f"exempt network {text} would exempt every caller from the second factor"
            )
    primary = check_choice(settings.primary, PRIMARIES, "primary")
    upstream = settings.upstream
    if (primary == "radius") != (upstream is not None):
        raise InvalidRadiusClient("an upstream server is needed for, and only for, primary radius")
    if (primary == "ldap") != (settings.directory is not None):
        raise InvalidRadiusClient("a directory is needed for, and only for, primary ldap")
    directory = None if settings.directory is None else check_directory(settings.directory)
    if upstream is not None:
        upstream = UpstreamSettings(
            host=check_host(upstream.host),
            port=check_port(upstream.port),
            timeout=check_seconds(upstream.timeout, UPSTREAM_TIMEOUT, "the upstream timeout"),
            secret=check_secret(upstream.secret, "upstream secret"),
        )
    name_format = check_choice(settings.name_format, NAME_FORMATS, "user-names")
    realms = dict(settings.realm_map)
    if len(realms) != len(settings.realm_map):
        raise InvalidRadiusClient("a realm appears twice in the realm map")
    if name_format == "map" and not realms:
        raise InvalidRadiusClient("user-names map needs at least one realm (--realm-map)")
    if name_format != "map" and realms:
        raise InvalidRadiusClient("a realm map is only used with user-names map")
    if len(realms) > MAX_REALMS:
        raise InvalidRadiusClient(f"at most {MAX_REALMS} realms")
    exempt_users = sorted({check_exempt_user(u) for u in settings.exempt_users})
    if len(exempt_users) > MAX_EXEMPT_USERS:
        raise InvalidRadiusClient(f"at most {MAX_EXEMPT_USERS} exempt users")
    replies = tuple(parse_reply_attribute(f"{n}={v}") for n, v in settings.reply_attributes)
    if len(replies) > MAX_REPLY_ATTRIBUTES:
        raise InvalidRadiusClient(f"at most {MAX_REPLY_ATTRIBUTES} reply attributes")
    radsec = check_fingerprints(settings.radsec_fingerprints)
    if not settings.secret and not radsec:
        raise InvalidRadiusClient(
            "a client without a shared secret must be a RadSec client (--cert-fingerprint)"
        )
    return ClientSettings(
        addresses=addresses,
        # RadSec uses the fixed secret "radsec" (RFC 6614): a secret is for UDP only.
        secret=check_secret(settings.secret) if settings.secret or not radsec else "",
        mode=check_choice(settings.mode, MODES, "mode"),
        primary=primary,
        upstream=upstream,
        require_message_authenticator=bool(settings.require_message_authenticator),
        failmode=check_choice(settings.failmode, FAILMODES, "failmode"),
        unenrolled=check_choice(settings.unenrolled, UNENROLLED, "unenrolled"),
        push_timeout=check_seconds(settings.push_timeout, PUSH_TIMEOUT, "the push timeout"),
        prompt=check_prompt(settings.prompt),
        name_format=name_format,
        realm_map=tuple(sorted(check_realm(r, t) for r, t in realms.items())),
        exempt_users=tuple(exempt_users),
        exempt_networks=exempt_networks,
        password_separator=check_separator(settings.password_separator),
        reply_attributes=replies,
        number_matching=check_choice(settings.number_matching, NUMBER_MATCHING, "number-matching"),
        directory=directory,
        radsec_fingerprints=radsec,
    )


def changed_settings(old: ClientSettings, new: ClientSettings) -> list[str]:
    """Names of the settings that differ (``upstream_secret`` when only that secret did)."""
    changed: list[str] = []
    for f in fields(ClientSettings):
        before, after = getattr(old, f.name), getattr(new, f.name)
        if before == after:
            continue
        if f.name == "upstream" and before is not None and after is not None:
            same_but_secret = (before.host, before.port, before.timeout) == (
                after.host,
                after.port,
                after.timeout,
            )
            changed.append("upstream_secret" if same_but_secret else "upstream")
            continue
        changed.append(f.name)
    return changed
