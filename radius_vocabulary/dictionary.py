"""RADIUS attribute names and types, read from the package's ``dictionary`` file.

The file is in the FreeRADIUS / pyrad format (``ATTRIBUTE``, ``VALUE``, ``VENDOR``,
``BEGIN-VENDOR`` / ``END-VENDOR``), so the same file loads in pyrad for interop tests. We
read it ourselves because only two things are needed from it: turn an operator's
``["Filter-Id", "vpn-users"]`` into wire bytes (checked by the backend when the operator
types it, and by the bridge when the client list is loaded, so a typo is reported per client
instead of failing a sign-in), and name attributes copied back from an upstream server.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

#: Attribute types this dictionary understands (a subset of FreeRADIUS's).
TYPES = frozenset(
    {"string", "octets", "integer", "ipaddr", "ipv6addr", "ipv6prefix", "ifid", "date"}
)
VENDOR_SPECIFIC = 26
#: Largest value of a standard attribute (255 minus type and length octets).
MAX_VALUE = 253
#: Largest value of a vendor sub-attribute: 253 minus vendor id (4) and sub-header (2).
MAX_VENDOR_VALUE = 247
#: The dictionary file shipped beside this module (radius_vocabulary/dictionary), read by
#: path: pyrad loads the same file in the interop tests.
DICTIONARY_FILE = Path(__file__).resolve().parent / "dictionary"


@dataclass(frozen=True)
class Attribute:
    """One reply attribute by dictionary name, value as the dictionary types it."""

    name: str
    value: str | int | bytes


class DictionaryError(ValueError):
    """The dictionary file is not valid (line number in the message)."""


@dataclass(frozen=True, slots=True)
class AttributeDef:
    """One ``ATTRIBUTE`` line: name, code, type, vendor (0 = standard), flags, values."""

    name: str
    code: int
    type: str
    vendor: int = 0
    has_tag: bool = False
    encrypt: int = 0
    values: Mapping[str, int] = field(default_factory=dict)  # lower-case VALUE names


class Dictionary:
    """Attribute definitions by name (case-insensitive) and by (vendor, code)."""

    def __init__(self, definitions: list[AttributeDef], vendors: Mapping[str, int]) -> None:
        self._by_name = {d.name.lower(): d for d in definitions}
        self._by_code = {(d.vendor, d.code): d for d in definitions}
        self.vendors = dict(vendors)
        # Reply attributes repeat (a client's reply_attributes, an upstream's Class): the
        # wire form is kept, bounded, so an Accept does not re-run the type conversion.
        self._encoded: dict[Attribute, bytes] = {}

    @classmethod
    def parse(cls, text: str) -> Dictionary:
        """Parse dictionary text; raises :class:`DictionaryError` on the first bad line."""
        vendors: dict[str, int] = {}
        attrs: dict[str, AttributeDef] = {}
        values: dict[str, dict[str, int]] = {}
        vendor = 0
        for number, raw in enumerate(text.splitlines(), start=1):
            words = raw.split("#", 1)[0].split()
            if not words:
                continue
            try:
                keyword = words[0].upper()
                if keyword == "VENDOR":
                    vendors[words[1]] = int(words[2])
                elif keyword == "BEGIN-VENDOR":
                    vendor = vendors[words[1]]
                elif keyword == "END-VENDOR":
                    vendor = 0
                elif keyword == "ATTRIBUTE":
                    attrs[words[1].lower()] = _attribute(words, vendor)
                elif keyword == "VALUE":
                    values.setdefault(words[1].lower(), {})[words[2].lower()] = int(words[3])
                else:
                    raise ValueError(f"unknown keyword {words[0]!r}")
            except (IndexError, KeyError, ValueError) as exc:
                raise DictionaryError(f"dictionary line {number}: {raw.strip()!r}: {exc}") from exc
        for attr_name in values:
            if attr_name not in attrs:
                raise DictionaryError(f"VALUE for undefined attribute {attr_name!r}")
        definitions = [
            AttributeDef(
                d.name, d.code, d.type, d.vendor, d.has_tag, d.encrypt, values.get(key, {})
            )
            for key, d in attrs.items()
        ]
        return cls(definitions, vendors)

    def lookup(self, name: str) -> AttributeDef:
        """The definition of ``name`` (case-insensitive); ValueError if unknown."""
        definition = self._by_name.get(name.lower())
        if definition is None:
            raise ValueError(f"unknown attribute {name!r}")
        return definition

    def by_code(self, code: int, vendor: int = 0) -> AttributeDef | None:
        """The definition of attribute ``code`` (of ``vendor``), if the dictionary has one."""
        return self._by_code.get((vendor, code))

    def encode(self, attribute: Attribute) -> bytes:
        """The wire form (type, length, value; wrapped in Vendor-Specific for a vendor's
        attribute) of ``attribute``. ``bytes`` values are sent as they are (already in wire
        form, e.g. copied from an upstream reply); ``str`` and ``int`` values are converted
        by the attribute's type. A tag goes after the name (``Tunnel-Type:1``, RFC 2868).
        Raises ValueError for unknown names and values that do not fit the type.
        """
        wire = self._encoded.get(attribute)
        if wire is None:
            wire = self._encode(attribute)
            if len(self._encoded) >= 4096:
                self._encoded.clear()
            self._encoded[attribute] = wire
        return wire

    def _encode(self, attribute: Attribute) -> bytes:
        name, _, tag_text = attribute.name.partition(":")
        definition = self.lookup(name)
        tag = None
        if tag_text:
            if not definition.has_tag:
                raise ValueError(f"{definition.name} takes no tag")
            tag = int(tag_text)
            if not 0 <= tag <= 0x1F:
                raise ValueError(f"tag of {definition.name} must be 0..31")
        value = attribute.value
        wire = value if isinstance(value, bytes) else encode_value(definition, value, tag)
        if definition.vendor:
            if len(wire) > MAX_VENDOR_VALUE:
                raise ValueError(f"{definition.name}: value longer than {MAX_VENDOR_VALUE} octets")
            sub = bytes((definition.code, len(wire) + 2)) + wire
            inner = definition.vendor.to_bytes(4, "big") + sub
            return bytes((VENDOR_SPECIFIC, len(inner) + 2)) + inner
        if len(wire) > MAX_VALUE:
            raise ValueError(f"{definition.name}: value longer than {MAX_VALUE} octets")
        return bytes((definition.code, len(wire) + 2)) + wire


def _attribute(words: list[str], vendor: int) -> AttributeDef:
    name, code, kind = words[1], int(words[2], 0), words[3].lower()
    if kind not in TYPES:
        raise ValueError(f"unsupported type {kind!r}")
    if not 1 <= code <= 255:
        raise ValueError("code must be 1..255")
    has_tag, encrypt = False, 0
    for flag in words[4].split(",") if len(words) > 4 else ():
        if flag == "has_tag":
            has_tag = True
        elif flag.startswith("encrypt="):
            encrypt = int(flag.removeprefix("encrypt="))
        else:
            raise ValueError(f"unknown flag {flag!r}")
    return AttributeDef(name, code, kind, vendor, has_tag, encrypt)


def encode_value(definition: AttributeDef, value: str | int, tag: int | None = None) -> bytes:
    """Convert a configured value (text or number) to the wire form of its type.

    ``octets`` accept ``0x``-prefixed hex (as FreeRADIUS does) or text (sent as UTF-8);
    ``integer`` accepts a number or a ``VALUE`` name. Raises ValueError when it does not fit.
    """
    if definition.encrypt:
        # Hiding needs the request authenticator; operators have no reason to configure these.
        raise ValueError(f"{definition.name} is encrypted and cannot be configured")
    kind = definition.type
    if kind in ("integer", "date"):
        number = _integer(definition, value)
        if tag is not None:
            # RFC 2868: a tagged integer keeps 24 bits; the tag takes the first octet.
            if number > 0xFFFFFF:
                raise ValueError(f"{definition.name}: tagged value must be below 2^24")
            number |= tag << 24
        return number.to_bytes(4, "big")
    if isinstance(value, int):
        raise ValueError(f"{definition.name} takes text, not a number")
    if kind == "string":
        wire = value.encode("utf-8")
    elif kind == "octets":
        wire = bytes.fromhex(value[2:]) if value[:2].lower() == "0x" else value.encode("utf-8")
    elif kind == "ipaddr":
        wire = ipaddress.IPv4Address(value).packed
    elif kind == "ipv6addr":
        wire = ipaddress.IPv6Address(value).packed
    elif kind == "ipv6prefix":
        network = ipaddress.IPv6Network(value, strict=False)
        # RFC 3162: reserved octet, prefix length, prefix. All 16 prefix octets (host bits
        # zero), as FreeRADIUS and pyrad send it: NAS parsers expect that length.
        wire = bytes((0, network.prefixlen)) + network.network_address.packed
    else:  # ifid: 8 octets, written like 0011:2233:4455:6677
        wire = bytes.fromhex(value.replace(":", ""))
        if len(wire) != 8:
            raise ValueError(f"{definition.name}: an interface id is 8 octets")
    if tag is not None:
        wire = bytes((tag,)) + wire
    return wire


def _integer(definition: AttributeDef, value: str | int) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{definition.name} takes a number")
    if isinstance(value, str):
        named = definition.values.get(value.lower())
        if named is not None:
            value = named
        elif value.strip().isdigit():
            value = int(value)
        else:
            raise ValueError(f"{definition.name}: {value!r} is not a number or a known value")
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"{definition.name}: {value} does not fit 32 bits")
    return value


@functools.cache
def default_dictionary() -> Dictionary:
    """The dictionary shipped in the package (read once)."""
    text = DICTIONARY_FILE.read_text("utf-8")
    return Dictionary.parse(text)
