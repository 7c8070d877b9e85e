"""Which database errors are "the server is gone or cannot take this now" (503, a new
connection) and which are a statement's own fault (backend/store/unavailable.py)."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError

from backend.store.database import Database
from backend.store.unavailable import is_read_only, is_unavailable


def wrapped(error: BaseException) -> DBAPIError:
    """As SQLAlchemy's asyncpg adapter hands it on: the adapter's error caused by asyncpg's,
    inside SQLAlchemy's (``.orig``)."""
    adapter = Exception(str(error))
    adapter.__cause__ = error
    return DBAPIError("SELECT 1", None, adapter)


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(111, "Connection refused"),
        ConnectionResetError(104, "Connection reset by peer"),
        TimeoutError(),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle"),
        asyncpg.exceptions.CannotConnectNowError("the database system is shutting down"),
        asyncpg.exceptions.AdminShutdownError("terminating connection"),
        asyncpg.exceptions.ReadOnlySQLTransactionError("cannot execute INSERT"),
        asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients"),
        asyncpg.exceptions.TargetServerAttributeNotMatched("none is read-write"),
        asyncpg.exceptions.InterfaceError(
            "cannot call Transaction.__aexit__(): the underlying connection is closed"
        ),
    ],
    ids=type,
)
def test_a_lost_or_refusing_server_is_unavailable(error: BaseException) -> None:
    assert is_unavailable(error)
    assert is_unavailable(wrapped(error))


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.exceptions.UniqueViolationError("duplicate key"),
        asyncpg.exceptions.UndefinedTableError('relation "x" does not exist'),
        ValueError("a bug"),
    ],
    ids=type,
)
def test_a_statements_own_fault_is_not(error: BaseException) -> None:
    assert not is_unavailable(error)
    assert not is_unavailable(wrapped(error))
    assert not is_unavailable(IntegrityError("INSERT", None, error))


def test_read_only_is_told_apart() -> None:
    assert is_read_only(wrapped(asyncpg.exceptions.ReadOnlySQLTransactionError("no")))
    assert not is_read_only(wrapped(asyncpg.exceptions.AdminShutdownError("bye")))


@pytest.mark.anyio
async def test_the_callers_own_os_error_inside_a_transaction_stays_itself(
    database_url: str,
) -> None:
    """A mail server refusing while a transaction is open is not the database's outage."""
    db = Database(database_url)

    async def send_mail_inside(block: Any) -> None:
        async with block() as conn:
            await conn.execute(text("SELECT 1"))
            raise ConnectionRefusedError(111, "the SMTP server refused")

    try:
        for block in (db.read, db.write):
            with pytest.raises(ConnectionRefusedError):
                await send_mail_inside(block)
    finally:
        await db.dispose()
