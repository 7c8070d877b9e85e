"""Deleting and renaming users through the service, on SQLite and PostgreSQL (the cascades
and the unique name key are the databases' own)."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from backend.errors import Conflict, UnknownUser
from backend.services import Services
from backend.services.context import Actor
from backend.store.tables import policies_t, web_sessions_t

pytestmark = pytest.mark.anyio
ADMIN = Actor("test:admin")


async def count(services: Services, table: object, *where: object) -> int:
    async with services.db.read() as conn:
        stmt = select(func.count()).select_from(table).where(*where)  # type: ignore[arg-type]
        return int((await conn.execute(stmt)).scalar_one())


async def test_delete_takes_sessions_and_overrides_and_keeps_the_audit(services: Services) -> None:
    await services.users.add(ADMIN, "root", is_admin=True)
    carol = await services.users.add(ADMIN, "carol")
    await services.policies.set(ADMIN, "require_pin", "true", "carol")
    await services.web_sessions.create("portal", "", carol.id)
    gone = await services.accounts.delete(ADMIN, "Carol")
    assert (gone.name, gone.devices, gone.cancelled) == ("carol", 0, 0)
    with pytest.raises(UnknownUser):
        await services.users.get("carol")
    assert await count(services, web_sessions_t, web_sessions_t.c.user_id == carol.id) == 0
    assert await count(services, policies_t, policies_t.c.scope == f"user:{carol.id}") == 0
    trail = [e.action for e in await services.audit.query("carol", None, None, 100)]
    assert trail[0] == "user.delete"
    assert "user.add" in trail
    with pytest.raises(Conflict, match="last administrator"):
        await services.accounts.delete(ADMIN, "root")


async def test_rename_is_unique_in_any_case(services: Services) -> None:
    await services.users.add(ADMIN, "carol")
    await services.users.add(ADMIN, "dave")
    with pytest.raises(Conflict, match="already exists"):
        await services.accounts.rename(ADMIN, "carol", "DAVE")
    renamed = await services.accounts.rename(ADMIN, "carol", "Erin")
    assert (renamed.name, renamed.name_key) == ("Erin", "erin")
    assert (await services.users.get("erin")).id == renamed.id
    with pytest.raises(UnknownUser):
        await services.users.get("carol")
