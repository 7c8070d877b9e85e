"""The upgrade path from the previous release: a database at its schema (revision 0005, the
last before issue 13's 0006-0008) with users, a TOTP device, its replay state, a gateway token
and audit rows in it is brought to head by the ``openmfa db upgrade`` command; the data is
intact (the same code is still refused as a replay, the next one is accepted) and the server
starts on it. SQLite and PostgreSQL.

The old-schema database is made by writing the data through today's services and migrating
down to 0005 with the shipped downgrades, which drop exactly the columns and tables that
0006-0008 add.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from alembic import command
from sqlalchemy.ext.asyncio import create_async_engine

from backend.config import Settings
from backend.domain import totp
from backend.domain.stepup import ADMINISTRATOR
from backend.services import Services
from backend.services.context import Actor, SignInContext
from backend.store import migrations
from tests.support.clock import FakeClock
from tests.support.process import Cli, ServerProcess, free_port

PREVIOUS_RELEASE = "0005"
ADMIN = Actor("test:admin")


async def _write_data(settings: Settings, clock: FakeClock) -> tuple[str, str, int]:
    """Alice with a TOTP device that has just accepted ``code``; the seed and audit count."""
    services = await Services.open(settings, clock=clock)
    try:
        await services.users.add(ADMIN, "alice")
        await services.users.add(ADMIN, "bob")
        oath = await services.activation.enrol_oath(ADMIN, ADMINISTRATOR, "alice")
        await services.tokens.create(ADMIN, "vpn-gateway")
        code = totp.current_code(oath.seed, clock())
        assert (await services.otp.verify(ADMIN, "alice", code, SignInContext())).accepted
        audited = len(await services.audit.query(limit=1000))
        return oath.seed, code, audited
    finally:
        await services.close()


async def _revision(settings: Settings) -> str | None:
    engine = create_async_engine(settings.resolved_database_url)
    try:
        async with engine.connect() as conn:
            return await migrations.current_revision(conn)
    finally:
        await engine.dispose()


def test_a_database_of_the_previous_release_upgrades_with_its_data(
    settings: Settings, clock: FakeClock, tmp_path: Path
) -> None:
    seed, used_code, audited = asyncio.run(_write_data(settings, clock))
    url = settings.resolved_database_url
    command.downgrade(migrations.alembic_config(url), PREVIOUS_RELEASE)
    assert asyncio.run(_revision(settings)) == PREVIOUS_RELEASE

    env = {} if settings.uses_sqlite else {"OPENMFA_DATABASE_URL": url}
    cli = Cli(tmp_path, **env)
    assert cli("db", "upgrade").stdout.startswith(f"database at {migrations.SCHEMA_REVISION}:")
    assert cli("db", "current").stdout.strip() == migrations.SCHEMA_REVISION

    async def check() -> None:
        services = await Services.open(settings, clock=clock)
        try:
            names = [s.user.name for s in await services.users.list()]
            assert names == ["alice", "bob"]
            (device,) = await services.devices.list_for_user("alice")
            assert device.state == "active"
            assert [t.name for t in await services.tokens.list()] == ["vpn-gateway"]
            assert len(await services.audit.query(limit=1000)) >= audited
            replay = await services.otp.verify(ADMIN, "alice", used_code, SignInContext())
            assert (replay.accepted, replay.reason) == (False, "replayed")
            clock.advance(30)
            fresh = await services.otp.verify(
                ADMIN, "alice", totp.current_code(seed, clock()), SignInContext()
            )
            assert (fresh.accepted, fresh.reason) == (True, "ok")
        finally:
            await services.close()

    asyncio.run(check())

    with ServerProcess(tmp_path, free_port(), env) as server:
        assert httpx.get(server.url + "/readyz", timeout=5).status_code == 200
        assert server.terminate() == 0
