"""Users: accounts, state (active / disabled / blocked), password and PIN."""

from __future__ import annotations

import builtins
import contextlib
import functools
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from sqlalchemy import Select, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from backend.directory.reader import BindOutcome, BindResult, DirectoryReader
from backend.domain.devices import LIVE_STATES
from backend.domain.emails import email_problem
from backend.domain.names import user_key
from backend.domain.notices import AccountChange
from backend.domain.policy import check_pin
from backend.domain.stepup import FactorAction, Proof
from backend.errors import (
    BadRequest,
    Conflict,
    DirectoryError,
    DirectoryUnavailable,
    HashingBusy,
    OpenMFAError,
    OtpLocked,
    PinLocked,
    PinRequired,
    UnknownUser,
    UserBlocked,
    UserDisabled,
    WrongPin,
)
from backend.passwords import PasswordHasher
from backend.services import attempts
from backend.services.attempts import Locked
from backend.services.audit import AuditLog
from backend.services.context import Actor, Clock, SignInContext
from backend.services.factors import FactorGuard
from backend.services.notices import AccountNotices
from backend.store.database import Database
from backend.store.fastpath import Tx
from backend.store.queries import (
    UserRecord,
    effective_policy,
    effective_policy_job,
    load_user,
    user_from_row,
)
from backend.store.tables import devices_t, users_t

MIN_PASSWORD = 8
MAX_PASSWORD = 1024


#: Why a password was refused. ``no-password``: a local user with none set. The rest are for
#: users from a directory: the directory's answers (:data:`BindOutcome`), ``not-in-directory``
#: (a RADIUS client of primary ldap, and the user is local or from another directory) and
#: ``directory-unavailable`` (no server answered: a refusal, never the client's failmode).
PasswordReason = Literal[
    "ok",
    "wrong-password",
    "no-password",
    "not-in-directory",
    "directory-unavailable",
    "no-such-user",
    "disabled",
    "locked",
    "expired",
    "password-expired",
    "must-change",
    "not-permitted",
]
#: Directory outcomes that are not the person's failure: their attempt is given back.
_NOT_COUNTED: frozenset[BindOutcome] = frozenset({"ok", "unavailable"})


@dataclass(frozen=True, slots=True)
class PasswordResult:
    """``accepted``, or why not (:data:`PasswordReason`)."""

    accepted: bool
    reason: PasswordReason
    user_name: str


class DirectoryReaders(Protocol):
    """Where a directory's connection comes from (``services.directories``)."""

    async def reader(self, directory_id: int) -> DirectoryReader:
        """The shared reader of one directory; callers never close it."""
        ...


@dataclass(frozen=True, slots=True)
class UserSummary:
    user: UserRecord
    active_devices: int
    pending_devices: int


def check_password(password: str) -> None:
    """Length rules for local passwords."""
    if len(password) < MIN_PASSWORD:
        raise BadRequest(f"a password has at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise BadRequest(f"a password has at most {MAX_PASSWORD} characters")


class UserService:
    """Create, list and change users; every change audited."""

    def __init__(
        self,
        db: Database,
        hasher: PasswordHasher,
        audit: AuditLog,
        clock: Clock,
        factors: FactorGuard,
        notices: AccountNotices | None = None,
    ) -> None:
        self._db = db
        self._factors = factors
        self._hasher = hasher
        self._audit = audit
        self._clock = clock
        self._notices = notices
        #: The directories' connections, for users whose password is their directory's; set
        #: by the container once the directory service exists (``None``: such users are
        #: refused as ``directory-unavailable``).
        self.directories: DirectoryReaders | None = None
        # Password checks by outcome, read by backend.metrics at scrape time.
        self.password_outcomes: Counter[str] = Counter()

    async def add(
        self,
        actor: Actor,
        name: str,
        email: str = "",
        display_name: str = "",
        password: str | None = None,
        is_admin: bool = False,
    ) -> UserRecord:
        """Create a user; :class:`Conflict` if the name (in any case) exists."""
        key = user_key(name)
        problem = email_problem(email) if email else None
        if problem is not None:
            await self._audit.record(actor, "user.add", "refused", key, f"e-mail: {problem}")
            raise BadRequest(f"the e-mail address is not valid: {problem}")
        if len(display_name) > 256:
            raise BadRequest("the display name has at most 256 characters")
        password_hash = None
        if password is not None:
            check_password(password)
            password_hash = await self._hasher.hash(password)
        try:
            async with self._db.write() as conn:
                await conn.execute(
                    insert(users_t).values(
                        name_key=key,
                        name=name,
                        display_name=display_name,
                        email=email,
                        is_admin=is_admin,
                        password_hash=password_hash,
                        created_at=self._clock(),
                    )
                )
                await self._audit.add(
                    conn, actor, "user.add", "ok", key, "admin" if is_admin else ""
                )
                return await load_user(conn, name)
        except IntegrityError as exc:
            raise Conflict(f"a user named {name!r} already exists") from exc

    async def get(self, name: str) -> UserRecord:
        """One user; :class:`UnknownUser` if there is none."""
        async with self._db.read() as conn:
            return await load_user(conn, name)

    async def list(self) -> list[UserSummary]:
        """All users with their device counts, by name."""
        return await self._summaries(_summaries_query())

    async def search(
        self, query: str = "", limit: int = 50, after: str | None = None
    ) -> builtins.list[UserSummary]:
        """Users whose name, display name or e-mail contains ``query`` (any case), by name,
        with their device counts; at most ``limit``, starting after the user whose
        ``name_key`` is ``after`` (keyset paging on the unique, indexed ``name_key``)."""
        if not 1 <= limit <= 500:
            raise BadRequest("limit must be from 1 to 500")
        query = query.strip()
        if len(query) > 320:
            raise BadRequest("the search has at most 320 characters")
        stmt = _summaries_query().limit(limit)
        if query:
            # autoescape: a % or _ typed into the search box matches itself, not anything.
            stmt = stmt.where(
                or_(
                    users_t.c.name.icontains(query, autoescape=True),
                    users_t.c.display_name.icontains(query, autoescape=True),
                    users_t.c.email.icontains(query, autoescape=True),
                )
            )
        if after:
            stmt = stmt.where(users_t.c.name_key > after)
        return await self._summaries(stmt)

    async def _summaries(self, stmt: Select[Any]) -> builtins.list[UserSummary]:
        async with self._db.read() as conn:
            rows = (await conn.execute(stmt)).all()
        return [
            UserSummary(
                user_from_row(row), int(row.active_devices or 0), int(row.pending_devices or 0)
            )
            for row in rows
        ]

    async def reset_devices(self, actor: Actor, proof: Proof, name: str) -> tuple[str, ...]:
        """Remove every live device of a user (lost phone, new start): the ids removed.

        One transaction and one audit row (``user.reset_devices``, naming the devices); the
        user then has to activate an authenticator again.
        """
        await self._factors.require(actor, proof, FactorAction.RESET_DEVICES, name)
        async with self._db.write() as conn:
            user = await load_user(conn, name)
            rows = (
                await conn.execute(
                    update(devices_t)
                    .where(devices_t.c.user_id == user.id, devices_t.c.state.in_(LIVE_STATES))
                    .values(state="removed")
                    .returning(devices_t.c.id)
                )
            ).all()
            removed = tuple(sorted(str(row.id) for row in rows))
            await self._audit.add(
                conn,
                actor,
                "user.reset_devices",
                "ok",
                user.name_key,
                f"removed {len(removed)}: {' '.join(removed)}".strip(),
            )
        return removed

    async def _change(
        self, actor: Actor, name: str, action: str, detail: str = "", **values: object
    ) -> UserRecord:
        async with self._db.write() as conn:
            user = await load_user(conn, name)
            await conn.execute(update(users_t).where(users_t.c.id == user.id).values(**values))
            await self._audit.add(conn, actor, action, "ok", user.name_key, detail)
            return await load_user(conn, name)

    async def set_disabled(self, actor: Actor, name: str, disabled: bool) -> UserRecord:
        """Disable (no sign-in at all) or enable a user."""
        return await self._change(
            actor, name, "user.disable" if disabled else "user.enable", disabled=disabled
        )

    async def set_blocked(
        self, actor: Actor, name: str, blocked: bool, reason: str = ""
    ) -> UserRecord:
        """Block (no new challenges, e.g. after fraud) or unblock a user."""
        if blocked:
            return await self._change(
                actor,
                name,
                "user.block",
                reason,
                blocked=True,
                blocked_reason=reason[:256] or "blocked by an administrator",
            )
        return await self._change(actor, name, "user.unblock", blocked=False, blocked_reason="")

    async def set_password(self, actor: Actor, name: str, password: str) -> None:
        """Replace the local password (argon2id); the user's web sessions end.

        A user from a directory has no local password: their password is the directory's,
        checked there at every sign-in, so setting one here is refused (and audited)."""
        await self.refuse_directory_user(actor, name)
        check_password(password)
        password_hash = await self._hasher.hash(password)
        user = await self._change(actor, name, "user.set_password", password_hash=password_hash)
        if self._notices is not None:
            await self._notices.changed(actor, user.id, AccountChange.PASSWORD_SET)

    async def refuse_directory_user(self, actor: Actor, name: str) -> None:
        """Refuse (audited) to set a local password for a user from a directory; callers
        that read the new password check this first, so nobody types it for nothing."""
        directory = await self._directory_of(name)
        if directory is not None:
            await self._audit.record(
                actor, "user.set_password", "reject", user_key(name), f"directory {directory}"
            )
            raise BadRequest(
                f"{name} comes from the directory {directory!r}: their password is the "
                "directory's; change it there"
            )

    async def _directory_of(self, name: str) -> str | None:
        """The name of the directory ``name`` comes from, or ``None`` for a local user;
        :class:`UnknownUser` when there is no such user."""
        key = user_key(name)

        def job(tx: Tx) -> tuple[bool, str | None]:
            row = tx.one(
                "SELECT users.directory_id, directories.name FROM users LEFT JOIN directories "
                "ON directories.id = users.directory_id WHERE users.name_key = ?",
                key,
            )
            if row is None:
                return False, None
            if row[0] is None:
                return True, None
            return True, str(row[1] or f"#{row[0]}")

        found, directory = await self._db.run_job(job)
        if not found:
            raise UnknownUser(f"no user named {name!r}")
        return directory

    async def set_pin(self, actor: Actor, proof: Proof, name: str, pin: str) -> None:
        """Set the approval PIN after checking it against the user's policy."""
        await self._factors.require(actor, proof, FactorAction.SET_PIN, name)
        async with self._db.read() as conn:
            user = await load_user(conn, name)
            policy = await effective_policy(conn, user.id)
        check_pin(pin, policy)
        pin_hash = await self._hasher.hash(pin)
        await self._change(
            actor, name, "user.set_pin", pin_hash=pin_hash, pin_failures=0, pin_locked_until=None
        )
        if self._notices is not None:
            await self._notices.changed(actor, user.id, AccountChange.PIN_SET)

    async def verify_pin(self, actor: Actor, user: UserRecord, pin: str | None) -> None:
        """Check an approval PIN: one attempt claimed first, then argon2id.

        The attempt is counted before the check (:mod:`backend.services.attempts`), so any
        number of concurrent guesses checks at most ``pin_max_failures`` of them. Raises
        :class:`PinLocked` while locked and for the wrong PIN that takes the last attempt
        (the caller denies the push then), :class:`WrongPin` for another wrong one.
        """
        now = self._clock()
        with self._hasher.admission():  # a full pool refuses before an attempt is spent
            slot = await self._db.run_job(functools.partial(self._claim_pin, actor, user, now))
            if isinstance(slot, Locked):
                raise PinLocked(f"try again after {slot.until.isoformat(timespec='seconds')}")
            if slot.stored is None:
                raise PinRequired(
                    "approvals need a PIN but none is set; set one (openmfa user set-pin) first"
                )
            matches, new_hash = await self._hasher.verify(slot.stored, pin or "")
        audited_at = self._clock()

        def outcome(tx: Tx) -> None:
            if matches:
                attempts.succeeded(tx, "pin", user.id)
                if new_hash is not None:  # the hashing parameters were raised since
                    tx.run(
                        "UPDATE users SET pin_hash = ? WHERE id = ? AND pin_hash = ?",
                        new_hash,
                        user.id,
                        slot.stored,
                    )
                return
            self._audit.add_job(
                tx,
                actor,
                audited_at,
                "pin.verify",
                "locked" if slot.locked_until else "wrong",
                user.name_key,
                f"failures={slot.failures}",
            )

        await self._db.run_job(outcome)
        if matches:
            return
        if slot.locked_until is not None:
            raise PinLocked("too many wrong PINs; approvals are locked for a while")
        raise WrongPin()

    def _claim_pin(
        self, actor: Actor, user: UserRecord, now: datetime, tx: Tx
    ) -> attempts.Claimed | Locked:
        row = tx.one("SELECT pin_hash FROM users WHERE id = ?", user.id)
        if row is None or row[0] is None:
            return attempts.Claimed(0, None, None)  # no PIN set: nothing to guess, not counted
        policy = effective_policy_job(tx, user.id)
        slot = attempts.claim(
            tx, "pin", user.id, now, policy.pin_max_failures, policy.pin_lockout_seconds
        )
        if isinstance(slot, Locked):
            self._audit.add_job(
                tx,
                actor,
                now,
                "pin.verify",
                "locked",
                user.name_key,
                f"refused while locked until {slot.until.isoformat(timespec='seconds')}",
            )
        return slot

    async def verify_password(
        self,
        actor: Actor,
        name: str,
        password: str,
        context: SignInContext | None = None,
        *,
        client: str | None = None,
    ) -> PasswordResult:
        """Check a user's password (primary authentication ``local`` or ``ldap`` of a RADIUS
        client; the portal and console sign-ins).

        A local user's password is the argon2id hash stored here. A user from a directory
        has none here: their password is checked by binding to their directory as them
        (:meth:`DirectoryReader.authenticate`), never against a stored hash. ``client``: the
        RADIUS client that asks; when its primary is ``ldap`` the user must come from that
        client's directory (``not-in-directory`` otherwise). Directory checks take the same
        attempt slots as local ones, so RADIUS and the portal cannot guess directory
        passwords faster than local ones; an empty password never reaches the directory.

        Refuses unknown, disabled, blocked and locked users like a code check does. A wrong
        password counts toward the same lockout as wrong codes (``otp_max_failures``), so
        guessing passwords through the bridge is as limited as guessing codes; the attempt is
        counted *before* argon2id (:mod:`backend.services.attempts`), so concurrent guesses
        check at most the limit. A right one does *not* reset that count: only a right code
        does; otherwise an attacker who knows the password could guess codes for ever with
        ``password,code``. Unknown, disabled, blocked and password-less users cost a dummy
        argon2id check (:meth:`PasswordHasher.verify_dummy`), so the time taken does not say
        which names exist. A full hashing pool raises :class:`HashingBusy` before anything
        is counted.
        """
        try:
            result = await self._verify_password(actor, name, password, context, client)
        except OpenMFAError as exc:
            self.password_outcomes[exc.type] += 1
            raise
        self.password_outcomes["accept" if result.accepted else result.reason] += 1
        return result

    async def _verify_password(
        self,
        actor: Actor,
        name: str,
        password: str,
        context: SignInContext | None,
        client: str | None,
    ) -> PasswordResult:
        now = self._clock()
        where = "" if context is None else f"{context.client_name} {context.client_ip}".strip()
        if client is not None and client not in where:
            where = f"client {client} {where}".strip()
        key = user_key(name)  # a name that cannot exist says nothing about who does
        with contextlib.ExitStack() as admitted:
            hashing = True
            try:
                admitted.enter_context(self._hasher.admission())
            except HashingBusy:
                # A full hashing pool refuses before an attempt is spent; but a directory
                # user's check needs no hashing, so a flood of local checks must not hold
                # it up (the extra read happens only while the pool is full).
                if not await self._from_directory(key):
                    raise
                hashing = False
            found = await self._db.run_job(
                functools.partial(
                    self._claim_password, actor, key, now, where, client, bool(password), hashing
                )
            )
            if isinstance(found, HashingBusy):
                raise found
            if isinstance(found, _DirectorySlot | _Refused):
                pass  # no argon2id: the directory checks it, outside the hashing pool
            elif isinstance(found, _PasswordSlot):
                matches, new_hash = await self._hasher.verify(found.slot.stored or "", password)
                return await self._password_checked(actor, found, matches, new_hash, where)
        if isinstance(found, _Refused):
            return PasswordResult(False, found.reason, found.name)
        if isinstance(found, _DirectorySlot):
            return await self._directory_check(actor, found, password, where)
        if isinstance(found, Locked):
            raise OtpLocked(
                "too many wrong passwords or codes; sign-ins are locked until "
                + found.until.isoformat(timespec="seconds")
            )
        await self._hasher.verify_dummy(password)
        if found is None:
            raise UnknownUser(f"no user named {name!r}")
        if isinstance(found, UserDisabled | UserBlocked):
            raise found
        return PasswordResult(False, "no-password", found)

    def _claim_password(
        self,
        actor: Actor,
        key: str,
        now: datetime,
        where: str,
        client: str | None,
        given: bool,
        hashing: bool,
        tx: Tx,
    ) -> (
        _PasswordSlot
        | _DirectorySlot
        | _Refused
        | Locked
        | UserDisabled
        | UserBlocked
        | HashingBusy
        | str
        | None
    ):
        """The user and one claimed attempt; or why not: ``None`` for an unknown name, the
        refusal, the lock, or the user's name when they have no password (audited here).

        ``given``: the password is not empty (an empty one is never sent to a directory).
        ``hashing``: the hashing pool admitted this check; without it only a directory user
        is checked (the user became local meanwhile: :class:`HashingBusy`, nothing claimed)."""
        row = tx.one(
            "SELECT id, name, disabled, blocked, blocked_reason, password_hash, directory_id, "
            "external_id FROM users WHERE name_key = ?",
            key,
        )
        if row is None:
            return None
        user_id, user_name, disabled, blocked, blocked_reason, stored, directory_id, ext = row
        if disabled:
            return UserDisabled()
        if blocked:
            return UserBlocked(blocked_reason or None)
        required = self._required_directory(tx, client)
        if required is not None and required != directory_id:
            # A gateway of primary ldap checks one directory's passwords: a local user, or
            # one from another directory, has no password it could check.
            self._audit.add_job(
                tx,
                actor,
                now,
                "password.verify",
                "reject",
                key,
                f"not-in-directory {where}".strip(),
            )
            return _Refused(str(user_name), "not-in-directory")
        if directory_id is not None:
            return self._claim_directory(
                tx, actor, now, where, key, given, user_id, str(user_name), directory_id, ext
            )
        if not hashing:
            return HashingBusy("too many password and PIN checks at once; try again in a moment")
        if stored is None:
            # Not counted: there is nothing to guess. Checked first, so no slot is taken.
            locked = tx.one("SELECT otp_locked_until FROM users WHERE id = ?", user_id)
            until = None if locked is None else tx.read_time(locked[0])
            if until is not None and until > now:
                return Locked(until)
            self._audit.add_job(
                tx, actor, now, "password.verify", "reject", key, f"no-password {where}".strip()
            )
            return str(user_name)
        policy = effective_policy_job(tx, user_id)
        slot = attempts.claim(
            tx, "otp", user_id, now, policy.otp_max_failures, policy.otp_lockout_seconds
        )
        if isinstance(slot, Locked):
            return slot
        return _PasswordSlot(user_id, str(user_name), key, slot, policy.otp_max_failures)

    async def _from_directory(self, key: str) -> bool:
        """Whether the user ``key`` comes from a directory (False for unknown names)."""

        def job(tx: Tx) -> bool:
            row = tx.one("SELECT directory_id FROM users WHERE name_key = ?", key)
            return row is not None and row[0] is not None

        return await self._db.run_job(job)

    @staticmethod
    def _required_directory(tx: Tx, client: str | None) -> int | None:
        """The directory a RADIUS client of primary ldap checks passwords against, else
        ``None`` (no client, another primary, or a client this database does not know: a
        bridge with its own clients file; the user's own password source applies then)."""
        if client is None:
            return None
        row = tx.one(
            "SELECT primary_auth, directory_id FROM radius_clients WHERE name_key = ?",
            client.casefold(),
        )
        if row is None or row[0] != "ldap" or row[1] is None:
            return None
        return int(row[1])

    def _claim_directory(
        self,
        tx: Tx,
        actor: Actor,
        now: datetime,
        where: str,
        key: str,
        given: bool,
        user_id: int,
        user_name: str,
        directory_id: int,
        external_id: str | None,
    ) -> _DirectorySlot | _Refused | Locked:
        """One attempt slot for a directory user, as for a local password."""
        row = tx.one("SELECT name FROM directories WHERE id = ?", directory_id)
        directory = str(row[0]) if row is not None else f"#{directory_id}"
        if not given:
            # An empty password is an anonymous bind to LDAP, which "succeeds": never sent.
            self._audit.add_job(
                tx,
                actor,
                now,
                "password.verify",
                "reject",
                key,
                f"directory {directory}: empty-password {where}".strip(),
            )
            return _Refused(user_name, "wrong-password")
        policy = effective_policy_job(tx, user_id)
        slot = attempts.claim(
            tx, "otp", user_id, now, policy.otp_max_failures, policy.otp_lockout_seconds
        )
        if isinstance(slot, Locked):
            return slot
        return _DirectorySlot(
            user_id,
            user_name,
            key,
            slot,
            policy.otp_max_failures,
            directory_id,
            directory,
            external_id,
        )

    async def _directory_check(
        self, actor: Actor, found: _DirectorySlot, password: str, where: str
    ) -> PasswordResult:
        """Bind as the user to their directory; record the outcome like a local check."""
        result = await self._bind(found, password)
        audited_at = self._clock()
        slot = found.slot
        outcome = result.outcome
        detail = f"directory {found.directory}: {outcome}"
        if result.detail:
            detail += f" ({result.detail[:200]})"

        def record(tx: Tx) -> None:
            if outcome in _NOT_COUNTED:
                # Right, or the directory did not answer (not the person's failure; a DC
                # outage must not lock everybody out): the slot is given back.
                attempts.refund(tx, "otp", found.user_id, slot, found.limit)
                audit_result = "accept" if outcome == "ok" else "reject"
                self._audit.add_job(
                    tx,
                    actor,
                    audited_at,
                    "password.verify",
                    audit_result,
                    found.key,
                    f"{detail} {where}".strip(),
                )
                return
            self._audit.add_job(
                tx,
                actor,
                audited_at,
                "password.verify",
                "locked" if slot.locked_until else "reject",
                found.key,
                f"{detail} failures={slot.failures} {where}".strip(),
            )

        await self._db.run_job(record)
        if outcome == "ok":
            return PasswordResult(True, "ok", found.name)
        return PasswordResult(False, _bind_reason(outcome), found.name)

    async def _bind(self, found: _DirectorySlot, password: str) -> BindResult:
        """The directory's answer; an outage (or no directory service) is ``unavailable``."""
        if self.directories is None:
            return BindResult("unavailable", detail="no directory service")
        try:
            reader = await self.directories.reader(found.directory_id)
            return await reader.authenticate(found.name, password, external_id=found.external_id)
        except DirectoryUnavailable as exc:
            return BindResult("unavailable", detail=exc.detail)
        except DirectoryError as exc:
            # The service account's bind or the search was refused: the settings need
            # fixing, and no user can sign in meanwhile.
            return BindResult("unavailable", detail=f"directory error: {exc.detail}")

    async def _password_checked(
        self,
        actor: Actor,
        found: _PasswordSlot,
        matches: bool,
        new_hash: str | None,
        where: str,
    ) -> PasswordResult:
        """Record a checked password: the slot given back when right, the failure audited."""
        audited_at = self._clock()
        slot = found.slot

        def outcome(tx: Tx) -> None:
            if matches:
                attempts.refund(tx, "otp", found.user_id, slot, found.limit)
                if new_hash is not None:  # the hashing parameters were raised since
                    tx.run(
                        "UPDATE users SET password_hash = ? WHERE id = ? AND password_hash = ?",
                        new_hash,
                        found.user_id,
                        slot.stored,
                    )
                self._audit.add_job(
                    tx, actor, audited_at, "password.verify", "accept", found.key, f"ok {where}"
                )
                return
            self._audit.add_job(
                tx,
                actor,
                audited_at,
                "password.verify",
                "locked" if slot.locked_until else "reject",
                found.key,
                f"wrong-password failures={slot.failures} {where}".strip(),
            )

        await self._db.run_job(outcome)
        if matches:
            return PasswordResult(True, "ok", found.name)
        return PasswordResult(False, "wrong-password", found.name)


@dataclass(frozen=True, slots=True)
class _DirectorySlot:
    """A directory user and one claimed attempt, to be checked by the directory."""

    user_id: int
    name: str
    key: str
    slot: attempts.Claimed
    limit: int
    directory_id: int
    directory: str
    external_id: str | None


@dataclass(frozen=True, slots=True)
class _Refused:
    """Refused before any check (audited already): the reason and the user's name."""

    name: str
    reason: PasswordReason


@dataclass(frozen=True, slots=True)
class _PasswordSlot:
    user_id: int
    name: str
    key: str
    slot: attempts.Claimed
    limit: int


def _bind_reason(outcome: BindOutcome) -> PasswordReason:
    """A refused bind's outcome as the reason the caller sees."""
    if outcome == "unavailable":
        return "directory-unavailable"
    if outcome == "empty-password":
        return "wrong-password"
    if outcome == "ok":
        raise ValueError("not a refusal")
    return outcome


def _summaries_query() -> Select[Any]:
    """Users with their active and pending device counts, by name."""
    active = func.count(devices_t.c.id).filter(devices_t.c.state == "active")
    pending = func.count(devices_t.c.id).filter(devices_t.c.state == "pending")
    return (
        select(users_t, active.label("active_devices"), pending.label("pending_devices"))
        .select_from(users_t.outerjoin(devices_t, devices_t.c.user_id == users_t.c.id))
        .group_by(users_t.c.id)
        .order_by(users_t.c.name_key)
    )
