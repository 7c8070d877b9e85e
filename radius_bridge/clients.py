"""The RADIUS clients document -> :class:`ClientConfig` objects and a lookup table.

The document (``GET /gateway/v1/radius/clients``, or a standalone clients file) is
``{"revision": "...", "clients": [CLIENT, ...]}``; see /work/notes/bridge-contract.md.
A client with a bad field is left out and reported with a message that names the client
and the field; the others keep working. Leaving it out fails closed: its packets are
dropped as coming from an unknown client, and nobody gets in through a half-understood
configuration.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final, cast, get_args

from radius_bridge.model import Address, ClientConfig, NameRule, Network, Upstream
from radius_bridge.names import normalise
from radius_vocabulary.certs import DIGEST_SIZE, parse_fingerprint
from radius_vocabulary.dictionary import Attribute, Dictionary, default_dictionary
from radius_vocabulary.settings import (
    DEFAULT_PROMPT,
    DEFAULT_PUSH_TIMEOUT,
    MAX_PROMPT_BYTES,
    PUSH_TIMEOUT,
    FailMode,
    Mode,
    NameFormat,
    NumberMatching,
    Primary,
    Unenrolled,
)

MAX_UPSTREAM_TIMEOUT: Final = 120.0
_MAPPED_V4 = ipaddress.IPv6Network("::ffff:0:0/96")


class ClientsError(ValueError):
    """The document as a whole is unusable (not JSON, no ``clients`` list)."""


class ClientError(ValueError):
    """One client's entry is invalid; the message names the field."""


@dataclass(frozen=True)
class ClientList:
    """A parsed clients document: the usable clients and one message per refused one."""

    revision: str
    clients: tuple[ClientConfig, ...]
    errors: tuple[str, ...]

    @property
    def table(self) -> ClientTable:
        """A :class:`ClientTable` over the usable clients."""
        return ClientTable(self.clients)


def parse_clients_json(text: str | bytes, *, dictionary: Dictionary | None = None) -> ClientList:
    """Parse the clients document from JSON text (the HTTP body or a clients file)."""
    try:
        document = json.loads(text)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError both
        raise ClientsError(f"clients document is not JSON: {exc}") from exc
    return parse_clients(document, dictionary=dictionary)


def parse_clients(document: object, *, dictionary: Dictionary | None = None) -> ClientList:
    """Parse the decoded clients document. Raises :class:`ClientsError` only when the
    document itself is unusable; bad clients end up in ``errors`` instead."""
    if not isinstance(document, dict):
        raise ClientsError("clients document must be a JSON object")
    revision = document.get("revision", "")
    if not isinstance(revision, str):
        raise ClientsError("revision must be a string")
    entries = document.get("clients")
    if not isinstance(entries, list):
        raise ClientsError("clients document needs a 'clients' list")
    dictionary = dictionary or default_dictionary()
    clients: list[ClientConfig] = []
    errors: list[str] = []
    names: set[str] = set()
    owners: dict[Network, str] = {}
    certificates: dict[bytes, str] = {}
    for index, entry in enumerate(entries):
        label = _label(entry, index)
        try:
            client = parse_client(entry, dictionary=dictionary)
            if client.name.lower() in names:
                raise ClientError("name: another client has the same name")
            # Addresses pick the client of a UDP datagram; a RadSec-only client (no secret)
            # is picked by its certificate, its addresses only restrict where it may connect.
            for network in client.networks if client.secret else ():
                if network in owners:
                    raise ClientError(f"addresses: {network} is also client {owners[network]!r}'s")
            for digest in client.radsec_fingerprints:
                if digest in certificates:
                    raise ClientError(
                        f"radsec_fingerprints: also bound to client {certificates[digest]!r}"
                    )
        except ClientError as exc:
            errors.append(f"client {label}: {exc}")
            continue
        names.add(client.name.lower())
        for network in client.networks if client.secret else ():
            owners[network] = client.name
        for digest in client.radsec_fingerprints:
            certificates[digest] = client.name
        clients.append(client)
    return ClientList(revision, tuple(clients), tuple(errors))


def _label(entry: object, index: int) -> str:
    name = entry.get("name") if isinstance(entry, dict) else None
    return f"{name!r} (#{index + 1})" if isinstance(name, str) and name else f"#{index + 1}"


def parse_client(entry: object, *, dictionary: Dictionary | None = None) -> ClientConfig:
    """One CLIENT object -> :class:`ClientConfig`; :class:`ClientError` names the bad field.
    Fields left out take the defaults of :class:`ClientConfig` (safe ones: Message-Authenticator
    required, failmode secure, unenrolled reject). Unknown fields are ignored so an older
    bridge keeps working against a newer backend."""
    if not isinstance(entry, dict):
        raise ClientError("must be a JSON object")
    dictionary = dictionary or default_dictionary()
    fields = cast(dict[str, object], entry)
    name = _text(fields, "name", max_length=128)
    networks = _networks(fields, "addresses", required=True)
    radsec = _fingerprints(fields, "radsec_fingerprints")
    # A RadSec client needs no secret of its own (RFC 6614 fixes it as "radsec").
    secret = _text(fields, "secret", default="" if radsec else None).encode("utf-8")
    mode = cast(Mode, _choice(fields, "mode", get_args(Mode), "push"))
    primary = cast(Primary, _choice(fields, "primary", get_args(Primary), "none"))
    upstream = _upstream(fields.get("upstream")) if primary == "radius" else None
    require_ma = _flag(fields, "require_message_authenticator", True)
    failmode = cast(FailMode, _choice(fields, "failmode", get_args(FailMode), "secure"))
    unenrolled = cast(Unenrolled, _choice(fields, "unenrolled", get_args(Unenrolled), "reject"))
    push_timeout = _number(fields, "push_timeout", DEFAULT_PUSH_TIMEOUT, *PUSH_TIMEOUT)
    prompt = _text(fields, "prompt", default=DEFAULT_PROMPT)
    if len(prompt.encode("utf-8")) > MAX_PROMPT_BYTES:
        raise ClientError(f"prompt: longer than {MAX_PROMPT_BYTES} bytes in UTF-8")
    rule = _name_rule(fields.get("user_names"))
    exempt_users = frozenset(
        normalise(user, rule).lower() for user in _text_list(fields, "exempt_users")
    )
    exempt_networks = _networks(fields, "exempt_networks", required=False)
    separator = _text(fields, "password_separator", default=",")
    if len(separator) != 1 or separator.isdigit():
        raise ClientError("password_separator: must be one character, not a digit")
    reply_attributes = _reply_attributes(fields.get("reply_attributes"), dictionary)
    number_matching = cast(
        NumberMatching, _choice(fields, "number_matching", get_args(NumberMatching), "policy")
    )
    return ClientConfig(
        name=name,
        networks=networks,
        secret=secret,
        mode=mode,
        primary=primary,
        upstream=upstream,
        require_message_authenticator=require_ma,
        failmode=failmode,
        unenrolled=unenrolled,
        push_timeout=push_timeout,
        prompt=prompt,
        user_names=rule,
        exempt_users=exempt_users,
        exempt_networks=exempt_networks,
        password_separator=separator,
        reply_attributes=reply_attributes,
        number_matching=number_matching,
        radsec_fingerprints=radsec,
    )


def _fingerprints(fields: Mapping[str, object], key: str) -> tuple[bytes, ...]:
    digests: list[bytes] = []
    for text in _text_list(fields, key):
        try:
            digest = parse_fingerprint(text)
        except ValueError as exc:
            raise ClientError(f"{key}: {exc}") from None
        if len(digest) != DIGEST_SIZE:  # pragma: no cover - parse_fingerprint ensures it
            raise ClientError(f"{key}: not a SHA-256 digest")
        if digest not in digests:
            digests.append(digest)
    return tuple(digests)


def _text(
    fields: Mapping[str, object], key: str, *, default: str | None = None, max_length: int = 4096
) -> str:
    value = fields.get(key)
    if value is None:
        if default is None:
            raise ClientError(f"{key}: required")
        return default
    if not isinstance(value, str) or not value:
        raise ClientError(f"{key}: must be a non-empty string")
    if len(value) > max_length:
        raise ClientError(f"{key}: longer than {max_length} characters")
    return value


def _text_list(fields: Mapping[str, object], key: str) -> list[str]:
    value = fields.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ClientError(f"{key}: must be a list of non-empty strings")
    return cast(list[str], value)


def _choice(fields: Mapping[str, object], key: str, allowed: tuple[str, ...], default: str) -> str:
    value = fields.get(key, default)
    if value is None:
        return default
    if value not in allowed:
        raise ClientError(f"{key}: must be one of {', '.join(allowed)} (got {value!r})")
    return value


def _flag(fields: Mapping[str, object], key: str, default: bool) -> bool:
    value = fields.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ClientError(f"{key}: must be true or false")
    return value


def _number(
    fields: Mapping[str, object], key: str, default: float, low: float, high: float
) -> float:
    value = fields.get(key, default)
    if value is None:
        return default
    # bool is an int in Python; "push_timeout": true is a mistake, not 1 second.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ClientError(f"{key}: must be a number")
    if not low <= value <= high:
        raise ClientError(f"{key}: must be between {low:g} and {high:g} (got {value:g})")
    return float(value)


def _network(text: str) -> Network:
    network = ipaddress.ip_network(text.strip(), strict=False)
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED_V4):
        # ::ffff:10.0.0.0/120 is how some tools write IPv4 in IPv6; match it as 10.0.0.0/24.
        mapped = ipaddress.IPv4Address(int(network.network_address) & 0xFFFFFFFF)
        return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


def _networks(fields: Mapping[str, object], key: str, *, required: bool) -> tuple[Network, ...]:
    texts = _text_list(fields, key)
    if required and not texts:
        raise ClientError(f"{key}: at least one address or CIDR network is required")
    networks: list[Network] = []
    for text in texts:
        try:
            networks.append(_network(text))
        except ValueError as exc:
            raise ClientError(f"{key}: {text!r} is not an IP address or CIDR network") from exc
    return tuple(networks)


def _upstream(value: object) -> Upstream:
    if not isinstance(value, dict):
        raise ClientError("upstream: required as an object when primary is radius")
    fields = cast(dict[str, object], value)
    try:
        host = _text(fields, "host", max_length=255)
        port = fields.get("port", 1812)
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ClientError("port: must be a port number 1..65535")
        secret = _text(fields, "secret").encode("utf-8")
        timeout = _number(fields, "timeout", 10.0, 0.1, MAX_UPSTREAM_TIMEOUT)
    except ClientError as exc:
        raise ClientError(f"upstream.{exc}") from None
    return Upstream(host=host, port=port, secret=secret, timeout=timeout)


def _name_rule(value: object) -> NameRule:
    if value is None:
        return NameRule()
    if not isinstance(value, dict):
        raise ClientError("user_names: must be an object")
    fields = cast(dict[str, object], value)
    name_format = cast(NameFormat, _choice(fields, "format", get_args(NameFormat), "strip"))
    realm_map = fields.get("realm_map") or {}
    if not isinstance(realm_map, dict):
        raise ClientError("user_names.realm_map: must be an object of realm -> template")
    pairs: list[tuple[str, str]] = []
    for realm, template in cast(dict[str, object], realm_map).items():
        if not realm or not isinstance(template, str) or "{user}" not in template:
            raise ClientError(
                f"user_names.realm_map: {realm!r} needs a template containing {{user}}"
            )
        pairs.append((realm, template))
    return NameRule(format=name_format, realm_map=tuple(pairs))


def _reply_attributes(value: object, dictionary: Dictionary) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ClientError("reply_attributes: must be a list of [name, value] pairs")
    pairs: list[tuple[str, str]] = []
    for item in value:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not isinstance(item[0], str)
            or isinstance(item[1], bool)
            or not isinstance(item[1], str | int)
        ):
            raise ClientError("reply_attributes: each entry must be [name, value]")
        name, text = item[0], str(item[1])
        try:
            # Encode now so a typo is reported here, not discovered at a user's sign-in.
            dictionary.encode(Attribute(name, text))
        except ValueError as exc:
            raise ClientError(f"reply_attributes: {name}: {exc}") from None
        pairs.append((name, text))
    return tuple(pairs)


class ClientTable:
    """Which client a datagram came from: longest-prefix match over every client's networks,
    IPv4 and IPv6; an IPv4-mapped IPv6 source (``::ffff:10.0.0.1``, as a dual-stack socket
    reports IPv4 peers) matches as IPv4. Immutable: a new client list makes a new table."""

    _CACHE_SIZE = 4096

    def __init__(self, clients: Iterable[ClientConfig]) -> None:
        self.clients = tuple(clients)
        self._by_name = {client.name: client for client in self.clients}
        self._by_certificate = {
            digest: client for client in self.clients for digest in client.radsec_fingerprints
        }
        # Per family: [(prefix length, {network bits: client})], longest prefix first.
        self._v4: dict[int, dict[int, ClientConfig]] = {}
        self._v6: dict[int, dict[int, ClientConfig]] = {}
        for client in self.clients:
            if not client.secret:
                continue  # RadSec only: never the answer for a UDP datagram
            for network in client.networks:
                width, table = (32, self._v4) if network.version == 4 else (128, self._v6)
                bits = int(network.network_address) >> (width - network.prefixlen)
                # setdefault: the first client keeps an exact duplicate (parse_clients
                # already refuses those; this keeps a hand-built table deterministic).
                table.setdefault(network.prefixlen, {}).setdefault(bits, client)
        self._v4_order = sorted(self._v4.items(), reverse=True)
        self._v6_order = sorted(self._v6.items(), reverse=True)
        self._cache: dict[str, ClientConfig | None] = {}

    def __len__(self) -> int:
        return len(self.clients)

    def get(self, name: str) -> ClientConfig | None:
        """The client named ``name``, if any."""
        return self._by_name.get(name)

    def by_certificate(self, digest: bytes) -> ClientConfig | None:
        """The client a RadSec peer certificate (its SHA-256 digest) is bound to, if any."""
        return self._by_certificate.get(digest)

    @property
    def has_radsec(self) -> bool:
        """True when some client may connect over RadSec."""
        return bool(self._by_certificate)

    def match(self, address: str | Address) -> ClientConfig | None:
        """The client whose most specific network contains ``address``, or None. Accepts
        text as a socket reports it (an IPv6 zone ``%eth0`` is ignored) or an address."""
        key = str(address)
        if key in self._cache:
            return self._cache[key]
        client = self._match(address)
        if len(self._cache) >= self._CACHE_SIZE:
            # A bound, not a policy: spoofed sources must not grow memory without limit.
            self._cache.clear()
        self._cache[key] = client
        return client

    def _match(self, address: str | Address) -> ClientConfig | None:
        if isinstance(address, str):
            try:
                ip: Address = ipaddress.ip_address(address.split("%", 1)[0])
            except ValueError:
                return None
        else:
            ip = address
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        width, order = (32, self._v4_order) if ip.version == 4 else (128, self._v6_order)
        value = int(ip)
        for prefix, table in order:
            client = table.get(value >> (width - prefix))
            if client is not None:
                return client
        return None
