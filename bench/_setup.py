"""Set-up shared by the benchmarks: a fresh PostgreSQL database."""

from __future__ import annotations

import asyncio


def fresh_postgres(admin_url: str, name: str) -> str:
    """Create (or re-create) the database ``name`` beside ``admin_url``'s; its URL."""
    import asyncpg

    async def recreate() -> None:
        conn = await asyncpg.connect(admin_url.replace("+asyncpg", ""))
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(recreate())
    return admin_url.rsplit("/", 1)[0] + f"/{name}"
