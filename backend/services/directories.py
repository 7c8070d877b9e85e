"""Directories (AD, OpenLDAP): stored settings, the sealed bind password, and one shared
reader per directory.

The bind password is sealed with the server key and bound to its row
(``directory-bind-password:<id>``), like RADIUS shared secrets; a :class:`DirectoryView` never
holds it. Every change and every refusal is audited. Readers (:class:`LdapDirectory` by
default) are built on first use, shared by every caller (the sync, password checks) and
replaced when the directory's settings change.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from backend.crypto import SecretBox
from backend.directory.config import AttributeMap, DirectoryConfig, Kind
from backend.directory.reader import DirectoryReader, TestReport
from backend.directory.settings import (
    DirectoryChanges,
    DirectorySettings,
    attribute_map,
    changed_settings,
    check_bind_password,
    check_name,
    merge,
    normalise,
    to_config,
)
from backend.errors import Conflict, InvalidDirectory, NotFound, OpenMFAError
from backend.services.audit import AuditLog
from backend.services.context import Actor, Clock
from backend.store.database import Database
from backend.store.tables import (
    directories_t,
    directory_syncs_t,
    radius_clients_t,
    users_t,
)

#: Builds the reader of one directory from its settings and bind password (tests pass fakes).
ReaderFactory = Callable[[DirectoryConfig, str], DirectoryReader]


def _ldap_reader(config: DirectoryConfig, bind_password: str) -> DirectoryReader:
    # Imported on first use: ldap3 is not loaded by commands that never reach a directory.
    from backend.directory.ldap import LdapDirectory

    return LdapDirectory(config, bind_password)


def password_purpose(directory_id: int) -> str:
    """Associated data binding a directory's bind password to its row."""
    return f"directory-bind-password:{directory_id}"


@dataclass(frozen=True, slots=True)
class CaCertificate:
    """One certificate of a directory's CA file, for ``directory show``."""

    subject: str
    not_after: datetime
    sha256: str


@dataclass(frozen=True, slots=True)
class DirectoryView:
    """One directory as administrators see it: every setting, never the bind password."""

    id: int
    name: str
    kind: Kind
    urls: tuple[str, ...]
    ca: tuple[CaCertificate, ...]  # empty: the system's trust store
    bind_dn: str
    base_dn: str
    user_filter: str
    group_dn: str
    admin_group_dn: str
    attributes: AttributeMap  # in effect (the kind's defaults where not overridden)
    connect_timeout: float
    search_timeout: float
    page_size: int
    sync_interval: int
    disable_percent: int
    disable_minimum: int
    users: int  # users tied to this directory
    radius_clients: int  # RADIUS clients checking passwords against it
    created_at: datetime
    updated_at: datetime


def _ca(pem: str | None) -> tuple[CaCertificate, ...]:
    if not pem:
        return ()
    return tuple(
        CaCertificate(
            subject=c.subject.rfc4514_string(),
            not_after=c.not_valid_after_utc,
            sha256=c.fingerprint(hashes.SHA256()).hex(),
        )
        for c in x509.load_pem_x509_certificates(pem.encode("ascii"))
    )


def _settings(row: Any) -> DirectorySettings:
    overrides = json.loads(row.attributes or "{}")
    return DirectorySettings(
        name=row.name,
        urls=tuple(json.loads(row.urls)),
        bind_dn=row.bind_dn,
        base_dn=row.base_dn,
        kind=row.kind,
        ca_pem=row.ca_pem or None,
        user_filter=row.user_filter,
        group_dn=row.group_dn,
        admin_group_dn=row.admin_group_dn,
        name_attribute=overrides.get("name", ""),
        email_attribute=overrides.get("email", ""),
        display_name_attribute=overrides.get("display_name", ""),
        phone_attribute=overrides.get("phone", ""),
        connect_timeout=float(row.connect_timeout),
        search_timeout=float(row.search_timeout),
        page_size=int(row.page_size),
        sync_interval=int(row.sync_interval),
        disable_percent=int(row.disable_percent),
        disable_minimum=int(row.disable_minimum),
    )


def _columns(s: DirectorySettings) -> dict[str, Any]:
    return {
        "kind": s.kind,
        "urls": json.dumps(list(s.urls)),
        "ca_pem": s.ca_pem,
        "bind_dn": s.bind_dn,
        "base_dn": s.base_dn,
        "user_filter": s.user_filter,
        "group_dn": s.group_dn,
        "admin_group_dn": s.admin_group_dn,
        "attributes": json.dumps(
            {
                "name": s.name_attribute,
                "email": s.email_attribute,
                "display_name": s.display_name_attribute,
                "phone": s.phone_attribute,
            },
            sort_keys=True,
        ),
        "connect_timeout": s.connect_timeout,
        "search_timeout": s.search_timeout,
        "page_size": s.page_size,
        "sync_interval": s.sync_interval,
        "disable_percent": s.disable_percent,
        "disable_minimum": s.disable_minimum,
    }


@dataclass(slots=True)
class _Cached:
    """A shared reader, the ``updated_at`` of the settings it was built from, and when that
    was last compared with the database (monotonic seconds)."""

    reader: DirectoryReader
    updated_at: datetime
    checked: float


class DirectoryService:
    """Add, change, list, test and remove directories; hand out their shared readers."""

    def __init__(
        self,
        db: Database,
        box: SecretBox,
        audit: AuditLog,
        clock: Clock,
        reader_factory: ReaderFactory | None = None,
        freshness: float = 5.0,
    ) -> None:
        self._db = db
        self._box = box
        self._audit = audit
        self._clock = clock
        self._factory: ReaderFactory = reader_factory or _ldap_reader
        self._freshness = freshness
        self._readers: dict[int, _Cached] = {}
        self._lock = asyncio.Lock()

    # -- reading --------------------------------------------------------------------------------

    async def _row(self, conn: AsyncConnection, name: str) -> Any:
        key = check_name(name).casefold()
        row = (
            await conn.execute(select(directories_t).where(directories_t.c.name_key == key))
        ).first()
        if row is None:
            raise NotFound(f"no directory named {name!r}")
        return row

    async def _ties(self, conn: AsyncConnection, directory_id: int) -> tuple[int, int]:
        users = (
            await conn.execute(
                select(func.count())
                .select_from(users_t)
                .where(users_t.c.directory_id == directory_id)
            )
        ).scalar_one()
        clients = (
            await conn.execute(
                select(func.count())
                .select_from(radius_clients_t)
                .where(radius_clients_t.c.directory_id == directory_id)
            )
        ).scalar_one()
        return int(users), int(clients)

    async def _view(self, conn: AsyncConnection, row: Any) -> DirectoryView:
        s = _settings(row)
        users, clients = await self._ties(conn, row.id)
        return DirectoryView(
            id=row.id,
            name=row.name,
            kind=row.kind,
            urls=s.urls,
            ca=_ca(s.ca_pem),
            bind_dn=s.bind_dn,
            base_dn=s.base_dn,
            user_filter=s.user_filter,
            group_dn=s.group_dn,
            admin_group_dn=s.admin_group_dn,
            attributes=attribute_map(s, row.kind),
            connect_timeout=s.connect_timeout,
            search_timeout=s.search_timeout,
            page_size=s.page_size,
            sync_interval=s.sync_interval,
            disable_percent=s.disable_percent,
            disable_minimum=s.disable_minimum,
            users=users,
            radius_clients=clients,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )

    async def get(self, name: str) -> DirectoryView:
        """One directory (any letter case); :class:`NotFound` if there is none."""
        async with self._db.read() as conn:
            return await self._view(conn, await self._row(conn, name))

    async def list(self) -> list[DirectoryView]:
        """Every directory, by name."""
        async with self._db.read() as conn:
            rows = (
                await conn.execute(select(directories_t).order_by(directories_t.c.name_key))
            ).all()
            return [await self._view(conn, row) for row in rows]

    async def _load(self, directory_id: int) -> tuple[DirectoryConfig, str, datetime]:
        async with self._db.read() as conn:
            row = (
                await conn.execute(select(directories_t).where(directories_t.c.id == directory_id))
            ).first()
        if row is None:
            raise NotFound(f"no directory with id {directory_id}")
        password = self._box.open(
            bytes(row.bind_password_enc), password_purpose(directory_id)
        ).decode("utf-8")
        return to_config(directory_id, _settings(row)), password, row.updated_at

    async def config(self, directory_id: int) -> DirectoryConfig:
        """The adapter's settings of one directory (no password); :class:`NotFound`."""
        config, _, _ = await self._load(directory_id)
        return config

    async def reader(self, directory_id: int) -> DirectoryReader:
        """The shared reader of one directory, built on first use. Callers never close it:
        :meth:`update`, :meth:`remove` and :meth:`close` do.

        A change made by another process (``openmfa directory set`` while ``openmfa run``
        serves) is noticed within ``freshness`` seconds: the stored ``updated_at`` is compared
        then, and a reader built from older settings is replaced (and closed)."""
        stale: DirectoryReader | None = None
        try:
            async with self._lock:
                cached = self._readers.get(directory_id)
                now = time.monotonic()
                if cached is not None and now - cached.checked < self._freshness:
                    return cached.reader
                if cached is not None:
                    if await self._updated_at(directory_id) == cached.updated_at:
                        cached.checked = now
                        return cached.reader
                    stale = self._readers.pop(directory_id).reader
                config, password, updated_at = await self._load(directory_id)
                reader = self._factory(config, password)
                self._readers[directory_id] = _Cached(reader, updated_at, now)
                return reader
        except NotFound:
            # Removed by another process: forget what was cached for it.
            async with self._lock:
                gone = self._readers.pop(directory_id, None)
            if gone is not None:
                stale = gone.reader
            raise
        finally:
            if stale is not None:
                await stale.close()

    async def _updated_at(self, directory_id: int) -> datetime:
        async with self._db.read() as conn:
            value = (
                await conn.execute(
                    select(directories_t.c.updated_at).where(directories_t.c.id == directory_id)
                )
            ).scalar()
        if value is None:
            raise NotFound(f"no directory with id {directory_id}")
        return value  # type: ignore[no-any-return]

    async def _forget_reader(self, directory_id: int) -> None:
        async with self._lock:
            cached = self._readers.pop(directory_id, None)
        if cached is not None:
            await cached.reader.close()

    async def close(self) -> None:
        """Close every cached reader (server shutdown, end of a command)."""
        async with self._lock:
            cached, self._readers = list(self._readers.values()), {}
        for entry in cached:
            await entry.reader.close()

    # -- changing -------------------------------------------------------------------------------

    async def _refused(self, actor: Actor, action: str, name: str, exc: OpenMFAError) -> None:
        await self._audit.record(actor, action, exc.type, detail=f"{name}: {exc.detail}"[:500])

    async def _audited(
        self, actor: Actor, action: str, name: str, work: Callable[[], Awaitable[Any]]
    ) -> Any:
        try:
            return await work()
        except OpenMFAError as exc:
            await self._refused(actor, action, name, exc)
            raise

    async def _detect(self, settings: DirectorySettings, password: str) -> Kind:
        """Connect and read the root DSE to tell AD from plain LDAP."""
        probe = self._factory(to_config(0, settings, kind=settings.kind or "ldap"), password)
        detect = getattr(probe, "detect", None)
        try:
            if detect is None:
                raise InvalidDirectory("this directory cannot be detected: give --kind ad|ldap")
            _, kind, _ = await detect()
            return kind  # type: ignore[no-any-return]
        finally:
            await probe.close()

    async def add(
        self, actor: Actor, settings: DirectorySettings, bind_password: str
    ) -> DirectoryView:
        """A new directory; ``settings.kind`` None: detected now (connects and binds).

        :class:`Conflict` if the name is taken (in any case); :class:`InvalidDirectory` for a
        bad setting; :class:`DirectoryUnavailable` / :class:`DirectoryError` when detecting
        the kind fails."""

        async def work() -> DirectoryView:
            s = normalise(settings)
            password = check_bind_password(bind_password)
            if s.kind is None:
                async with self._db.read() as conn:
                    await self._check_free(conn, s.name)
                s = replace(s, kind=await self._detect(s, password))
            now = self._clock()
            try:
                async with self._db.write() as conn:
                    await self._check_free(conn, s.name)
                    directory_id = (
                        await conn.execute(
                            insert(directories_t)
                            .values(
                                name=s.name,
                                name_key=s.name.casefold(),
                                bind_password_enc=b"",  # sealed below, bound to the new id
                                created_at=now,
                                updated_at=now,
                                **_columns(s),
                            )
                            .returning(directories_t.c.id)
                        )
                    ).scalar_one()
                    await conn.execute(
                        update(directories_t)
                        .where(directories_t.c.id == directory_id)
                        .values(bind_password_enc=self._seal(directory_id, password))
                    )
                    await self._audit.add(
                        conn,
                        actor,
                        "directory.add",
                        "ok",
                        detail=f"{s.name} kind={s.kind} urls={','.join(s.urls)} "
                        f"base={s.base_dn} group={s.group_dn or '-'}"[:500],
                    )
                    return await self._view(conn, await self._row(conn, s.name))
            except IntegrityError as exc:
                raise Conflict(f"a directory named {s.name!r} already exists") from exc

        view: DirectoryView = await self._audited(actor, "directory.add", settings.name, work)
        return view

    async def update(
        self,
        actor: Actor,
        name: str,
        changes: DirectoryChanges,
        bind_password: str | None = None,
    ) -> DirectoryView:
        """Change some settings and/or the bind password; the others stay. The directory's
        cached reader is replaced. A change that changes nothing writes nothing."""

        async def work() -> DirectoryView:
            password = None if bind_password is None else check_bind_password(bind_password)
            async with self._db.write() as conn:
                row = await self._row(conn, name)
                current = _settings(row)
                new = normalise(merge(current, changes))
                changed = changed_settings(current, new)
                if password is not None:
                    old = self._box.open(bytes(row.bind_password_enc), password_purpose(row.id))
                    if old != password.encode("utf-8"):
                        changed.append("bind_password")
                if not changed:
                    await self._audit.add(
                        conn, actor, "directory.update", "unchanged", detail=row.name
                    )
                    return await self._view(conn, row)
                values = _columns(new)
                if password is not None:
                    values["bind_password_enc"] = self._seal(row.id, password)
                await conn.execute(
                    update(directories_t)
                    .where(directories_t.c.id == row.id)
                    .values(**values, updated_at=self._clock())
                )
                await self._audit.add(
                    conn,
                    actor,
                    "directory.update",
                    "ok",
                    detail=f"{row.name}: {', '.join(changed)}",
                )
                view = await self._view(conn, await self._row(conn, name))
            await self._forget_reader(view.id)
            return view

        result: DirectoryView = await self._audited(actor, "directory.update", name, work)
        return result

    async def remove(self, actor: Actor, name: str) -> None:
        """Forget a directory and its sync history. Refused (:class:`Conflict`) while users
        or RADIUS clients are tied to it: they would lose their password check."""

        async def work() -> None:
            async with self._db.write() as conn:
                row = await self._row(conn, name)
                users, clients = await self._ties(conn, row.id)
                if users or clients:
                    tied = []
                    if users:
                        tied.append(f"{users} user{'s' if users != 1 else ''}")
                    if clients:
                        tied.append(f"{clients} RADIUS client{'s' if clients != 1 else ''}")
                    raise Conflict(
                        f"the directory {row.name} still has {' and '.join(tied)} tied to it; "
                        "remove those users and move those clients to another primary first "
                        "(see docs/directory.md, 'Removing a directory')"
                    )
                await conn.execute(
                    delete(directory_syncs_t).where(directory_syncs_t.c.directory_id == row.id)
                )
                await conn.execute(delete(directories_t).where(directories_t.c.id == row.id))
                await self._audit.add(conn, actor, "directory.remove", "ok", detail=row.name)
                directory_id = int(row.id)
            await self._forget_reader(directory_id)

        await self._audited(actor, "directory.remove", name, work)

    async def test(self, actor: Actor, name: str) -> TestReport:
        """Connect, bind, count the selection (``openmfa directory test``); audited."""

        async def work() -> TestReport:
            view = await self.get(name)
            report = await (await self.reader(view.id)).test()
            await self._audit.record(
                actor,
                "directory.test",
                "ok",
                detail=f"{view.name}: {report.url} kind={report.kind} users={report.users} "
                f"admins={report.admins} seconds={report.seconds:.2f}",
            )
            return report

        report: TestReport = await self._audited(actor, "directory.test", name, work)
        return report

    # -- helpers --------------------------------------------------------------------------------

    def _seal(self, directory_id: int, password: str) -> bytes:
        return self._box.seal(password.encode("utf-8"), password_purpose(directory_id))

    async def _check_free(self, conn: AsyncConnection, name: str) -> None:
        taken = await conn.execute(
            select(directories_t.c.id).where(directories_t.c.name_key == name.casefold())
        )
        if taken.first() is not None:
            raise Conflict(f"a directory named {name!r} already exists")
