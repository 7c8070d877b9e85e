"""RadSec client settings: ``openmfa client add/set/show --radsec --cert-fingerprint``, the
clients document the bridges read, and the bridge's parsing of it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from radius_bridge.clients import parse_clients
from radius_vocabulary.certs import format_fingerprint, parse_fingerprint
from tests.support.process import Cli

ENV = {"OPENMFA_LOG_FORMAT": "json", "OPENMFA_RADIUS_PORT": "0"}
FP_A = "SHA256:" + ":".join(["3F"] * 32)
FP_B = "sha256 Fingerprint=" + ":".join(["a1"] * 32)  # as openssl prints it
FP_B_CANONICAL = "SHA256:" + ":".join(["A1"] * 32)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("home")
    Cli(path, **ENV)("db", "upgrade")
    return path


@pytest.fixture
def cli(home: Path) -> Cli:
    return Cli(home, **ENV)


def test_fingerprint_spellings() -> None:
    digest = bytes([0xA1] * 32)
    for text in (FP_B, FP_B_CANONICAL, "a1" * 32, "SHA-256:" + "A1" * 32):
        assert parse_fingerprint(text) == digest
    assert format_fingerprint(digest) == FP_B_CANONICAL
    for bad in ("", "SHA256:AB", "SHA1:" + "a1" * 20, "zz" * 32, "a1" * 33):
        with pytest.raises(ValueError, match="not a SHA-256 fingerprint"):
            parse_fingerprint(bad)


def test_a_radsec_client_needs_no_secret_nor_address(cli: Cli) -> None:
    added = cli("client", "add", "branch1", "--radsec", "--cert-fingerprint", FP_A)
    assert added.returncode == 0, added.stderr
    shown = json.loads(cli("client", "show", "branch1", "--json").stdout)
    assert shown["radsec"] == {"fingerprints": [FP_A]}
    assert shown["secret"]["set"] is False
    assert shown["addresses"] == ["0.0.0.0/0", "::/0"]
    text = cli("client", "show", "branch1").stdout
    assert FP_A in text
    assert "RadSec only" in text
    # A second RadSec-only client anywhere does not clash on the "anywhere" addresses ...
    assert cli("client", "add", "branch2", "--radsec", "--cert-fingerprint", FP_B).returncode == 0
    # ... but a certificate identifies one client only.
    taken = cli("client", "add", "branch3", "--radsec", "--cert-fingerprint", FP_A, check=False)
    assert taken.returncode == 1
    assert "already bound" in taken.stderr
    # Rotating the certificate: bind the new one next to the old, then drop the old.
    changed = cli(
        "client", "set", "branch1", "--cert-fingerprint", FP_A, "--cert-fingerprint", "a2" * 32
    )
    assert changed.returncode == 0, changed.stderr
    shown = json.loads(cli("client", "show", "branch1", "--json").stdout)
    assert shown["radsec"]["fingerprints"] == [FP_A, "SHA256:" + ":".join(["A2"] * 32)]
    # Without a secret the client cannot go back to UDP only.
    refused = cli("client", "set", "branch1", "--no-radsec", check=False)
    assert refused.returncode == 1
    assert "RadSec client" in refused.stderr
    assert json.loads(cli("client", "show", "branch2", "--json").stdout)["radsec"] == {
        "fingerprints": [FP_B_CANONICAL]
    }


def test_radsec_usage_errors(cli: Cli) -> None:
    no_fingerprint = cli("client", "add", "gw-x", "--radsec", check=False)
    assert no_fingerprint.returncode == 1
    assert "--cert-fingerprint" in no_fingerprint.stderr
    bad = cli("client", "add", "gw-y", "--radsec", "--cert-fingerprint", "SHA256:AB", check=False)
    assert bad.returncode == 1
    assert "fingerprint" in bad.stderr
    plain = cli("client", "add", "gw-z", "--address", "10.9.0.1", check=False)
    assert plain.returncode == 2
    assert "--secret-stdin" in plain.stderr


def test_a_udp_client_can_add_and_drop_radsec(cli: Cli) -> None:
    secret = "udp-and-radsec-secret-0123456789"
    assert (
        cli(
            "client", "add", "dual", "--address", "10.7.0.1", "--secret-stdin", stdin=secret
        ).returncode
        == 0
    )
    fingerprint = "SHA256:" + ":".join(["5C"] * 32)
    assert (
        cli("client", "set", "dual", "--radsec", "--cert-fingerprint", fingerprint).returncode == 0
    )
    shown = json.loads(cli("client", "show", "dual", "--json").stdout)
    assert shown["radsec"] == {"fingerprints": [fingerprint]}
    assert shown["secret"]["set"] is True
    assert cli("client", "set", "dual", "--no-radsec").returncode == 0
    assert json.loads(cli("client", "show", "dual", "--json").stdout)["radsec"] is None


def test_the_bridge_reads_radsec_clients() -> None:
    digest = bytes([0x3F] * 32)
    document = {
        "revision": "1",
        "clients": [
            {"name": "only-tls", "addresses": ["0.0.0.0/0"], "radsec_fingerprints": [FP_A]},
            {"name": "udp", "addresses": ["0.0.0.0/0"], "secret": "s" * 20},
            {"name": "no-secret", "addresses": ["10.0.0.1"]},
            {"name": "same-cert", "addresses": ["10.0.0.2"], "radsec_fingerprints": [FP_A]},
            {"name": "bad-cert", "addresses": ["10.0.0.3"], "radsec_fingerprints": ["AB"]},
        ],
    }
    loaded = parse_clients(document)
    assert [c.name for c in loaded.clients] == ["only-tls", "udp"]
    assert len(loaded.errors) == 3
    assert any("no-secret" in e and "secret: required" in e for e in loaded.errors)
    assert any("same-cert" in e and "also bound" in e for e in loaded.errors)
    table = loaded.table
    tls = table.by_certificate(digest)
    assert tls is not None
    assert tls.name == "only-tls"
    assert tls.secret == b""
    # UDP from anywhere is the UDP client's, never the RadSec-only one's.
    udp = table.match("192.0.2.1")
    assert udp is not None
    assert udp.name == "udp"
    assert table.by_certificate(bytes(32)) is None
