"""A directory that answers binds from a table, and the rows a sync would leave: for tests of
the directory password (primary ldap, the portal sign-in) that need no LDAP server. It speaks
the :class:`~backend.directory.reader.DirectoryReader` interface."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from sqlalchemy import insert, update

from backend.directory import reader as directory_reader
from backend.directory.entries import DirectoryEntry
from backend.directory.reader import BindOutcome, BindResult
from backend.services import Services
from backend.services.context import Actor
from backend.store.tables import directories_t, users_t

ADMIN = Actor("test:admin")


@dataclass
class FakeReader:
    """Answers binds from a table: user name -> (password, outcome for the right password).

    Records every call, so a test can tell that a password never reached the directory."""

    users: dict[str, tuple[str, BindOutcome]] = field(default_factory=dict)
    down: bool = False
    calls: list[tuple[str, str, str | None]] = field(default_factory=list)

    async def test(self) -> directory_reader.TestReport:
        return directory_reader.TestReport("ldaps://fake", "ad", "fake", len(self.users), 0, 0.0)

    async def user_pages(self) -> AsyncIterator[list[DirectoryEntry]]:
        yield []

    async def authenticate(
        self, user_name: str, password: str, *, external_id: str | None = None
    ) -> BindResult:
        self.calls.append((user_name, password, external_id))
        if self.down:
            return BindResult("unavailable", detail="ldaps://fake: timed out")
        if not password:
            return BindResult("empty-password")
        known = self.users.get(user_name)
        if known is None:
            return BindResult("no-such-user")
        if password != known[0]:
            return BindResult("wrong-password", detail="data 52e")
        return BindResult(known[1])

    async def close(self) -> None:
        pass


@dataclass
class FakeDirectories:
    """``services.directories`` as far as the password check uses it."""

    readers: dict[int, FakeReader]

    async def reader(self, directory_id: int) -> FakeReader:
        return self.readers[directory_id]


async def add_directory(services: Services, name: str) -> int:
    now = services.clock()
    async with services.db.write() as conn:
        return int(
            (
                await conn.execute(
                    insert(directories_t)
                    .values(
                        name=name,
                        name_key=name.casefold(),
                        kind="ad",
                        urls=json.dumps(["ldaps://127.0.0.1:1"]),
                        bind_dn="CN=svc,DC=corp,DC=example",
                        bind_password_enc=b"",
                        base_dn="DC=corp,DC=example",
                        attributes="{}",
                        connect_timeout=1.0,
                        search_timeout=1.0,
                        page_size=500,
                        sync_interval=3600,
                        disable_percent=10,
                        disable_minimum=5,
                        created_at=now,
                        updated_at=now,
                    )
                    .returning(directories_t.c.id)
                )
            ).scalar_one()
        )


async def add_directory_user(
    services: Services,
    name: str,
    directory_id: int,
    *,
    local_password: str | None = None,
    admin: bool = False,
) -> None:
    """A user as a sync creates it (tied by external id); ``local_password``: a stale local
    hash, which must never be used for a directory user."""
    await services.users.add(ADMIN, name, password=local_password, is_admin=admin)
    async with services.db.write() as conn:
        await conn.execute(
            update(users_t)
            .where(users_t.c.name_key == name.casefold())
            .values(directory_id=directory_id, external_id=f"guid-{name}")
        )
