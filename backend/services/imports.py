"""CSV imports: users, and hardware OATH tokens in Entra ID's layout (``openmfa user import``,
``openmfa token import``, the console's Import page).

The file is checked whole by the pure parsers (:mod:`backend.domain.imports`); then what it
would do is checked against the database (names that exist, upn that find no user, serials
in use). Any problem refuses the whole file: nothing is written, and the refusal is audited
with the number of problems. A file that passes is written in one transaction, with one audit
row per created user or token and a summary row. ``dry_run`` stops before the write and says
what would be created.

Tokens are second factors: each user they go to passes the :class:`FactorGuard` with the
administrator's proof (only the CLI and the console's administrators import). Secret keys are
sealed with the server key like every seed, and never appear in a result, an error or the
audit trail.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from backend.crypto import SecretBox
from backend.domain.imports import (
    Parsed,
    Problem,
    TokenRow,
    UserRow,
    parse_tokens,
    parse_users,
)
from backend.domain.names import user_key
from backend.domain.notices import AccountChange
from backend.domain.stepup import FactorAction, Proof
from backend.errors import BadRequest, ImportRefused, InvalidName, ServerKeyError
from backend.services.activation import new_device_id
from backend.services.audit import AuditLog
from backend.services.context import Actor, Clock
from backend.services.factors import FactorGuard
from backend.services.notices import AccountNotices
from backend.store.database import Database
from backend.store.tables import devices_t, users_t

#: How long the console's sealed upload stays valid between the preview and the confirm.
UPLOAD_SECONDS = 30 * 60
KINDS = ("users", "tokens")


@dataclass(frozen=True, slots=True)
class ImportPlan:
    """What a file does: the rows it creates (users, or tokens with the user each goes to),
    the rows it skips (existing names with ``skip_existing``), every problem and warning."""

    kind: str
    users: tuple[UserRow, ...] = ()
    tokens: tuple[tuple[TokenRow, str], ...] = ()
    skipped: tuple[UserRow, ...] = ()
    problems: tuple[Problem, ...] = ()
    warnings: tuple[Problem, ...] = ()
    written: bool = False

    @property
    def ok(self) -> bool:
        """True when the file may be (or was) imported."""
        return not self.problems

    @property
    def count(self) -> int:
        """How many users or tokens the file creates."""
        return len(self.users) + len(self.tokens)


class ImportService:
    """Checks and applies CSV imports (see the module's docstring)."""

    def __init__(
        self,
        db: Database,
        box: SecretBox,
        audit: AuditLog,
        clock: Clock,
        factors: FactorGuard,
        notices: AccountNotices | None = None,
    ) -> None:
        self._db = db
        self._box = box
        self._audit = audit
        self._clock = clock
        self._factors = factors
        self._notices = notices

    # -- users -----------------------------------------------------------------------------

    async def preview_users(self, data: bytes, *, skip_existing: bool = False) -> ImportPlan:
        """What importing ``data`` would do; nothing is written or audited."""
        async with self._db.read() as conn:
            return await self._plan_users(conn, parse_users(data), skip_existing)

    async def import_users(
        self,
        actor: Actor,
        data: bytes,
        *,
        dry_run: bool = False,
        skip_existing: bool = False,
    ) -> ImportPlan:
        """Create the file's users in one transaction, or raise :class:`ImportRefused`
        (audited) with every problem. ``dry_run``: check only, write nothing."""
        if dry_run:
            plan = await self.preview_users(data, skip_existing=skip_existing)
            await self._refuse_if_bad(actor, plan)
            return plan
        now = self._clock()
        try:
            async with self._db.write() as conn:
                plan = await self._plan_users(conn, parse_users(data), skip_existing)
                if not plan.ok:
                    raise _refusal(plan)
                if plan.users:
                    await conn.execute(
                        insert(users_t),
                        [
                            {
                                "name_key": user_key(row.name),
                                "name": row.name,
                                "display_name": row.display_name,
                                "email": row.email,
                                "phone": row.phone,
                                "is_admin": row.admin,
                                "created_at": now,
                            }
                            for row in plan.users
                        ],
                    )
                await self._audit.add_many(
                    conn,
                    actor,
                    [
                        (
                            "user.add",
                            "ok",
                            user_key(r.name),
                            f"import line {r.line}" + (" admin" if r.admin else ""),
                        )
                        for r in plan.users
                    ],
                )
                await self._audit.add(
                    conn,
                    actor,
                    "user.import",
                    "ok",
                    detail=f"{len(plan.users)} created, {len(plan.skipped)} skipped (existing)",
                )
        except ImportRefused as exc:
            await self._audit_refusal(actor, "user.import", exc)
            raise
        except IntegrityError as exc:  # a user of that name was added meanwhile (PostgreSQL)
            refusal = ImportRefused("a user in the file was created meanwhile; run it again")
            await self._audit_refusal(actor, "user.import", refusal)
            raise refusal from exc
        return _replace_written(plan)

    async def _plan_users(
        self, conn: AsyncConnection, parsed: Parsed[UserRow], skip_existing: bool
    ) -> ImportPlan:
        problems = list(parsed.problems)
        keys = [user_key(row.name) for row in parsed.rows]
        existing: set[str] = set()
        for chunk in _chunks(keys):
            existing |= {
                str(key)
                for (key,) in await conn.execute(
                    select(users_t.c.name_key).where(users_t.c.name_key.in_(chunk))
                )
            }
        create = [row for row in parsed.rows if user_key(row.name) not in existing]
        skipped = [row for row in parsed.rows if user_key(row.name) in existing]
        if skipped and not skip_existing:
            problems += [
                Problem(row.line, f"a user named {row.name} exists (--skip-existing skips it)")
                for row in skipped
            ]
        return ImportPlan(
            "users",
            users=tuple(create),
            skipped=tuple(skipped),
            problems=tuple(sorted(problems, key=lambda p: p.line)),
            warnings=parsed.warnings,
        )

    # -- tokens ----------------------------------------------------------------------------

    async def preview_tokens(self, data: bytes) -> ImportPlan:
        """What importing ``data`` would do; nothing is written or audited."""
        async with self._db.read() as conn:
            return await self._plan_tokens(conn, parse_tokens(data))

    async def import_tokens(
        self, actor: Actor, proof: Proof, data: bytes, *, dry_run: bool = False
    ) -> ImportPlan:
        """Create the file's tokens (devices of kind ``oath``, active) in one transaction, or
        raise :class:`ImportRefused` (audited). Each user passes the :class:`FactorGuard`
        with ``proof`` first. ``dry_run``: check only, write nothing."""
        plan = await self.preview_tokens(data)
        await self._refuse_if_bad(actor, plan)
        await self._factors.require_all(
            actor, proof, FactorAction.ENROL_OATH, [name for _, name in plan.tokens]
        )
        if dry_run:
            return plan
        now = self._clock()
        created: list[tuple[int, str, str]] = []
        queued = False
        try:
            async with self._db.write() as conn:
                # Checked again inside the write: a serial taken or a user removed since.
                plan = await self._plan_tokens(conn, parse_tokens(data))
                if not plan.ok:
                    raise _refusal(plan)
                ids = await _user_ids(conn, [name for _, name in plan.tokens])
                devices: list[dict[str, object]] = []
                audit: list[tuple[str, str, str, str]] = []
                for row, user_name in plan.tokens:
                    device_id = new_device_id()
                    devices.append(
                        {
                            "id": device_id,
                            "user_id": ids[user_name],
                            "kind": "oath",
                            "name": row.device_name,
                            "platform": "",
                            "seed_enc": self._box.seal(row.secret.encode(), f"seed:{device_id}"),
                            "state": "active",
                            "created_at": now,
                            "activated_at": now,
                            "serial": row.serial,
                            "period": row.period,
                        }
                    )
                    audit.append(
                        (
                            "device.import",
                            "ok",
                            user_name,
                            f"{device_id} serial {row.serial} period {row.period}s "
                            f"(import line {row.line})",
                        )
                    )
                    created.append((ids[user_name], device_id, row.device_name))
                if devices:
                    await conn.execute(insert(devices_t), devices)
                await self._audit.add_many(conn, actor, audit)
                # The user's notice ("a sign-in method was added"), in the same commit.
                for user_id, device_id, name in created:
                    if self._notices is not None:
                        _, mailed = await self._notices.changed_in(
                            conn, actor, user_id, AccountChange.OATH_ADDED, f"{device_id} “{name}”"
                        )
                        queued = queued or mailed
                await self._audit.add(
                    conn, actor, "token.import", "ok", detail=f"{len(plan.tokens)} token(s) created"
                )
        except ImportRefused as exc:
            await self._audit_refusal(actor, "token.import", exc)
            raise
        except IntegrityError as exc:  # a serial taken meanwhile (PostgreSQL)
            refusal = ImportRefused("a serial number in the file was taken meanwhile")
            await self._audit_refusal(actor, "token.import", refusal)
            raise refusal from exc
        if queued and self._notices is not None and self._notices.wake is not None:
            self._notices.wake()
        return _replace_written(plan)

    async def _plan_tokens(self, conn: AsyncConnection, parsed: Parsed[TokenRow]) -> ImportPlan:
        problems = list(parsed.problems)
        serials = [row.serial for row in parsed.rows]
        taken: set[str] = set()
        for chunk in _chunks([s.casefold() for s in serials]):
            taken |= {
                str(serial).casefold()
                for (serial,) in await conn.execute(
                    select(devices_t.c.serial).where(func.lower(devices_t.c.serial).in_(chunk))
                )
            }
        owners = await _Owners.load(conn, [row.upn for row in parsed.rows])
        tokens: list[tuple[TokenRow, str]] = []
        for row in parsed.rows:
            owner, why = owners.find(row.upn)
            if row.serial.casefold() in taken:
                problems.append(Problem(row.line, f"the serial number {row.serial} is in use"))
            if owner is None:
                problems.append(Problem(row.line, why))
            elif row.serial.casefold() not in taken:
                tokens.append((row, owner))
        return ImportPlan(
            "tokens",
            tokens=tuple(tokens),
            problems=tuple(sorted(problems, key=lambda p: p.line)),
            warnings=parsed.warnings,
        )

    # -- the console's upload between preview and confirm -----------------------------------

    def seal_upload(self, kind: str, data: bytes, binding: str) -> str:
        """``data`` sealed with the server key for the confirm form: bound to ``binding``
        (the admin's session) and the kind, valid for :data:`UPLOAD_SECONDS`. The page holds
        only ciphertext, so token secrets are never in it, and what is confirmed is exactly
        what was previewed."""
        stamp = int(self._clock().timestamp()).to_bytes(8, "big")
        sealed = self._box.seal(stamp + data, f"import:{kind}:{binding}")
        return base64.urlsafe_b64encode(sealed).decode("ascii")

    def open_upload(self, kind: str, token: str, binding: str) -> bytes:
        """The data :meth:`seal_upload` sealed, or :class:`BadRequest` when it was made for
        another session or kind, was changed, or is too old."""
        try:
            raw = self._box.open(
                base64.urlsafe_b64decode(token.encode("ascii")), f"import:{kind}:{binding}"
            )
        except (ServerKeyError, ValueError, UnicodeEncodeError):
            raise BadRequest("the upload is not valid here: upload the file again") from None
        stamp = int.from_bytes(raw[:8], "big")
        if not 0 <= self._clock().timestamp() - stamp <= UPLOAD_SECONDS:
            raise BadRequest("the preview is more than 30 minutes old: upload the file again")
        return raw[8:]

    # -- refusals --------------------------------------------------------------------------

    async def _refuse_if_bad(self, actor: Actor, plan: ImportPlan) -> None:
        if not plan.ok:
            refusal = _refusal(plan)
            await self._audit_refusal(actor, f"{plan.kind[:-1]}.import", refusal)
            raise refusal

    async def _audit_refusal(self, actor: Actor, action: str, exc: ImportRefused) -> None:
        # The count and the first problems: enough to find the run, never a secret (the
        # parsers' reasons quote none).
        detail = json.dumps([exc.detail, *exc.problems[:5]])[:1024]
        await self._audit.record(actor, action, "refused", detail=detail)


@dataclass(frozen=True, slots=True)
class _Owners:
    """Who the file's ``upn`` values name: user names found, and users by e-mail address."""

    names: frozenset[str]
    by_email: dict[str, list[str]]

    @classmethod
    async def load(cls, conn: AsyncConnection, upns: Sequence[str]) -> _Owners:
        """Read, in bounded IN lists, the users the ``upn`` values could name."""
        keys = sorted({k for k in (_key_or_none(u) for u in upns) if k is not None})
        emails = sorted({u.casefold() for u in upns})
        names: set[str] = set()
        by_email: dict[str, list[str]] = {}
        for chunk in _chunks(keys):
            names |= {
                str(key)
                for (key,) in await conn.execute(
                    select(users_t.c.name_key).where(users_t.c.name_key.in_(chunk))
                )
            }
        for chunk in _chunks(emails):
            rows = await conn.execute(
                select(func.lower(users_t.c.email), users_t.c.name_key).where(
                    func.lower(users_t.c.email).in_(chunk)
                )
            )
            for email, key in rows:
                by_email.setdefault(str(email), []).append(str(key))
        return cls(frozenset(names), by_email)

    def find(self, upn: str) -> tuple[str | None, str]:
        """The user ``upn`` names: the user of that name, else the one user whose e-mail
        address it is; else ``None`` and why."""
        key = _key_or_none(upn)
        if key is not None and key in self.names:
            return key, ""
        matches = self.by_email.get(upn.casefold(), [])
        if len(matches) == 1:
            return matches[0], ""
        if len(matches) > 1:
            return None, f"the upn {upn} is the e-mail address of several users: use the user name"
        return None, f"no user is named {upn} or has it as e-mail address"


def _key_or_none(name: str) -> str | None:
    try:
        return user_key(name)
    except InvalidName:
        return None


async def _user_ids(conn: AsyncConnection, keys: Sequence[str]) -> dict[str, int]:
    ids: dict[str, int] = {}
    for chunk in _chunks(sorted(set(keys))):
        rows = await conn.execute(
            select(users_t.c.name_key, users_t.c.id).where(users_t.c.name_key.in_(chunk))
        )
        ids.update({str(key): int(user_id) for key, user_id in rows})
    return ids


def _refusal(plan: ImportPlan) -> ImportRefused:
    problems = tuple(str(p) for p in plan.problems)
    return ImportRefused(
        f"the file was not imported: {len(problems)} problem(s); nothing was written", problems
    )


def _replace_written(plan: ImportPlan) -> ImportPlan:
    return ImportPlan(
        plan.kind,
        plan.users,
        plan.tokens,
        plan.skipped,
        plan.problems,
        plan.warnings,
        written=True,
    )


def _chunks(values: Sequence[str], size: int = 500) -> list[Sequence[str]]:
    """IN lists in bounded pieces (SQLite allows some thousands of parameters)."""
    return [values[i : i + size] for i in range(0, len(values), size)] or [[]]
