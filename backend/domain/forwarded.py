"""Who the client is behind reverse proxies we trust.

A forwarding header (``X-Forwarded-For`` or RFC 7239 ``Forwarded``) lists the addresses a
request passed through, each proxy appending the one it received the request from. Only the
entries appended by our own proxies can be believed: everything to their left may have been
sent by the client itself. So the chain is read from the right, starting at the TCP peer,
and the first address that is not a trusted proxy is the client. The left-most entry, which
many servers take, is whatever the client chose to write.

Pure: strings and networks in, an address out.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
HeaderKind = Literal["x-forwarded-for", "forwarded"]

# One node as proxies write it: an IPv4 address, an IPv6 address, either with a port
# ("192.0.2.1:443", "[2001:db8::1]:443"), an IPv6 address in brackets alone.
_V4 = r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}"
_V6 = r"[0-9A-Fa-f:.]{2,45}"
_NODE = re.compile(
    rf"(?P<v4>{_V4})(?::[0-9]{{1,5}})?|\[(?P<v6b>{_V6})\](?::[0-9]{{1,5}})?|(?P<v6>{_V6})"
)
# A Forwarded element's pair: token "=" (token | quoted-string), RFC 7239 section 4.
_PAIR = re.compile(r'\s*([A-Za-z0-9!#$%&\'*+.^_`|~-]+)=("(?:[^"\\]|\\.)*"|[^;,"\s]*)\s*')


@dataclass(frozen=True, slots=True)
class ClientAddress:
    """The client's address, and why the header was not used when it was malformed."""

    address: str
    problem: str | None = None


def parse_node(text: str) -> Address | None:
    """One chain entry as an address (an IPv4-mapped IPv6 address as IPv4), or ``None``."""
    match = _NODE.fullmatch(text.strip())
    if match is None:
        return None
    try:
        address = ipaddress.ip_address(match["v4"] or match["v6b"] or match["v6"])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _split(text: str, separator: str) -> list[str]:
    """``text`` cut at ``separator`` outside quoted strings, read from the right: the
    entries our proxies appended come out whole even when the client's part left a quote
    open. (Addresses never hold a backslash or a quote, so escapes need no care here.)"""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in reversed(text):
        if char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(reversed(current)))
            current = []
            continue
        current.append(char)
    parts.append("".join(reversed(current)))
    return parts


def _for_node(element: str) -> str | None:
    """The ``for=`` value of one ``Forwarded`` element, or ``None`` without a single one."""
    found: list[str] = []
    for pair in _split(element, ";"):
        match = _PAIR.fullmatch(pair)
        if match is None:
            return None
        if match[1].lower() == "for":
            value = match[2]
            found.append(value[1:-1] if value[:1] == '"' else value)
    return found[0] if len(found) == 1 else None


def _nodes_from_right(values: Sequence[str], kind: HeaderKind) -> Iterator[str | None]:
    """The chain's nodes, right-most first; ``None`` for an element that names none.

    Several header lines are one list, in order (RFC 9110 section 5.3).
    """
    joined = ",".join(values)
    if kind == "x-forwarded-for":
        yield from reversed(joined.split(","))
    else:
        for element in _split(joined, ","):
            yield _for_node(element)


def is_trusted(address: Address, trusted: Sequence[Network]) -> bool:
    """True when ``address`` is in one of the ``trusted`` networks."""
    return any(address in network for network in trusted)


def client_address(
    peer: str, values: Sequence[str], kind: HeaderKind, trusted: Sequence[Network]
) -> ClientAddress:
    """The client of a request that came from ``peer`` with the header ``values`` (every
    line of the ``kind`` header, in order).

    The header counts only when the peer is a trusted proxy; then the right-most address
    that is not one is the client (all trusted: the left-most). A malformed entry where it
    would be read means a proxy we trust wrote something we cannot understand: the peer is
    used and the problem returned, to be logged. Entries to the left of the client are
    never read, so a client cannot push its own garbage into that path.
    """
    peer_address = parse_node(peer)
    if peer_address is None or not values or not is_trusted(peer_address, trusted):
        return ClientAddress(peer)
    client = peer_address
    for node in _nodes_from_right(values, kind):
        address = parse_node(node) if node is not None else None
        if address is None:
            shown = (
                "an element without one for= address" if node is None else repr(node.strip()[:64])
            )
            return ClientAddress(peer, f"{shown} in {kind} where the client was expected")
        client = address
        if not is_trusted(address, trusted):
            break
    return ClientAddress(str(client))
