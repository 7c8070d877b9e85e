"""The async engine and the two kinds of transaction the services use.

SQLite (the embedded default) runs in WAL mode with ``synchronous=NORMAL`` and a busy timeout,
so ``openmfa`` commands can write while the server runs. Write transactions start with
``BEGIN IMMEDIATE``: a deferred transaction that reads first and writes later fails at once
with "database is locked" when another connection wrote in between, while an immediate one
waits its turn on the busy timeout. PostgreSQL needs none of this.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from backend.errors import DatabaseError
from backend.store.tables import meta_t

_WRITE = "openmfa_write"


def _sqlite_path(url: str) -> Path | None:
    database = make_url(url).database
    if not database or database == ":memory:":
        return None
    return Path(database)


def create_engine(url: str, busy_timeout_ms: int = 5000, pool_size: int = 10) -> AsyncEngine:
    """An async engine with the settings each backend needs."""
    if not url.startswith("sqlite"):
        return create_async_engine(
            url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True
        )
    path = _sqlite_path(url)
    if path is not None and not path.parent.is_dir():
        raise DatabaseError(f"the database directory {path.parent} does not exist")
    engine = create_async_engine(url, pool_size=pool_size, max_overflow=0, pool_timeout=30)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin (see module doc).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        immediate = connection.get_execution_options().get(_WRITE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


class Database:
    """Owns the engine; hands out read and write transactions."""

    def __init__(self, url: str, busy_timeout_ms: int = 5000, pool_size: int = 10) -> None:
        self.url = url
        self.engine = create_engine(url, busy_timeout_ms, pool_size)
        self._writer = self.engine.execution_options(**{_WRITE: True})

    @property
    def is_sqlite(self) -> bool:
        """True on the embedded default."""
        return self.engine.dialect.name == "sqlite"

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A read-only transaction (rolled back at the end)."""
        try:
            async with self.engine.connect() as conn:
                yield conn
        except (OperationalError, sqlite3.OperationalError) as exc:
            raise _database_error(exc) from exc

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A transaction that commits when the block ends without an exception."""
        try:
            async with self._writer.begin() as conn:
                yield conn
        except (OperationalError, sqlite3.OperationalError) as exc:
            raise _database_error(exc) from exc

    async def get_meta(self, key: str) -> str | None:
        """One value of the ``meta`` table."""
        async with self.read() as conn:
            row = (await conn.execute(select(meta_t.c.value).where(meta_t.c.key == key))).first()
        return None if row is None else str(row[0])

    async def dispose(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()


def _database_error(exc: Exception) -> DatabaseError:
    message = str(exc.orig if isinstance(exc, DBAPIError) else exc)
    if "readonly" in message or "read-only" in message:
        return DatabaseError("the database is read-only; check the file's owner and mode")
    if "unable to open" in message:
        return DatabaseError("the database file cannot be opened; check OPENMFA_HOME")
    if "no such table" in message:
        return DatabaseError("the database schema is missing; run `openmfa db upgrade`")
    return DatabaseError(f"database error: {message}")
