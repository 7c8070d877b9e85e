"""The shipped dictionary and our reader of it: same file, same meaning as pyrad's reader;
configured values turn into the right wire octets; bad input is refused clearly."""

from __future__ import annotations

import pytest
from pyrad import packet as pyrad_packet
from pyrad.dictionary import Dictionary as PyradDictionary

from radius_bridge.protocol import packet as codec
from radius_vocabulary.dictionary import (
    DICTIONARY_FILE,
    Attribute,
    AttributeDef,
    Dictionary,
    DictionaryError,
    default_dictionary,
    encode_value,
)


def test_pyrad_reads_the_shipped_file_the_same_way() -> None:
    theirs = PyradDictionary(str(DICTIONARY_FILE))
    ours = default_dictionary()
    assert len(theirs.attributes) > 90
    for name, attr in theirs.attributes.items():
        mine = ours.lookup(name)
        vendor = theirs.vendors.GetForward(attr.vendor) if attr.vendor else 0
        assert (mine.code, mine.type, mine.vendor) == (attr.code, attr.type, vendor), name
        assert mine.has_tag == attr.has_tag, name
        assert mine.encrypt == attr.encrypt, name
        for value_name, number in attr.values.forward.items():
            assert mine.values[value_name.lower()] == int.from_bytes(number, "big")


def test_lookup_is_case_insensitive_and_by_code() -> None:
    dictionary = default_dictionary()
    assert dictionary.lookup("filter-ID").code == 11
    assert dictionary.by_code(1, 9) == dictionary.lookup("Cisco-AVPair")
    assert dictionary.by_code(250) is None
    with pytest.raises(ValueError, match="unknown attribute"):
        dictionary.lookup("Filter-Idd")


@pytest.mark.parametrize(
    ("attribute", "wire"),
    [
        (Attribute("Filter-Id", "vpn-users"), b"\x0b\x0bvpn-users"),
        (Attribute("Reply-Message", "Grüß"), b"\x12\x08Gr\xc3\xbc\xc3\x9f"),
        (Attribute("Class", "vpn"), b"\x19\x05vpn"),
        (Attribute("Class", "0x00ff10"), b"\x19\x05\x00\xff\x10"),
        (Attribute("Class", b"\x01raw"), b"\x19\x06\x01raw"),
        (Attribute("Session-Timeout", "3600"), b"\x1b\x06\x00\x00\x0e\x10"),
        (Attribute("Session-Timeout", 3600), b"\x1b\x06\x00\x00\x0e\x10"),
        (Attribute("Service-Type", "framed-user"), b"\x06\x06\x00\x00\x00\x02"),
        (Attribute("Framed-IP-Address", "10.1.2.3"), b"\x08\x06\x0a\x01\x02\x03"),
        (Attribute("Login-IPv6-Host", "2001:db8::1"),
         b"\x62\x12" + bytes.fromhex("20010db8000000000000000000000001")),
        (Attribute("Framed-IPv6-Prefix", "2001:db8:1::/48"),
         b"\x61\x14\x00\x30" + bytes.fromhex("20010db8000100000000000000000000")),
        (Attribute("Framed-IPv6-Prefix", "2001:db8:1::1/48"),
         b"\x61\x14\x00\x30" + bytes.fromhex("20010db8000100000000000000000000")),
        (Attribute("Framed-Interface-Id", "0011:2233:4455:6677"),
         b"\x60\x0a" + bytes.fromhex("0011223344556677")),
        (Attribute("Event-Timestamp", 1), b"\x37\x06\x00\x00\x00\x01"),
        (Attribute("Tunnel-Type:1", "VLAN"), b"\x40\x06\x01\x00\x00\x0d"),
        (Attribute("Tunnel-Type", "VLAN"), b"\x40\x06\x00\x00\x00\x0d"),
        (Attribute("Tunnel-Private-Group-Id:1", "100"), b"\x51\x06\x01100"),
        (Attribute("Tunnel-Private-Group-Id", "100"), b"\x51\x05100"),
        (Attribute("Cisco-AVPair", "shell:priv-lvl=15"),
         b"\x1a\x19\x00\x00\x00\x09\x01\x13shell:priv-lvl=15"),
        (Attribute("Aruba-User-Vlan", 20), b"\x1a\x0c\x00\x00\x39\xe7\x02\x06\x00\x00\x00\x14"),
    ],
)  # fmt: skip
def test_encode(attribute: Attribute, wire: bytes) -> None:
    dictionary = default_dictionary()
    assert dictionary.encode(attribute) == wire
    assert dictionary.encode(attribute) == wire  # second time from the cache


@pytest.mark.parametrize(
    ("attribute", "message"),
    [
        (Attribute("No-Such-Attribute", "x"), "unknown attribute"),
        (Attribute("Filter-Id:1", "x"), "takes no tag"),
        (Attribute("Tunnel-Type:32", "VLAN"), "0..31"),
        (Attribute("Tunnel-Type:x", "VLAN"), "invalid literal"),
        (Attribute("Tunnel-Type:1", 1 << 24), "2\\^24"),
        (Attribute("Session-Timeout", "soon"), "not a number"),
        (Attribute("Session-Timeout", -1), "32 bits"),
        (Attribute("Session-Timeout", 1 << 32), "32 bits"),
        (Attribute("Session-Timeout", True), "takes a number"),
        (Attribute("Filter-Id", 5), "takes text"),
        (Attribute("Framed-IP-Address", "10.1.2"), "octets"),
        (Attribute("Framed-Interface-Id", "0011:2233"), "8 octets"),
        (Attribute("Class", "0xzz"), "non-hexadecimal"),
        (Attribute("User-Password", "secret"), "encrypted"),
        (Attribute("MS-MPPE-Send-Key", "0x00"), "encrypted"),
        (Attribute("Filter-Id", "x" * 254), "253"),
        (Attribute("Cisco-AVPair", "x" * 248), "247"),
    ],
)
def test_encode_refuses(attribute: Attribute, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        default_dictionary().encode(attribute)


def test_encoding_agrees_with_pyrad() -> None:
    theirs = PyradDictionary(str(DICTIONARY_FILE))
    request = pyrad_packet.AuthPacket(
        code=1, id=1, secret=b"s", authenticator=bytes(16), dict=theirs
    )
    request["Filter-Id"] = "vpn-users"
    request["Session-Timeout"] = 3600
    request["Service-Type"] = "Framed-User"
    request["Framed-IP-Address"] = "10.9.8.7"
    request["Cisco-AVPair"] = "ip:inacl#1=permit ip any any"
    request["Tunnel-Private-Group-Id:1"] = "42"
    request["Framed-IPv6-Prefix"] = "2001:db8::/32"
    raw = request.RequestPacket()
    packet = codec.decode(raw)
    ours = default_dictionary()
    expected = [
        ours.encode(Attribute("Filter-Id", "vpn-users")),
        ours.encode(Attribute("Session-Timeout", "3600")),
        ours.encode(Attribute("Service-Type", "Framed-User")),
        ours.encode(Attribute("Framed-IP-Address", "10.9.8.7")),
        ours.encode(Attribute("Cisco-AVPair", "ip:inacl#1=permit ip any any")),
        ours.encode(Attribute("Tunnel-Private-Group-Id:1", "42")),
        ours.encode(Attribute("Framed-IPv6-Prefix", "2001:db8::/32")),
    ]
    assert b"".join(expected) == raw[20:]
    assert len(packet.attributes) == len(expected)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("FROB x 1 string", "unknown keyword"),
        ("ATTRIBUTE X 1 blob", "unsupported type"),
        ("ATTRIBUTE X 256 string", "1..255"),
        ("ATTRIBUTE X 1 string frob", "unknown flag"),
        ("ATTRIBUTE X", "list index"),
        ("BEGIN-VENDOR Nobody", "Nobody"),
        ("VALUE Nothing Some 1", "undefined attribute"),
        ("VENDOR Acme notanumber", "invalid literal"),
    ],
)
def test_parse_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(DictionaryError, match=message):
        Dictionary.parse("# a comment\n\n" + text)


def test_parse_vendor_blocks_and_flags() -> None:
    dictionary = Dictionary.parse(
        "VENDOR Acme 4242\n"
        "ATTRIBUTE Plain 1 string\n"
        "BEGIN-VENDOR Acme\n"
        "ATTRIBUTE Acme-Hidden 3 octets encrypt=2  # trailing comment\n"
        "ATTRIBUTE Acme-Tagged 0x04 integer has_tag\n"
        "END-VENDOR Acme\n"
        "ATTRIBUTE After 2 integer\n"
        "VALUE After On 1\n"
    )
    assert dictionary.vendors == {"Acme": 4242}
    assert dictionary.lookup("Acme-Hidden") == AttributeDef(
        "Acme-Hidden", 3, "octets", 4242, False, 2, {}
    )
    assert dictionary.lookup("acme-tagged").has_tag
    assert dictionary.lookup("Acme-Tagged").code == 4
    assert dictionary.lookup("After").vendor == 0
    assert dictionary.lookup("After").values == {"on": 1}
    assert dictionary.lookup("Plain").vendor == 0


def test_encode_value_direct() -> None:
    definition = AttributeDef("Num", 5, "integer", values={"two": 2})
    assert encode_value(definition, "TWO") == b"\x00\x00\x00\x02"
    assert encode_value(definition, " 7 ") == b"\x00\x00\x00\x07"


def test_encode_cache_bounded() -> None:
    dictionary = Dictionary.parse("ATTRIBUTE Class 25 octets\n")
    for index in range(5000):
        value = index.to_bytes(2, "big")
        assert dictionary.encode(Attribute("Class", value)) == b"\x19\x04" + value
    assert len(dictionary._encoded) <= 4096
