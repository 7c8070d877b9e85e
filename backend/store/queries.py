"""Small queries shared by several services."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from backend.domain import policy as policy_rules
from backend.domain.names import user_key
from backend.domain.policy import GLOBAL_SCOPE, Policy, user_scope
from backend.errors import UnknownUser
from backend.store.fastpath import Tx
from backend.store.tables import policies_t, users_t


@dataclass(frozen=True, slots=True)
class UserRecord:
    """One user as the services see it (hashes stay inside the services)."""

    id: int
    name: str
    name_key: str
    display_name: str
    email: str
    is_admin: bool
    disabled: bool
    blocked: bool
    blocked_reason: str
    has_password: bool
    has_pin: bool
    pin_hash: str | None
    pin_failures: int
    pin_locked_until: datetime | None
    otp_failures: int
    otp_locked_until: datetime | None
    last_sign_in_at: datetime | None
    created_at: datetime
    disabled_by: str = ""  # "admin", "directory" (a sync; see backend/directory/planner.py)
    disabled_reason: str = ""  # a sync's reason: disabled, expired or gone

    @property
    def state(self) -> str:
        """``disabled``, ``blocked`` or ``active``."""
        if self.disabled:
            return "disabled"
        return "blocked" if self.blocked else "active"


def user_from_row(row: Any) -> UserRecord:
    return UserRecord(
        id=row.id,
        name=row.name,
        name_key=row.name_key,
        display_name=row.display_name,
        email=row.email,
        is_admin=row.is_admin,
        disabled=row.disabled,
        blocked=row.blocked,
        blocked_reason=row.blocked_reason,
        has_password=row.password_hash is not None,
        has_pin=row.pin_hash is not None,
        pin_hash=row.pin_hash,
        pin_failures=row.pin_failures,
        pin_locked_until=row.pin_locked_until,
        otp_failures=row.otp_failures,
        otp_locked_until=row.otp_locked_until,
        last_sign_in_at=row.last_sign_in_at,
        created_at=row.created_at,
        disabled_by=row.disabled_by or "",
        disabled_reason=row.disabled_reason or "",
    )


async def find_user(conn: AsyncConnection, name: str) -> UserRecord | None:
    """Case-insensitive lookup; ``None`` when there is no such user."""
    row = (await conn.execute(select(users_t).where(users_t.c.name_key == user_key(name)))).first()
    return None if row is None else user_from_row(row)


async def load_user(conn: AsyncConnection, name: str) -> UserRecord:
    """Like :func:`find_user` but raises :class:`UnknownUser`."""
    user = await find_user(conn, name)
    if user is None:
        raise UnknownUser(f"no user named {name!r}")
    return user


async def load_user_by_id(conn: AsyncConnection, user_id: int) -> UserRecord:
    row = (await conn.execute(select(users_t).where(users_t.c.id == user_id))).first()
    if row is None:
        raise UnknownUser("the user no longer exists")
    return user_from_row(row)


async def effective_policy(conn: AsyncConnection, user_id: int | None) -> Policy:
    """The policy in force for a user (or the global one for ``None``)."""
    scopes = [GLOBAL_SCOPE] if user_id is None else [GLOBAL_SCOPE, user_scope(user_id)]
    rows = (
        await conn.execute(
            select(policies_t.c.scope, policies_t.c.key, policies_t.c.value).where(
                policies_t.c.scope.in_(scopes)
            )
        )
    ).all()
    return _layered(scopes, rows)


def effective_policy_job(tx: Tx, user_id: int) -> Policy:
    """:func:`effective_policy` for a raw-SQL job (hot paths)."""
    scopes = [GLOBAL_SCOPE, user_scope(user_id)]
    rows = tx.all("SELECT scope, key, value FROM policies WHERE scope IN (?, ?)", *scopes)
    return _layered(scopes, rows)


def _layered(scopes: list[str], rows: Sequence[Sequence[Any]]) -> Policy:
    layers: list[dict[str, str]] = [{} for _ in scopes]
    for scope, key, value in rows:
        layers[scopes.index(scope)][key] = value
    return policy_rules.resolve(*layers)


async def user_name_of(conn: AsyncConnection, user_id: int) -> str:
    """The canonical name of a user id ("" if the user is gone), for audit rows."""
    row = (await conn.execute(select(users_t.c.name_key).where(users_t.c.id == user_id))).first()
    return "" if row is None else str(row.name_key)
