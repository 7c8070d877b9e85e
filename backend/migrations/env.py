"""Alembic environment: runs migrations on the async engine for SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

from alembic import context
from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from backend.store.database import postgres_engine
from backend.store.tables import metadata
from backend.store.urls import is_postgres

config = context.config
url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _transactional_sqlite_ddl(engine: AsyncEngine) -> None:
    """Make SQLite's DDL part of the migration's one transaction.

    The sqlite3 module opens a transaction only before INSERT/UPDATE/DELETE, so CREATE, ALTER
    and DROP would each commit at once and a failing migration would leave half its changes
    behind. SQLite itself runs DDL in transactions: we issue the BEGIN ourselves (the recipe
    in SQLAlchemy's SQLite dialect documentation).
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _no_implicit_transactions(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN")


async def _run_async() -> None:
    # PostgreSQL: the node's own engine factory, which opens connections host by host with
    # a timeout each (a multi-host URL whose first host hangs must still migrate).
    engine = postgres_engine(url) if is_postgres(url) else create_async_engine(url)
    if engine.dialect.name == "sqlite":
        _transactional_sqlite_ddl(engine)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(url=url, target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_async())
