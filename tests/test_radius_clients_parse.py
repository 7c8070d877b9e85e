"""The clients document -> ClientConfig, with one clear error per bad client; the address
table (longest prefix, IPv4 and IPv6, IPv4-mapped); user-name normalisation."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest

from radius_bridge.clients import (
    ClientError,
    ClientsError,
    ClientTable,
    parse_client,
    parse_clients,
    parse_clients_json,
)
from radius_bridge.model import ClientConfig, NameRule, Upstream
from radius_bridge.names import normalise, split_name
from radius_vocabulary.settings import DEFAULT_PROMPT

FULL: dict[str, Any] = {
    "name": "asa1",
    "addresses": ["10.0.0.0/24", "2001:db8::/64", "192.0.2.7"],
    "secret": "shared secret ü",
    "mode": "challenge",
    "primary": "radius",
    "upstream": {"host": "10.0.0.5", "port": 1645, "secret": "up", "timeout": 7.5},
    "require_message_authenticator": False,
    "failmode": "safe",
    "unenrolled": "allow",
    "push_timeout": 30,
    "prompt": "Approve on your phone",
    "user_names": {"format": "map", "realm_map": {"partner.example": "{user}.partner"}},
    "exempt_users": ["SVC-Backup", "CONTOSO\\svc-print"],
    "exempt_networks": ["192.0.2.0/24"],
    "password_separator": "|",
    "reply_attributes": [["Filter-Id", "vpn-users"], ["Class", "vpn"], ["Session-Timeout", 3600]],
    "number_matching": "on",
    "some_future_field": {"ignored": True},
}


def test_full_client() -> None:
    client = parse_client(FULL)
    assert client == ClientConfig(
        name="asa1",
        networks=(
            ipaddress.ip_network("10.0.0.0/24"),
            ipaddress.ip_network("2001:db8::/64"),
            ipaddress.ip_network("192.0.2.7/32"),
        ),
        secret="shared secret ü".encode(),
        mode="challenge",
        primary="radius",
        upstream=Upstream("10.0.0.5", 1645, b"up", 7.5),
        require_message_authenticator=False,
        failmode="safe",
        unenrolled="allow",
        push_timeout=30.0,
        prompt="Approve on your phone",
        user_names=NameRule("map", (("partner.example", "{user}.partner"),)),
        exempt_users=frozenset({"svc-backup", "svc-print"}),
        exempt_networks=(ipaddress.ip_network("192.0.2.0/24"),),
        password_separator="|",
        reply_attributes=(
            ("Filter-Id", "vpn-users"),
            ("Class", "vpn"),
            ("Session-Timeout", "3600"),
        ),
        number_matching="on",
    )


def test_minimal_client_gets_safe_defaults() -> None:
    client = parse_client({"name": "nps", "addresses": ["10.1.1.1"], "secret": "s"})
    assert client.mode == "push"
    assert client.primary == "none"
    assert client.upstream is None
    assert client.require_message_authenticator is True
    assert client.failmode == "secure"
    assert client.unenrolled == "reject"
    assert client.push_timeout == 55.0
    assert client.prompt == DEFAULT_PROMPT
    assert client.user_names == NameRule()
    assert client.password_separator == ","
    nulls = {
        "name": "nps",
        "addresses": ["10.1.1.1"],
        "secret": "s",
        "mode": None,
        "upstream": None,
        "push_timeout": None,
        "require_message_authenticator": None,
        "user_names": None,
        "reply_attributes": None,
        "exempt_users": None,
    }
    assert parse_client(nulls) == client


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": ""}, "name: must be a non-empty string"),
        ({"name": None}, "name: required"),
        ({"name": "x" * 129}, "name: longer than 128"),
        ({"addresses": []}, "addresses: at least one"),
        ({"addresses": "10.0.0.1"}, "addresses: must be a list"),
        ({"addresses": ["10.0.0.300"]}, "'10.0.0.300' is not an IP address"),
        ({"secret": 5}, "secret: must be a non-empty string"),
        ({"mode": "sms"}, "mode: must be one of push, challenge, otp (got 'sms')"),
        ({"primary": "kerberos"}, "primary: must be one of none, local, radius, ldap"),
        ({"upstream": None}, "upstream: required as an object when primary is radius"),
        ({"upstream": {"port": 1812, "secret": "x"}}, "upstream.host: required"),
        ({"upstream": {"host": "h", "port": 0, "secret": "x"}}, "upstream.port"),
        ({"upstream": {"host": "h", "port": True, "secret": "x"}}, "upstream.port"),
        ({"upstream": {"host": "h", "secret": "x", "timeout": 0}}, "upstream.timeout"),
        ({"require_message_authenticator": "yes"}, "must be true or false"),
        ({"failmode": "open"}, "failmode: must be one of secure, safe"),
        ({"unenrolled": "ignore"}, "unenrolled: must be one of reject, allow"),
        ({"push_timeout": 4}, "push_timeout: must be between 5 and 600 (got 4)"),
        ({"push_timeout": 601}, "between 5 and 600"),
        ({"push_timeout": True}, "push_timeout: must be a number"),
        ({"push_timeout": "55"}, "push_timeout: must be a number"),
        ({"prompt": "é" * 127}, "prompt: longer than 253 bytes"),
        ({"user_names": "strip"}, "user_names: must be an object"),
        ({"user_names": {"format": "lower"}}, "format: must be one of strip, keep, map"),
        ({"user_names": {"format": "map", "realm_map": ["x"]}}, "realm_map: must be an object"),
        ({"user_names": {"format": "map", "realm_map": {"p.example": "partner"}}},
         "needs a template containing {user}"),
        ({"exempt_users": [""]}, "exempt_users: must be a list of non-empty strings"),
        ({"exempt_networks": ["nope"]}, "exempt_networks: 'nope'"),
        ({"password_separator": ",,"}, "password_separator: must be one character"),
        ({"password_separator": "1"}, "not a digit"),
        ({"reply_attributes": {"Filter-Id": "x"}}, "reply_attributes: must be a list"),
        ({"reply_attributes": [["Filter-Id"]]}, "each entry must be [name, value]"),
        ({"reply_attributes": [["Filter-Id", True]]}, "each entry must be [name, value]"),
        ({"reply_attributes": [["Filter-Idd", "x"]]}, "Filter-Idd: unknown attribute"),
        ({"reply_attributes": [["Session-Timeout", "soon"]]}, "Session-Timeout"),
        ({"reply_attributes": [["Framed-IP-Address", "10.0.0"]]}, "Framed-IP-Address"),
        ({"number_matching": "yes"}, "number_matching: must be one of policy, on, off"),
    ],
)  # fmt: skip
def test_bad_field_named_in_error(change: dict[str, Any], message: str) -> None:
    entry = {**FULL, **change}
    with pytest.raises(ClientError) as info:
        parse_client(entry)
    assert message in str(info.value)


def test_not_an_object() -> None:
    with pytest.raises(ClientError, match="JSON object"):
        parse_client(["asa1"])


def test_document_keeps_good_clients_and_reports_bad_ones() -> None:
    document = {
        "revision": "r42",
        "clients": [
            {"name": "good", "addresses": ["10.0.0.0/24"], "secret": "s"},
            {"name": "bad", "addresses": ["10.1.0.0/24"], "secret": "s", "mode": "sms"},
            {"name": "GOOD", "addresses": ["10.2.0.0/24"], "secret": "s"},
            {"name": "overlap", "addresses": ["10.0.0.0/24"], "secret": "s"},
            "junk",
            {"addresses": ["10.3.0.0/24"], "secret": "s"},
            {"name": "also-good", "addresses": ["10.0.0.128/25"], "secret": "s"},
        ],
    }
    parsed = parse_clients(document)
    assert parsed.revision == "r42"
    assert [client.name for client in parsed.clients] == ["good", "also-good"]
    assert parsed.errors == (
        "client 'bad' (#2): mode: must be one of push, challenge, otp (got 'sms')",
        "client 'GOOD' (#3): name: another client has the same name",
        "client 'overlap' (#4): addresses: 10.0.0.0/24 is also client 'good''s",
        "client #5: must be a JSON object",
        "client #6: name: required",
    )
    table = parsed.table
    assert len(table) == 2
    assert table.match("10.0.0.200").name == "also-good"  # type: ignore[union-attr]
    assert table.match("10.0.0.1").name == "good"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "must be a JSON object"),
        ({"revision": 1, "clients": []}, "revision must be a string"),
        ({"revision": "x"}, "needs a 'clients' list"),
    ],
)
def test_document_errors(document: object, message: str) -> None:
    with pytest.raises(ClientsError, match=message):
        parse_clients(document)


def test_json_entry_point() -> None:
    text = json.dumps({"revision": "7", "clients": [FULL]})
    assert parse_clients_json(text).clients[0].name == "asa1"
    assert parse_clients_json(text.encode()).revision == "7"
    with pytest.raises(ClientsError, match="not JSON"):
        parse_clients_json("{")
    with pytest.raises(ClientsError, match="not JSON"):
        parse_clients_json(b"\xff\xfe")


# -- address table ------------------------------------------------------------------------------


def client(name: str, *networks: str) -> ClientConfig:
    return parse_client({"name": name, "addresses": list(networks), "secret": "s"})


def test_longest_prefix_across_families() -> None:
    table = ClientTable(
        [
            client("site", "10.0.0.0/8", "2001:db8::/32"),
            client("branch", "10.1.0.0/16"),
            client("host", "10.1.2.3"),
            client("v6-host", "2001:db8::7"),
            client("everything-v6", "::/0"),
        ]
    )
    assert table.match("10.9.9.9").name == "site"  # type: ignore[union-attr]
    assert table.match("10.1.9.9").name == "branch"  # type: ignore[union-attr]
    assert table.match("10.1.2.3").name == "host"  # type: ignore[union-attr]
    assert table.match(ipaddress.ip_address("10.1.2.3")).name == "host"  # type: ignore[union-attr]
    assert table.match("2001:db8::7").name == "v6-host"  # type: ignore[union-attr]
    assert table.match("2001:db8::8").name == "site"  # type: ignore[union-attr]
    assert table.match("fe80::1%eth0").name == "everything-v6"  # type: ignore[union-attr]
    assert table.match("11.0.0.1") is None
    assert table.match("not an address") is None
    # IPv4-mapped IPv6 (a dual-stack socket's view of an IPv4 peer) matches as IPv4.
    assert table.match("::ffff:10.1.2.3").name == "host"  # type: ignore[union-attr]
    assert table.match("::ffff:11.0.0.1") is None
    assert table.get("branch") is not None
    assert table.get("nope") is None


def test_mapped_networks_configured_as_ipv6_become_ipv4() -> None:
    mapped = client("mapped", "::ffff:192.0.2.0/120")
    assert mapped.networks == (ipaddress.ip_network("192.0.2.0/24"),)
    assert ClientTable([mapped]).match("192.0.2.9") is mapped


def test_empty_table_and_cache_bound() -> None:
    assert ClientTable([]).match("10.0.0.1") is None
    table = ClientTable([client("all", "0.0.0.0/0")])
    for index in range(5000):
        assert table.match(f"10.{index // 65536}.{index // 256 % 256}.{index % 256}") is not None
    assert len(table._cache) <= ClientTable._CACHE_SIZE


def test_duplicate_network_first_client_wins() -> None:
    first, second = client("a", "10.0.0.0/24"), client("b", "10.0.0.0/24")
    assert ClientTable([first, second]).match("10.0.0.5") is first


# -- user names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user_name", "bare", "realm"),
    [
        ("alice", "alice", ""),
        ("CONTOSO\\alice", "alice", "CONTOSO"),
        ("alice@contoso.com", "alice", "contoso.com"),
        ("CONTOSO\\alice@contoso.com", "alice", "contoso.com"),
        ("a@b@contoso.com", "a@b", "contoso.com"),
        ("@contoso.com", "", "contoso.com"),
        ("CONTOSO\\", "", "CONTOSO"),
    ],
)
def test_split_name(user_name: str, bare: str, realm: str) -> None:
    assert split_name(user_name) == (bare, realm)


def test_normalise_formats() -> None:
    strip = NameRule()
    keep = NameRule("keep")
    mapped = NameRule("map", (("Partner.Example", "{user}.partner"), ("LAB", "lab-{user}@{realm}")))
    assert normalise("CONTOSO\\alice", strip) == "alice"
    assert normalise("alice@contoso.com", strip) == "alice"
    assert normalise("CONTOSO\\alice", keep) == "CONTOSO\\alice"
    assert normalise("bob@partner.example", mapped) == "bob.partner"
    assert normalise("lab\\carol", mapped) == "lab-carol@lab"
    assert normalise("dave@contoso.com", mapped) == "dave"  # unmapped realm: stripped
    assert normalise("erin", mapped) == "erin"
    assert normalise("@partner.example", mapped) == ""
    # A brace in the template is text, not a format field.
    assert normalise("x@lab", NameRule("map", (("lab", "{user}-{x}"),))) == "x-{x}"


def test_match_accepts_address_objects() -> None:
    table = ClientTable([client("v4", "10.0.0.0/8"), client("v6", "2001:db8::/32")])
    assert table.match(ipaddress.ip_address("10.3.3.3")).name == "v4"  # type: ignore[union-attr]
    assert table.match(ipaddress.ip_address("::ffff:10.3.3.4")).name == "v4"  # type: ignore[union-attr]
    assert table.match(ipaddress.ip_address("2001:db8::1")).name == "v6"  # type: ignore[union-attr]
