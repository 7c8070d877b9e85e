"""A tiny MaxMind-format City database written at test time with ``mmdb-writer`` (a test
dependency); a test that cannot build it is skipped, saying why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

# network -> the record a City database holds for it
NETWORKS: dict[str, dict[str, Any]] = {
    "203.0.113.0/24": {
        "city": {"geoname_id": 2950159, "names": {"en": "Berlin", "de": "Berlin"}},
        "country": {"geoname_id": 2921044, "iso_code": "DE", "names": {"en": "Germany"}},
    },
    "198.51.100.0/24": {  # country only, as for many addresses in the real databases
        "country": {"geoname_id": 3017382, "iso_code": "FR", "names": {"en": "France"}},
    },
    "2001:db8::/32": {
        "city": {"geoname_id": 2643743, "names": {"en": "London"}},
        "country": {"geoname_id": 2635167, "iso_code": "GB", "names": {"en": "United Kingdom"}},
    },
    "192.0.2.0/24": {"continent": {"code": "EU"}},  # neither city nor country
}


def write_database(path: Path, database_type: str = "GeoLite2-City") -> Path:
    """A City (or other) database holding NETWORKS; skips the test if it cannot be built."""
    try:
        from mmdb_writer import MMDBWriter
        from netaddr import IPSet

        writer = MMDBWriter(
            ip_version=6,
            ipv4_compatible=True,
            database_type=database_type,
            languages=["en", "de"],
            description="OpenMFA test database",
        )
        for network, record in NETWORKS.items():
            writer.insert_network(IPSet([network]), record)
        writer.to_db_file(str(path))
    except Exception as exc:  # an import error or a writer failure: skip, saying why (-ra)
        pytest.skip(f"cannot build the test GeoIP database with mmdb-writer: {exc!r}")
    return path
