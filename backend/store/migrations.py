"""Schema migrations through Alembic (the scripts live in ``backend/migrations/``).

Upgrades are all or nothing (see :func:`upgrade`); commands that find the schema missing,
half-made or at another revision say which (:func:`schema_problem`).

Alembic is imported only to migrate: every ``openmfa`` command checks the schema on start,
and importing Alembic for that cost ~0.2 s of each command's ~1 s. The check compares the
database's revision with :data:`SCHEMA_REVISION`; a test keeps that equal to Alembic's head.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import inspect, make_url, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from backend.errors import DatabaseError

if TYPE_CHECKING:
    from alembic.config import Config

# Inside the package, so that a wheel carries its migrations. They once lived in a top-level
# ``alembic/`` folder, which an installed wheel did not contain: the same relative path then
# named the installed Alembic library itself.
SCRIPT_LOCATION = Path(__file__).resolve().parent.parent / "migrations"
#: The newest migration, the schema this code works with (see the module docstring).
SCHEMA_REVISION = "0015"


def alembic_config(url: str, script_location: Path = SCRIPT_LOCATION) -> Config:
    """An Alembic config pointing at our scripts (or ``script_location``) and ``url``."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(script_location))
    config.attributes["url"] = url
    return config


def upgrade(url: str, revision: str = "head", script_location: Path = SCRIPT_LOCATION) -> None:
    """Bring the schema to ``revision`` (blocking; call outside the event loop), all or nothing.

    Every step runs in one transaction (``env.py``; SQLite's DDL is made transactional there
    too), so a failure leaves an existing database at its old revision. A new SQLite database
    is migrated in a temporary file beside the target and renamed into place only once
    complete: a failure leaves no file that later commands would find empty.
    """
    try:
        _upgrade(url, revision, script_location)
    except (DBAPIError, sqlite3.Error) as exc:
        reason = exc.orig if isinstance(exc, DBAPIError) else exc
        raise DatabaseError(f"the schema upgrade failed and changed nothing: {reason}") from exc


def _upgrade(url: str, revision: str, script_location: Path) -> None:
    from alembic import command

    path = sqlite_path(url)
    if path is None or _has_tables(path):
        command.upgrade(alembic_config(url, script_location), revision)
        return
    if not path.parent.is_dir():
        raise DatabaseError(f"the database directory {path.parent} does not exist")
    # mkstemp: mode 0600 (SQLite's -wal and -shm files take the database file's mode).
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".new")
    os.close(fd)
    scratch = Path(name)
    try:
        command.upgrade(
            alembic_config(str(make_url(url).set(database=name)), script_location), revision
        )
        os.replace(scratch, path)
    finally:
        for leftover in (scratch, Path(f"{name}-journal")):
            leftover.unlink(missing_ok=True)


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite ``url``; ``None`` for other databases and in-memory SQLite."""
    if not url.startswith("sqlite"):
        return None
    database = make_url(url).database
    if not database or database == ":memory:":
        return None
    return Path(database)


def _has_tables(path: Path) -> bool:
    """Whether the SQLite file at ``path`` exists and holds any table (read-only look)."""
    if not path.exists() or path.stat().st_size == 0:
        return False
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return (
            conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table'").fetchone() is not None
        )
    finally:
        conn.close()


def head_revision() -> str:
    """The newest migration script (read from the scripts, through Alembic)."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config("")).get_current_head()
    if head is None:
        raise RuntimeError("no migrations found")
    return head


async def schema_problem(conn: AsyncConnection) -> str | None:
    """What is wrong with the schema for this code, with the fix; ``None`` when it is current."""

    def table_names(sync_conn: object) -> set[str]:
        return set(inspect(sync_conn).get_table_names())

    tables = await conn.run_sync(table_names)
    current = await current_revision(conn) if "alembic_version" in tables else None
    if current == SCHEMA_REVISION:
        return None
    if current is not None and current not in _known_revisions():
        return (
            f"the database schema is at {current}, which this version does not know: a newer "
            "version of OpenMFA migrated it; run that version, or restore the backup taken "
            "before the upgrade"
        )
    if current is not None:
        return (
            f"the database schema is at {current}, this version needs {SCHEMA_REVISION}; "
            "run `openmfa db upgrade`"
        )
    if not tables - {"alembic_version"}:
        return "the database is empty (no schema yet); run `openmfa db upgrade`"
    return (
        "the database has tables but no schema version: a migration that stopped halfway "
        "(older versions could leave one) or another program's database; restore it from a "
        "backup, or move it aside and run `openmfa db upgrade` to start afresh"
    )


def _known_revisions() -> set[str]:
    """The revisions of the shipped scripts, from their file names (``0005_web.py``): a
    directory listing, so that commands still need not import Alembic."""
    return {p.name.split("_", 1)[0] for p in (SCRIPT_LOCATION / "versions").glob("*.py")}


async def current_revision(conn: AsyncConnection) -> str | None:
    """The revision the database is at, or ``None`` for an empty database."""

    def has_version_table(sync_conn: object) -> bool:
        return bool(inspect(sync_conn).has_table("alembic_version"))

    if not await conn.run_sync(has_version_table):
        return None
    return (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
