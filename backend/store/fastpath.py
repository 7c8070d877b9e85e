"""Raw-SQL transactions for the hot paths, with group commit on SQLite.

Measured here, SQLAlchemy costs 0.2-0.3 ms per Core statement and ~1 ms per async round trip
through aiosqlite, against ~0.03 ms for a raw sqlite3 statement (see docs/performance.md). The
few statements of an OTP verification therefore run as plain SQL inside a *job*: a function
of a :class:`Tx` that reads, decides and writes, and is run in one transaction.

* SQLite: every job goes to one writer thread with its own sqlite3 connection. Jobs that queue
  up while a batch runs form the next batch: one ``BEGIN IMMEDIATE`` ... ``COMMIT`` for all of
  them (group commit), each job inside its own savepoint so one job's failure rolls back only
  its own writes. No caller hears its answer before the batch's COMMIT returned. The batch
  holds the same in-process lock as :meth:`Database.write`, so the two never contend on
  SQLite's busy handler (which sleeps in milliseconds).
* Reads that must be cheap (the API token and challenge lookups of every long-poll slice) go
  to :class:`SqliteReader` instead: its own thread and connection, batched the same way but in
  a plain ``BEGIN`` (a WAL snapshot), so they never queue behind writes or hold the write lock.
  Measured with 10,000 held requests, reads on the writer thread put the phone's answer behind
  some 200 reads a second and pushed its p99 past 20 ms (docs/performance.md).
* PostgreSQL: the job runs in a transaction on a connection of a plain asyncpg pool (SQLAlchemy's
  adapter doubled the cost per statement here); the job's synchronous calls are bridged to
  asyncpg with SQLAlchemy's greenlet helpers, the same way its own asyncio dialects work. The
  server handles concurrency; asyncpg caches the prepared statements per connection. The code
  check does not use a job there: :meth:`PostgresJobs.statement` runs its two single
  statements, each its own transaction (see :mod:`backend.services.otp`).

SQL is written once with ``?`` placeholders; :class:`AsyncpgTx` renumbers them for asyncpg.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from sqlalchemy.util import await_only, greenlet_spawn

from backend.errors import DatabaseError
from backend.store.connect import DEFAULT_CONNECT_TIMEOUT, connect
from backend.store.unavailable import is_read_only, is_unavailable

if TYPE_CHECKING:  # loaded by PostgresJobs only: SQLite set-ups and commands never need it
    import asyncpg

T = TypeVar("T")
log = logging.getLogger("openmfa.store")
Row = tuple[Any, ...]
_SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"  # the format SQLAlchemy's SQLite DateTime stores
MAX_BATCH = 256


class Tx(Protocol):
    """One open transaction, as seen by a job."""

    def one(self, sql: str, *params: Any) -> Row | None:
        """The first row, or ``None``."""

    def all(self, sql: str, *params: Any) -> list[Row]:
        """Every row."""

    def run(self, sql: str, *params: Any) -> int:
        """Execute a write; the number of rows it touched."""

    def time(self, value: datetime) -> Any:
        """A timestamp as this database takes it as a parameter."""

    def read_time(self, value: Any) -> datetime | None:
        """A stored timestamp as an aware UTC datetime."""


Job = Callable[[Tx], T]


def required(value: datetime | None, column: str) -> datetime:
    """A timestamp read from a NOT NULL column (``read_time`` allows NULL in general)."""
    if value is None:
        raise DatabaseError(f"{column} is NULL in the database; it never should be")
    return value


class SqliteTx:
    """A job's view of the writer thread's sqlite3 connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def one(self, sql: str, *params: Any) -> Row | None:
        row: Row | None = self._conn.execute(sql, params).fetchone()
        return row

    def all(self, sql: str, *params: Any) -> list[Row]:
        return list(self._conn.execute(sql, params).fetchall())

    def run(self, sql: str, *params: Any) -> int:
        return self._conn.execute(sql, params).rowcount

    def time(self, value: datetime) -> str:
        return value.astimezone(UTC).strftime(_SQLITE_TIME)

    def read_time(self, value: Any) -> datetime | None:
        if value is None:
            return None
        return datetime.strptime(str(value), _SQLITE_TIME).replace(tzinfo=UTC)


_PLACEHOLDER = re.compile(r"\?")
_NUMBERED: dict[str, str] = {}


def numbered(sql: str) -> str:
    """``?`` placeholders as asyncpg's ``$1, $2, ...`` (cached)."""
    converted = _NUMBERED.get(sql)
    if converted is None:
        counter = iter(range(1, 1000))
        converted = _PLACEHOLDER.sub(lambda _: f"${next(counter)}", sql)
        _NUMBERED[sql] = converted
    return converted


class AsyncpgTx:
    """A job's view of an asyncpg connection; each call is awaited through the greenlet bridge."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    def one(self, sql: str, *params: Any) -> Row | None:
        row = await_only(self._conn.fetchrow(numbered(sql), *params))
        return None if row is None else tuple(row)

    def all(self, sql: str, *params: Any) -> list[Row]:
        return [tuple(r) for r in await_only(self._conn.fetch(numbered(sql), *params))]

    def run(self, sql: str, *params: Any) -> int:
        status: str = await_only(self._conn.execute(numbered(sql), *params))
        # "UPDATE 1", "INSERT 0 1", "DELETE 3": the count is the last word.
        tail = status.rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    def time(self, value: datetime) -> datetime:
        return value.astimezone(UTC)

    def read_time(self, value: Any) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a timestamp, got {type(value).__name__}")
        return value.astimezone(UTC)


async def _no_session_reset(conn: asyncpg.Connection) -> None:
    """The pool's reset on release, without asyncpg's default reset query.

    That query (``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``) is a round
    trip of its own on every release: a third of a code check's. These connections never
    hold session state (advisory locks are transaction-scoped, nothing LISTENs, SETs or
    opens cursors), and asyncpg still rolls back a transaction left open before calling this.
    """


class PostgresJobs:
    """Runs jobs on a plain asyncpg pool, one transaction each."""

    def __init__(
        self, dsn: str, pool_size: int, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    ) -> None:
        self._dsn = dsn
        self._pool_size = pool_size
        self.connect_timeout = connect_timeout
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()
        # Set before the pool opens (tests): every statement a pool connection sends is
        # appended here, BEGIN and COMMIT included (asyncpg's query logger).
        self.query_log: list[str] | None = None

    @property
    def dsn(self) -> str:
        """The asyncpg URL of the database (the outcome bus opens its LISTEN connection on it)."""
        return self._dsn

    def _log_query(self, record: Any) -> None:
        if self.query_log is not None:
            self.query_log.append(str(record.query))

    async def _init_connection(self, conn: asyncpg.Connection) -> None:
        if self.query_log is not None:
            conn.add_query_logger(self._log_query)

    async def _get_pool(self) -> asyncpg.Pool:
        import asyncpg

        async with self._opening:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(
                    self._dsn,
                    # No floor: with one, asyncpg reconnects in the background after a
                    # failover and logs a traceback per attempt; acquire connects anyway.
                    min_size=0,
                    max_size=self._pool_size,
                    init=self._init_connection,
                    # Host by host, each with its own timeout (backend/store/connect.py).
                    connect=functools.partial(connect, host_timeout=self.connect_timeout),
                    reset=_no_session_reset,
                )
        return self._pool

    async def run(
        self, job: Job[T], readonly: bool = False, lock: tuple[int, int] | None = None
    ) -> T:
        """Run ``job`` in a transaction of its own (``READ ONLY`` when ``readonly``).

        ``lock``: a transaction-scoped advisory lock (two int4 keys) taken before the job
        runs, sent with the BEGIN in one round trip: jobs with the same key run one at a time.
        """
        async with self._connection() as conn:
            if lock is None:
                async with conn.transaction(readonly=readonly):
                    result: T = await greenlet_spawn(job, AsyncpgTx(conn))
                    return result
            return await self._run_locked(conn, job, lock)

    async def statement(self, sql: str, *params: Any) -> list[Row]:
        """Run one statement (``?`` placeholders) in a transaction of its own: one round trip.

        No BEGIN/COMMIT: PostgreSQL runs a lone statement as its own transaction."""
        async with self._connection() as conn:
            return [tuple(row) for row in await conn.fetch(numbered(sql), *params)]

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; database failures in the block come out as ``_job_error``.

        A connection whose server refused a write as read-only is dropped
        (:func:`_drop_if_read_only`)."""
        import asyncpg  # loaded by _get_pool

        try:
            pool = await self._get_pool()
            async with pool.acquire() as conn:
                try:
                    yield conn
                except BaseException as exc:
                    _drop_if_read_only(conn, exc)
                    raise
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise _job_error(exc) from exc
        except Exception as exc:
            if is_unavailable(exc):
                raise _job_error(exc) from exc
            raise

    async def _run_locked(self, conn: asyncpg.Connection, job: Job[T], lock: tuple[int, int]) -> T:
        first, second = (int(key) for key in lock)  # integers only: the script is not bound
        await conn.execute(f"BEGIN; SELECT pg_advisory_xact_lock({first}, {second})")
        try:
            result: T = await greenlet_spawn(job, AsyncpgTx(conn))
        except BaseException:
            await conn.execute("ROLLBACK")
            raise
        await conn.execute("COMMIT")
        return result

    async def close(self) -> None:
        """Close the pool."""
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


def _drop_if_read_only(conn: asyncpg.Connection, exc: BaseException) -> None:
    """Close a connection whose server refused a write as read-only (a standby, or an old
    primary fenced with default_transaction_read_only): the pool then opens a new one, which
    target_session_attrs=read-write sends to the primary. Dead connections need nothing:
    asyncpg's pool replaces a closed connection on the next acquire."""
    if is_read_only(exc):
        conn.terminate()


def _job_error(exc: BaseException) -> DatabaseError:
    """The error callers see: 503 in every case, worded for the two kinds."""
    if is_unavailable(exc):
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return DatabaseError(f"the database is unavailable: {first}")
    return DatabaseError(f"database error: {exc}")


class _SqliteBatches:
    """One thread, one connection, jobs batched into one transaction (group commit).

    Subclasses say how a batch's transaction begins and whether it takes the write lock.
    """

    _begin = "BEGIN"
    _thread_name = "sqlite"

    def __init__(
        self,
        path: Path,
        busy_timeout_ms: int,
        lock: asyncio.Lock | None,
        synchronous: str = "NORMAL",
    ) -> None:
        self._path = path
        self._synchronous = synchronous
        self._busy_timeout_ms = busy_timeout_ms
        self._lock = lock
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._thread_name)
        self._conn: sqlite3.Connection | None = None
        self._pending: list[tuple[Job[Any], asyncio.Future[Any]]] = []
        self._drainer: asyncio.Task[None] | None = None
        self.batches = 0
        self.jobs = 0

    async def run(self, job: Job[T]) -> T:
        """Run ``job`` in the next batch; its result once the batch has committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._pending.append((job, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            jobs = [job for job, _ in batch]
            try:
                if self._lock is None:
                    outcomes = await loop.run_in_executor(self._thread, self._run_batch, jobs)
                else:
                    async with self._lock:
                        outcomes = await loop.run_in_executor(self._thread, self._run_batch, jobs)
            except BaseException as exc:  # cancelled while waiting: fail the batch, not hang
                for _, future in batch:
                    if not future.done():
                        future.set_exception(DatabaseError(f"database job aborted: {exc!r}"))
                raise
            self._after_batch()
            for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            try:
                conn = sqlite3.connect(
                    self._path,
                    isolation_level=None,
                    check_same_thread=True,
                    timeout=self._busy_timeout_ms / 1000,
                )
            except sqlite3.Error as exc:
                raise DatabaseError(f"cannot open the database {self._path}: {exc}") from exc
            self._configure(conn)
            self._conn = conn
        return self._conn

    def _after_batch(self) -> None:
        """Called on the event loop after each batch (the writer starts checkpoints here)."""

    def _configure(self, conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        conn.execute("PRAGMA foreign_keys = ON")

    def _job_error(self, exc: sqlite3.Error) -> DatabaseError:
        return _sqlite_error(exc)

    def _run_batch(self, jobs: Sequence[Job[Any]]) -> list[tuple[bool, Any]]:
        try:
            conn = self._connection()
            conn.execute(self._begin)
        except (sqlite3.Error, DatabaseError) as exc:
            failure = exc if isinstance(exc, DatabaseError) else _sqlite_error(exc)
            return [(False, failure)] * len(jobs)
        tx = SqliteTx(conn)
        outcomes: list[tuple[bool, Any]] = []
        try:
            for job in jobs:
                conn.execute("SAVEPOINT job")
                try:
                    outcomes.append((True, job(tx)))
                except Exception as exc:  # one job's failure must not sink its batch
                    conn.execute("ROLLBACK TO job")
                    error: Exception = (
                        self._job_error(exc) if isinstance(exc, sqlite3.Error) else exc
                    )
                    outcomes.append((False, error))
                conn.execute("RELEASE job")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return [(False, _sqlite_error(exc))] * len(jobs)
        self.batches += 1
        self.jobs += len(jobs)
        return outcomes

    def close(self) -> None:
        """Close the connection in its own thread, then stop the thread."""

        def close_connection() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        self._thread.submit(close_connection).result()
        self._thread.shutdown(wait=True)


class SqliteWriter(_SqliteBatches):
    """Write jobs: ``BEGIN IMMEDIATE`` under the process's write lock.

    Its commits never checkpoint the WAL themselves: a checkpoint copies the log into the
    database file and fsyncs it, and the commit that happened to cross SQLite's threshold
    paid for it (measured: the p99 of a phone's answer with 10,000 pushes held fell from
    23-30 ms to 9 ms without them). The :class:`SqliteCheckpointer` does it beside the writes.
    """

    _begin = "BEGIN IMMEDIATE"
    _thread_name = "sqlite-writer"

    def __init__(
        self,
        path: Path,
        busy_timeout_ms: int,
        lock: asyncio.Lock,
        synchronous: str = "NORMAL",
        checkpointer: SqliteCheckpointer | None = None,
    ) -> None:
        super().__init__(path, busy_timeout_ms, lock, synchronous)
        self._checkpointer = checkpointer

    def _configure(self, conn: sqlite3.Connection) -> None:
        super()._configure(conn)
        if self._checkpointer is not None:
            conn.execute("PRAGMA wal_autocheckpoint = 0")

    def _after_batch(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.request()


class SqliteCheckpointer:
    """Checkpoints the WAL on a thread and connection of its own, at most once per
    ``interval`` seconds, when the writer asks after a batch (``PASSIVE``: it never waits
    for readers or writers, and copies what it can)."""

    def __init__(self, path: Path, busy_timeout_ms: int, interval: float = 1.0) -> None:
        self._path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._interval = interval
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-checkpoint")
        self._conn: sqlite3.Connection | None = None
        self._last = float("-inf")
        self.running: asyncio.Future[None] | None = None
        self.done = 0

    def request(self) -> asyncio.Future[None] | None:
        """Start a checkpoint unless one runs or the last began less than ``interval`` ago;
        the running one (for tests), if any."""
        loop = asyncio.get_running_loop()
        if (self.running is None or self.running.done()) and (
            loop.time() - self._last >= self._interval
        ):
            self._last = loop.time()
            self.running = loop.run_in_executor(self._thread, self._checkpoint)
        return self.running

    def _checkpoint(self) -> None:
        try:
            if self._conn is None:
                self._conn = sqlite3.connect(
                    self._path,
                    isolation_level=None,
                    check_same_thread=True,
                    timeout=self._busy_timeout_ms / 1000,
                )
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            self.done += 1
        except sqlite3.Error as exc:  # the next write asks again; the log grows meanwhile
            log.warning("WAL checkpoint failed: %s", exc)

    def close(self) -> None:
        """Wait for a running checkpoint, close the connection, stop the thread."""

        def close_connection() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        self._thread.submit(close_connection).result()
        self._thread.shutdown(wait=True)


class SqliteReader(_SqliteBatches):
    """Read-only jobs on a connection of their own: a WAL snapshot, no write lock.

    ``query_only`` turns a job that writes by mistake into an error instead of a write that
    bypasses the write lock.
    """

    _thread_name = "sqlite-reader"

    def __init__(self, path: Path, busy_timeout_ms: int) -> None:
        super().__init__(path, busy_timeout_ms, None)

    def _configure(self, conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA query_only = ON")

    def _job_error(self, exc: sqlite3.Error) -> DatabaseError:
        if "readonly" in str(exc):  # query_only, not the file: a bug in the job, say so
            return DatabaseError(f"a read-only job tried to write: {exc}")
        return _sqlite_error(exc)


def _sqlite_error(exc: sqlite3.Error) -> DatabaseError:
    message = str(exc)
    if "readonly" in message:
        return DatabaseError("the database is read-only; check the file's owner and mode")
    return DatabaseError(f"database error: {message}")
