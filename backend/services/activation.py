"""Activation: one-time codes for our app, and enrolment of standard OATH apps."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import quote, urlencode

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from backend.crypto import SecretBox, new_token, token_digest
from backend.domain import signing, totp
from backend.domain.devices import PLATFORMS
from backend.domain.notices import AccountChange
from backend.domain.policy import check_pin
from backend.domain.stepup import AdministratorProof, FactorAction, Proof
from backend.domain.webpush import OriginAllowList
from backend.errors import (
    ActivationCodeExpired,
    ActivationCodeInvalid,
    ActivationCodeUsed,
    BadRequest,
    BadSignature,
    Conflict,
    UserBlocked,
    UserDisabled,
)
from backend.passwords import PasswordHasher
from backend.services.audit import AuditLog
from backend.services.context import Actor, Clock
from backend.services.devices import check_push_token
from backend.services.factors import FactorGuard
from backend.services.notices import AccountNotices
from backend.store.database import Database
from backend.store.queries import UserRecord, effective_policy, load_user, load_user_by_id
from backend.store.tables import activation_codes_t, devices_t, users_t

ACTIVATION_SCHEME = "openmfa://activate"


@dataclass(frozen=True, slots=True)
class ActivationOffer:
    """What the user is shown: the code as text and the URI inside the QR code."""

    user_name: str
    code: str
    uri: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class OathEnrollment:
    """A standard OATH token; its otpauth URI (holding the seed) is shown exactly once."""

    user_name: str
    device_id: str
    seed: str
    uri: str
    state: str = "pending"


@dataclass(frozen=True, slots=True)
class ActivatedDevice:
    """What the app receives once: its id and the seed for offline codes."""

    device_id: str
    user_name: str
    seed: str
    require_pin: bool
    has_pin: bool


def new_device_id() -> str:
    """Random, URL-safe, not guessable."""
    return "dev_" + secrets.token_urlsafe(16)


def key_in_use() -> Conflict:
    """The refusal for a public key that another device registered (in any state)."""
    return Conflict(
        "this public key is registered for another device; generate a new key pair for "
        "every activation"
    )


def _check_can_enrol(user: UserRecord) -> None:
    if user.disabled:
        raise UserDisabled()
    if user.blocked:
        raise UserBlocked()


class ActivationService:
    """Issues activation codes and turns them into devices."""

    def __init__(
        self,
        db: Database,
        box: SecretBox,
        hasher: PasswordHasher,
        audit: AuditLog,
        clock: Clock,
        public_url: str,
        issuer: str,
        factors: FactorGuard,
        notices: AccountNotices | None = None,
        push_origins: OriginAllowList | None = None,
    ) -> None:
        self._db = db
        self._factors = factors
        self._push_origins = push_origins
        self._box = box
        self._hasher = hasher
        self._audit = audit
        self._clock = clock
        self._public_url = public_url
        self._issuer = issuer
        self._notices = notices

    def activation_uri(self, code: str) -> str:
        """``openmfa://activate?url=<backend>&code=<code>``: all an app needs to activate."""
        return f"{ACTIVATION_SCHEME}?{urlencode({'url': self._public_url, 'code': code})}"

    def web_app_url(self, code: str) -> str:
        """``<public URL>/app/#activate=<code>``: the web app's link for the same code.

        In the fragment, so the code never reaches a server or proxy log; the app reads it
        once and removes it from the address bar and history.
        """
        return f"{self._public_url.rstrip('/')}/app/#activate={quote(code, safe='')}"

    async def create_code(
        self, actor: Actor, proof: Proof, user_name: str, ttl_seconds: int | None = None
    ) -> ActivationOffer:
        """A single-use code (160 bits, stored hashed) that expires after the policy's lifetime."""
        if ttl_seconds is not None and not 60 <= ttl_seconds <= 7 * 86400:
            raise BadRequest("an activation code lives from 1 minute to 7 days")
        await self._factors.require(actor, proof, FactorAction.ENROL_APP, user_name)
        code = new_token()
        now = self._clock()
        async with self._db.write() as conn:
            user = await load_user(conn, user_name)
            _check_can_enrol(user)
            if ttl_seconds is None:
                ttl_seconds = (await effective_policy(conn, user.id)).activation_code_ttl_seconds
            expires_at = now + timedelta(seconds=ttl_seconds)
            await conn.execute(
                insert(activation_codes_t).values(
                    user_id=user.id,
                    code_hash=token_digest(code),
                    created_at=now,
                    expires_at=expires_at,
                )
            )
            await self._audit.add(
                conn,
                actor,
                "activation.create",
                "ok",
                user.name_key,
                f"expires {expires_at.isoformat()}",
            )
        return ActivationOffer(user.name, code, self.activation_uri(code), expires_at)

    async def enrol_oath(
        self, actor: Actor, proof: Proof, user_name: str, name: str = ""
    ) -> OathEnrollment:
        """An OATH token. An administrator's is ``active`` at once (they hand the seed over);
        anyone else's is ``pending`` until the portal's confirm step accepts a code from it
        (:meth:`OtpService.verify` with ``confirm=``): a gateway never activates one."""
        await self._factors.require(actor, proof, FactorAction.ENROL_OATH, user_name)
        seed = totp.new_seed()
        device_id = new_device_id()
        now = self._clock()
        by_admin = isinstance(proof, AdministratorProof)
        async with self._db.write() as conn:
            user = await load_user(conn, user_name)
            _check_can_enrol(user)
            await conn.execute(
                insert(devices_t).values(
                    id=device_id,
                    user_id=user.id,
                    kind="oath",
                    name=name[:128] or "OATH app",
                    platform="",
                    seed_enc=self._box.seal(seed.encode(), f"seed:{device_id}"),
                    state="active" if by_admin else "pending",
                    created_at=now,
                    activated_at=now if by_admin else None,
                )
            )
            await self._audit.add(
                conn,
                actor,
                "oath.enrol",
                "ok",
                user.name_key,
                f"{device_id} {'active' if by_admin else 'pending'}",
            )
        if self._notices is not None:
            detail = f"{device_id} “{name[:128] or 'OATH app'}”"
            await self._notices.changed(actor, user.id, AccountChange.OATH_ADDED, detail)
        uri = totp.otpauth_uri(seed, user.name, self._issuer)
        return OathEnrollment(user.name, device_id, seed, uri, "active" if by_admin else "pending")

    async def activate(
        self,
        actor: Actor,
        code: str,
        public_key: bytes,
        platform: str,
        push_token: str | None = None,
        name: str = "",
        pin: str | None = None,
    ) -> ActivatedDevice:
        """Redeem an activation code: create the (pending) device and hand out its seed."""
        if platform not in PLATFORMS:
            raise BadRequest(f"platform must be one of {', '.join(PLATFORMS)}")
        try:  # Ed25519 (32 bytes) or P-256 (65, uncompressed): a valid, strong point
            signing.load_public_key(public_key)
        except BadSignature as exc:
            raise BadRequest(f"public_key: {exc.detail}") from None
        push_token = check_push_token(push_token, platform, self._push_origins)
        if len(name) > 128:
            raise BadRequest("the device name has at most 128 characters")
        if len(code) > 128:
            raise ActivationCodeInvalid("unknown activation code")
        now = self._clock()
        digest = token_digest(code)
        async with self._db.read() as conn:
            row = (
                await conn.execute(
                    select(activation_codes_t).where(activation_codes_t.c.code_hash == digest)
                )
            ).first()
            if row is None:
                raise ActivationCodeInvalid("unknown activation code")
            user = await load_user_by_id(conn, row.user_id)
            policy = await effective_policy(conn, user.id)
        if row.used_at is not None:
            raise ActivationCodeUsed()
        if row.expires_at <= now:
            raise ActivationCodeExpired()
        _check_can_enrol(user)
        pin_hash = None
        if pin is not None:
            check_pin(pin, policy)
            pin_hash = await self._hasher.hash(pin)
        seed = totp.new_seed()
        device_id = new_device_id()
        try:
            async with self._db.write() as conn:
                # One device per key (any state): see tables.Device.
                registered = await conn.execute(
                    select(devices_t.c.id).where(devices_t.c.public_key == public_key)
                )
                if registered.first() is not None:
                    raise key_in_use()
                claimed = await conn.execute(
                    update(activation_codes_t)
                    .where(
                        activation_codes_t.c.id == row.id, activation_codes_t.c.used_at.is_(None)
                    )
                    .values(used_at=now, device_id=device_id)
                )
                if claimed.rowcount != 1:
                    raise ActivationCodeUsed()
                await conn.execute(
                    insert(devices_t).values(
                        id=device_id,
                        user_id=user.id,
                        kind="app",
                        name=name or f"{platform} device",
                        platform=platform,
                        public_key=public_key,
                        push_token=push_token,
                        seed_enc=self._box.seal(seed.encode(), f"seed:{device_id}"),
                        state="pending",
                        created_at=now,
                    )
                )
                if pin_hash is not None:
                    await conn.execute(
                        update(users_t)
                        .where(users_t.c.id == user.id)
                        .values(pin_hash=pin_hash, pin_failures=0, pin_locked_until=None)
                    )
                await self._audit.add(
                    conn, actor, "device.activate", "ok", user.name_key, f"{device_id} {platform}"
                )
        except IntegrityError:
            # Two activations with one key at once (PostgreSQL): the unique index kept one.
            raise key_in_use() from None
        if self._notices is not None:
            detail = f"{device_id} “{name or f'{platform} device'}” ({platform})"
            if pin_hash is not None:
                detail += "; the approval PIN was set too"
            await self._notices.changed(actor, user.id, AccountChange.APP_ADDED, detail)
        return ActivatedDevice(
            device_id=device_id,
            user_name=user.name,
            seed=seed,
            require_pin=policy.require_pin,
            has_pin=pin_hash is not None or user.has_pin,
        )
