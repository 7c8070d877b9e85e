"""Authenticators: signed-request authentication of app devices, push tokens, removal."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from backend.crypto import token_digest
from backend.domain import signing
from backend.domain.devices import LIVE_STATES
from backend.domain.notices import AccountChange
from backend.domain.stepup import FactorAction, Proof
from backend.domain.text import has_control_character
from backend.domain.webpush import DEFAULT_ALLOWED_ORIGINS, OriginAllowList, parse_subscription
from backend.errors import BadRequest, BadSignature, NotFound, ReplayedRequest, StaleRequest
from backend.services.audit import AuditLog
from backend.services.context import Actor, Clock
from backend.services.factors import FactorGuard
from backend.services.notices import AccountNotices
from backend.store.database import Database
from backend.store.fastpath import Row, Tx, required
from backend.store.queries import load_user, user_name_of
from backend.store.tables import activation_codes_t, devices_t

#: A device the user marked lost: it can no longer sign requests, answer pushes or produce
#: accepted codes (it is not one of LIVE_STATES), and stays listed so the user sees it.
LOST = "lost"
MAX_DEVICE_NAME = 128


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    id: str
    user_id: int
    kind: str
    name: str
    platform: str
    public_key: bytes | None
    push_token: str | None
    state: str
    created_at: datetime
    activated_at: datetime | None
    last_used_at: datetime | None
    user_name: str = ""
    # What the last push said about push_token: "" (not tried yet), "ok" or "invalid" (the
    # service called it dead: the device is served by polling until the app sends a new one).
    push_status: str = ""
    push_error: str = ""
    push_status_at: datetime | None = None
    # A hardware token's serial number (CSV import), or a privacyIDEA token's serial.
    serial: str | None = None

    @property
    def label(self) -> str:
        """The name, with a hardware token's serial when the name does not show it (an
        administrator may have renamed the device)."""
        if self.kind == "oath" and self.serial and self.serial not in self.name:
            return f"{self.name} (serial {self.serial})".strip()
        return self.name

    @property
    def push_summary(self) -> str:
        """How challenges reach this device, in a few words for users and admins."""
        if self.kind == "pipush":
            return "polling (privacyIDEA app: open the app to answer)"
        if self.kind != "app":
            return "-"
        if not self.push_token:
            return "polling (no push token)"
        if self.push_status == "invalid":
            return f"polling (push token invalid: {self.push_error or 'refused'})"
        if self.push_status == "ok":
            return "push ok"
        return "push (not tried yet)"


@dataclass(frozen=True, slots=True)
class ActivationProgress:
    """How far one activation code got: ``waiting`` (not used yet), ``expired`` (never used),
    or ``activated`` with the device it created (``device.state`` is ``pending`` until its
    first answered push or accepted code, then ``active``)."""

    state: str
    expires_at: datetime
    device: DeviceRecord | None = None


def device_from_row(row: Any, user_name: str = "") -> DeviceRecord:
    return DeviceRecord(
        id=row.id,
        user_id=row.user_id,
        kind=row.kind,
        name=row.name,
        platform=row.platform,
        public_key=row.public_key,
        push_token=row.push_token,
        state=row.state,
        created_at=row.created_at,
        activated_at=row.activated_at,
        last_used_at=row.last_used_at,
        user_name=user_name,
        push_status=row.push_status,
        push_error=row.push_error,
        push_status_at=row.push_status_at,
        serial=row.serial,
    )


_DEVICE_SQL = (
    "SELECT d.id, d.user_id, d.kind, d.name, d.platform, d.public_key, d.push_token, d.state, "
    "d.created_at, d.activated_at, d.last_used_at, d.push_status, d.push_error, "
    "d.push_status_at, u.name_key "
    "FROM devices d JOIN users u ON u.id = d.user_id WHERE d.id = ?"
)


def _device_from_tuple(tx: Tx, row: Row) -> DeviceRecord:
    """A :data:`_DEVICE_SQL` row as a record."""
    return DeviceRecord(
        id=row[0],
        user_id=row[1],
        kind=row[2],
        name=row[3],
        platform=row[4],
        public_key=bytes(row[5]),
        push_token=row[6],
        state=row[7],
        created_at=required(tx.read_time(row[8]), "devices.created_at"),
        activated_at=tx.read_time(row[9]),
        last_used_at=tx.read_time(row[10]),
        user_name=row[14],
        push_status=row[11],
        push_error=row[12],
        push_status_at=tx.read_time(row[13]),
    )


def device_gone() -> BadSignature:
    """The refusal for a device that was live at its signature check and was marked lost or
    removed before its write: the same 401 its next request gets."""
    return BadSignature("unknown or removed device: it was marked lost or removed meanwhile")


def check_push_token(
    token: str | None, platform: str = "", allowed: OriginAllowList | None = None
) -> str | None:
    """Push tokens are opaque printable strings of bounded length (APNs, FCM); a web device's
    is its push subscription (JSON), whose endpoint must be on the push-service allow-list:
    it is stored in its canonical compact form."""
    if token is None or token == "":
        return None
    if platform == "web":
        subscription = parse_subscription(token)
        (allowed or OriginAllowList(DEFAULT_ALLOWED_ORIGINS)).check(subscription)
        return subscription.compact()
    if len(token) > 512 or not token.isascii() or not token.isprintable():
        raise BadRequest("the push token must be printable ASCII of at most 512 characters")
    return token


class DeviceService:
    """Looks after devices once they exist; creation is :class:`ActivationService`'s job."""

    def __init__(
        self,
        db: Database,
        audit: AuditLog,
        clock: Clock,
        skew_seconds: int,
        factors: FactorGuard,
        notices: AccountNotices | None = None,
        push_origins: OriginAllowList | None = None,
    ) -> None:
        self._db = db
        self._factors = factors
        self._audit = audit
        self._clock = clock
        self._skew = skew_seconds
        self._notices = notices
        self._push_origins = push_origins or OriginAllowList(DEFAULT_ALLOWED_ORIGINS)

    async def authenticate(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> DeviceRecord:
        """Verify a signed app request; return the device that signed it.

        Checked in order: headers well formed, timestamp within the skew, device known and not
        removed, signature valid, nonce never seen (remembered until the skew window passes).
        """
        signed = signing.parse_headers(headers)
        now = self._clock()
        if abs(now.timestamp() - signed.timestamp) > self._skew:
            raise StaleRequest(f"the device clock is off by more than {self._skew} seconds")
        message = signing.canonical_request(
            method, target, signed.device, str(signed.timestamp), signed.nonce, body
        )
        forget_before = now
        remember_until = now + timedelta(seconds=2 * self._skew)

        # Every app request starts here, the answer that a held RADIUS request waits for
        # among them: one raw-SQL job (lookup, signature, nonce) instead of two ORM
        # transactions. A refusal raised inside the job rolls back its nonce writes.
        def check(tx: Tx) -> DeviceRecord:
            row = tx.one(_DEVICE_SQL, signed.device)
            if row is None or row[5] is None or row[7] not in LIVE_STATES:
                raise BadSignature("unknown or removed device")
            signing.verify(bytes(row[5]), signed.signature, message)
            tx.run(
                "DELETE FROM used_nonces WHERE device_id = ? AND expires_at < ?",
                row[0],
                tx.time(forget_before),
            )
            inserted = tx.run(
                "INSERT INTO used_nonces (device_id, nonce, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                row[0],
                signed.nonce,
                tx.time(remember_until),
            )
            if inserted != 1:
                raise ReplayedRequest()
            return _device_from_tuple(tx, row)

        return await self._db.run_job(check)

    async def get(self, device_id: str) -> DeviceRecord:
        """One device by id."""
        async with self._db.read() as conn:
            row = (await conn.execute(select(devices_t).where(devices_t.c.id == device_id))).first()
        if row is None:
            raise NotFound("no such device")
        return device_from_row(row)

    async def list_for_user(
        self, user_name: str, include_removed: bool = False
    ) -> list[DeviceRecord]:
        """A user's authenticators, oldest first."""
        async with self._db.read() as conn:
            user = await load_user(conn, user_name)
            stmt = select(devices_t).where(devices_t.c.user_id == user.id)
            if not include_removed:
                stmt = stmt.where(devices_t.c.state.in_(LIVE_STATES))
            rows = (await conn.execute(stmt.order_by(devices_t.c.created_at))).all()
        return [device_from_row(row) for row in rows]

    async def update_push_token(
        self, actor: Actor, device: DeviceRecord, token: str | None
    ) -> None:
        """Replace (or clear) the device's push token; its push status starts afresh."""
        token = check_push_token(token, device.platform, self._push_origins)
        async with self._db.write() as conn:
            done = await conn.execute(
                update(devices_t)
                # Live at the signature check; marked lost or removed since, it changes nothing.
                .where(devices_t.c.id == device.id, devices_t.c.state.in_(LIVE_STATES))
                # A new token has not been tried: an "invalid" mark was about the old one.
                .values(push_token=token, push_status="", push_error="", push_status_at=None)
            )
            if done.rowcount != 1:
                raise device_gone()
            user = await user_name_of(conn, device.user_id)
            await self._audit.add(conn, actor, "device.push_token", "ok", user, device.id)

    async def remove(
        self, actor: Actor, proof: Proof, device_id: str, user_name: str | None = None
    ) -> None:
        """Mark a device removed: it can no longer sign requests or produce accepted codes.
        A device marked lost can be removed too. The user's other web sessions end."""
        await self._require(actor, proof, FactorAction.REMOVE_DEVICE, device_id, user_name)
        async with self._db.write() as conn:
            stmt = update(devices_t).where(
                devices_t.c.id == device_id, devices_t.c.state.in_((*LIVE_STATES, LOST))
            )
            if user_name is not None:
                stmt = stmt.where(devices_t.c.user_id == (await load_user(conn, user_name)).id)
            row = (
                await conn.execute(
                    stmt.values(state="removed").returning(devices_t.c.user_id, devices_t.c.name)
                )
            ).first()
            if row is None:
                raise NotFound("no such device (or it was already removed)")
            await self._audit.add(
                conn, actor, "device.remove", "ok", await user_name_of(conn, row.user_id), device_id
            )
        await self._after(actor, row.user_id, AccountChange.DEVICE_REMOVED, device_id, row.name)

    async def rename(
        self, actor: Actor, proof: Proof, device_id: str, name: str, user_name: str | None = None
    ) -> DeviceRecord:
        """Give a live or lost device a new name (1 to 128 characters, no control characters).

        With ``user_name`` only that user's device is touched: anyone else's is
        :class:`NotFound`, like a missing one."""
        name = " ".join(name.split())  # no tabs or line breaks in a name
        if not name:
            raise BadRequest("the device name may not be empty")
        if len(name) > MAX_DEVICE_NAME or has_control_character(name):
            raise BadRequest(
                f"the device name has at most {MAX_DEVICE_NAME} characters and no control ones"
            )
        await self._require(actor, proof, FactorAction.RENAME_DEVICE, device_id, user_name)
        row = await self._change_state(
            actor, device_id, user_name, (*LIVE_STATES, LOST), {"name": name}, "device.rename", name
        )
        return device_from_row(row)

    async def mark_lost(
        self, actor: Actor, proof: Proof, device_id: str, user_name: str | None = None
    ) -> DeviceRecord:
        """The user lost this device: from now on it cannot sign requests, answer pushes or
        produce accepted codes. It stays listed (state ``lost``) until it is removed."""
        await self._require(actor, proof, FactorAction.MARK_LOST, device_id, user_name)
        row = await self._change_state(
            actor, device_id, user_name, LIVE_STATES, {"state": LOST}, "device.lost", ""
        )
        await self._after(actor, row.user_id, AccountChange.DEVICE_LOST, row.id, row.name)
        return device_from_row(row)

    async def _after(
        self, actor: Actor, user_id: int, change: AccountChange, device_id: str, name: str
    ) -> None:
        if self._notices is not None:
            await self._notices.changed(actor, user_id, change, f"{device_id} “{name}”")

    async def _require(
        self,
        actor: Actor,
        proof: Proof,
        action: FactorAction,
        device_id: str,
        user_name: str | None,
    ) -> None:
        """The guard, on the device's owner (a device of another user is "no such device",
        as the change itself would say)."""
        subject = await self._factors.subject(None, device_id[:64])
        if user_name is not None:
            async with self._db.read() as conn:
                if (await load_user(conn, user_name)).id != subject.state.user_id:
                    raise NotFound("no such device")
        await self._factors.require(actor, proof, action, None, device_id[:64])

    async def _change_state(
        self,
        actor: Actor,
        device_id: str,
        user_name: str | None,
        states: tuple[str, ...],
        values: dict[str, object],
        action: str,
        detail: str,
    ) -> Any:
        async with self._db.write() as conn:
            stmt = update(devices_t).where(
                devices_t.c.id == device_id[:64], devices_t.c.state.in_(states)
            )
            if user_name is not None:
                stmt = stmt.where(devices_t.c.user_id == (await load_user(conn, user_name)).id)
            row = (await conn.execute(stmt.values(**values).returning(*devices_t.c))).first()
            if row is None:
                raise NotFound("no such device")
            owner = await user_name_of(conn, row.user_id)
            await self._audit.add(
                conn, actor, action, "ok", owner, f"{device_id} {detail}".strip()[:1024]
            )
        return row

    async def activation_progress(self, user_name: str, reference: str) -> ActivationProgress:
        """How far the user's activation code with digest ``reference`` got (see
        :class:`ActivationProgress`); another user's code, or an unknown one, is
        :class:`NotFound`. The digest, not the code, names it: a page may poll with it."""
        async with self._db.read() as conn:
            user = await load_user(conn, user_name)
            code = (
                await conn.execute(
                    select(activation_codes_t).where(
                        activation_codes_t.c.code_hash == reference[:64],
                        activation_codes_t.c.user_id == user.id,
                    )
                )
            ).first()
            if code is None:
                raise NotFound("no such activation code")
            device = None
            if code.device_id is not None and code.used_at is not None:
                row = (
                    await conn.execute(select(devices_t).where(devices_t.c.id == code.device_id))
                ).first()
                device = None if row is None else device_from_row(row, user.name)
        if device is not None:
            return ActivationProgress("activated", code.expires_at, device)
        if code.expires_at <= self._clock():
            return ActivationProgress("expired", code.expires_at)
        return ActivationProgress("waiting", code.expires_at)


def activation_reference(code: str) -> str:
    """The name a page polls an activation code's progress by: its stored digest."""
    return token_digest(code)
