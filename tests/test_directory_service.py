"""DirectoryService on SQLite and PostgreSQL: round trips, the bind password sealed at rest
and bound to its row, audit of changes and refusals, remove refused while users or RADIUS
clients are tied, cached readers replaced on update and closed on remove.

The reader here is a small fake speaking the DirectoryReader interface; the LDAP adapter
itself is tested against real servers in tests/test_directory_ldap.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from sqlalchemy import select, update

from backend.crypto import SecretBox
from backend.directory.config import DirectoryConfig, Kind
from backend.directory.entries import DirectoryEntry
from backend.directory.reader import BindResult, TestReport
from backend.directory.settings import DirectoryChanges, DirectorySettings
from backend.errors import Conflict, DirectoryUnavailable, InvalidDirectory, NotFound
from backend.services import Services
from backend.services.context import Actor
from backend.services.directories import DirectoryService, password_purpose
from backend.store.tables import audit_t, directories_t, users_t

ADMIN = Actor("test:admin")
PASSWORD = "S3rvice-Acc0unt-Passw0rd!"


@dataclass
class FakeReader:
    """Records its life; answers ``test`` and ``detect`` from fixed values."""

    config: DirectoryConfig
    password: str
    kind: Kind = "ad"
    fail: bool = False
    closed: bool = False
    built: list[FakeReader] = field(default_factory=list)

    async def test(self) -> TestReport:
        if self.fail:
            raise DirectoryUnavailable("no server of the directory answered: ldaps://dc1: refused")
        return TestReport(self.config.urls[0], self.kind, "fake", 3, 1, 0.01)

    async def detect(self) -> tuple[str, Kind, str]:
        return self.config.urls[0], self.kind, "fake"

    async def user_pages(self) -> AsyncIterator[list[DirectoryEntry]]:
        yield []

    async def authenticate(
        self, user_name: str, password: str, *, external_id: str | None = None
    ) -> BindResult:
        return BindResult("unavailable")

    async def close(self) -> None:
        self.closed = True


class Factory:
    def __init__(self, kind: Kind = "ad") -> None:
        self.kind = kind
        self.built: list[FakeReader] = []

    def __call__(self, config: DirectoryConfig, password: str) -> FakeReader:
        reader = FakeReader(config, password, self.kind)
        self.built.append(reader)
        return reader


def corp(**values: object) -> DirectorySettings:
    base: dict[str, object] = {
        "name": "corp",
        "urls": ("ldaps://dc1.corp.example", "ldaps://dc2.corp.example:3269"),
        "bind_dn": "CN=svc-openmfa,OU=Service,DC=corp,DC=example",
        "base_dn": "DC=corp,DC=example",
        "group_dn": "CN=VPN Users,OU=Groups,DC=corp,DC=example",
    }
    base.update(values)
    return DirectorySettings(**base)  # type: ignore[arg-type]


def with_fake(services: Services, kind: Kind = "ad") -> tuple[DirectoryService, Factory]:
    factory = Factory(kind)
    box: SecretBox = services.directories._box
    service = DirectoryService(services.db, box, services.audit, services.clock, factory)
    return service, factory


async def audit_rows(services: Services, action: str) -> list[tuple[str, str]]:
    async with services.db.read() as conn:
        rows = (
            await conn.execute(
                select(audit_t.c.result, audit_t.c.detail)
                .where(audit_t.c.action == action)
                .order_by(audit_t.c.id)
            )
        ).all()
    return [(r.result, r.detail) for r in rows]


@pytest.mark.anyio
async def test_add_detects_the_kind_and_seals_the_password(services: Services) -> None:
    service, factory = with_fake(services, kind="ad")
    view = await service.add(ADMIN, corp(), PASSWORD)
    assert view.kind == "ad"  # detected through the reader
    assert factory.built[0].closed  # the probe was closed
    assert view.urls == ("ldaps://dc1.corp.example", "ldaps://dc2.corp.example:3269")
    assert view.attributes.name == "sAMAccountName"
    assert view.users == 0
    assert view.radius_clients == 0
    assert PASSWORD not in repr(view)
    async with services.db.read() as conn:
        row = (await conn.execute(select(directories_t))).one()
    assert PASSWORD.encode() not in bytes(row.bind_password_enc)
    assert all(PASSWORD not in str(v) for v in row)
    box: SecretBox = services.directories._box
    assert box.open(bytes(row.bind_password_enc), password_purpose(row.id)) == PASSWORD.encode()
    # Bound to its row: the sealed value does not open as another directory's.
    with pytest.raises(Exception):  # noqa: B017, PT011 - the box's own error type
        box.open(bytes(row.bind_password_enc), password_purpose(row.id + 1))
    [(result, detail)] = await audit_rows(services, "directory.add")
    assert result == "ok"
    assert "kind=ad" in detail
    assert PASSWORD not in detail

    config = await service.config(view.id)
    assert config.kind == "ad"
    assert config.group_dn == view.group_dn
    reader = await service.reader(view.id)
    assert reader is await service.reader(view.id)  # cached, shared
    assert factory.built[-1].password == PASSWORD


@pytest.mark.anyio
async def test_add_refusals_are_audited(services: Services) -> None:
    service, _ = with_fake(services)
    await service.add(ADMIN, corp(kind="ldap"), PASSWORD)
    with pytest.raises(Conflict):
        await service.add(ADMIN, corp(name="CORP", kind="ldap"), PASSWORD)
    with pytest.raises(InvalidDirectory, match="anonymous"):
        await service.add(ADMIN, corp(name="other", kind="ldap"), "")
    with pytest.raises(InvalidDirectory, match="ldaps://"):
        await service.add(ADMIN, corp(name="other", urls=("http://dc1",)), PASSWORD)
    results = [r for r, _ in await audit_rows(services, "directory.add")]
    assert results == ["ok", "conflict", "invalid-directory", "invalid-directory"]


@pytest.mark.anyio
async def test_update_changes_settings_and_password_and_replaces_the_reader(
    services: Services,
) -> None:
    service, factory = with_fake(services)
    view = await service.add(ADMIN, corp(kind="ad"), PASSWORD)
    first = await service.reader(view.id)
    same = await service.update(ADMIN, "corp", DirectoryChanges(page_size=500))
    assert same.page_size == 500
    assert not factory.built[-1].closed  # nothing changed: reader kept
    changed = await service.update(
        ADMIN,
        "Corp",
        DirectoryChanges(user_filter="(department=Sales)", group_dn="", email_attribute="upn"),
        bind_password="N3w-Password!",
    )
    assert changed.user_filter == "(department=Sales)"
    assert changed.group_dn == ""
    assert changed.attributes.email == "upn"
    assert first.closed  # type: ignore[attr-defined]
    second = await service.reader(view.id)
    assert second is not first
    assert factory.built[-1].password == "N3w-Password!"
    updates = await audit_rows(services, "directory.update")
    assert updates[0][0] == "unchanged"
    assert updates[1][0] == "ok"
    assert "bind_password" in updates[1][1]
    assert "N3w-Password!" not in updates[1][1]
    with pytest.raises(InvalidDirectory):
        await service.update(ADMIN, "corp", DirectoryChanges(page_size=5000))
    with pytest.raises(NotFound):
        await service.update(ADMIN, "nope", DirectoryChanges(page_size=10))
    assert [r for r, _ in (await audit_rows(services, "directory.update"))[2:]] == [
        "invalid-directory",
        "not-found",
    ]


@pytest.mark.anyio
async def test_remove_is_refused_while_users_are_tied(services: Services) -> None:
    service, _ = with_fake(services)
    view = await service.add(ADMIN, corp(kind="ad"), PASSWORD)
    reader = await service.reader(view.id)
    await services.users.add(ADMIN, "alice", "", "", None, False)
    async with services.db.write() as conn:
        await conn.execute(
            update(users_t)
            .where(users_t.c.name == "alice")
            .values(directory_id=view.id, external_id="a2d3e0a4-1f43-4c8e-9d55-0f0a0a0a0a0a")
        )
    with pytest.raises(Conflict, match="1 user tied"):
        await service.remove(ADMIN, "corp")
    assert (await service.get("corp")).users == 1
    async with services.db.write() as conn:
        await conn.execute(update(users_t).values(directory_id=None, external_id=None))
    await service.remove(ADMIN, "corp")
    assert reader.closed  # type: ignore[attr-defined]
    with pytest.raises(NotFound):
        await service.get("corp")
    assert [r for r, _ in await audit_rows(services, "directory.remove")] == ["conflict", "ok"]


@pytest.mark.anyio
async def test_test_is_audited_both_ways(services: Services) -> None:
    service, factory = with_fake(services)
    view = await service.add(ADMIN, corp(kind="ad"), PASSWORD)
    report = await service.test(ADMIN, "corp")
    assert (report.users, report.admins, report.kind) == (3, 1, "ad")
    reader = await service.reader(view.id)
    reader.fail = True  # type: ignore[attr-defined]
    with pytest.raises(DirectoryUnavailable):
        await service.test(ADMIN, "corp")
    rows = await audit_rows(services, "directory.test")
    assert [r for r, _ in rows] == ["ok", "directory-unavailable"]
    await service.close()
    assert reader.closed  # type: ignore[attr-defined]
    del factory


@pytest.mark.anyio
async def test_list_and_the_services_container(services: Services) -> None:
    service, _ = with_fake(services)
    await service.add(ADMIN, corp(name="b-dir", kind="ldap"), PASSWORD)
    await service.add(ADMIN, corp(name="A-dir", kind="ad"), PASSWORD)
    assert [v.name for v in await service.list()] == ["A-dir", "b-dir"]
    assert [v.name for v in await services.directories.list()] == ["A-dir", "b-dir"]
    ldap = await service.get("b-dir")
    assert ldap.attributes.name == "uid"


@pytest.mark.anyio
async def test_a_change_made_by_another_process_replaces_the_cached_reader(
    services: Services,
) -> None:
    """``openmfa directory set`` runs in its own process while ``openmfa run`` serves: the
    server's cached reader must not keep the old password or settings."""
    factory = Factory()
    box: SecretBox = services.directories._box
    server = DirectoryService(
        services.db, box, services.audit, services.clock, factory, freshness=0.0
    )
    command, _ = with_fake(services)
    view = await command.add(ADMIN, corp(kind="ad"), PASSWORD)
    first = await server.reader(view.id)
    assert await server.reader(view.id) is first  # unchanged: kept
    services.clock.advance(60)  # type: ignore[attr-defined]
    await command.update(ADMIN, "corp", DirectoryChanges(page_size=42), "An0ther-password")
    second = await server.reader(view.id)
    assert second is not first
    assert first.closed  # type: ignore[attr-defined]
    assert second.config.page_size == 42  # type: ignore[attr-defined]
    assert second.password == "An0ther-password"  # type: ignore[attr-defined]
    await command.remove(ADMIN, "corp")
    with pytest.raises(NotFound):
        await server.reader(view.id)
    assert second.closed  # type: ignore[attr-defined]
    await server.close()
