"""Policies in the database: global values with per-user overrides."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, select

from backend.domain import policy as policy_rules
from backend.domain.policy import GLOBAL_SCOPE, user_scope
from backend.errors import PolicyError
from backend.services.audit import AuditLog
from backend.services.context import Actor
from backend.store.database import Database
from backend.store.queries import load_user
from backend.store.tables import policies_t


@dataclass(frozen=True, slots=True)
class PolicyLine:
    key: str
    value: str
    source: str  # "default", "global" or "user"
    description: str


def _render(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


class PolicyService:
    """Show and change policies; every change audited."""

    def __init__(self, db: Database, audit: AuditLog) -> None:
        self._db = db
        self._audit = audit

    async def show(self, user_name: str | None = None) -> list[PolicyLine]:
        """Every key with its value and where that value comes from."""
        async with self._db.read() as conn:
            scopes = {GLOBAL_SCOPE: "global"}
            if user_name is not None:
                user = await load_user(conn, user_name)
                scopes[user_scope(user.id)] = "user"
            rows = (
                await conn.execute(select(policies_t).where(policies_t.c.scope.in_(list(scopes))))
            ).all()
        stored: dict[str, tuple[str, str]] = {}
        for row in sorted(rows, key=lambda r: r.scope != GLOBAL_SCOPE):
            stored[row.key] = (row.value, scopes[row.scope])
        lines = []
        for key, spec in sorted(policy_rules.KEYS.items()):
            value, source = stored.get(key, (_render(spec.default), "default"))
            lines.append(PolicyLine(key, value, source, spec.description))
        return lines

    async def set(self, actor: Actor, key: str, raw: str, user_name: str | None = None) -> str:
        """Validate and store one value; returns it in canonical form."""
        value = _render(policy_rules.parse_value(key, raw))
        async with self._db.write() as conn:
            scope = GLOBAL_SCOPE
            if user_name is not None:
                scope = user_scope((await load_user(conn, user_name)).id)
            await conn.execute(
                delete(policies_t).where(policies_t.c.scope == scope, policies_t.c.key == key)
            )
            await conn.execute(policies_t.insert().values(scope=scope, key=key, value=value))
            await self._audit.add(
                conn, actor, "policy.set", "ok", user_name or "", f"{scope} {key}={value}"
            )
        return value

    async def unset(self, actor: Actor, key: str, user_name: str | None = None) -> None:
        """Drop a stored value so the next layer (global or default) applies again."""
        if key not in policy_rules.KEYS:
            raise PolicyError(f"unknown policy key {key!r}")
        async with self._db.write() as conn:
            scope = GLOBAL_SCOPE
            if user_name is not None:
                scope = user_scope((await load_user(conn, user_name)).id)
            await conn.execute(
                delete(policies_t).where(policies_t.c.scope == scope, policies_t.c.key == key)
            )
            await self._audit.add(
                conn, actor, "policy.unset", "ok", user_name or "", f"{scope} {key}"
            )
