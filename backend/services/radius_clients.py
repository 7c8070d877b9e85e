"""RADIUS clients (the gateways that talk to the bridge): stored settings and the document
the bridges fetch.

Shared secrets are sealed with the server key and bound to their row. Every change bumps the
``meta`` row ``radius_clients_revision`` in the same transaction, so a bridge that polls with
``If-None-Match`` learns of a change within one poll, and of nothing else. The document is the
only place secrets leave the database in clear text: to a token of scope ``bridge``.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from backend.crypto import SecretBox
from backend.domain.names import object_name
from backend.domain.radius import (
    ClientChanges,
    ClientSettings,
    UpstreamSettings,
    changed_settings,
    is_short_secret,
    merge,
    normalise,
    parse_network,
)
from backend.errors import BadRequest, Conflict, InvalidRadiusClient, NotFound
from backend.services.audit import AuditLog
from backend.services.context import Actor, Clock
from backend.store.database import Database
from backend.store.tables import directories_t, meta_t, radius_clients_t
from radius_vocabulary.audit import BRIDGE_AUDIT_ACTIONS, BRIDGE_AUDIT_REFUSALS

REVISION_KEY = "radius_clients_revision"


def secret_purpose(client_id: int) -> str:
    """Associated data binding a client's shared secret to its row."""
    return f"radius-secret:{client_id}"


def upstream_secret_purpose(client_id: int) -> str:
    """Associated data binding the upstream server's secret to its client's row."""
    return f"radius-upstream-secret:{client_id}"


@dataclass(frozen=True, slots=True)
class UpstreamView:
    host: str
    port: int
    timeout: float
    secret_bytes: int
    secret_short: bool


@dataclass(frozen=True, slots=True)
class RadiusClientRecord:
    """One client as administrators see it: every setting, secrets only by their length."""

    id: int
    name: str
    addresses: tuple[str, ...]
    secret_bytes: int
    secret_short: bool
    mode: str
    primary: str
    upstream: UpstreamView | None
    require_message_authenticator: bool
    failmode: str
    unenrolled: str
    push_timeout: float
    prompt: str
    name_format: str
    realm_map: tuple[tuple[str, str], ...]
    exempt_users: tuple[str, ...]
    exempt_networks: tuple[str, ...]
    password_separator: str
    reply_attributes: tuple[tuple[str, str], ...]
    number_matching: str
    directory: str | None  # primary ldap: the directory whose passwords it checks
    created_at: datetime
    updated_at: datetime
    radsec_fingerprints: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ClientsDocument:
    """What a bridge fetches: the revision and every client, secrets in clear text."""

    revision: str
    clients: list[dict[str, Any]]


def _record(row: Any, s: ClientSettings) -> RadiusClientRecord:
    upstream = None
    if s.upstream is not None:
        upstream = UpstreamView(
            s.upstream.host,
            s.upstream.port,
            s.upstream.timeout,
            len(s.upstream.secret.encode()),
            is_short_secret(s.upstream.secret),
        )
    return RadiusClientRecord(
        id=row.id,
        name=row.name,
        addresses=s.addresses,
        secret_bytes=len(s.secret.encode()),
        secret_short=is_short_secret(s.secret),
        mode=s.mode,
        primary=s.primary,
        upstream=upstream,
        require_message_authenticator=s.require_message_authenticator,
        failmode=s.failmode,
        unenrolled=s.unenrolled,
        push_timeout=s.push_timeout,
        prompt=s.prompt,
        name_format=s.name_format,
        realm_map=s.realm_map,
        exempt_users=s.exempt_users,
        exempt_networks=s.exempt_networks,
        password_separator=s.password_separator,
        reply_attributes=s.reply_attributes,
        number_matching=s.number_matching,
        directory=s.directory,
        created_at=row.created_at,
        updated_at=row.updated_at,
        radsec_fingerprints=s.radsec_fingerprints,
    )


def _document_entry(name: str, s: ClientSettings) -> dict[str, Any]:
    """One CLIENT of the bridge contract (docs/radius-clients.md)."""
    entry = _udp_entry(name, s)
    entry["radsec_fingerprints"] = list(s.radsec_fingerprints)
    if not s.secret:
        entry["secret"] = None  # RadSec only: the bridge matches no datagram to it
    return entry


def _udp_entry(name: str, s: ClientSettings) -> dict[str, Any]:
    return {
        "name": name,
        "addresses": list(s.addresses),
        "secret": s.secret,
        "mode": s.mode,
        "primary": s.primary,
        "upstream": None
        if s.upstream is None
        else {
            "host": s.upstream.host,
            "port": s.upstream.port,
            "secret": s.upstream.secret,
            "timeout": s.upstream.timeout,
        },
        "require_message_authenticator": s.require_message_authenticator,
        "failmode": s.failmode,
        "unenrolled": s.unenrolled,
        "push_timeout": s.push_timeout,
        "prompt": s.prompt,
        "user_names": {"format": s.name_format, "realm_map": dict(s.realm_map)},
        "exempt_users": list(s.exempt_users),
        "exempt_networks": list(s.exempt_networks),
        "password_separator": s.password_separator,
        "reply_attributes": [list(pair) for pair in s.reply_attributes],
        "number_matching": s.number_matching,
        # For the operator reading the document: the bridge does no LDAP itself, it sends the
        # password with the client's name to /gateway/v1/password/verify.
        "directory": s.directory,
    }


def _clients_query() -> Any:
    """Clients by name, each with the name of its directory (primary ldap)."""
    return (
        select(radius_clients_t, directories_t.c.name.label("directory_name"))
        .select_from(
            radius_clients_t.outerjoin(
                directories_t, directories_t.c.id == radius_clients_t.c.directory_id
            )
        )
        .order_by(radius_clients_t.c.name_key)
    )


async def _resolve_directory(
    conn: AsyncConnection, s: ClientSettings
) -> tuple[ClientSettings, int | None]:
    """The settings with the directory spelled as stored, and its id (by name, any case);
    refused when there is no such directory."""
    if s.directory is None:
        return s, None
    found = (
        await conn.execute(
            select(directories_t.c.id, directories_t.c.name).where(
                directories_t.c.name_key == s.directory.casefold()
            )
        )
    ).first()
    if found is None:
        raise InvalidRadiusClient(f"no directory named {s.directory!r}")
    return replace(s, directory=str(found.name)), int(found.id)


class RadiusClientService:
    """Add, change, list and remove RADIUS clients; every change audited and versioned."""

    def __init__(self, db: Database, box: SecretBox, audit: AuditLog, clock: Clock) -> None:
        self._db = db
        self._box = box
        self._audit = audit
        self._clock = clock

    # -- reading ------------------------------------------------------------------------------

    def _settings(self, row: Any) -> ClientSettings:
        upstream = None
        if row.upstream_host is not None:
            upstream = UpstreamSettings(
                host=row.upstream_host,
                port=int(row.upstream_port),
                timeout=float(row.upstream_timeout),
                secret=self._box.open(
                    bytes(row.upstream_secret_enc), upstream_secret_purpose(row.id)
                ).decode("utf-8"),
            )
        return ClientSettings(
            addresses=tuple(json.loads(row.addresses)),
            secret=self._box.open(bytes(row.secret_enc), secret_purpose(row.id)).decode("utf-8"),
            mode=row.mode,
            primary=row.primary_auth,
            upstream=upstream,
            require_message_authenticator=bool(row.require_message_authenticator),
            failmode=row.failmode,
            unenrolled=row.unenrolled,
            push_timeout=float(row.push_timeout),
            prompt=row.prompt,
            name_format=row.name_format,
            realm_map=tuple((k, v) for k, v in json.loads(row.realm_map).items()),
            exempt_users=tuple(json.loads(row.exempt_users)),
            exempt_networks=tuple(json.loads(row.exempt_networks)),
            password_separator=row.password_separator,
            reply_attributes=tuple((n, v) for n, v in json.loads(row.reply_attributes)),
            number_matching=row.number_matching,
            directory=row.directory_name,
            radsec_fingerprints=tuple(json.loads(row.radsec_fingerprints or "[]")),
        )

    async def _row(self, conn: AsyncConnection, name: str) -> Any:
        key = object_name(name, "client").casefold()
        row = (
            await conn.execute(_clients_query().where(radius_clients_t.c.name_key == key))
        ).first()
        if row is None:
            raise NotFound(f"no RADIUS client named {name!r}")
        return row

    async def get(self, name: str) -> RadiusClientRecord:
        """One client (any letter case); :class:`NotFound` if there is none."""
        async with self._db.read() as conn:
            row = await self._row(conn, name)
        return _record(row, self._settings(row))

    async def list(self) -> list[RadiusClientRecord]:
        """Every client, by name."""
        async with self._db.read() as conn:
            rows = (await conn.execute(_clients_query())).all()
        return [_record(r, self._settings(r)) for r in rows]

    async def revision(self) -> str:
        """The current revision of the clients document (cheap: one row)."""
        return await self._db.get_meta(REVISION_KEY) or "0"

    async def document(self) -> ClientsDocument:
        """The clients document with secrets decrypted, and its revision, read together."""
        async with self._db.read() as conn:
            revision = (
                await conn.execute(select(meta_t.c.value).where(meta_t.c.key == REVISION_KEY))
            ).scalar()
            rows = (await conn.execute(_clients_query())).all()
        return ClientsDocument(
            revision=str(revision or "0"),
            clients=[_document_entry(r.name, self._settings(r)) for r in rows],
        )

    async def fetch_document(self, actor: Actor) -> ClientsDocument:
        """:meth:`document` for a bridge, audited: the secrets left the database.

        Only full fetches come here; a poll answered "not modified" reads the revision alone.
        """
        document = await self.document()
        await self._audit.record(
            actor,
            "radius_clients.fetch",
            "ok",
            detail=f"revision={document.revision} clients={len(document.clients)}",
        )
        return document

    # -- changing -----------------------------------------------------------------------------

    async def add(self, actor: Actor, name: str, changes: ClientChanges) -> RadiusClientRecord:
        """A new client; :class:`Conflict` if the name (in any case) or an address is taken."""
        object_name(name, "client")
        settings = normalise(merge(None, changes))
        now = self._clock()
        try:
            async with self._db.write() as conn:
                taken = await conn.execute(
                    select(radius_clients_t.c.id).where(
                        radius_clients_t.c.name_key == name.casefold()
                    )
                )
                if taken.first() is not None:
                    raise Conflict(f"a RADIUS client named {name!r} already exists")
                await self._check_addresses(conn, settings, exclude_id=None)
                settings, directory_id = await _resolve_directory(conn, settings)
                client_id = (
                    await conn.execute(
                        insert(radius_clients_t)
                        .values(
                            name=name,
                            name_key=name.casefold(),
                            secret_enc=b"",  # sealed below, once the id it is bound to exists
                            created_at=now,
                            updated_at=now,
                            directory_id=directory_id,
                            **self._columns(settings, None),
                        )
                        .returning(radius_clients_t.c.id)
                    )
                ).scalar_one()
                await conn.execute(
                    update(radius_clients_t)
                    .where(radius_clients_t.c.id == client_id)
                    .values(**self._sealed(client_id, settings))
                )
                await self._bump_revision(conn)
                await self._audit.add(
                    conn,
                    actor,
                    "radius_client.add",
                    "ok",
                    detail=f"{name} mode={settings.mode} primary={settings.primary} "
                    + (f"directory={settings.directory} " if settings.directory else "")
                    + f"addresses={','.join(settings.addresses)}",
                )
                row = await self._row(conn, name)
        except IntegrityError as exc:
            raise Conflict(f"a RADIUS client named {name!r} already exists") from exc
        return _record(row, settings)

    async def update(
        self, actor: Actor, name: str, changes: ClientChanges
    ) -> tuple[RadiusClientRecord, Sequence[str]]:
        """Change some settings; returns the client and the names of what changed.

        A change that leaves everything as it was writes nothing and keeps the revision.
        """
        async with self._db.write() as conn:
            row = await self._row(conn, name)
            current = self._settings(row)
            settings, directory_id = await _resolve_directory(
                conn, normalise(merge(current, changes))
            )
            changed = changed_settings(current, settings)
            if not changed:
                await self._audit.add(
                    conn, actor, "radius_client.update", "unchanged", detail=row.name
                )
                return _record(row, current), []
            if "addresses" in changed:
                await self._check_addresses(conn, settings, exclude_id=row.id)
            await conn.execute(
                update(radius_clients_t)
                .where(radius_clients_t.c.id == row.id)
                .values(
                    **self._columns(settings, row.id),
                    directory_id=directory_id,
                    updated_at=self._clock(),
                )
            )
            await self._bump_revision(conn)
            await self._audit.add(
                conn,
                actor,
                "radius_client.update",
                "ok",
                detail=f"{row.name}: {', '.join(changed)}",
            )
            row = await self._row(conn, name)
        return _record(row, settings), changed

    async def remove(self, actor: Actor, name: str) -> None:
        """Forget a client: the bridges stop answering it within one poll."""
        async with self._db.write() as conn:
            row = await self._row(conn, name)
            await conn.execute(delete(radius_clients_t).where(radius_clients_t.c.id == row.id))
            await self._bump_revision(conn)
            await self._audit.add(conn, actor, "radius_client.remove", "ok", detail=row.name)

    async def record_bridge_decision(
        self, actor: Actor, action: str, user_name: str, detail: str
    ) -> None:
        """Audit a decision a bridge took alone (an exemption, a fail-safe accept, a request
        refused for a malformed attribute)."""
        if action not in BRIDGE_AUDIT_ACTIONS:
            raise BadRequest(f"action must be one of {', '.join(BRIDGE_AUDIT_ACTIONS)}")
        result = "reject" if action in BRIDGE_AUDIT_REFUSALS else "accept"
        await self._audit.record(actor, action, result, user_name.casefold(), detail)

    # -- helpers ------------------------------------------------------------------------------

    def _columns(self, s: ClientSettings, client_id: int | None) -> dict[str, Any]:
        values: dict[str, Any] = {
            "addresses": json.dumps(list(s.addresses)),
            "mode": s.mode,
            "primary_auth": s.primary,
            "upstream_host": s.upstream.host if s.upstream else None,
            "upstream_port": s.upstream.port if s.upstream else None,
            "upstream_timeout": s.upstream.timeout if s.upstream else None,
            "upstream_secret_enc": None,
            "require_message_authenticator": s.require_message_authenticator,
            "failmode": s.failmode,
            "unenrolled": s.unenrolled,
            "push_timeout": s.push_timeout,
            "prompt": s.prompt,
            "name_format": s.name_format,
            "realm_map": json.dumps(dict(s.realm_map), sort_keys=True),
            "exempt_users": json.dumps(list(s.exempt_users)),
            "exempt_networks": json.dumps(list(s.exempt_networks)),
            "password_separator": s.password_separator,
            "reply_attributes": json.dumps([list(p) for p in s.reply_attributes]),
            "number_matching": s.number_matching,
            "radsec_fingerprints": json.dumps(list(s.radsec_fingerprints)),
        }
        if client_id is not None:
            values.update(self._sealed(client_id, s))
        return values

    def _sealed(self, client_id: int, s: ClientSettings) -> dict[str, Any]:
        return {
            "secret_enc": self._box.seal(s.secret.encode("utf-8"), secret_purpose(client_id)),
            "upstream_secret_enc": None
            if s.upstream is None
            else self._box.seal(
                s.upstream.secret.encode("utf-8"), upstream_secret_purpose(client_id)
            ),
        }

    async def _check_addresses(
        self, conn: AsyncConnection, s: ClientSettings, exclude_id: int | None
    ) -> None:
        """A source address must name one client: the same network twice is refused.

        Overlapping networks of different sizes are allowed; the bridge picks the most
        specific one (longest prefix), as FreeRADIUS does.
        """
        mine = {parse_network(a): a for a in s.addresses}
        certificates = set(s.radsec_fingerprints)
        rows = (
            await conn.execute(
                select(
                    radius_clients_t.c.id,
                    radius_clients_t.c.name,
                    radius_clients_t.c.addresses,
                    radius_clients_t.c.secret_enc,
                    radius_clients_t.c.radsec_fingerprints,
                )
            )
        ).all()
        for row in rows:
            if row.id == exclude_id:
                continue
            taken_certificates = certificates & set(json.loads(row.radsec_fingerprints or "[]"))
            if taken_certificates:
                raise Conflict(
                    f"certificate {min(taken_certificates)} is already bound to the client "
                    f"{row.name!r}; a RadSec certificate must identify one client"
                )
            # A RadSec-only client (no secret) is found by its certificate, never by the
            # source address of a datagram: its addresses only restrict where it connects.
            if not s.secret or not self._box.open(bytes(row.secret_enc), secret_purpose(row.id)):
                continue
            for text in json.loads(row.addresses):
                taken = parse_network(text)
                if taken in mine:
                    raise Conflict(
                        f"{mine[taken]} is already an address of the client {row.name!r}; "
                        "a source address must identify one client"
                    )

    async def _bump_revision(self, conn: AsyncConnection) -> None:
        """A new revision, in the caller's transaction (locked on PostgreSQL: no lost bump)."""
        current = (
            await conn.execute(
                select(meta_t.c.value).where(meta_t.c.key == REVISION_KEY).with_for_update()
            )
        ).scalar()
        counter = 0
        if current is not None:
            head = str(current).split(".", 1)[0]
            counter = int(head) if head.isdigit() else 0
        # The random part: a database restored from a backup never hands out a revision a
        # bridge has already cached for other contents.
        revision = f"{counter + 1}.{secrets.token_hex(4)}"
        if current is None:
            await conn.execute(insert(meta_t).values(key=REVISION_KEY, value=revision))
        else:
            await conn.execute(
                update(meta_t).where(meta_t.c.key == REVISION_KEY).values(value=revision)
            )
