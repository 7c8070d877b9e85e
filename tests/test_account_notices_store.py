"""Migration 0006 (the ``account_notices`` outbox) on SQLite and PostgreSQL: the migrated
table is what the code declares, and it downgrades and upgrades again."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import create_async_engine

from alembic import command
from backend.store import migrations
from backend.store.tables import account_notices_t


def _columns(database_url: str) -> set[str] | None:
    def describe(sync_conn: Any) -> set[str] | None:
        found = inspect(sync_conn)
        if not found.has_table("account_notices"):
            return None
        return {c["name"] for c in found.get_columns("account_notices")}

    async def run() -> set[str] | None:
        engine = create_async_engine(database_url)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(describe)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def test_the_migrated_table_matches_the_code(database_url: str) -> None:
    assert _columns(database_url) == {c.name for c in account_notices_t.columns}


def test_0006_downgrades_and_upgrades_again(database_url: str) -> None:
    config = migrations.alembic_config(database_url)
    command.downgrade(config, "0005")
    assert _columns(database_url) is None
    command.upgrade(config, "head")
    assert _columns(database_url) == {c.name for c in account_notices_t.columns}
