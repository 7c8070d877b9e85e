"""Deleting and renaming users (``openmfa user delete`` / ``openmfa user rename``).

A name is also a key outside the ``users`` table: RADIUS clients exempt users by name, so a
later user of a deleted or renamed user's name would inherit an exemption meant for someone
else. Both operations are refused while a client names the user; the operator edits the
client first. The audit trail is history and is never rewritten: entries keep the name the
user had at the time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Table, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from backend.domain.names import user_key
from backend.domain.policy import user_scope
from backend.errors import Conflict
from backend.services.audit import AuditLog
from backend.services.challenges import ChallengeService
from backend.services.context import Actor
from backend.store.database import Database
from backend.store.queries import UserRecord, load_user
from backend.store.tables import devices_t, fraud_reports_t, policies_t, radius_clients_t, users_t


@dataclass(frozen=True, slots=True)
class DeletedUser:
    """What went with a deleted user."""

    name: str
    devices: int
    cancelled: int


class AccountService:
    """Delete and rename users, audited."""

    def __init__(self, db: Database, challenges: ChallengeService, audit: AuditLog) -> None:
        self._db = db
        self._challenges = challenges
        self._audit = audit

    async def delete(self, actor: Actor, name: str) -> DeletedUser:
        """Delete a user and, by the database's cascades, their devices, challenges,
        activation codes, invitations, web sessions and fraud reports; their policy
        overrides too. Refused (:class:`Conflict`) for the last administrator, a user with
        open fraud reports, and a user a RADIUS client exempts by name."""
        async with self._db.read() as conn:
            await _check_deletable(conn, await load_user(conn, name))
        # Waiting gateways get "cancelled" now rather than a challenge that vanished.
        cancelled = await self._challenges.cancel_pending_for_user(actor, name, "user deleted")
        async with self._db.write() as conn:
            user = await load_user(conn, name)
            await _check_deletable(conn, user)  # again, in the deleting transaction
            devices = await _count(conn, devices_t, devices_t.c.user_id == user.id)
            await conn.execute(delete(policies_t).where(policies_t.c.scope == user_scope(user.id)))
            await conn.execute(delete(users_t).where(users_t.c.id == user.id))
            await self._audit.add(
                conn, actor, "user.delete", "ok", user.name_key, f"{devices} device(s)"
            )
        return DeletedUser(user.name, devices, cancelled)

    async def rename(self, actor: Actor, name: str, new_name: str) -> UserRecord:
        """Give a user a new (valid, unused in any case) name; only its case may stay."""
        new_key = user_key(new_name)
        try:
            async with self._db.write() as conn:
                user = await load_user(conn, name)
                await _check_not_exempt(conn, user, "rename")
                await conn.execute(
                    update(users_t)
                    .where(users_t.c.id == user.id)
                    .values(name=new_name, name_key=new_key)
                )
                await self._audit.add(
                    conn, actor, "user.rename", "ok", new_key, f"from {user.name}"
                )
                return await load_user(conn, new_name)
        except IntegrityError as exc:
            raise Conflict(f"a user named {new_name!r} already exists") from exc


async def _count(conn: AsyncConnection, table: Table, *where: ColumnElement[bool]) -> int:
    stmt = select(func.count()).select_from(table).where(*where)
    return int((await conn.execute(stmt)).scalar_one())


async def _check_deletable(conn: AsyncConnection, user: UserRecord) -> None:
    if user.is_admin:
        users = users_t.c
        others = await _count(
            conn, users_t, users.is_admin.is_(True), users.disabled.is_(False), users.id != user.id
        )
        if others == 0:
            raise Conflict(
                f"{user.name} is the last administrator; make another one first "
                "(`openmfa user add NAME --admin`)"
            )
    reports = fraud_reports_t.c
    open_reports = await _count(
        conn, fraud_reports_t, reports.user_id == user.id, reports.state == "open"
    )
    if open_reports:
        raise Conflict(
            f"{user.name} has {open_reports} open fraud report(s); review them first "
            f"(`openmfa fraud list --user {user.name}`)"
        )
    await _check_not_exempt(conn, user, "delete")


async def _check_not_exempt(conn: AsyncConnection, user: UserRecord, what: str) -> None:
    clients = radius_clients_t.c
    rows = (await conn.execute(select(clients.name, clients.exempt_users))).all()
    naming = sorted(row.name for row in rows if user.name_key in json.loads(row.exempt_users))
    if naming:
        raise Conflict(
            f"cannot {what} {user.name}: exempt on RADIUS client {', '.join(naming)} by name; "
            "take them off that list first (`openmfa client set NAME --exempt-user ...`)"
        )
