"""A migration that fails halfway leaves nothing half-made: a new SQLite database is not
created at all, an existing database (SQLite or PostgreSQL) stays at its old revision with
none of the failed step's changes, and commands name an empty or half-made schema as such.

The failure is real: a copy of the shipped scripts plus one revision that changes the schema
and then raises, run through the same :func:`migrations.upgrade` as ``openmfa db upgrade``.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import create_async_engine

from backend.config import Settings, load_settings
from backend.errors import DatabaseError
from backend.services import Services
from backend.store import migrations

FAILING_REVISION = '''"""Changes the schema, then fails (test only)."""

import sqlalchemy as sa
from alembic import op

revision = "0099"
down_revision = "{head}"


def upgrade() -> None:
    op.create_table("half_made", sa.Column("id", sa.Integer, primary_key=True))
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("half_made", sa.Integer, nullable=True))
    raise RuntimeError("this migration fails halfway")


def downgrade() -> None:
    pass
'''


@pytest.fixture
def failing_scripts(tmp_path: Path) -> Path:
    """The shipped migrations plus a failing one on top."""
    location = tmp_path / "failing-migrations"
    shutil.copytree(
        migrations.SCRIPT_LOCATION, location, ignore=shutil.ignore_patterns("__pycache__")
    )
    (location / "versions" / "0099_fails.py").write_text(
        FAILING_REVISION.format(head=migrations.SCHEMA_REVISION)
    )
    return location


async def _schema(url: str) -> tuple[set[str], set[str], str | None]:
    """Table names, the users table's columns, and the recorded revision."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:

            def read(sync_conn: object) -> tuple[set[str], set[str]]:
                found = inspect(sync_conn)
                tables = set(found.get_table_names())
                users = (
                    {c["name"] for c in found.get_columns("users")} if "users" in tables else set()
                )
                return tables, users

            tables, users = await conn.run_sync(read)
            return tables, users, await migrations.current_revision(conn)
    finally:
        await engine.dispose()


def test_a_new_sqlite_database_is_not_created_when_a_migration_fails(
    tmp_path: Path, failing_scripts: Path
) -> None:
    target = tmp_path / "data" / "openmfa.db"
    target.parent.mkdir()
    with pytest.raises(RuntimeError, match="fails halfway"):
        migrations.upgrade(f"sqlite+aiosqlite:///{target}", script_location=failing_scripts)
    assert list(target.parent.iterdir()) == []  # neither the database nor a temporary file


def test_a_new_sqlite_database_appears_only_complete(tmp_path: Path) -> None:
    target = tmp_path / "openmfa.db"
    migrations.upgrade(f"sqlite+aiosqlite:///{target}")
    assert [p.name for p in tmp_path.iterdir()] == ["openmfa.db"]
    assert target.stat().st_mode & 0o777 == 0o600
    with sqlite3.connect(target) as conn:
        (revision,) = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    conn.close()
    assert revision == migrations.SCHEMA_REVISION


def test_an_empty_file_left_by_an_older_version_is_migrated(tmp_path: Path) -> None:
    # `openmfa db upgrade` from a broken wheel created the file, then crashed.
    target = tmp_path / "openmfa.db"
    target.touch(mode=0o600)
    migrations.upgrade(f"sqlite+aiosqlite:///{target}")
    assert asyncio.run(_schema(f"sqlite+aiosqlite:///{target}"))[2] == migrations.SCHEMA_REVISION


def test_an_existing_database_stays_at_its_revision_when_a_migration_fails(
    database_url: str, failing_scripts: Path
) -> None:
    tables_before, users_before, _ = asyncio.run(_schema(database_url))
    with pytest.raises(RuntimeError, match="fails halfway"):
        migrations.upgrade(database_url, script_location=failing_scripts)
    tables, users, revision = asyncio.run(_schema(database_url))
    assert revision == migrations.SCHEMA_REVISION
    assert tables == tables_before  # no half_made table, no batch copy left behind
    assert users == users_before  # no half_made column


def test_a_migration_failing_from_scratch_leaves_an_empty_postgres_schema(
    postgres_url: str, failing_scripts: Path
) -> None:
    asyncio.run(_drop_everything(postgres_url))
    with pytest.raises(RuntimeError, match="fails halfway"):
        migrations.upgrade(postgres_url, script_location=failing_scripts)
    tables, _, revision = asyncio.run(_schema(postgres_url))
    assert (tables, revision) == (set(), None)


async def _drop_everything(url: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"), timeout=5)
    try:
        await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    finally:
        await conn.close()


def _settings(home: Path) -> Settings:
    return load_settings(config_file=None, home=home, public_url="http://127.0.0.1:8080")


def test_commands_call_an_empty_database_empty(tmp_path: Path) -> None:
    (tmp_path / "openmfa.db").touch()
    with pytest.raises(DatabaseError) as caught:
        asyncio.run(Services.open(_settings(tmp_path)))
    message = str(caught.value)
    assert "is empty" in message
    assert "run `openmfa db upgrade`" in message
    assert "nothing" not in message


def test_commands_call_a_half_made_database_half_made(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "openmfa.db") as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY)")
    conn.close()
    with pytest.raises(DatabaseError) as caught:
        asyncio.run(Services.open(_settings(tmp_path)))
    message = str(caught.value)
    assert "tables but no schema version" in message
    assert "backup" in message
    assert "nothing" not in message


def test_commands_call_a_newer_schema_newer(tmp_path: Path) -> None:
    migrations.upgrade(f"sqlite+aiosqlite:///{tmp_path / 'openmfa.db'}")
    with sqlite3.connect(tmp_path / "openmfa.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    conn.close()
    with pytest.raises(DatabaseError) as caught:
        asyncio.run(Services.open(_settings(tmp_path)))
    message = str(caught.value)
    assert "at 9999, which this version does not know" in message
    assert "restore the backup" in message
    assert "openmfa db upgrade" not in message  # it cannot migrate down


def test_every_script_file_is_named_after_its_revision() -> None:
    # Commands recognise a newer schema by the scripts' file names, without Alembic.
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(migrations.alembic_config(""))
    for script in scripts.walk_revisions():
        assert Path(script.path).name.startswith(f"{script.revision}_"), script.path
