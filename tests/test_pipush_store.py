"""Migration 0004 (privacyIDEA Authenticator tokens) on SQLite and PostgreSQL: the migrated
schema is what the code declares, it downgrades and upgrades again, and serials are unique."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from alembic import command
from sqlalchemy import inspect, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import create_async_engine

from backend.store import migrations
from backend.store.tables import devices_t, pipush_nonces_t


def _describe(sync_conn: Any) -> dict[str, Any]:
    found = inspect(sync_conn)
    return {
        "devices": {c["name"] for c in found.get_columns("devices")},
        "nonces": {c["name"] for c in found.get_columns("pipush_nonces")}
        if found.has_table("pipush_nonces")
        else None,
        "unique": {tuple(u["column_names"]) for u in found.get_unique_constraints("devices")},
    }


def _inspect(database_url: str) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        engine = create_async_engine(database_url)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(_describe)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def test_the_migrated_schema_matches_the_tables(database_url: str) -> None:
    found = _inspect(database_url)
    assert {c.name for c in devices_t.columns} <= found["devices"]
    assert found["nonces"] == {c.name for c in pipush_nonces_t.columns}
    assert ("serial",) in found["unique"]


def test_0004_downgrades_and_upgrades_again(database_url: str) -> None:
    config = migrations.alembic_config(database_url)
    command.downgrade(config, "0003")
    found = _inspect(database_url)
    assert found["nonces"] is None
    assert not {"serial", "server_key_enc", "app_lock"} & found["devices"]
    command.upgrade(config, "head")
    assert _inspect(database_url)["nonces"] is not None


def test_a_serial_names_one_device_and_other_devices_have_none(database_url: str) -> None:
    insert = text(
        "INSERT INTO devices (id, user_id, kind, name, platform, seed_enc, state, created_at, "
        "serial) VALUES (:id, 1, :kind, '', '', :seed, 'active', CURRENT_TIMESTAMP, :serial)"
    )

    async def run() -> None:
        engine = create_async_engine(database_url)
        try:
            async with engine.begin() as conn:
                await conn.execute(
                    text(
                        "INSERT INTO users (id, name_key, name, display_name, email, is_admin, "
                        "disabled, blocked, blocked_reason, pin_failures, otp_failures, "
                        "created_at) VALUES (1, 'a', 'a', '', '', false, false, false, '', 0, 0, "
                        "CURRENT_TIMESTAMP)"
                    )
                )
                for device_id in ("app1", "app2"):  # other kinds: no serial, no clash
                    await conn.execute(
                        insert, {"id": device_id, "kind": "app", "seed": b"x", "serial": None}
                    )
                await conn.execute(
                    insert, {"id": "pi1", "kind": "pipush", "seed": b"x", "serial": "S1"}
                )
                flags = (await conn.execute(text("SELECT app_lock FROM devices"))).all()
                assert [bool(row[0]) for row in flags] == [False, False, False]
            with pytest.raises((IntegrityError, DBAPIError)):
                async with engine.begin() as conn:
                    await conn.execute(
                        insert, {"id": "pi2", "kind": "pipush", "seed": b"x", "serial": "S1"}
                    )
        finally:
            await engine.dispose()

    asyncio.run(run())
