"""Where a sign-in comes from: city and country from an offline GeoIP database (optional).

The database is a MaxMind-format *City* file (GeoLite2-City, GeoIP2-City, or one of your own
written with the same layout, e.g. mapping your office networks). It is opened once at start;
a file that cannot be read or is not a City database stops the start with a clear
:class:`ConfigurationError`. Lookups are local (no network), take microseconds, and never
raise: private, unknown or malformed addresses simply have no location.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from backend.errors import ConfigurationError

if TYPE_CHECKING:  # the readers load only where a database is configured (start-up time)
    import geoip2.database

log = logging.getLogger("openmfa.geoip")


class Location(NamedTuple):
    """City and country names (English); either may be empty, never both."""

    city: str
    country: str


class GeoIp:
    """A City database opened for lookups."""

    def __init__(self, reader: geoip2.database.Reader, path: Path) -> None:
        self._reader = reader
        self.path = path
        metadata = reader.metadata()
        self.database_type: str = metadata.database_type
        self.build_epoch: int = metadata.build_epoch

    @classmethod
    def open(cls, path: Path | None) -> GeoIp | None:
        """The database at ``path`` (``None`` when no database is configured)."""
        if path is None:
            return None
        import geoip2.database
        import maxminddb

        try:
            reader = geoip2.database.Reader(str(path))
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read geoip_database {path}: {exc.strerror or exc}"
            ) from exc
        except (maxminddb.InvalidDatabaseError, ValueError) as exc:
            raise ConfigurationError(
                f"geoip_database {path} is not a MaxMind-format database "
                "(expected a City database such as GeoLite2-City.mmdb)"
            ) from exc
        database_type = reader.metadata().database_type
        if "City" not in database_type:
            reader.close()
            raise ConfigurationError(
                f"geoip_database {path} is a {database_type} database, not a City database; "
                "use GeoLite2-City.mmdb or GeoIP2-City.mmdb"
            )
        return cls(reader, path)

    def locate(self, ip: str) -> Location | None:
        """City and country of ``ip``, or ``None`` when the database does not know it."""
        if not ip:
            return None
        import geoip2.errors  # loaded by open() already
        import maxminddb

        try:
            found = self._reader.city(ip)
        except (geoip2.errors.AddressNotFoundError, ValueError):
            return None  # unknown, private, or not an address (e.g. a MAC from Calling-Station-Id)
        except (maxminddb.InvalidDatabaseError, OSError) as exc:
            # A database damaged under us (replaced while mapped): no location, one log line.
            log.warning("GeoIP lookup failed: %s", exc)
            return None
        city = found.city.name or ""
        country = found.country.name or ""
        if not city and not country:
            return None
        return Location(city, country)

    def close(self) -> None:
        """Release the file."""
        self._reader.close()
