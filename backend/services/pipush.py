"""The privacyIDEA Authenticator as a push device (poll-only): enrolment, rollout, poll, answer.

The free privacyIDEA Authenticator app holds a *push token*: a serial, its own RSA key pair and
the public half of a per-token server key. This service maps what the app does onto the same
domain services our own app uses (docs/dev/privacyidea-app-protocol.md has the wire contract,
:mod:`backend.domain.pipush` the signed strings):

* :meth:`PiPushService.create_enrollment` makes a ``pending`` device (``kind=pipush``) and a
  one-time enrolment credential (stored hashed in ``activation_codes``) for the QR code;
* :meth:`~PiPushService.rollout` redeems the credential with the phone's public key, creates
  the server key (sealed with the server key, bound to the device) and makes the device
  ``active``;
* :meth:`~PiPushService.poll` hands out the user's pending push challenges, each with a nonce
  of its own per device (``pipush_nonces``) and signed with the server key;
* :meth:`~PiPushService.answer` checks the phone's signature, spends the nonce and answers the
  challenge through :class:`~backend.services.challenges.ChallengeService`: accept approves,
  "cancelled" denies, "not me" (and a plain decline) reports fraud with the full fraud flow;
* :meth:`~PiPushService.token_update` checks the app's signed start-up report.

Refusals are raised as :mod:`backend.errors`; the endpoint (:mod:`backend.api.pipush_v1`)
audits them and words them the way the app reads them.
"""

from __future__ import annotations

import asyncio
import math
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from backend.crypto import SecretBox, same, token_digest
from backend.domain import pipush
from backend.domain.challenge import Answer
from backend.domain.devices import LIVE_STATES
from backend.domain.notices import AccountChange
from backend.domain.stepup import FactorAction, Proof
from backend.errors import (
    ActivationCodeExpired,
    ActivationCodeInvalid,
    ActivationCodeUsed,
    BadRequest,
    BadSignature,
    ChallengeExpired,
    ConfigurationError,
    NotFound,
    OpenMFAError,
    PinRequired,
    ReplayedRequest,
    StaleRequest,
    UserBlocked,
    UserDisabled,
)
from backend.services.activation import key_in_use, new_device_id
from backend.services.audit import AuditLog
from backend.services.challenges import ChallengeService, ChallengeView
from backend.services.context import Actor, Clock
from backend.services.devices import DeviceRecord
from backend.services.factors import FactorGuard
from backend.services.notices import AccountNotices
from backend.store.database import Database
from backend.store.fastpath import Row, Tx, required
from backend.store.queries import effective_policy, load_user, load_user_by_id
from backend.store.tables import activation_codes_t, devices_t

#: Where the app's requests arrive (rollout, poll, token update and answers): one URL, as the
#: app sends everything to the QR code's ``url`` and answers to each challenge's ``url``.
ENDPOINT_PATH = "/pipush/v1/push"
KIND = "pipush"
#: The per-token server key. 3072 bits is NIST's 128-bit level; 4096 would cost ~2.5 s to
#: generate and ~8 ms per signature here against ~0.6 s and ~3.6 ms.
SERVER_KEY_BITS = 3072
#: The app signs polls with its clock: ±1 minute (privacyIDEA's window), ±5 for token updates.
POLL_WINDOW_SECONDS = 60
UPDATE_WINDOW_SECONDS = 300
_MAX_TTL_MINUTES = 7 * 24 * 60
_FORMAT_HINT = "Choose the number shown at the sign-in."


@dataclass(frozen=True, slots=True)
class PiPushOffer:
    """What the user scans: the ``otpauth://pipush/...`` URI (holding the one-time enrolment
    credential, so it is shown once), and the pending device it will roll out."""

    user_name: str
    device_id: str
    serial: str
    uri: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class RolledOut:
    """A rolled-out token: the server key's public half as the app parses it (PKCS#1)."""

    device_id: str
    user_name: str
    server_public_key: str


@dataclass(frozen=True, slots=True)
class _PushToken:
    """A privacyIDEA push token as the poll, answer and update paths need it."""

    device_id: str
    user_id: int
    user_name: str
    serial: str
    state: str
    public_key: bytes | None
    server_key_enc: bytes | None


@dataclass(frozen=True, slots=True)
class _Pending:
    """One pending challenge with the nonce (and number options) this token sees for it."""

    challenge_id: str
    nonce: str
    display: str
    options: str


@dataclass(frozen=True, slots=True)
class _AnswerFields:
    """The unsigned form fields that say how to rebuild the string the phone signed."""

    decline: bool
    decline_reason: str | None
    presence_answer: str | None


@dataclass(frozen=True, slots=True)
class _Spent:
    """An answer whose signature verified and whose nonce is now spent, with what the signed
    string says: the reaction and the chosen option."""

    device: DeviceRecord
    challenge_id: str
    reaction: Answer
    choice: str | None
    app_lock: bool


_BY_SERIAL_SQL = (
    "SELECT d.id, d.user_id, u.name_key, d.serial, d.state, d.public_key, d.server_key_enc "
    "FROM devices d JOIN users u ON u.id = d.user_id WHERE d.serial = ? AND d.kind = 'pipush'"
)

_PENDING_SQL = (
    "SELECT c.id, c.number, c.display, c.expires_at, n.nonce, n.options, n.used_at "
    "FROM challenges c LEFT JOIN pipush_nonces n ON n.challenge_id = c.id AND n.device_id = ? "
    "WHERE c.user_id = ? AND c.state = 'pending' AND c.method = 'push' AND c.expires_at > ? "
    "ORDER BY c.created_at"
)

_NONCE_SQL = (
    "SELECT n.challenge_id, n.options, n.used_at, n.expires_at, d.id, d.user_id, d.kind, "
    "d.name, d.platform, d.public_key, d.state, d.created_at, d.activated_at, d.last_used_at, "
    "d.serial, d.app_lock, u.name_key "
    "FROM pipush_nonces n JOIN devices d ON d.id = n.device_id "
    "JOIN users u ON u.id = d.user_id WHERE n.nonce = ?"
)


def _token_from_row(row: Row) -> _PushToken:
    return _PushToken(
        device_id=row[0],
        user_id=row[1],
        user_name=row[2],
        serial=row[3],
        state=row[4],
        public_key=None if row[5] is None else bytes(row[5]),
        server_key_enc=None if row[6] is None else bytes(row[6]),
    )


def _phone_key(der: bytes) -> rsa.RSAPublicKey:
    key = serialization.load_der_public_key(der)
    if not isinstance(key, rsa.RSAPublicKey):  # rollout only stores RSA keys
        raise BadSignature("the token's key is not an RSA key")
    return key


def _device_actor(actor: Actor, device_id: str) -> Actor:
    return Actor(f"device:{device_id}", actor.source, actor.request_id)


def _refusal(exc: OpenMFAError, actor: Actor, user_name: str = "") -> OpenMFAError:
    """``exc`` with who and whom it concerns, for the endpoint's audit row."""
    exc.extra.setdefault("actor", actor)
    if user_name:
        exc.extra.setdefault("user_name", user_name)
    return exc


def _check_window(timestamp: str, now: datetime, seconds: int) -> None:
    sent = pipush.parse_timestamp(timestamp)
    if abs((now - sent).total_seconds()) > seconds:
        raise StaleRequest(f"the phone's clock is off by more than {seconds} seconds")


class PiPushService:
    """The privacyIDEA Authenticator's push tokens, on the shared challenge flow."""

    def __init__(
        self,
        db: Database,
        box: SecretBox,
        audit: AuditLog,
        clock: Clock,
        challenges: ChallengeService,
        public_url: str,
        issuer: str,
        server_key_bits: int = SERVER_KEY_BITS,
        notices: AccountNotices | None = None,
        *,
        factors: FactorGuard,
    ) -> None:
        self._notices = notices
        self._db = db
        self._factors = factors
        self._box = box
        self._audit = audit
        self._clock = clock
        self._challenges = challenges
        self._public_url = public_url
        self._issuer = issuer
        self._server_key_bits = server_key_bits

    # -- enrolment ------------------------------------------------------------------------------

    def endpoint(self) -> str:
        """The URL in QR codes and challenges, in the canonical form the app prints back."""
        try:
            return pipush.canonical_endpoint(self._public_url + ENDPOINT_PATH)
        except ValueError as exc:
            raise ConfigurationError(
                f"the privacyIDEA Authenticator needs public_url to be the server's https:// "
                f"address as phones reach it ({exc}); it is {self._public_url!r}"
            ) from None

    async def create_enrollment(
        self,
        actor: Actor,
        proof: Proof,
        user_name: str,
        name: str = "",
        ttl_seconds: int | None = None,
    ) -> PiPushOffer:
        """A pending push token for ``user_name`` and the QR URI that rolls it out once.

        The credential lives ``ttl_seconds`` or the policy's ``activation_code_ttl_seconds``,
        rounded up to whole minutes (the app counts the QR's ``ttl`` in minutes). If the policy
        asks for a PIN, the QR asks the app to lock the token behind the phone's screen lock.
        """
        if len(name) > 128:
            raise BadRequest("the device name has at most 128 characters")
        if ttl_seconds is not None and not 60 <= ttl_seconds <= 7 * 86400:
            raise BadRequest("an enrolment lives from 1 minute to 7 days")
        await self._factors.require(actor, proof, FactorAction.ENROL_PIPUSH, user_name)
        endpoint = self.endpoint()
        credential = secrets.token_hex(20)
        serial = pipush.new_serial()
        device_id = new_device_id()
        now = self._clock()
        async with self._db.write() as conn:
            user = await load_user(conn, user_name)
            if user.disabled:
                raise UserDisabled()
            if user.blocked:
                raise UserBlocked()
            policy = await effective_policy(conn, user.id)
            if ttl_seconds is None:
                ttl_seconds = policy.activation_code_ttl_seconds
            ttl_minutes = min(_MAX_TTL_MINUTES, max(1, math.ceil(ttl_seconds / 60)))
            expires_at = now + timedelta(minutes=ttl_minutes)
            await self._retire_expired(conn, actor, user.id, user.name_key, now)
            await conn.execute(
                insert(devices_t).values(
                    id=device_id,
                    user_id=user.id,
                    kind=KIND,
                    name=name or "privacyIDEA Authenticator",
                    platform="",
                    # No TOTP seed of its own (the same app can hold an OATH token beside it):
                    # an empty sealed value keeps the column's NOT NULL honest.
                    seed_enc=self._box.seal(b"", f"seed:{device_id}"),
                    serial=serial,
                    app_lock=policy.require_pin,
                    state="pending",
                    created_at=now,
                )
            )
            await conn.execute(
                insert(activation_codes_t).values(
                    user_id=user.id,
                    code_hash=token_digest(credential),
                    created_at=now,
                    expires_at=expires_at,
                    device_id=device_id,
                )
            )
            await self._audit.add(
                conn,
                actor,
                "pipush.enrol",
                "ok",
                user.name_key,
                f"{device_id} serial {serial} expires {expires_at.isoformat()}",
            )
        uri = pipush.enrollment_uri(
            label=user.name,
            endpoint=endpoint,
            ttl_minutes=ttl_minutes,
            issuer=self._issuer,
            credential=credential,
            serial=serial,
            pin=policy.require_pin,
        )
        return PiPushOffer(user.name, device_id, serial, uri, expires_at)

    async def _retire_expired(
        self,
        conn: AsyncConnection,
        actor: Actor,
        user_id: int,
        user_name: str,
        now: datetime,
    ) -> None:
        """Remove the user's tokens whose enrolment expired before any rollout: the app
        deleted them too, and they would show as pending for ever."""
        d, a = devices_t.c, activation_codes_t.c
        expired = select(a.device_id).where(
            a.user_id == user_id, a.used_at.is_(None), a.expires_at <= now
        )
        rows = (
            await conn.execute(
                update(devices_t)
                .where(
                    d.user_id == user_id,
                    d.kind == KIND,
                    d.state == "pending",
                    d.id.in_(expired),
                )
                .values(state="removed")
                .returning(d.id)
            )
        ).all()
        for row in rows:
            await self._audit.add(
                conn, actor, "device.remove", "ok", user_name, f"{row.id} enrolment expired"
            )

    # -- rollout ----------------------------------------------------------------------------

    async def rollout(
        self,
        actor: Actor,
        serial: str,
        credential: str,
        pubkey: str,
        user_agent: str = "",
    ) -> RolledOut:
        """Redeem the enrolment credential with the phone's public key (single use)."""
        pipush.check_serial(serial)
        phone_key = pipush.load_phone_key(pubkey)
        now = self._clock()
        d, a = devices_t.c, activation_codes_t.c
        async with self._db.read() as conn:
            row = (
                await conn.execute(
                    select(
                        d.id,
                        d.user_id,
                        d.state,
                        d.public_key,
                        a.id.label("code_id"),
                        a.code_hash,
                        a.used_at,
                        a.expires_at,
                    )
                    .join(activation_codes_t, a.device_id == d.id)
                    .where(d.serial == serial, d.kind == KIND)
                )
            ).first()
            user = None
            if row is not None:
                user = await load_user_by_id(conn, row.user_id)
        if row is None or user is None or not same(token_digest(credential), row.code_hash):
            raise _refusal(ActivationCodeInvalid("unknown serial or enrolment credential"), actor)
        refuse_for = user.name_key
        if row.used_at is not None or row.state != "pending" or row.public_key is not None:
            raise _refusal(ActivationCodeUsed(), actor, refuse_for)
        if row.expires_at <= now:
            await self._expire(actor, row.id, refuse_for)
            raise _refusal(ActivationCodeExpired(), actor, refuse_for)
        if user.disabled or user.blocked:
            raise _refusal(UserDisabled() if user.disabled else UserBlocked(), actor, refuse_for)
        spki = phone_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        async with self._db.read() as conn:  # before the costly key: one device per key
            if (await conn.execute(select(d.id).where(d.public_key == spki))).first():
                raise _refusal(key_in_use(), actor, refuse_for)
        # ~0.6 s of CPU: off the event loop. Two racing rollouts both make one; one wins below.
        key = await asyncio.to_thread(rsa.generate_private_key, 65537, self._server_key_bits)
        sealed = self._box.seal(
            key.private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            f"pipush-server-key:{row.id}",
        )
        platform = _platform(user_agent)
        try:
            async with self._db.write() as conn:
                claimed = await conn.execute(
                    update(activation_codes_t)
                    .where(a.id == row.code_id, a.used_at.is_(None))
                    .values(used_at=now)
                )
                done = await conn.execute(
                    update(devices_t)
                    .where(d.id == row.id, d.state == "pending", d.public_key.is_(None))
                    .values(
                        public_key=spki,
                        server_key_enc=sealed,
                        platform=platform,
                        state="active",
                        activated_at=now,
                    )
                )
                if claimed.rowcount != 1 or done.rowcount != 1:
                    raise _refusal(ActivationCodeUsed(), actor, refuse_for)
                await self._audit.add(
                    conn,
                    _device_actor(actor, row.id),
                    "pipush.rollout",
                    "ok",
                    refuse_for,
                    f"{row.id} serial {serial} phone key {phone_key.key_size} bits "
                    f"{user_agent[:128]}".strip(),
                )
        except IntegrityError:
            # The same phone key rolled out for another token at this moment.
            raise _refusal(key_in_use(), actor, refuse_for) from None
        if self._notices is not None:
            await self._notices.changed(
                _device_actor(actor, row.id),
                user.id,
                AccountChange.PIPUSH_ADDED,
                f"{row.id} serial {serial} {platform}".strip(),
            )
        return RolledOut(row.id, user.name, pipush.server_public_key(key))

    async def _expire(self, actor: Actor, device_id: str, user_name: str) -> None:
        """A rollout came after the enrolment's end: the token will never roll out."""
        async with self._db.write() as conn:
            removed = await conn.execute(
                update(devices_t)
                .where(devices_t.c.id == device_id, devices_t.c.state == "pending")
                .values(state="removed")
            )
            if removed.rowcount == 1:
                await self._audit.add(
                    conn, actor, "device.remove", "ok", user_name, f"{device_id} enrolment expired"
                )

    # -- requests signed by the phone -------------------------------------------------------

    async def _token(self, actor: Actor, serial: str) -> _PushToken:
        """A rolled-out, live token by serial; anything else reads as an unknown token."""
        pipush.check_serial(serial)
        row = await self._db.run_read(lambda tx: tx.one(_BY_SERIAL_SQL, serial))
        token = None if row is None else _token_from_row(row)
        if token is None or token.public_key is None or token.state not in LIVE_STATES:
            raise _refusal(
                BadSignature("unknown serial, or the token is not rolled out or was removed"),
                actor,
                "" if token is None else token.user_name,
            )
        return token

    def _verify(self, actor: Actor, token: _PushToken, message: str, signature: str) -> None:
        assert token.public_key is not None  # noqa: S101 - _token() checked it
        try:
            pipush.verify(_phone_key(token.public_key), message, signature)
        except OpenMFAError as exc:
            raise _refusal(exc, _device_actor(actor, token.device_id), token.user_name) from None

    async def poll(
        self, actor: Actor, serial: str, timestamp: str, signature: str
    ) -> list[dict[str, object]]:
        """The token's pending push challenges as the app's poll items (each one signed).

        A challenge keeps its nonce for this token across polls: the app keys requests by
        nonce, and a fresh one each poll would show the same sign-in again and again.
        """
        token = await self._token(actor, serial)
        now = self._clock()
        try:
            _check_window(timestamp, now, POLL_WINDOW_SECONDS)
        except OpenMFAError as exc:
            raise _refusal(exc, _device_actor(actor, token.device_id), token.user_name) from None
        self._verify(actor, token, pipush.poll_message(serial, timestamp), signature)
        pending = await self._db.run_job(lambda tx: _pending_job(tx, token, now))
        if not pending:
            return []
        endpoint = self.endpoint()
        assert token.server_key_enc is not None  # noqa: S101 - set with the public key
        sealed = token.server_key_enc
        purpose = f"pipush-server-key:{token.device_id}"

        def sign_all() -> list[dict[str, object]]:
            # RSA signatures cost milliseconds each: in a worker thread, not on the loop.
            key = serialization.load_der_private_key(
                self._box.open(sealed, purpose),
                password=None,
                unsafe_skip_rsa_key_validation=True,  # our own key, sealed with AEAD
            )
            assert isinstance(key, rsa.RSAPrivateKey)  # noqa: S101 - rollout stores RSA
            return [
                pipush.sign_challenge(
                    key,
                    nonce=item.nonce,
                    url=endpoint,
                    serial=serial,
                    question=_question(item),
                    title=pipush.plain_text(self._issuer, 64),
                    options=item.options or None,
                ).as_json()
                for item in pending
            ]

        return await asyncio.to_thread(sign_all)

    async def answer(
        self,
        actor: Actor,
        serial: str,
        nonce: str,
        signature: str,
        decline: bool,
        decline_reason: str | None = None,
        presence_answer: str | None = None,
    ) -> ChallengeView:
        """The app's answer to one challenge: accept, decline ("cancelled": deny; "not me" or
        a plain decline: report fraud), with the chosen number when number matching is on.

        The nonce is spent by the first answer whose signature verifies; a wrong number
        denies the sign-in (and is refused with :class:`~backend.errors.WrongNumber`).
        """
        pipush.check_serial(serial)
        if not 1 <= len(nonce) <= 64:
            raise _refusal(BadRequest("nonce: 1 to 64 characters"), actor)
        if presence_answer is not None and len(presence_answer) > 64:
            raise _refusal(BadRequest("presence_answer: at most 64 characters"), actor)
        pipush.reaction(decline, decline_reason)  # well formed, before any lookup
        fields = _AnswerFields(decline, decline_reason, presence_answer)
        now = self._clock()
        spent = await self._db.run_job(
            lambda tx: _spend_nonce(tx, actor, serial, nonce, fields, signature, now)
        )
        # Only a chosen option counts as the number; an approval without one is wrong (None).
        number = int(spent.choice) if spent.choice is not None else None
        device_actor = _device_actor(actor, spent.device.id)
        try:
            return await self._challenges.answer(
                device_actor,
                spent.device,
                spent.challenge_id,
                spent.reaction,
                number=number,
                unlocked_on_device=spent.app_lock,
            )
        except PinRequired:
            raise _refusal(
                PinRequired(
                    "policy require_pin: this privacyIDEA Authenticator token was enrolled "
                    "without the phone lock; enrol it again"
                ),
                device_actor,
                spent.device.user_name,
            ) from None
        except OpenMFAError as exc:
            raise _refusal(exc, device_actor, spent.device.user_name) from None

    async def token_update(
        self, actor: Actor, serial: str, new_fb_token: str, timestamp: str, signature: str
    ) -> None:
        """The app's signed report of its Firebase token, sent once after start-up. Verified
        and audited; nothing is stored, as this server never pushes to the app."""
        if not new_fb_token or len(new_fb_token) > 512 or not new_fb_token.isprintable():
            raise _refusal(BadRequest("new_fb_token: 1 to 512 printable characters"), actor)
        token = await self._token(actor, serial)
        try:
            _check_window(timestamp, self._clock(), UPDATE_WINDOW_SECONDS)
        except OpenMFAError as exc:
            raise _refusal(exc, _device_actor(actor, token.device_id), token.user_name) from None
        self._verify(
            actor, token, pipush.token_update_message(new_fb_token, serial, timestamp), signature
        )
        await self._audit.record(
            _device_actor(actor, token.device_id),
            "pipush.token_update",
            "ok",
            token.user_name,
            f"{token.device_id} serial {serial}",
        )


def _platform(user_agent: str) -> str:
    """``privacyIDEA-App/4.8.0 android/14`` -> ``android``; "" when it does not say."""
    lowered = user_agent.lower()
    for platform in ("android", "ios"):
        if f" {platform}/" in lowered:
            return platform
    return ""


def _question(item: _Pending) -> str:
    text = pipush.plain_text(item.display, 200)
    return f"{text}. {_FORMAT_HINT}" if item.options else text


def _pending_job(tx: Tx, token: _PushToken, now: datetime) -> list[_Pending]:
    """The user's pending push challenges, giving each a nonce for this token on first sight."""
    rows = tx.all(_PENDING_SQL, token.device_id, token.user_id, tx.time(now))
    pending: list[_Pending] = []
    for challenge_id, number, display, expires_at, nonce, options, used_at in rows:
        if used_at is not None:
            continue  # answered from this phone already (and refused, or it would be closed)
        if nonce is None:
            nonce = pipush.new_nonce()
            options = "" if number is None else pipush.presence_options(int(number))
            made = tx.run(
                "INSERT INTO pipush_nonces (nonce, challenge_id, device_id, options, created_at, "
                "expires_at) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (challenge_id, device_id) DO NOTHING",
                nonce,
                challenge_id,
                token.device_id,
                options,
                tx.time(now),
                tx.time(required(tx.read_time(expires_at), "challenges.expires_at")),
            )
            if made != 1:  # a poll of the same token on another node made it meanwhile
                row = tx.one(
                    "SELECT nonce, options, used_at FROM pipush_nonces "
                    "WHERE challenge_id = ? AND device_id = ?",
                    challenge_id,
                    token.device_id,
                )
                if row is None or row[2] is not None:
                    continue
                nonce, options = row[0], row[1]
        pending.append(_Pending(challenge_id, nonce, display, options))
    # Nonces of challenges that ended are no use to anyone (an answer would be refused anyway).
    tx.run(
        "DELETE FROM pipush_nonces WHERE device_id = ? AND expires_at < ?",
        token.device_id,
        tx.time(now - timedelta(minutes=10)),
    )
    return pending


def _spend_nonce(
    tx: Tx,
    actor: Actor,
    serial: str,
    nonce: str,
    fields: _AnswerFields,
    signature: str,
    now: datetime,
) -> _Spent:
    """Look the nonce up, verify the phone's signature, read what it signed against the
    options this token was offered, and spend the nonce (one job: a refusal raised here
    rolls back its own writes, so a refused answer spends nothing)."""
    row = tx.one(_NONCE_SQL, nonce)
    if row is None or row[14] != serial or row[6] != KIND or row[9] is None:
        raise _refusal(NotFound("no challenge with this nonce for this token"), actor)
    user_name = row[16]
    device_actor = _device_actor(actor, row[4])
    if row[10] not in LIVE_STATES:
        raise _refusal(BadSignature("the token was removed"), device_actor, user_name)
    message = pipush.answer_message(
        nonce, serial, fields.decline, fields.decline_reason, fields.presence_answer
    )
    try:
        pipush.verify(_phone_key(bytes(row[9])), message, signature)
        reaction, choice = pipush.read_answer(
            nonce,
            serial,
            fields.decline,
            fields.decline_reason,
            fields.presence_answer,
            row[1].split(",") if row[1] else [],
        )
    except OpenMFAError as exc:
        raise _refusal(exc, device_actor, user_name) from None
    if row[2] is not None:
        raise _refusal(
            ReplayedRequest("this challenge was answered from the app already"),
            device_actor,
            user_name,
        )
    if required(tx.read_time(row[3]), "pipush_nonces.expires_at") <= now:
        raise _refusal(
            ChallengeExpired("the challenge expired before it was answered"),
            device_actor,
            user_name,
        )
    if (
        tx.run(
            "UPDATE pipush_nonces SET used_at = ? WHERE nonce = ? AND used_at IS NULL",
            tx.time(now),
            nonce,
        )
        != 1
    ):
        raise _refusal(ReplayedRequest(), device_actor, user_name)
    device = DeviceRecord(
        id=row[4],
        user_id=row[5],
        kind=row[6],
        name=row[7],
        platform=row[8],
        public_key=bytes(row[9]),
        push_token=None,
        state=row[10],
        created_at=required(tx.read_time(row[11]), "devices.created_at"),
        activated_at=tx.read_time(row[12]),
        last_used_at=tx.read_time(row[13]),
        user_name=user_name,
    )
    return _Spent(device, row[0], reaction, choice, bool(row[15]))
