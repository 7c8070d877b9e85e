"""API tokens for gateways (RADIUS bridges): created once, stored hashed, revocable.

A token has a scope: ``gateway`` (the gateway API) or ``bridge`` (also what only a RADIUS
bridge may call: the clients document with its shared secrets, local password checks, and the
bridge's own audit rows). Besides stored tokens there are *ephemeral* ones, registered by
``openmfa run`` for the bridge it runs in-process: valid only in this process's memory.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from backend.crypto import new_token, token_digest
from backend.domain.names import object_name
from backend.errors import AuthenticationRequired, BadRequest, Conflict, Forbidden, NotFound
from backend.services.audit import AuditLog
from backend.services.context import Actor, Clock
from backend.store.database import Database
from backend.store.fastpath import Tx, required
from backend.store.tables import api_tokens_t

TOKEN_PREFIX = "omfa_"  # noqa: S105 - a prefix, not a secret
SCOPES = ("gateway", "bridge")


@dataclass(frozen=True, slots=True)
class ApiTokenRecord:
    id: int | None  # None for an ephemeral token (it has no row)
    name: str
    created_at: datetime
    revoked_at: datetime | None
    scope: str = "gateway"

    def allows(self, scope: str) -> bool:
        """A bridge token can do everything a gateway token can, and more."""
        return self.scope == "bridge" or scope == "gateway"

    @property
    def starter(self) -> str:
        """How the challenges this token starts record it (``challenges.started_by``)."""
        return f"token:{self.id}" if self.id is not None else f"ephemeral:{self.name}"

    def may_see(self, started_by: str | None) -> bool:
        """Whether this token may read, wait on, answer or cancel a challenge started by
        ``started_by``: its own, and as a bridge (which relays for every client behind it)
        any a gateway token started; never one the web portal or console started (None)."""
        return started_by is not None and (started_by == self.starter or self.scope == "bridge")


@dataclass(frozen=True, slots=True)
class _Ephemeral:
    digest: bytes
    record: ApiTokenRecord


def check_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise BadRequest(f"the token scope is one of {', '.join(SCOPES)}, not {scope!r}")
    return scope


class ApiTokenService:
    """Bearer tokens for the gateway API."""

    def __init__(self, db: Database, audit: AuditLog, clock: Clock) -> None:
        self._db = db
        self._audit = audit
        self._clock = clock
        self._ephemeral: dict[str, _Ephemeral] = {}

    async def create(self, actor: Actor, name: str, scope: str = "gateway") -> str:
        """A new token; the plaintext is returned once and never stored."""
        object_name(name, "token")
        check_scope(scope)
        token = new_token(TOKEN_PREFIX)
        try:
            async with self._db.write() as conn:
                await conn.execute(
                    insert(api_tokens_t).values(
                        name=name,
                        token_hash=token_digest(token),
                        scope=scope,
                        created_at=self._clock(),
                    )
                )
                await self._audit.add(
                    conn, actor, "token.create", "ok", detail=f"{name} scope={scope}"
                )
        except IntegrityError as exc:
            raise Conflict(
                f"a token named {name!r} exists; revoke it or pick another name"
            ) from exc
        return token

    async def authenticate(self, token: str) -> ApiTokenRecord:
        """The live token with this value; :class:`AuthenticationRequired` otherwise."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 128:
            raise AuthenticationRequired("a gateway API token is required")
        ephemeral = self.match_ephemeral(token)
        if ephemeral is not None:
            return ephemeral
        digest = token_digest(token)

        # Every gateway call (each long-poll slice of every held RADIUS request) starts here:
        # a raw-SQL job costs a tenth of an ORM read (docs/performance.md).
        def lookup(tx: Tx) -> ApiTokenRecord | None:
            row = tx.one(
                "SELECT id, name, created_at, scope FROM api_tokens "
                "WHERE token_hash = ? AND revoked_at IS NULL",
                digest,
            )
            if row is None:
                return None
            created_at = required(tx.read_time(row[2]), "api_tokens.created_at")
            return ApiTokenRecord(row[0], row[1], created_at, None, row[3])

        record = await self._db.run_read(lookup)
        if record is None:
            raise AuthenticationRequired("unknown or revoked API token")
        return record

    def authorize(self, record: ApiTokenRecord, scope: str) -> None:
        """:class:`Forbidden` unless ``record`` may call what needs ``scope``."""
        if not record.allows(scope):
            raise Forbidden(
                f"the API token {record.name!r} has scope {record.scope}; this needs a token "
                f"of scope {scope} (openmfa token create NAME --scope {scope})"
            )

    def register_ephemeral(self, name: str, scope: str) -> str:
        """A random token valid only in this process's memory, until :meth:`drop_ephemeral`.

        For the bridge ``openmfa run`` starts in-process: it needs a credential, and a stored
        one would outlive the process and work on every node. Audited as ``gateway:<name>``.
        Registering a name again replaces its token.
        """
        object_name(name, "token")
        check_scope(scope)
        token = new_token(TOKEN_PREFIX)
        record = ApiTokenRecord(None, name, self._clock(), None, scope)
        self._ephemeral[name] = _Ephemeral(bytes.fromhex(token_digest(token)), record)
        return token

    def drop_ephemeral(self, name: str) -> None:
        """Stop an ephemeral token from working (a no-op for an unknown name)."""
        self._ephemeral.pop(name, None)

    def match_ephemeral(self, token: str) -> ApiTokenRecord | None:
        """The ephemeral token with this value, compared in constant time, or ``None``."""
        if not self._ephemeral:
            return None
        digest = bytes.fromhex(token_digest(token))
        found: ApiTokenRecord | None = None
        for entry in list(self._ephemeral.values()):
            # No early exit: every entry is compared, whatever matched before.
            if hmac.compare_digest(entry.digest, digest):
                found = entry.record
        return found

    async def list(self) -> list[ApiTokenRecord]:
        """Every token, revoked ones included."""
        async with self._db.read() as conn:
            rows = (await conn.execute(select(api_tokens_t).order_by(api_tokens_t.c.name))).all()
        return [ApiTokenRecord(r.id, r.name, r.created_at, r.revoked_at, r.scope) for r in rows]

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
