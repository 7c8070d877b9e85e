"""Reading the client's address from a forwarding chain: only behind trusted proxies, the
right-most untrusted entry, never the part the client wrote itself."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from backend.config import load_settings
from backend.domain.forwarded import ClientAddress, client_address, parse_node
from backend.errors import ConfigurationError

TRUSTED = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8:f::/48"))


def xff(peer: str, *values: str) -> ClientAddress:
    return client_address(peer, values, "x-forwarded-for", TRUSTED)


def fwd(peer: str, *values: str) -> ClientAddress:
    return client_address(peer, values, "forwarded", TRUSTED)


def test_an_untrusted_peer_is_the_client_whatever_it_says() -> None:
    assert xff("192.0.2.9", "203.0.113.5") == ClientAddress("192.0.2.9")
    assert fwd("192.0.2.9", "for=203.0.113.5") == ClientAddress("192.0.2.9")
    assert xff("192.0.2.9", "garbage") == ClientAddress("192.0.2.9")  # not even read


def test_a_trusted_peer_without_the_header_is_the_client() -> None:
    assert xff("10.0.0.1") == ClientAddress("10.0.0.1")


def test_the_right_most_untrusted_entry_is_the_client() -> None:
    # The client wrote "198.51.100.66" itself; our proxy appended the address it saw.
    assert xff("10.0.0.1", "198.51.100.66, 203.0.113.5") == ClientAddress("203.0.113.5")
    # Two trusted proxies in a row are walked past.
    assert xff("10.0.0.1", "198.51.100.66, 203.0.113.5, 10.2.3.4") == ClientAddress("203.0.113.5")
    # Several header lines are one list.
    assert xff("10.0.0.1", "198.51.100.66", "203.0.113.5") == ClientAddress("203.0.113.5")


def test_a_chain_of_trusted_proxies_only_gives_the_left_most() -> None:
    assert xff("10.0.0.1", "10.9.9.9, 10.0.0.2") == ClientAddress("10.9.9.9")


def test_what_the_client_wrote_to_the_left_is_never_parsed() -> None:
    assert xff("10.0.0.1", 'evil", 1.2.3.4:x, , 203.0.113.5') == ClientAddress("203.0.113.5")
    assert fwd("10.0.0.1", 'for="unterminated, for=203.0.113.5') == ClientAddress("203.0.113.5")
    assert fwd("10.0.0.1", "for=nonsense;;;, for=203.0.113.5") == ClientAddress("203.0.113.5")


def test_a_malformed_entry_from_a_trusted_proxy_falls_back_to_the_peer() -> None:
    result = xff("10.0.0.1", "203.0.113.5, not-an-address")
    assert result.address == "10.0.0.1"
    assert result.problem is not None
    assert "'not-an-address'" in result.problem
    assert xff("10.0.0.1", "203.0.113.5, ").address == "10.0.0.1"
    assert fwd("10.0.0.1", "by=10.0.0.1").address == "10.0.0.1"  # no for=
    assert fwd("10.0.0.1", "for=unknown").address == "10.0.0.1"
    assert fwd("10.0.0.1", "for=_hidden").address == "10.0.0.1"
    assert fwd("10.0.0.1", "for=1.2.3.4;for=5.6.7.8").address == "10.0.0.1"


def test_ports_brackets_quotes_and_other_parameters() -> None:
    assert xff("10.0.0.1", "203.0.113.5:4711").address == "203.0.113.5"
    assert xff("10.0.0.1", "[2001:db8::7]:443").address == "2001:db8::7"
    assert xff("10.0.0.1", "2001:db8::7").address == "2001:db8::7"
    assert fwd("10.0.0.1", 'for="[2001:db8::7]:4711";proto=https').address == "2001:db8::7"
    assert fwd("10.0.0.1", 'For=203.0.113.5;host="a;b, c";proto=https').address == "203.0.113.5"
    assert fwd("2001:db8:f::1", "for=198.51.100.1, for=203.0.113.5").address == "203.0.113.5"


def test_ipv4_mapped_addresses_count_as_ipv4() -> None:
    assert xff("::ffff:10.0.0.1", "203.0.113.5").address == "203.0.113.5"
    assert parse_node("::ffff:203.0.113.5") == ipaddress.ip_address("203.0.113.5")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "unknown",
        "1.2.3",
        "1.2.3.4.5",
        "999.1.1.1",
        "1.2.3.4:",
        "[::1",
        "::1]:80",
        "1.2.3.4/8",
        " 1.2.3.4\n",
        "fe80::1%eth0",
        "1.2.3.4:123456",
    ],
)
def test_nodes_are_checked_strictly(text: str) -> None:
    assert parse_node(text) is None or text.strip() == "1.2.3.4"


def test_trusted_proxies_are_read_strictly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENMFA_TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.7 2001:db8::/32")
    settings = load_settings(home=tmp_path)
    assert settings.trusted_proxies == ("10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32")
    (tmp_path / "openmfa.toml").write_text('trusted_proxies = ["127.0.0.1"]\n')
    monkeypatch.delenv("OPENMFA_TRUSTED_PROXIES")
    assert load_settings(home=tmp_path).trusted_networks == (ipaddress.ip_network("127.0.0.1"),)
    for bad, why in (
        ("10.0.0.1/8", "host bits set"),
        ("10.0.0.0/255.0.0.0", "is not an IP address or CIDR"),
        ("proxy.example", "is not an IP address or CIDR"),
        ("10.0.0.0/33", "10.0.0.0/33"),
    ):
        with pytest.raises(ConfigurationError, match=why):
            load_settings(home=tmp_path, trusted_proxies=bad)
    with pytest.raises(ConfigurationError, match="trusted_proxy_header"):
        load_settings(home=tmp_path, trusted_proxy_header="x-real-ip")
