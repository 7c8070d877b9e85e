"""Opening asyncpg connections host by host, each host with its own timeout.

asyncpg takes a multi-host DSN but spends its one ``timeout`` on the whole list, host after
host: a first host that hangs (a frozen machine, a server that accepts and never answers, a
firewall dropping packets) eats all of it and the next host is never tried. Measured here: a
listener that never answers, listed first before a healthy primary, made every connection
fail after the full timeout. libpq gives each host ``connect_timeout`` of its own; this does
the same: one ``asyncpg.connect`` per host of the URL (``target_session_attrs`` checked on
each), in the order written, the first that works wins.

Everything that opens PostgreSQL connections goes through :func:`connect`: the SQLAlchemy
engine (``async_creator``), the hot-path pool and the outcome bus's LISTEN connection.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from backend.store.urls import asyncpg_dsn, parse

if TYPE_CHECKING:
    import asyncpg

#: Seconds per host when nothing else is configured (``db_connect_timeout_seconds``).
DEFAULT_CONNECT_TIMEOUT = 5.0


def host_dsns(dsn: str) -> list[str]:
    """One libpq DSN per host of ``dsn`` (user, database and options kept), in order."""
    parsed = parse(dsn)
    if len(parsed.hosts) <= 1:
        return [asyncpg_dsn(dsn)]
    return [
        asyncpg_dsn(
            f"postgresql://{parsed.userinfo(hide_password=False)}{host.netloc()}/"
            f"{parsed.database}{parsed.query_string(_attrs(parsed.query))}"
        )
        for host in parsed.hosts
    ]


def _attrs(query: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    # Several hosts without target_session_attrs mean read-write (backend/store/urls.py);
    # each single-host DSN must carry it explicitly, or a standby would be taken.
    if any(key == "target_session_attrs" for key, _ in query):
        return ()
    return (("target_session_attrs", "read-write"),)


async def connect(
    dsn: str, *args: Any, host_timeout: float = DEFAULT_CONNECT_TIMEOUT, **kwargs: Any
) -> asyncpg.Connection:
    """``asyncpg.connect`` to the first usable host of ``dsn``, ``host_timeout`` seconds per host.

    Extra arguments go to ``asyncpg.connect`` (asyncpg's pool passes its own). The last
    host's error is raised when none works."""
    import asyncpg

    candidates = host_dsns(dsn)
    last: BaseException | None = None
    for single in candidates:
        try:
            connection: asyncpg.Connection = await asyncpg.connect(
                single, *args, timeout=host_timeout, **kwargs
            )
            return connection
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # refused, hung, read-only, auth: the next host, as libpq
            last = exc
    assert last is not None  # noqa: S101 - host_dsns never returns an empty list
    raise last
