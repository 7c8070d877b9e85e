"""API tokens for gateways (RADIUS bridges): created once, stored hashed, revocable."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from backend.crypto import new_token, token_digest
from backend.domain.names import object_name
from backend.errors import AuthenticationRequired, Conflict, NotFound
from backend.services.audit import AuditLog
from backend.services.context import Actor, Clock
from backend.store.database import Database
from backend.store.tables import api_tokens_t

TOKEN_PREFIX = "omfa_"  # noqa: S105 - a prefix, not a secret


@dataclass(frozen=True, slots=True)
class ApiTokenRecord:
    id: int
    name: str
    created_at: datetime
    revoked_at: datetime | None


class ApiTokenService:
    """Bearer tokens for the gateway API."""

    def __init__(self, db: Database, audit: AuditLog, clock: Clock) -> None:
        self._db = db
        self._audit = audit
        self._clock = clock

    async def create(self, actor: Actor, name: str) -> str:
        """A new token; the plaintext is returned once and never stored."""
        object_name(name, "token")
        token = new_token(TOKEN_PREFIX)
        try:
            async with self._db.write() as conn:
                await conn.execute(
                    insert(api_tokens_t).values(
                        name=name, token_hash=token_digest(token), created_at=self._clock()
                    )
                )
                await self._audit.add(conn, actor, "token.create", "ok", detail=name)
        except IntegrityError as exc:
            raise Conflict(
                f"a token named {name!r} exists; revoke it or pick another name"
            ) from exc
        return token

    async def authenticate(self, token: str) -> ApiTokenRecord:
        """The live token with this value; :class:`AuthenticationRequired` otherwise."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 128:
            raise AuthenticationRequired("a gateway API token is required")
        async with self._db.read() as conn:
            row = (
                await conn.execute(
                    select(api_tokens_t).where(api_tokens_t.c.token_hash == token_digest(token))
                )
            ).first()
        if row is None or row.revoked_at is not None:
            raise AuthenticationRequired("unknown or revoked API token")
        return ApiTokenRecord(row.id, row.name, row.created_at, row.revoked_at)

    async def list(self) -> list[ApiTokenRecord]:
        """Every token, revoked ones included."""
        async with self._db.read() as conn:
            rows = (await conn.execute(select(api_tokens_t).order_by(api_tokens_t.c.name))).all()
        return [ApiTokenRecord(r.id, r.name, r.created_at, r.revoked_at) for r in rows]

    async def revoke(self, actor: Actor, name: str) -> None:
        """Stop a token from working, at once."""
        async with self._db.write() as conn:
            done = await conn.execute(
                update(api_tokens_t)
                .where(api_tokens_t.c.name == name, api_tokens_t.c.revoked_at.is_(None))
                .values(revoked_at=self._clock())
            )
            if done.rowcount != 1:
                raise NotFound(f"no live token named {name!r}")
            await self._audit.add(conn, actor, "token.revoke", "ok", detail=name)
