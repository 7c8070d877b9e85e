"""Set-up shared by the benchmarks: a fresh PostgreSQL database, users with OATH tokens."""

from __future__ import annotations

import asyncio
from pathlib import Path


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


async def populate_oath(
    home: Path, database_url: str, users: int, push: bool = True
) -> tuple[str, dict[str, str]]:
    """An API token and ``users`` users (user000000 ...) with an OATH token each: the token
    and each user's seed. ``push``: as :meth:`backend.services.Services.open`."""
    from backend.config import load_settings
    from backend.domain.stepup import ADMINISTRATOR
    from backend.services import Services
    from backend.services.context import Actor

    admin = Actor("bench")
    settings = load_settings(home=home, database_url=database_url)
    services = await Services.open(settings, push=push)
    seeds: dict[str, str] = {}
    try:
        token = await services.tokens.create(admin, "bench")
        for i in range(users):
            name = f"user{i:06d}"
            await services.users.add(admin, name)
            seeds[name] = (await services.activation.enrol_oath(admin, ADMINISTRATOR, name)).seed
    finally:
        await services.close()
    return token, seeds
