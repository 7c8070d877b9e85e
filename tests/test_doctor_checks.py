"""The doctor's checks as pure functions: each set of facts gives the level and the fix."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from backend.doctor import checks
from backend.doctor.checks import (
    ClientFacts,
    ClockFacts,
    DatabaseFacts,
    DirFacts,
    Finding,
    KeyFacts,
    PortFacts,
    PushFacts,
    SmtpFacts,
    UrlProbe,
    WebPushFacts,
)


def levels(findings: list[Finding]) -> list[str]:
    return [f.level for f in findings]


def test_every_warning_and_error_says_what_to_do() -> None:
    samples = [
        checks.check_settings("", "invalid settings: port: bad"),
        *checks.check_public_url("", None, UrlProbe("http://x", error="refused")),
        *checks.check_public_url("http://a", 2, UrlProbe("http://a", status=404)),
        checks.check_database(DatabaseFacts("db", "0008", missing_file=True)),
        checks.check_database(DatabaseFacts("db", "0008", error="no route")),
        checks.check_database(DatabaseFacts("db", "0008", revision="0007")),
        *checks.check_server_key(KeyFacts("k", True, mode=0o100644, owner_uid=1, my_uid=2)),
        checks.check_radius_port(PortFacts("h", 1812, bind_error="busy")),
        *checks.check_radius_clients([ClientFacts("vpn", 6, True, False)]),
        *checks.check_push(PushFacts("APNs", True, load_error="bad key")),
        checks.check_smtp(SmtpFacts("mx", 25, error="refused")),
        *checks.check_clock(ClockFacts(False, database_offset_seconds=45)),
        checks.check_data_dir(DirFacts("d", True, mode=0o40755, owner_uid=1, my_uid=1)),
    ]
    flagged = [f for f in samples if f.level in ("warning", "error")]
    assert len(flagged) >= 15
    assert all(f.fix for f in flagged), [f for f in flagged if not f.fix]


def test_settings_that_do_not_load_are_an_error() -> None:
    assert checks.check_settings("", "invalid settings: port").level == "error"
    assert checks.check_settings("file /etc/openmfa.toml", None).level == "ok"


@pytest.mark.parametrize(
    ("public_url", "pipush", "expected"),
    [
        ("https://mfa.example.com", 3, ["ok", "ok"]),
        ("http://mfa.example.com", 0, ["warning", "ok"]),
        ("http://mfa.example.com", None, ["warning", "ok"]),
        ("http://mfa.example.com", 2, ["error", "ok"]),  # the privacyIDEA app needs https
        ("", 0, ["warning", "ok"]),
    ],
)
def test_public_url_scheme(public_url: str, pipush: int | None, expected: list[str]) -> None:
    probe = UrlProbe(public_url or "http://127.0.0.1:8080", status=200)
    assert levels(checks.check_public_url(public_url, pipush, probe)) == expected


def test_public_url_reachability() -> None:
    url = "https://mfa.example.com"
    refused = checks.check_public_url(url, 0, UrlProbe(url, error="connection refused"))[1]
    assert refused.level == "error"
    assert "unreachable" in refused.message
    other = checks.check_public_url(url, 0, UrlProbe(url, status=502))[1]
    assert other.level == "error"
    assert "502" in other.message
    # No DNS here is not proof phones cannot resolve it (split DNS): a warning.
    dns = checks.check_public_url(url, 0, UrlProbe(url, error="no name", unresolved=True))[1]
    assert dns.level == "warning"


def test_database() -> None:
    head = "0008"
    assert checks.check_database(DatabaseFacts("x", head, revision=head)).level == "ok"
    empty = checks.check_database(DatabaseFacts("x", head, revision=None))
    assert empty.level == "error"
    assert "db upgrade" in empty.fix
    old = checks.check_database(DatabaseFacts("x", head, revision="0005"))
    assert old.level == "error"
    assert "0005" in old.message
    assert "0008" in old.message
    down = checks.check_database(DatabaseFacts("x", head, error="connection refused"))
    assert down.level == "error"
    assert "connection refused" in down.message


def test_server_key_permissions_owner_and_fingerprint() -> None:
    good = KeyFacts(
        "k", True, 0o100600, 1000, 1000, fingerprint="a", recorded="a", database_read=True
    )
    assert levels(checks.check_server_key(good)) == ["ok"]
    readable = KeyFacts("k", True, 0o100640, 1000, 1000, fingerprint="a")
    [finding] = checks.check_server_key(readable)
    assert finding.level == "error"
    assert finding.fix == "chmod 600 k"
    assert levels(checks.check_server_key(KeyFacts("k", True, 0o100600, 0, 1000))) == ["error"]
    wrong = KeyFacts(
        "k", True, 0o100600, 1000, 1000, fingerprint="a", recorded="b", database_read=True
    )
    [finding] = checks.check_server_key(wrong)
    assert finding.level == "error"
    assert "not the key" in finding.message
    # Not there yet: created at the first start, unless the database needs it already.
    assert levels(checks.check_server_key(KeyFacts("k", False))) == ["warning"]
    assert levels(checks.check_server_key(KeyFacts("k", False, recorded="a"))) == ["error"]


def test_radius_port() -> None:
    assert checks.check_radius_port(PortFacts("127.0.0.1", 0)).level == "skip"
    assert checks.check_radius_port(PortFacts("127.0.0.1", 1812)).level == "ok"
    ours = checks.check_radius_port(PortFacts("h", 1812, bind_error="in use", server_running=True))
    assert ours.level == "ok"
    assert "running OpenMFA" in ours.message
    other = checks.check_radius_port(PortFacts("h", 1812, bind_error="in use"))
    assert other.level == "error"
    assert "ss -ulpn" in other.fix
    low = checks.check_radius_port(PortFacts("h", 812, bind_error="denied", permission_denied=True))
    assert low.level == "error"
    assert "CAP_NET_BIND_SERVICE" in low.fix


def test_tcp_ports_and_ipv6_addresses() -> None:
    busy = checks.check_port("http port", PortFacts("::1", 8080, "in use", protocol="tcp"))
    assert busy.level == "error"
    assert busy.message.startswith("tcp [::1]:8080")
    assert "ss -tlpn" in busy.fix


def test_geoip() -> None:
    assert checks.check_geoip(None, None).level == "skip"
    assert checks.check_geoip("/x.mmdb", None).level == "ok"
    assert checks.check_geoip("/x.mmdb", "not a MaxMind database").level == "error"


def test_radius_clients() -> None:
    assert levels(checks.check_radius_clients([])) == ["ok"]
    assert levels(checks.check_radius_clients(None, "no key")) == ["skip"]
    found = checks.check_radius_clients(
        [
            ClientFacts("good", 32, False, True),
            ClientFacts("short", 8, True, True),
            ClientFacts("old", 40, False, False),
            ClientFacts("proxy", 40, False, True, upstream_secret_short=True),
        ]
    )
    assert levels(found) == ["ok", "warning", "warning", "warning"]
    assert "upstream" in found[3].message
    assert "short" in found[1].message
    assert "secret-stdin" in found[1].fix
    assert "Message-Authenticator" in found[2].message
    assert "--require-message-authenticator" in found[2].fix


def test_push() -> None:
    assert levels(checks.check_push(PushFacts("APNs", False))) == ["skip"]
    assert levels(checks.check_push(PushFacts("APNs", True, load_error="bad"))) == ["error"]
    ok = checks.check_push(PushFacts("FCM", True, host="fcm.googleapis.com"))
    assert levels(ok) == ["ok", "ok"]
    no_dns = checks.check_push(PushFacts("FCM", True, host="fcm.googleapis.com", resolve_error="x"))
    assert levels(no_dns) == ["ok", "warning"]


def test_smtp() -> None:
    assert checks.check_smtp(None).level == "skip"
    assert checks.check_smtp(SmtpFacts("mx", 587)).level == "ok"
    assert checks.check_smtp(SmtpFacts("mx", 587, error="refused")).level == "error"
    assert checks.check_smtp(SmtpFacts("mx", 587, error="x", unresolved=True)).level == "warning"


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        (ClockFacts(True), ["ok"]),
        (ClockFacts(False), ["warning"]),
        (ClockFacts(None, "timedatectl is not installed"), ["skip"]),
        (ClockFacts(True, database_offset_seconds=0.4), ["ok", "ok"]),
        (ClockFacts(True, database_offset_seconds=-5), ["ok", "warning"]),
        (ClockFacts(True, database_offset_seconds=31), ["ok", "error"]),
    ],
)
def test_clock(facts: ClockFacts, expected: list[str]) -> None:
    assert levels(checks.check_clock(facts)) == expected


def test_data_dir() -> None:
    assert checks.check_data_dir(DirFacts("d", False)).level == "error"
    assert checks.check_data_dir(DirFacts("d", True, is_dir=False)).level == "error"
    assert checks.check_data_dir(DirFacts("d", True, writable=False)).level == "error"
    private = DirFacts("d", True, mode=0o40700, owner_uid=5, my_uid=5)
    assert checks.check_data_dir(private).level == "ok"
    shared = checks.check_data_dir(DirFacts("d", True, mode=0o40755, owner_uid=5, my_uid=5))
    assert shared.level == "warning"
    assert shared.fix == "chmod 700 d"


def test_exit_status_is_one_only_for_errors() -> None:
    assert checks.exit_status([Finding("a", "ok", ""), Finding("b", "warning", "", "x")]) == 0
    assert checks.exit_status([Finding("a", "skip", ""), Finding("b", "error", "", "x")]) == 1


def test_tls() -> None:
    now = datetime(2026, 12, 6, tzinfo=UTC)
    assert checks.check_tls(checks.TlsFacts(None), now).level == "skip"
    broken = checks.TlsFacts("/etc/cert.pem", error="the TLS key does not belong to the cert")
    assert checks.check_tls(broken, now).level == "error"
    for days, level in ((-1, "error"), (3, "warning"), (60, "ok")):
        facts = checks.TlsFacts("/etc/cert.pem", "CN=mfa", now + timedelta(days=days))
        finding = checks.check_tls(facts, now)
        assert finding.level == level, days
        assert (finding.fix != "") == (level != "ok")


def test_webpush() -> None:
    assert levels(checks.check_webpush(WebPushFacts(False))) == ["skip"]
    ok = checks.check_webpush(WebPushFacts(True, "ok", "mailto:ops@example.com"))
    assert levels(ok) == ["ok", "ok"]
    assert "mailto:ops@example.com" in ok[1].message
    assert levels(checks.check_webpush(WebPushFacts(True, "none", "https://x"))) == ["ok", "ok"]
    broken = checks.check_webpush(WebPushFacts(True, "does not decrypt", "https://x"))
    assert levels(broken) == ["error", "ok"]
    plain = checks.check_webpush(WebPushFacts(True, "ok", "https://x", https=False))
    assert levels(plain) == ["ok", "ok", "warning"]
    assert "HTTPS" in plain[2].message
