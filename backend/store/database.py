"""The async engine and the two kinds of transaction the services use.

SQLite (the embedded default) runs in WAL mode (``synchronous`` NORMAL by default, FULL on
request) with a busy timeout, so ``openmfa`` commands can write while the server runs.
Write transactions start with ``BEGIN IMMEDIATE``: a deferred transaction that reads first
and writes later fails at once with "database is locked" when another connection wrote in
between, while an immediate one waits its turn on the busy timeout. PostgreSQL needs none
of this.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import event, select
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from backend.errors import DatabaseError
from backend.store.connect import DEFAULT_CONNECT_TIMEOUT, connect
from backend.store.fastpath import (
    Job,
    PostgresJobs,
    Row,
    SqliteCheckpointer,
    SqliteReader,
    SqliteWriter,
    T,
)
from backend.store.tables import meta_t
from backend.store.unavailable import is_unavailable
from backend.store.urls import asyncpg_dsn
from backend.store.urls import connect_timeout as url_connect_timeout

_WRITE = "openmfa_write"


class Observer(Protocol):
    """Where a job's duration goes (a Prometheus histogram's child, see backend.metrics)."""

    def observe(self, amount: float) -> None:
        """Record one duration in seconds."""


def _sqlite_path(url: str) -> Path | None:
    database = make_url(url).database
    if not database or database == ":memory:":
        return None
    return Path(database)


def create_engine(
    url: str,
    busy_timeout_ms: int = 5000,
    pool_size: int = 10,
    synchronous: str = "normal",
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
) -> AsyncEngine:
    """An async engine with the settings each backend needs."""
    if not url.startswith("sqlite"):
        return postgres_engine(url, pool_size, connect_timeout)
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
        cursor.execute(f"PRAGMA synchronous = {_synchronous(synchronous)}")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        immediate = connection.get_execution_options().get(_WRITE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def postgres_engine(
    url: str, pool_size: int = 5, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
) -> AsyncEngine:
    """The engine on PostgreSQL, with connections dropped as soon as they are known dead.

    Connections are opened host by host, ``connect_timeout`` seconds each (libpq's
    ``connect_timeout`` in the URL wins; backend/store/connect.py), not by the dialect,
    which hands asyncpg the whole host list at once.

    No ``pool_pre_ping``: its ``SELECT 1`` per checkout measured ~0.3 ms CPU and 1.6-2.3 ms
    wall here, about doubling a short request. Instead a checkout first asks asyncpg whether
    the server closed the socket while the connection sat in the pool (free: no round trip),
    and any error saying the server is gone (backend/store/unavailable.py) counts as a
    disconnect, which makes SQLAlchemy drop that connection and every other one opened
    before it: after a failover, only requests already in flight fail (with a 503)."""
    dsn = asyncpg_dsn(url)
    connect_timeout = url_connect_timeout(url) or connect_timeout

    async def connect_to_a_host() -> Any:
        return await connect(dsn, host_timeout=connect_timeout)

    engine = create_async_engine(
        url, pool_size=pool_size, max_overflow=pool_size, async_creator=connect_to_a_host
    )

    @event.listens_for(engine.sync_engine, "checkout")
    def _closed_by_server(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        if dbapi_connection.driver_connection.is_closed():
            raise DisconnectionError("the server closed this pooled connection")

    @event.listens_for(engine.sync_engine, "handle_error")
    def _unavailable_is_disconnect(context: ExceptionContext) -> None:
        # Read-only too: the session sits on a standby (or a fenced old primary); a new
        # connection goes through target_session_attrs to the primary.
        if is_unavailable(context.original_exception):
            context.is_disconnect = True

    return engine


class Database:
    """Owns the engine; hands out read and write transactions and runs hot-path jobs."""

    def __init__(
        self,
        url: str,
        busy_timeout_ms: int = 5000,
        pool_size: int = 10,
        synchronous: str = "normal",
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        self.url = url
        self.engine = create_engine(url, busy_timeout_ms, pool_size, synchronous, connect_timeout)
        self._writer = self.engine.execution_options(**{_WRITE: True})
        # One writer at a time inside this process: SQLite allows one anyway, and waiting on
        # an asyncio lock is far cheaper than SQLite's busy handler, which sleeps in ms steps.
        self._write_lock = asyncio.Lock() if self.is_sqlite else None
        path = _sqlite_path(url) if self.is_sqlite else None
        self._fast: SqliteWriter | None = None
        self._fast_reads: SqliteReader | None = None
        self._checkpointer: SqliteCheckpointer | None = None
        self._pg_jobs: PostgresJobs | None = None
        if path is not None and self._write_lock is not None:
            self._checkpointer = SqliteCheckpointer(path, busy_timeout_ms)
            self._fast = SqliteWriter(
                path,
                busy_timeout_ms,
                self._write_lock,
                _synchronous(synchronous),
                self._checkpointer,
            )
            self._fast_reads = SqliteReader(path, busy_timeout_ms)
        elif not self.is_sqlite:
            self._pg_jobs = PostgresJobs(
                asyncpg_dsn(url), pool_size, url_connect_timeout(url) or connect_timeout
            )
        # Set by backend.metrics for ``openmfa run``: (write jobs, read jobs). Commands leave
        # it unset and pay nothing.
        self.job_timers: tuple[Observer, Observer] | None = None

    @property
    def is_sqlite(self) -> bool:
        """True on the embedded default."""
        return self.engine.dialect.name == "sqlite"

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A read-only transaction (rolled back at the end)."""
        body = _Body()
        try:
            async with self.engine.connect() as conn:
                with body:
                    yield conn
        except (OperationalError, sqlite3.OperationalError) as exc:
            raise _database_error(exc) from exc
        except Exception as exc:
            if body.unavailable(exc):
                raise _unavailable(exc) from exc
            raise

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A transaction that commits when the block ends without an exception."""
        if self._write_lock is None:
            async with self._begin() as conn:
                yield conn
            return
        async with self._write_lock, self._begin() as conn:
            yield conn

    @asynccontextmanager
    async def _begin(self) -> AsyncIterator[AsyncConnection]:
        body = _Body()
        try:
            async with self._writer.begin() as conn:
                with body:
                    yield conn
        except (OperationalError, sqlite3.OperationalError) as exc:
            raise _database_error(exc) from exc
        except Exception as exc:
            if body.unavailable(exc):
                raise _unavailable(exc) from exc
            raise

    async def run_job(self, job: Job[T], lock: tuple[int, int] | None = None) -> T:
        """Run a raw-SQL job in a write transaction of its own (batched on SQLite).

        ``lock``: jobs with the same two keys run one at a time (a PostgreSQL advisory lock
        taken with the BEGIN; SQLite's one writer runs every job one at a time anyway)."""
        if self.job_timers is None:
            return await self._run_job(job, lock)
        # The wait for the writer (or a pool connection) is part of what a caller waits for.
        started = time.perf_counter()
        try:
            return await self._run_job(job, lock)
        finally:
            self.job_timers[0].observe(time.perf_counter() - started)

    async def _run_job(self, job: Job[T], lock: tuple[int, int] | None) -> T:
        if self._fast is not None:
            return await self._fast.run(job)
        if self._pg_jobs is not None:
            return await self._pg_jobs.run(job, lock=lock)
        raise DatabaseError("raw-SQL jobs need a file database (SQLite) or PostgreSQL")

    @property
    def postgres_jobs(self) -> PostgresJobs | None:
        """The raw-SQL pool on PostgreSQL (single statements, one round trip each); else None."""
        return self._pg_jobs

    async def run_statement(self, sql: str, *params: Any) -> list[Row]:
        """One statement in a transaction of its own, one round trip (PostgreSQL only)."""
        if self._pg_jobs is None:
            raise DatabaseError("single-statement transactions need PostgreSQL")
        if self.job_timers is None:
            return await self._pg_jobs.statement(sql, *params)
        started = time.perf_counter()
        try:
            return await self._pg_jobs.statement(sql, *params)
        finally:
            self.job_timers[0].observe(time.perf_counter() - started)

    async def run_read(self, job: Job[T]) -> T:
        """Run a raw-SQL job that only reads, beside the writes (a snapshot on SQLite)."""
        if self.job_timers is None:
            return await self._run_read(job)
        started = time.perf_counter()
        try:
            return await self._run_read(job)
        finally:
            self.job_timers[1].observe(time.perf_counter() - started)

    async def _run_read(self, job: Job[T]) -> T:
        if self._fast_reads is not None:
            return await self._fast_reads.run(job)
        if self._pg_jobs is not None:
            return await self._pg_jobs.run(job, readonly=True)
        raise DatabaseError("raw-SQL jobs need a file database (SQLite) or PostgreSQL")

    async def get_meta(self, key: str) -> str | None:
        """One value of the ``meta`` table."""
        async with self.read() as conn:
            row = (await conn.execute(select(meta_t.c.value).where(meta_t.c.key == key))).first()
        return None if row is None else str(row[0])

    async def dispose(self) -> None:
        """Close every pooled connection and the writer thread."""
        if self._fast is not None:
            self._fast.close()
        if self._fast_reads is not None:
            self._fast_reads.close()
        if self._checkpointer is not None:
            self._checkpointer.close()
        if self._pg_jobs is not None:
            await self._pg_jobs.close()
        await self.engine.dispose()


class _Body:
    """Tells a lost database apart from the caller's own errors inside a transaction block.

    Connecting, committing and rolling back are the database's doing: any sign of a server
    gone (an ``OSError`` from connecting included) is a 503. Inside the block only the
    driver's errors count: an ``OSError`` from, say, a mail server the caller talks to while
    the transaction is open stays what it is."""

    def __init__(self) -> None:
        self.raised: BaseException | None = None

    def __enter__(self) -> None:
        return None

    def __exit__(self, _type: object, exc: BaseException | None, _tb: object) -> None:
        self.raised = exc

    def unavailable(self, exc: BaseException) -> bool:
        """Whether ``exc``, escaping the transaction, means the database is unavailable."""
        if not is_unavailable(exc):
            return False
        if exc is not self.raised:
            return True  # from connecting, or from the COMMIT / ROLLBACK after the block
        return isinstance(exc, SQLAlchemyError) or type(exc).__module__.startswith("asyncpg")


def _synchronous(level: str) -> str:
    if level not in ("normal", "full"):
        raise ValueError(f"synchronous must be normal or full, not {level!r}")
    return level.upper()


def _unavailable(exc: Exception) -> DatabaseError:
    """A server that is gone or refuses for now (a failover, a restart): 503, try again."""
    message = str(exc.orig if isinstance(exc, DBAPIError) else exc).splitlines()[0:1]
    return DatabaseError(f"the database is unavailable: {''.join(message) or type(exc).__name__}")


def _database_error(exc: Exception) -> DatabaseError:
    if is_unavailable(exc):  # before the SQLite texts: PostgreSQL's 25006 says "read-only" too
        return _unavailable(exc)
    message = str(exc.orig if isinstance(exc, DBAPIError) else exc)
    if "readonly" in message or "read-only" in message:
        return DatabaseError("the database is read-only; check the file's owner and mode")
    if "unable to open" in message:
        return DatabaseError("the database file cannot be opened; check OPENMFA_HOME")
    if "no such table" in message:
        return DatabaseError("the database schema is missing; run `openmfa db upgrade`")
    return DatabaseError(f"database error: {message}")
