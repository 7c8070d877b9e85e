"""Checking and normalising what an administrator gives for a directory (pure: no I/O).

Like :mod:`backend.domain.radius` does for RADIUS clients: every value is checked with a
full match or a real parser (ldap3's DN and filter parsers, ``cryptography`` for the CA), and
comes back in one canonical form, so what is stored is always something the LDAP adapter can
use. There is no setting that turns certificate verification off: ``ldaps://`` is TLS from the
first byte, ``ldap://`` always upgrades with StartTLS before anything else is sent.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, fields, replace
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from backend.directory.config import (
    DEFAULT_ATTRIBUTES,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_DISABLE_MINIMUM,
    DEFAULT_DISABLE_PERCENT,
    DEFAULT_PAGE_SIZE,
    DEFAULT_SEARCH_TIMEOUT,
    DEFAULT_SYNC_INTERVAL,
    KINDS,
    AttributeMap,
    DirectoryConfig,
    Kind,
)
from backend.errors import InvalidDirectory

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# RFC 4512 descr (keystring) or a numeric OID; no options (";binary") needed here.
_ATTRIBUTE = re.compile(r"[A-Za-z][A-Za-z0-9-]{0,63}|[0-9]+(?:\.[0-9]+)+")
# scheme://host[:port], host a DNS name, IPv4 or [IPv6]; nothing after (no DN, no query).
_URL = re.compile(
    r"(?P<scheme>ldaps?)://(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}))"
    r"(?::(?P<port>[0-9]{1,5}))?/?",
    re.IGNORECASE,
)
_INTERVAL = re.compile(r"([0-9]{1,7})([smhd]?)")

MAX_URLS: Final = 8
MAX_DN: Final = 1024
MAX_FILTER: Final = 1024
MAX_CA_PEM: Final = 256 * 1024
CONNECT_TIMEOUT: Final = (0.5, 60.0)
SEARCH_TIMEOUT: Final = (1.0, 600.0)
PAGE_SIZE: Final = (1, 1000)
SYNC_INTERVAL: Final = (60, 7 * 86400)  # or 0: no scheduled sync
DISABLE_MINIMUM: Final = (0, 1_000_000)
MAX_PASSWORD: Final = 1024


@dataclass(frozen=True, slots=True)
class DirectorySettings:
    """A directory as an administrator describes it (``kind`` None: detect when added).

    Attribute fields left empty take the kind's default (:data:`DEFAULT_ATTRIBUTES`).
    """

    name: str
    urls: tuple[str, ...]
    bind_dn: str
    base_dn: str
    kind: Kind | None = None
    ca_pem: str | None = None
    user_filter: str = ""
    group_dn: str = ""
    admin_group_dn: str = ""
    name_attribute: str = ""
    email_attribute: str = ""
    display_name_attribute: str = ""
    phone_attribute: str = ""
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    search_timeout: float = DEFAULT_SEARCH_TIMEOUT
    page_size: int = DEFAULT_PAGE_SIZE
    sync_interval: int = DEFAULT_SYNC_INTERVAL
    disable_percent: int = DEFAULT_DISABLE_PERCENT
    disable_minimum: int = DEFAULT_DISABLE_MINIMUM


@dataclass(frozen=True, slots=True)
class DirectoryChanges:
    """What ``directory set`` changes; None keeps a value. For the optional texts (filter,
    groups, CA, attributes) an empty string goes back to none / the kind's default."""

    urls: tuple[str, ...] | None = None
    kind: Kind | None = None
    ca_pem: str | None = None
    bind_dn: str | None = None
    base_dn: str | None = None
    user_filter: str | None = None
    group_dn: str | None = None
    admin_group_dn: str | None = None
    name_attribute: str | None = None
    email_attribute: str | None = None
    display_name_attribute: str | None = None
    phone_attribute: str | None = None
    connect_timeout: float | None = None
    search_timeout: float | None = None
    page_size: int | None = None
    sync_interval: int | None = None
    disable_percent: int | None = None
    disable_minimum: int | None = None

    @property
    def empty(self) -> bool:
        """True when nothing would change."""
        return all(getattr(self, f.name) is None for f in fields(self))


# -- single values ------------------------------------------------------------------------------


def check_name(name: str) -> str:
    """A directory's name: 1-64 letters, digits and . _ -, starting with a letter or digit."""
    if not _NAME.fullmatch(name):
        raise InvalidDirectory(
            "directory names are 1-64 characters: letters, digits and . _ -, "
            "starting with a letter or digit"
        )
    return name


def check_url(url: str) -> str:
    """``ldaps://host[:port]`` or ``ldap://host[:port]`` (then StartTLS), in canonical form."""
    match = _URL.fullmatch(url)
    if match is None:
        raise InvalidDirectory(
            f"{url!r} is not a directory URL: give ldaps://HOST[:PORT] (TLS) or "
            "ldap://HOST[:PORT] (StartTLS, always)"
        )
    scheme = match["scheme"].lower()
    host = match["host"]
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise InvalidDirectory(f"{url!r}: {host} is not an IPv6 address") from None
    else:
        host = host.lower().rstrip(".")
        labels = host.split(".")
        if not host or any(
            not label or len(label) > 63 or label.startswith("-") or label.endswith("-")
            for label in labels
        ):
            raise InvalidDirectory(f"{url!r}: {host!r} is not a host name")
    text = f"{scheme}://{host}"
    if match["port"] is not None:
        port = int(match["port"])
        if not 1 <= port <= 65535:
            raise InvalidDirectory(f"{url!r}: the port must be 1-65535")
        if port != (636 if scheme == "ldaps" else 389):
            text += f":{port}"
    return text


def check_urls(urls: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """One to :data:`MAX_URLS` URLs, tried in order; duplicates refused."""
    if not urls:
        raise InvalidDirectory("give at least one URL (--url ldaps://HOST)")
    if len(urls) > MAX_URLS:
        raise InvalidDirectory(f"at most {MAX_URLS} URLs")
    checked = tuple(check_url(u) for u in urls)
    if len(set(checked)) != len(checked):
        raise InvalidDirectory("a URL is given twice")
    return checked


def split_url(url: str) -> tuple[bool, str, int]:
    """(TLS from the start, host, port) of a checked URL; IPv6 hosts without brackets."""
    match = _URL.fullmatch(url)
    if match is None:  # stored URLs were checked; this is a programming error
        raise InvalidDirectory(f"{url!r} is not a directory URL")
    ldaps = match["scheme"].lower() == "ldaps"
    host = match["host"].strip("[]")
    port = int(match["port"]) if match["port"] else (636 if ldaps else 389)
    return ldaps, host, port


def check_dn(dn: str, what: str, *, required: bool = True) -> str:
    """A distinguished name ldap3 can parse, without surrounding spaces ("" if optional)."""
    text = dn.strip()
    if not text:
        if required:
            raise InvalidDirectory(f"the {what} is required")
        return ""
    if len(text) > MAX_DN or any(ord(c) < 0x20 for c in text):
        raise InvalidDirectory(f"the {what} is not a distinguished name")
    from ldap3.core.exceptions import LDAPException  # ldap3 loads only when it is needed
    from ldap3.utils.dn import parse_dn

    try:
        parts = parse_dn(text, escape=False, strip=True)
    except (LDAPException, ValueError, IndexError) as exc:
        raise InvalidDirectory(f"the {what} {text!r} is not a distinguished name") from exc
    for attribute, value, _ in parts:
        if not _ATTRIBUTE.fullmatch(attribute) or not value:
            raise InvalidDirectory(f"the {what} {text!r} is not a distinguished name")
    return text


def check_filter(text: str) -> str:
    """An LDAP filter in parentheses, as RFC 4515 writes it ("" for none)."""
    value = text.strip()
    if not value:
        return ""
    if len(value) > MAX_FILTER or any(ord(c) < 0x20 for c in value):
        raise InvalidDirectory("the filter is too long or holds control characters")
    if not (value.startswith("(") and value.endswith(")")):
        raise InvalidDirectory(
            f"the filter {value!r} must be in parentheses, e.g. (department=Sales)"
        )
    from ldap3.core.exceptions import LDAPException
    from ldap3.operation.search import parse_filter

    try:
        # auto_escape off: the administrator writes a filter, not a value to quote.
        parse_filter(value, None, False, True, None, False)  # type: ignore[no-untyped-call]
    except (LDAPException, ValueError, IndexError, TypeError) as exc:
        raise InvalidDirectory(f"the filter {value!r} is not an LDAP filter") from exc
    # ldap3 accepts trailing text after the outer filter; a balanced, single filter only.
    depth = 0
    for index, char in enumerate(value):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0 and index != len(value) - 1:
                raise InvalidDirectory(f"the filter {value!r} is not one filter")
        if depth < 0:
            raise InvalidDirectory(f"the filter {value!r} has unbalanced parentheses")
    if depth != 0:
        raise InvalidDirectory(f"the filter {value!r} has unbalanced parentheses")
    return value


def check_attribute(name: str, what: str) -> str:
    """An LDAP attribute description (a name or a numeric OID)."""
    if not _ATTRIBUTE.fullmatch(name):
        raise InvalidDirectory(f"the {what} attribute {name!r} is not an LDAP attribute name")
    return name


def check_ca_pem(text: str | None) -> str | None:
    """PEM certificates (a private CA) in canonical PEM; None or "" means the system's."""
    if text is None or not text.strip():
        return None
    if len(text) > MAX_CA_PEM:
        raise InvalidDirectory("the CA file is too large")
    try:
        certificates = x509.load_pem_x509_certificates(text.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as exc:
        raise InvalidDirectory("the CA file holds no PEM certificate that can be read") from exc
    if not certificates:
        raise InvalidDirectory("the CA file holds no PEM certificate")
    return "".join(c.public_bytes(Encoding.PEM).decode("ascii") for c in certificates)


def _bounded_float(value: float, bounds: tuple[float, float], what: str) -> float:
    if not bounds[0] <= value <= bounds[1]:  # also refuses NaN
        raise InvalidDirectory(f"the {what} must be {bounds[0]:g}-{bounds[1]:g} seconds")
    return float(value)


def _bounded_int(value: int, bounds: tuple[int, int], what: str) -> int:
    if not bounds[0] <= value <= bounds[1]:
        raise InvalidDirectory(f"the {what} must be {bounds[0]}-{bounds[1]}")
    return int(value)


def parse_interval(text: str) -> int:
    """Seconds from ``3600``, ``90s``, ``30m``, ``1h``, ``1d``; ``0`` turns the schedule off."""
    match = _INTERVAL.fullmatch(text.strip().lower())
    if match is None:
        raise InvalidDirectory(f"{text!r} is not an interval: e.g. 3600, 30m, 1h, or 0 (off)")
    seconds = int(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]
    return check_interval(seconds)


def check_interval(seconds: int) -> int:
    """0 (off) or :data:`SYNC_INTERVAL` seconds."""
    if seconds != 0 and not SYNC_INTERVAL[0] <= seconds <= SYNC_INTERVAL[1]:
        raise InvalidDirectory(
            f"the sync interval must be 0 (off) or {SYNC_INTERVAL[0]}-{SYNC_INTERVAL[1]} seconds"
        )
    return seconds


def check_bind_password(password: str) -> str:
    """The service account's password: not empty (an empty simple bind is anonymous)."""
    if not password:
        raise InvalidDirectory("the bind password is empty (that would be an anonymous bind)")
    if len(password) > MAX_PASSWORD or any(c in "\r\n\0" for c in password):
        raise InvalidDirectory("the bind password is too long or holds a line break")
    return password


# -- whole settings -----------------------------------------------------------------------------


def normalise(s: DirectorySettings) -> DirectorySettings:
    """Every field checked and in canonical form; :class:`InvalidDirectory` otherwise."""
    if s.kind is not None and s.kind not in KINDS:
        raise InvalidDirectory(f"the kind must be one of {', '.join(KINDS)}")
    return DirectorySettings(
        name=check_name(s.name),
        urls=check_urls(s.urls),
        bind_dn=check_dn(s.bind_dn, "bind DN"),
        base_dn=check_dn(s.base_dn, "base DN"),
        kind=s.kind,
        ca_pem=check_ca_pem(s.ca_pem),
        user_filter=check_filter(s.user_filter),
        group_dn=check_dn(s.group_dn, "group DN", required=False),
        admin_group_dn=check_dn(s.admin_group_dn, "admin group DN", required=False),
        name_attribute=check_attribute(s.name_attribute, "user name") if s.name_attribute else "",
        email_attribute=check_attribute(s.email_attribute, "e-mail") if s.email_attribute else "",
        display_name_attribute=check_attribute(s.display_name_attribute, "display name")
        if s.display_name_attribute
        else "",
        phone_attribute=check_attribute(s.phone_attribute, "phone") if s.phone_attribute else "",
        connect_timeout=_bounded_float(s.connect_timeout, CONNECT_TIMEOUT, "connect timeout"),
        search_timeout=_bounded_float(s.search_timeout, SEARCH_TIMEOUT, "search timeout"),
        page_size=_bounded_int(s.page_size, PAGE_SIZE, "page size"),
        sync_interval=check_interval(s.sync_interval),
        disable_percent=_bounded_int(s.disable_percent, (0, 100), "disable threshold (percent)"),
        disable_minimum=_bounded_int(s.disable_minimum, DISABLE_MINIMUM, "disable minimum"),
    )


def merge(current: DirectorySettings, changes: DirectoryChanges) -> DirectorySettings:
    """``current`` with ``changes`` applied (not yet checked: pass it to :func:`normalise`)."""
    values = {
        f.name: getattr(changes, f.name)
        for f in fields(changes)
        if getattr(changes, f.name) is not None
    }
    if "ca_pem" in values and not str(values["ca_pem"]).strip():
        values["ca_pem"] = None
    return replace(current, **values)


def changed_settings(old: DirectorySettings, new: DirectorySettings) -> list[str]:
    """Names of the fields that differ (for the audit and the CLI)."""
    return [f.name for f in fields(old) if getattr(old, f.name) != getattr(new, f.name)]


def attribute_map(s: DirectorySettings, kind: Kind) -> AttributeMap:
    """The attribute map: the kind's defaults, overridden where the administrator said so."""
    default = DEFAULT_ATTRIBUTES[kind]
    return AttributeMap(
        name=s.name_attribute or default.name,
        email=s.email_attribute or default.email,
        display_name=s.display_name_attribute or default.display_name,
        phone=s.phone_attribute or default.phone,
    )


def to_config(directory_id: int, s: DirectorySettings, kind: Kind | None = None) -> DirectoryConfig:
    """The adapter's view of checked settings (``kind`` overrides an undetected one)."""
    chosen = kind or s.kind
    if chosen is None:
        raise InvalidDirectory("the directory's kind is not known: give --kind ad|ldap")
    return DirectoryConfig(
        id=directory_id,
        name=s.name,
        kind=chosen,
        urls=s.urls,
        ca_pem=s.ca_pem,
        bind_dn=s.bind_dn,
        base_dn=s.base_dn,
        user_filter=s.user_filter,
        group_dn=s.group_dn,
        admin_group_dn=s.admin_group_dn,
        attributes=attribute_map(s, chosen),
        connect_timeout=s.connect_timeout,
        search_timeout=s.search_timeout,
        page_size=s.page_size,
        sync_interval=s.sync_interval,
        disable_percent=s.disable_percent,
        disable_minimum=s.disable_minimum,
    )
