"""Schema migrations through Alembic (the scripts live in ``backend/migrations/``).

Alembic is imported only to migrate: every ``openmfa`` command checks the schema on start,
and importing Alembic for that cost ~0.2 s of each command's ~1 s. The check compares the
database's revision with :data:`SCHEMA_REVISION`; a test keeps that equal to Alembic's head.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncConnection

if TYPE_CHECKING:
    from alembic.config import Config

# Inside the package, so that a wheel carries its migrations. They once lived in a top-level
# ``alembic/`` folder, which an installed wheel did not contain: the same relative path then
# named the installed Alembic library itself.
SCRIPT_LOCATION = Path(__file__).resolve().parent.parent / "migrations"
#: The newest migration, the schema this code works with (see the module docstring).
SCHEMA_REVISION = "0008"


def alembic_config(url: str) -> Config:
    """An Alembic config pointing at our scripts and ``url``."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    config.attributes["url"] = url
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (blocking; call outside the event loop)."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def head_revision() -> str:
    """The newest migration script (read from the scripts, through Alembic)."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config("")).get_current_head()
    if head is None:
        raise RuntimeError("no migrations found")
    return head


async def current_revision(conn: AsyncConnection) -> str | None:
    """The revision the database is at, or ``None`` for an empty database."""

    def has_version_table(sync_conn: object) -> bool:
        return bool(inspect(sync_conn).has_table("alembic_version"))

    if not await conn.run_sync(has_version_table):
        return None
    return (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
