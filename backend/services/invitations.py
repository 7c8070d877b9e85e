"""One-time links: invitations where a user sets their password, and the link that creates
the first administrator.

Both tokens carry 160 random bits and are stored as SHA-256 digests only (like activation
codes): the plaintext exists in the link printed or sent once. An invitation lives
``hours`` (72 by default) and works once; inviting a user again replaces their unused
invitations. The bootstrap link exists only while no administrator exists: ``openmfa run``
makes a new one at each start (the previous one stops working) and the first administrator
created with it ends it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from backend.crypto import new_token, same, token_digest
from backend.domain.names import user_key
from backend.domain.notices import AccountChange
from backend.errors import (
    BadRequest,
    BootstrapInvalid,
    Conflict,
    InvitationExpired,
    InvitationInvalid,
    InvitationUsed,
    UserDisabled,
)
from backend.passwords import PasswordHasher
from backend.services.audit import AuditLog
from backend.services.context import Actor, Clock
from backend.services.notices import AccountNotices
from backend.services.users import check_password
from backend.store.database import Database
from backend.store.queries import UserRecord, find_user, load_user, load_user_by_id
from backend.store.tables import directories_t, invitations_t, meta_t, users_t

BOOTSTRAP_KEY = "admin_bootstrap_hash"
DEFAULT_HOURS = 72
MAX_HOURS = 720


@dataclass(frozen=True, slots=True)
class InvitationOffer:
    """What to hand the user: the one-time ``url`` (shown once, never stored)."""

    user_name: str
    url: str
    expires_at: datetime
    reference: str = ""  # the stored digest: names this invitation without its token


@dataclass(frozen=True, slots=True)
class InvitationView:
    """A valid invitation as its page shows it."""

    user_name: str
    display_name: str
    expires_at: datetime
    #: The directory the user comes from (their password is its password), else ``None``.
    directory: str | None = None


class InvitationService:
    """Invite users to set a password; bootstrap the first administrator."""

    def __init__(
        self,
        db: Database,
        hasher: PasswordHasher,
        audit: AuditLog,
        clock: Clock,
        base_url: str,
        notices: AccountNotices | None = None,
    ) -> None:
        self._notices = notices
        self._db = db
        self._hasher = hasher
        self._audit = audit
        self._clock = clock
        self._base_url = base_url.rstrip("/")

    # -- invitations ----------------------------------------------------------------------------

    async def create(
        self, actor: Actor, user_name: str, hours: int = DEFAULT_HOURS, replace: bool = True
    ) -> InvitationOffer:
        """A new invitation link for ``user_name``; earlier unused ones stop working.

        ``replace=False`` keeps the earlier ones until :meth:`retire_others` (an invitation
        that is to be e-mailed: a failed send must not leave the user with no working link).
        """
        if not 1 <= hours <= MAX_HOURS:
            raise BadRequest(f"an invitation lives 1 to {MAX_HOURS} hours")
        token = new_token()
        now = self._clock()
        expires = now + timedelta(hours=hours)
        async with self._db.write() as conn:
            user = await load_user(conn, user_name)
            if user.disabled:
                raise UserDisabled("the user is disabled; enable them before inviting them")
            if replace:
                await _delete_unused(conn, user.id)
            await conn.execute(
                insert(invitations_t).values(
                    token_hash=token_digest(token),
                    user_id=user.id,
                    created_at=now,
                    expires_at=expires,
                    created_by=actor.name[:128],
                )
            )
            await self._audit.add(
                conn, actor, "invitation.create", "ok", user.name_key, f"hours={hours}"
            )
        return InvitationOffer(
            user.name, f"{self._base_url}/portal/invite/{token}", expires, token_digest(token)
        )

    async def retire_others(self, actor: Actor, offer: InvitationOffer) -> int:
        """The user's unused invitations other than ``offer`` stop working: how many."""
        async with self._db.write() as conn:
            user = await load_user(conn, offer.user_name)
            retired = await _delete_unused(conn, user.id, keep=offer.reference)
            if retired:
                await self._audit.add(
                    conn, actor, "invitation.retire", "ok", user.name_key, f"{retired} earlier"
                )
        return retired

    async def check(self, token: str) -> InvitationView:
        """The invitation behind ``token``, or why it cannot be used (raises)."""
        async with self._db.read() as conn:
            row = await self._find(conn, token)
            user = await load_user_by_id(conn, row.user_id)
            directory = await _directory_of(conn, user.id)
        return InvitationView(user.name, user.display_name, row.expires_at, directory)

    async def _find(self, conn: AsyncConnection, token: str) -> Row[Any]:
        """The invitation row; raises unless it is unused and unexpired."""
        if len(token) > 128:
            raise InvitationInvalid()
        row = (
            await conn.execute(
                select(invitations_t).where(invitations_t.c.token_hash == token_digest(token))
            )
        ).first()
        if row is None:
            raise InvitationInvalid()
        if row.used_at is not None:
            raise InvitationUsed()
        if row.expires_at <= self._clock():
            raise InvitationExpired()
        return row

    async def accept(self, actor: Actor, token: str, password: str | None) -> UserRecord:
        """Use the invitation: set the user's password (once); every web session the user had
        ends. Raises if the link is unknown, expired or used, or the password breaks the
        length rules.

        A user from a directory has no local password: ``password`` is ``None`` for them (the
        caller has checked their directory password first) and a password is refused."""
        password_hash: str | None = None
        if password is not None:
            check_password(password)
            password_hash = await self._hasher.hash(password)
        now = self._clock()
        async with self._db.write() as conn:
            row = await self._find(conn, token)
            directory = await _directory_of(conn, row.user_id)
            if (directory is None) != (password_hash is not None):
                # Checked before the link is spent: the person can still use it.
                raise BadRequest(
                    f"your password is the one of your {directory} directory account; change "
                    "it there"
                    if directory is not None
                    else "a password is needed"
                )
            claimed = (
                await conn.execute(
                    update(invitations_t)
                    .where(invitations_t.c.id == row.id, invitations_t.c.used_at.is_(None))
                    .values(used_at=now)
                )
            ).rowcount
            if claimed != 1:  # another request used it a moment ago
                raise InvitationUsed()
            user = await load_user_by_id(conn, row.user_id)
            if user.disabled:
                raise UserDisabled()
            if password_hash is not None:
                await conn.execute(
                    update(users_t)
                    .where(users_t.c.id == user.id)
                    .values(password_hash=password_hash)
                )
            await self._audit.add(
                conn,
                actor,
                "invitation.accept",
                "ok",
                user.name_key,
                "" if directory is None else f"directory {directory}: password checked there",
            )
            accepted = await load_user_by_id(conn, user.id)
        if self._notices is not None:
            await self._notices.changed(actor, user.id, AccountChange.INVITATION_ACCEPTED)
        return accepted

    # -- the first administrator ----------------------------------------------------------------

    async def has_admin(self) -> bool:
        """True once an enabled administrator exists."""
        async with self._db.read() as conn:
            return await _has_admin(conn)

    async def bootstrap_link(self, actor: Actor) -> str | None:
        """While no administrator exists: a new one-time link that creates the first one (the
        previous link stops working). ``None`` once an administrator exists."""
        async with self._db.write() as conn:
            await conn.execute(delete(meta_t).where(meta_t.c.key == BOOTSTRAP_KEY))
            if await _has_admin(conn):
                return None
            token = new_token()
            await conn.execute(insert(meta_t).values(key=BOOTSTRAP_KEY, value=token_digest(token)))
            await self._audit.add(conn, actor, "admin.bootstrap_link", "ok")
        return f"{self._base_url}/admin/bootstrap/{token}"

    async def check_bootstrap(self, token: str) -> None:
        """Raise :class:`BootstrapInvalid` unless ``token`` is the live bootstrap link."""
        async with self._db.read() as conn:
            await _check_bootstrap(conn, token)

    async def create_first_admin(
        self, actor: Actor, token: str, name: str, password: str, display_name: str = ""
    ) -> UserRecord:
        """Create the first administrator with the bootstrap link, which then stops working."""
        key = user_key(name)
        check_password(password)
        if len(display_name) > 256:
            raise BadRequest("the display name has at most 256 characters")
        password_hash = await self._hasher.hash(password)
        async with self._db.write() as conn:
            await _check_bootstrap(conn, token)
            await conn.execute(delete(meta_t).where(meta_t.c.key == BOOTSTRAP_KEY))
            if await find_user(conn, name) is not None:
                raise Conflict(f"a user named {name!r} already exists; choose another name")
            await conn.execute(
                insert(users_t).values(
                    name_key=key,
                    name=name,
                    display_name=display_name,
                    email="",
                    is_admin=True,
                    password_hash=password_hash,
                    created_at=self._clock(),
                )
            )
            await self._audit.add(conn, actor, "user.add", "ok", key, "admin (bootstrap link)")
            return await load_user(conn, name)


async def _delete_unused(conn: AsyncConnection, user_id: int, keep: str = "") -> int:
    stmt = delete(invitations_t).where(
        invitations_t.c.user_id == user_id, invitations_t.c.used_at.is_(None)
    )
    if keep:
        stmt = stmt.where(invitations_t.c.token_hash != keep)
    return int((await conn.execute(stmt)).rowcount or 0)


async def _has_admin(conn: AsyncConnection) -> bool:
    row = (
        await conn.execute(
            select(users_t.c.id).where(users_t.c.is_admin.is_(True), users_t.c.disabled.is_(False))
        )
    ).first()
    return row is not None


async def _check_bootstrap(conn: AsyncConnection, token: str) -> None:
    stored = (
        await conn.execute(select(meta_t.c.value).where(meta_t.c.key == BOOTSTRAP_KEY))
    ).scalar()
    if stored is None or len(token) > 128 or not same(stored, token_digest(token)):
        raise BootstrapInvalid()
    if await _has_admin(conn):
        raise BootstrapInvalid("an administrator exists already; sign in instead")


async def _directory_of(conn: AsyncConnection, user_id: int) -> str | None:
    """The name of the directory a user comes from, or ``None`` for a local user."""
    row = (
        await conn.execute(
            select(users_t.c.directory_id, directories_t.c.name)
            .select_from(
                users_t.outerjoin(directories_t, directories_t.c.id == users_t.c.directory_id)
            )
            .where(users_t.c.id == user_id)
        )
    ).first()
    if row is None or row.directory_id is None:
        return None
    return str(row.name or f"#{row.directory_id}")
