"""Web Push rules that need no I/O: subscriptions, the push-service allow-list, the payload.

A web device's push token is the compact JSON of the browser's ``PushSubscription``
(docs/app-api.md)::

    {"endpoint":"https://fcm.googleapis.com/fcm/send/...","keys":{"p256dh":"...","auth":"..."}}

The endpoint is a URL the *device* chose, so the server would send requests wherever a device
says. :class:`OriginAllowList` confines it to the push services browsers use; it is checked
when a subscription is stored and again before every send (the list may have shrunk since).

Allow-list entries are origins: ``https://host`` or ``https://host:port`` match exactly (port
443 when none is given), and ``https://*.suffix`` matches any DNS name that ends in
``.suffix`` with at least one label before it (never ``suffix`` itself, never an address
literal, never a port other than 443). Only ``https`` is ever allowed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import SplitResult, urlsplit

from cryptography.hazmat.primitives.asymmetric import ec

from backend.errors import BadRequest

#: The push services of Chrome/Edge/Android (FCM), Firefox (Mozilla autopush), Safari on iOS
#: and macOS (Apple), and the Windows Push Notification Service (legacy Edge).
DEFAULT_ALLOWED_ORIGINS = (
    "https://fcm.googleapis.com",
    "https://updates.push.services.mozilla.com",
    "https://web.push.apple.com",
    "https://*.notify.windows.com",
)
#: The largest push token of a web device we store (the column's width, migration 0010).
MAX_SUBSCRIPTION_CHARS = 2048
#: p256dh: an uncompressed P-256 point; auth: the 16-byte authentication secret (RFC 8291).
P256_POINT_BYTES = 65
AUTH_SECRET_BYTES = 16
#: The ``Topic`` header allows the URL-safe base64 alphabet and at most 32 characters.
TOPIC_CHARS = 32

_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_HOST = re.compile(rf"{_LABEL}(\.{_LABEL})*")
_B64URL = re.compile(r"[A-Za-z0-9_-]+={0,2}")
_SUBJECT_MAILTO = re.compile(r"mailto:[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9.-]{1,253}")
_SUBJECT_HTTPS = re.compile(r"https://[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?(/[\x21-\x7e]*)?")


@dataclass(frozen=True, slots=True)
class Subscription:
    """A validated push subscription: where to send and the keys to encrypt for."""

    endpoint: str
    origin: str  # scheme://host[:port], the port only when not 443
    host: str
    port: int
    p256dh: bytes
    auth: bytes

    def compact(self) -> str:
        """The canonical form stored as the device's push token."""
        return json.dumps(
            {
                "endpoint": self.endpoint,
                "keys": {"p256dh": b64u(self.p256dh), "auth": b64u(self.auth)},
            },
            separators=(",", ":"),
        )


@dataclass(frozen=True, slots=True)
class _Rule:
    host: str  # for a wildcard, the suffix after "*."
    port: int
    wildcard: bool

    def matches(self, host: str, port: int) -> bool:
        if port != self.port:
            return False
        if not self.wildcard:
            return host == self.host
        # Suffix only after a dot, and something before it: "*.x.com" is never "x.com" nor
        # "evilx.com"; address literals have no DNS suffix to match.
        return host.endswith("." + self.host) and len(host) > len(self.host) + 1 and _is_name(host)


class OriginAllowList:
    """The push-service origins a subscription may point at (see the module docstring)."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.entries = tuple(entries)
        self._rules = tuple(parse_origin_rule(entry) for entry in self.entries)

    def allows(self, host: str, port: int) -> bool:
        """Whether ``https://host:port`` is on the list."""
        return any(rule.matches(host, port) for rule in self._rules)

    def check(self, subscription: Subscription) -> None:
        """Raise :class:`BadRequest` unless the subscription's origin is on the list."""
        if not self.allows(subscription.host, subscription.port):
            raise BadRequest(
                f"the push endpoint's origin {subscription.origin} is not an allowed push "
                "service (setting webpush_allowed_origins, docs/push.md)"
            )


def parse_origin_rule(entry: str) -> _Rule:
    """One allow-list entry; :class:`ValueError` when it is not an https origin (settings)."""
    text = entry.strip()
    if not text.startswith("https://"):
        raise ValueError(f"{entry!r}: allowed push origins start with https://")
    rest = text.removeprefix("https://")
    wildcard = rest.startswith("*.")
    if wildcard:
        rest = rest[2:]
    parts = urlsplit("https://" + rest)
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"{entry!r}: an origin has no path, query, fragment or user")
    host, port = _host_port(parts, entry)
    if wildcard:
        if not _is_name(host) or "." not in host:
            raise ValueError(f"{entry!r}: a wildcard needs a domain with a dot after '*.'")
        if port != 443:
            raise ValueError(f"{entry!r}: a wildcard origin is for port 443 only")
    return _Rule(host, port, wildcard)


def _host_port(parts: SplitResult, where: str) -> tuple[str, int]:
    try:
        port = parts.port or 443
        host = parts.hostname or ""
    except ValueError:
        raise ValueError(f"{where!r}: bad port") from None
    if not host:
        raise ValueError(f"{where!r}: no host")
    if not _is_name(host):
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{where!r}: {host!r} is neither a DNS name nor an address") from None
    return host, port


def _is_name(host: str) -> bool:
    if not _HOST.fullmatch(host) or len(host) > 253:
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return True
    return False


def origin_of(host: str, port: int) -> str:
    """``https://host`` (``:port`` unless 443), bracketing IPv6 literals."""
    shown = f"[{host}]" if ":" in host else host
    return f"https://{shown}" if port == 443 else f"https://{shown}:{port}"


def parse_subscription(token: str) -> Subscription:
    """Validate a web device's push token (raises :class:`BadRequest` saying what is wrong).

    Only the endpoint's shape is checked here; whether its origin is allowed is
    :meth:`OriginAllowList.check`'s job.
    """
    if len(token) > MAX_SUBSCRIPTION_CHARS:
        raise BadRequest(f"the push subscription has more than {MAX_SUBSCRIPTION_CHARS} characters")
    try:
        data: Any = json.loads(token)
    except ValueError:
        raise BadRequest("a web device's push token is its PushSubscription as JSON") from None
    if not isinstance(data, dict) or set(data) != {"endpoint", "keys"}:
        raise BadRequest('the push subscription has exactly "endpoint" and "keys"')
    keys = data["keys"]
    if not isinstance(keys, dict) or set(keys) != {"p256dh", "auth"}:
        raise BadRequest('the push subscription\'s "keys" are exactly "p256dh" and "auth"')
    endpoint = data["endpoint"]
    if not isinstance(endpoint, str):
        raise BadRequest("the push endpoint is not a string")
    host, port = _endpoint(endpoint)
    p256dh = _key(keys["p256dh"], "p256dh")
    auth = _key(keys["auth"], "auth")
    if len(p256dh) != P256_POINT_BYTES or p256dh[0] != 0x04:
        raise BadRequest("p256dh is not an uncompressed P-256 point (65 bytes)")
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), p256dh)
    except ValueError:
        raise BadRequest("p256dh is not a point on the P-256 curve") from None
    if len(auth) != AUTH_SECRET_BYTES:
        raise BadRequest("auth is not a 16-byte secret")
    return Subscription(endpoint, origin_of(host, port), host, port, p256dh, auth)


def _endpoint(endpoint: str) -> tuple[str, int]:
    if not endpoint.isascii() or not endpoint.isprintable() or " " in endpoint:
        raise BadRequest("the push endpoint must be printable ASCII without spaces")
    if not endpoint.startswith("https://"):
        raise BadRequest("the push endpoint must be an https:// URL")
    parts = urlsplit(endpoint)
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise BadRequest("the push endpoint must not carry a user name or password")
    if parts.fragment or "#" in endpoint:
        raise BadRequest("the push endpoint must not have a fragment")
    if "\\" in endpoint:
        raise BadRequest("the push endpoint must not contain a backslash")
    try:
        return _host_port(parts, "the push endpoint")
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def _key(value: object, name: str) -> bytes:
    if not isinstance(value, str) or not _B64URL.fullmatch(value):
        raise BadRequest(f"{name} is not base64url")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (ValueError, binascii.Error):
        raise BadRequest(f"{name} is not base64url") from None


def b64u(data: bytes) -> str:
    """Base64url without padding (what browsers and RFC 8292 use)."""
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def topic_for(challenge_id: str) -> str:
    """The ``Topic`` header for a challenge: 32 URL-safe base64 characters of its digest, so a
    newer push for the same challenge replaces an undelivered older one at the push service."""
    return b64u(hashlib.sha256(b"openmfa-topic:" + challenge_id.encode()).digest()[:24])


def payload(challenge_id: str, display: str, expires_at: datetime, user: str) -> bytes:
    """The plaintext of a push (docs/app-api.md): the id and what to show, never a secret
    and never the number to match."""
    return json.dumps(
        {
            "v": 1,
            "challenge_id": challenge_id,
            "display": display,
            "expires_at": _utc(expires_at).isoformat().replace("+00:00", "Z"),
            "user": user,
        },
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode("utf-8")


def _utc(moment: datetime) -> datetime:
    # The store hands back naive UTC on some databases: say so explicitly for the app.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def check_subject(subject: str) -> str:
    """A VAPID ``sub`` (RFC 8292): a ``mailto:`` address or an ``https:`` URL; ValueError."""
    if not (_SUBJECT_MAILTO.fullmatch(subject) or _SUBJECT_HTTPS.fullmatch(subject)):
        raise ValueError(
            "webpush_subject is a contact: mailto:someone@example.com or https://example.com"
        )
    return subject
