"""GeoIP: city and country from an offline City database, in the app API's challenge context.

The tests write a tiny MaxMind-format City database with ``mmdb-writer`` (a test dependency);
if it cannot be built here, they are skipped with the reason.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend.config import Settings
from backend.errors import ConfigurationError
from backend.services.geoip import GeoIp, Location
from tests.support.api import ApiHarness
from tests.support.clock import FakeClock
from tests.support.geoip import write_database
from tests.support.process import Cli

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def city_db(tmp_path: Path) -> Path:
    return write_database(tmp_path / "test-city.mmdb")


@pytest.fixture
def geoip(city_db: Path) -> Iterator[GeoIp]:
    opened = GeoIp.open(city_db)
    assert opened is not None
    yield opened
    opened.close()


# -- the reader ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("203.0.113.9", Location("Berlin", "Germany")),
        ("198.51.100.4", Location("", "France")),
        ("2001:db8::1", Location("London", "United Kingdom")),
        ("192.0.2.1", None),  # in the database, but with neither city nor country
        ("10.1.2.3", None),  # private
        ("127.0.0.1", None),
        ("8.8.8.8", None),  # not in this database
        ("", None),
        ("not-an-address", None),
        ("00:11:22:33:44:55", None),  # a MAC address, as some gateways send in Calling-Station-Id
        ("203.0.113.9:443", None),
    ],
)
def test_locate(geoip: GeoIp, ip: str, expected: Location | None) -> None:
    assert geoip.locate(ip) == expected


def test_the_database_is_described(geoip: GeoIp, city_db: Path) -> None:
    assert (geoip.path, geoip.database_type) == (city_db, "GeoLite2-City")
    assert geoip.build_epoch > 0


def test_no_database_configured_means_no_reader() -> None:
    assert GeoIp.open(None) is None


def test_a_missing_file_is_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as info:
        GeoIp.open(tmp_path / "GeoLite2-City.mmdb")
    assert str(info.value) == (
        f"cannot read geoip_database {tmp_path / 'GeoLite2-City.mmdb'}: No such file or directory"
    )


@pytest.mark.parametrize("content", [b"", b"not a database\n" * 100])
def test_a_file_that_is_no_database_is_refused_clearly(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.mmdb"
    path.write_bytes(content)
    with pytest.raises(ConfigurationError, match="is not a MaxMind-format database"):
        GeoIp.open(path)


def test_a_country_database_is_refused_clearly(tmp_path: Path) -> None:
    path = write_database(tmp_path / "country.mmdb", "GeoLite2-Country")
    with pytest.raises(ConfigurationError) as info:
        GeoIp.open(path)
    assert "is a GeoLite2-Country database, not a City database" in str(info.value)


# -- the app API --------------------------------------------------------------------------------


@pytest.fixture
def api(settings: Settings, clock: FakeClock, city_db: Path) -> Iterator[ApiHarness]:
    with ApiHarness(settings.model_copy(update={"geoip_database": city_db}), clock) as harness:
        yield harness


def test_the_challenge_carries_its_context_with_city_and_country(
    api: ApiHarness, clock: FakeClock
) -> None:
    api.add_user("alice", number_matching=True)
    phone = api.device("alice")
    started = api.start(
        "alice",
        context={"client_name": "vpn-gateway", "client_ip": "203.0.113.9", "nas_identifier": "asa"},
    )
    private = api.start("alice", context={"client_name": "wifi", "client_ip": "10.0.0.7"})

    listed = {c["id"]: c for c in phone.pending()}
    one = phone.challenge(started["id"])

    assert listed[started["id"]] == one
    assert one["context"] == {
        "client_name": "vpn-gateway",
        "client_ip": "203.0.113.9",
        "nas_identifier": "asa",
        "time": one["created_at"],
        "city": "Berlin",
        "country": "Germany",
    }
    assert listed[private["id"]]["context"] | {"time": None} == {
        "client_name": "wifi",
        "client_ip": "10.0.0.7",
        "nas_identifier": "",
        "time": None,
        "city": None,
        "country": None,
    }
    # The number to match is shown at the sign-in only; the app is told that one is needed.
    assert started["number"] is not None
    assert one["number_required"] is True
    assert "number" not in json.dumps(one).replace("number_required", "")


@sqlite_only
def test_without_a_database_city_and_country_are_null(settings: Settings, clock: FakeClock) -> None:
    with ApiHarness(settings, clock) as api:
        api.add_user("alice")
        phone = api.device("alice")
        started = api.start("alice", context={"client_ip": "203.0.113.9"})
        context = phone.challenge(started["id"])["context"]
    assert (context["client_ip"], context["city"], context["country"]) == (
        "203.0.113.9",
        None,
        None,
    )


def test_openmfa_run_refuses_a_bad_database_with_one_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    broken = tmp_path / "GeoLite2-City.mmdb"
    broken.write_text("this is not a database")
    cli = Cli(home, OPENMFA_GEOIP_DATABASE=str(broken), OPENMFA_RADIUS_PORT="0")
    cli("db", "upgrade")

    error = cli.fails("run", "--port", "1")

    assert error == (
        f"openmfa: error: geoip_database {broken} is not a MaxMind-format database "
        "(expected a City database such as GeoLite2-City.mmdb)\n"
    )
