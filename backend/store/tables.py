"""The schema. Alembic migrations in ``backend/migrations/versions`` create exactly these tables.

Hot paths query these with SQLAlchemy Core (``Table.__table__``) rather than ORM sessions:
DESIGN.md measured the ORM at ~760 µs per SELECT against ~460 µs for Core. Timestamps are
stored as timezone-aware UTC (``UtcDateTime``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Column, Index, LargeBinary, Table, Text, UniqueConstraint, false
from sqlalchemy.engine import Dialect
from sqlalchemy.types import DateTime, TypeDecorator
from sqlmodel import Field, SQLModel


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, on SQLite (which has no time zones) and PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utc_column(nullable: bool = False, index: bool = False) -> Any:
    return Field(sa_column=Column(UtcDateTime(), nullable=nullable, index=index))


def blob_column(nullable: bool = False) -> Any:
    return Field(sa_column=Column(LargeBinary(), nullable=nullable))


def text_column() -> Any:
    """Unbounded text; JSON documents that the services encode and decode themselves."""
    return Field(sa_column=Column(Text(), nullable=False))


class Meta(SQLModel, table=True):
    __tablename__ = "meta"
    key: str = Field(primary_key=True, max_length=64)
    value: str = Field(max_length=512)


class User(SQLModel, table=True):
    __tablename__ = "users"
    __table_args__ = (
        UniqueConstraint("directory_id", "external_id", name="uq_users_directory_external_id"),
    )
    id: int | None = Field(default=None, primary_key=True)
    name_key: str = Field(max_length=128, unique=True)
    name: str = Field(max_length=128)
    display_name: str = Field(default="", max_length=256)
    email: str = Field(default="", max_length=320)
    is_admin: bool = False
    disabled: bool = False
    blocked: bool = False
    blocked_reason: str = Field(default="", max_length=256)
    password_hash: str | None = Field(default=None, max_length=256)
    pin_hash: str | None = Field(default=None, max_length=256)
    pin_failures: int = 0
    pin_locked_until: datetime | None = utc_column(nullable=True)
    otp_failures: int = 0
    otp_locked_until: datetime | None = utc_column(nullable=True)
    last_sign_in_at: datetime | None = utc_column(nullable=True)
    created_at: datetime = utc_column()
    # A first-enrolment window an administrator opened (see backend/domain/stepup.py).
    enrol_until: datetime | None = utc_column(nullable=True)
    phone: str = Field(default="", max_length=64, sa_column_kwargs={"server_default": ""})
    # Why the user is disabled ("" when not), and who disabled it: "admin" (a person; a sync
    # never enables such a user) or "directory" (a sync did, and a later sync may undo it).
    disabled_reason: str = Field(
        default="", max_length=256, sa_column_kwargs={"server_default": ""}
    )
    disabled_by: str = Field(default="", max_length=16, sa_column_kwargs={"server_default": ""})
    # A user from a directory is tied to it by the directory's stable id (objectGUID,
    # entryUUID), never by name; local users have neither. See backend/directory/.
    directory_id: int | None = Field(
        default=None, foreign_key="directories.id", ondelete="RESTRICT", index=True
    )
    external_id: str | None = Field(default=None, max_length=64)
    directory_dn: str = Field(default="", max_length=1024, sa_column_kwargs={"server_default": ""})


class Device(SQLModel, table=True):
    """An authenticator: our app (``kind=app``, with an Ed25519 key), a plain OATH token
    (``kind=oath``) or a privacyIDEA Authenticator push token (``kind=pipush``, RSA keys)."""

    __tablename__ = "devices"
    __table_args__ = (
        Index("ix_devices_user_state", "user_id", "state"),
        UniqueConstraint("serial", name="uq_devices_serial"),
        # One device per key, whatever its state: a request signed by one device can never
        # pass as another's, and nonces remembered per device are per key.
        Index("uq_devices_public_key", "public_key", unique=True),
    )
    id: str = Field(primary_key=True, max_length=64)
    user_id: int = Field(foreign_key="users.id", ondelete="CASCADE")
    kind: str = Field(max_length=16)
    name: str = Field(default="", max_length=128)
    platform: str = Field(default="", max_length=16)
    public_key: bytes | None = blob_column(nullable=True)
    push_token: str | None = Field(default=None, max_length=2048)
    seed_enc: bytes = blob_column()
    last_step: int | None = None
    state: str = Field(max_length=16)
    created_at: datetime = utc_column()
    activated_at: datetime | None = utc_column(nullable=True)
    last_used_at: datetime | None = utc_column(nullable=True)
    # What the last push said about ``push_token``: "" (none tried), "ok" or "invalid" (the
    # service called the token dead; the device is served by polling until it sends a new one).
    push_status: str = Field(default="", max_length=16, sa_column_kwargs={"server_default": ""})
    push_error: str = Field(default="", max_length=128, sa_column_kwargs={"server_default": ""})
    push_status_at: datetime | None = utc_column(nullable=True)
    # privacyIDEA Authenticator push tokens (``kind=pipush``): the token serial the app names
    # itself by, and the per-token server RSA private key (PKCS#8 DER) sealed with the server
    # key, bound to ``pipush-server-key:<id>``. ``public_key`` then holds the phone's RSA SPKI.
    serial: str | None = Field(default=None, max_length=64)
    server_key_enc: bytes | None = blob_column(nullable=True)
    # The QR told the app to lock the token behind the phone's screen lock (``pin=True``):
    # then the phone, not a PIN we check, stands for policy ``require_pin``.
    app_lock: bool = Field(default=False, sa_column_kwargs={"server_default": false()})
    # The TOTP time step in seconds: 30 for apps; hardware tokens imported from a CSV may
    # step every 60 s. Every code check reads it (backend/services/otp.py).
    period: int = Field(default=30, sa_column_kwargs={"server_default": "30"})


class ActivationCode(SQLModel, table=True):
    __tablename__ = "activation_codes"
    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", ondelete="CASCADE")
    code_hash: str = Field(max_length=64, unique=True)
    created_at: datetime = utc_column()
    expires_at: datetime = utc_column()
    used_at: datetime | None = utc_column(nullable=True)
    device_id: str | None = Field(default=None, max_length=64)


class Challenge(SQLModel, table=True):
    """One authentication waiting for an answer (push) or a code (otp)."""

    __tablename__ = "challenges"
    __table_args__ = (
        # Bridges share one scope ("bridge"), so a gateway that fails over to a second bridge
        # with the same request finds the sign-in the first one started (issue 18).
        UniqueConstraint("idempotency_scope", "idempotency_key", name="uq_challenges_idempotency"),
        Index("ix_challenges_user_state", "user_id", "state"),
        Index("ix_challenges_user_created", "user_id", "created_at"),
        Index("ix_challenges_state_expires", "state", "expires_at"),
    )
    id: str = Field(primary_key=True, max_length=64)
    user_id: int = Field(foreign_key="users.id", ondelete="CASCADE")
    method: str = Field(max_length=16)
    state: str = Field(max_length=16)
    created_at: datetime = utc_column()
    expires_at: datetime = utc_column()
    answered_at: datetime | None = utc_column(nullable=True)
    answered_by: str | None = Field(default=None, max_length=64)
    number: int | None = None
    client_name: str = Field(default="", max_length=128)
    client_ip: str = Field(default="", max_length=64)
    nas_identifier: str = Field(default="", max_length=128)
    display: str = Field(default="", max_length=256)
    token_id: int | None = Field(default=None, foreign_key="api_tokens.id")
    idempotency_key: str | None = Field(default=None, max_length=128)
    # The gateway token that started it ("token:<id>", or "ephemeral:<name>" for the
    # in-process bridge): only it and bridge tokens may read, wait on, answer or cancel it.
    # NULL for challenges the web portal and console start, which no gateway token sees.
    started_by: str | None = Field(default=None, max_length=64)
    # Whose copies of a request count as one: "bridge" for every bridge token (standalone or
    # in-process, on any node), "token:<id>" for a gateway token; NULL without a key.
    idempotency_scope: str | None = Field(default=None, max_length=80)
    # The node that delivers its pushes (``nodes.id``) and when delivery finished. A push
    # challenge still pending with ``push_sent_at`` NULL whose node stopped beating is taken
    # over by a live node (backend/push/handover.py), so each push goes out once.
    push_node: str | None = Field(default=None, max_length=64)
    push_sent_at: datetime | None = utc_column(nullable=True)


class ApiToken(SQLModel, table=True):
    __tablename__ = "api_tokens"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64, unique=True)
    token_hash: str = Field(max_length=64, unique=True)
    # gateway: the gateway API; bridge: also what only a RADIUS bridge may call (its client
    # list with the shared secrets, local password checks, the bridge's own audit rows).
    scope: str = Field(
        default="gateway", max_length=16, sa_column_kwargs={"server_default": "gateway"}
    )
    created_at: datetime = utc_column()
    revoked_at: datetime | None = utc_column(nullable=True)


class RadiusClient(SQLModel, table=True):
    """A gateway that sends RADIUS to the bridge, with everything the bridge needs to serve it.

    Secrets are sealed with the server key, bound to the row (``radius-secret:<id>``,
    ``radius-upstream-secret:<id>``). Lists and maps are JSON text written by
    :mod:`backend.services.radius_clients`. Every change also bumps the ``meta`` row
    ``radius_clients_revision`` in the same transaction: bridges poll that cheaply.
    """

    __tablename__ = "radius_clients"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64)
    name_key: str = Field(max_length=64, unique=True)
    addresses: str = text_column()
    secret_enc: bytes = blob_column()
    mode: str = Field(max_length=16)
    primary_auth: str = Field(max_length=16)
    upstream_host: str | None = Field(default=None, max_length=255)
    upstream_port: int | None = None
    upstream_timeout: float | None = None
    upstream_secret_enc: bytes | None = blob_column(nullable=True)
    require_message_authenticator: bool = True
    failmode: str = Field(max_length=16)
    unenrolled: str = Field(max_length=16)
    push_timeout: float
    prompt: str = Field(max_length=512)
    name_format: str = Field(max_length=16)
    realm_map: str = text_column()
    exempt_users: str = text_column()
    exempt_networks: str = text_column()
    password_separator: str = Field(max_length=8)
    reply_attributes: str = text_column()
    # Number matching for this gateway: "policy" (the user's policy decides), "on" or "off".
    number_matching: str = Field(
        default="policy", max_length=16, sa_column_kwargs={"server_default": "policy"}
    )
    # RadSec: SHA-256 fingerprints of the client certificates bound to this client (JSON list).
    radsec_fingerprints: str = Field(
        default="[]", sa_column=Column(Text(), nullable=False, server_default="[]")
    )
    # The directory whose password is the primary factor when primary_auth is "ldap".
    directory_id: int | None = Field(
        default=None, foreign_key="directories.id", ondelete="RESTRICT"
    )
    created_at: datetime = utc_column()
    updated_at: datetime = utc_column()


class Directory(SQLModel, table=True):
    """An AD or LDAP directory that users come from (see backend/directory/config.py).

    The bind password is sealed with the server key, bound to the row
    (``directory-bind-password:<id>``). ``urls`` and ``attributes`` are JSON text.
    """

    __tablename__ = "directories"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64)
    name_key: str = Field(max_length=64, unique=True)
    kind: str = Field(max_length=8)
    urls: str = text_column()
    ca_pem: str | None = Field(default=None, sa_column=Column(Text(), nullable=True))
    bind_dn: str = Field(max_length=1024)
    bind_password_enc: bytes = blob_column()
    base_dn: str = Field(max_length=1024)
    user_filter: str = Field(default="", max_length=1024)
    group_dn: str = Field(default="", max_length=1024)
    admin_group_dn: str = Field(default="", max_length=1024)
    attributes: str = text_column()
    connect_timeout: float
    search_timeout: float
    page_size: int
    sync_interval: int
    disable_percent: int
    disable_minimum: int
    created_at: datetime = utc_column()
    updated_at: datetime = utc_column()


class DirectorySync(SQLModel, table=True):
    """One sync run (or dry run) of a directory and its summary; ``report`` is JSON text with
    the changes by kind (names only, bounded) and the errors, for the console."""

    __tablename__ = "directory_syncs"
    __table_args__ = (Index("ix_directory_syncs_directory_started", "directory_id", "started_at"),)
    id: int | None = Field(default=None, primary_key=True)
    directory_id: int = Field(foreign_key="directories.id", ondelete="CASCADE")
    actor: str = Field(max_length=128)
    dry_run: bool = False
    state: str = Field(max_length=16)  # running, done, stopped (threshold), failed
    started_at: datetime = utc_column()
    finished_at: datetime | None = utc_column(nullable=True)
    created: int = 0
    updated: int = 0
    renamed: int = 0
    disabled: int = 0
    enabled: int = 0
    unchanged: int = 0
    errors: int = 0
    message: str = Field(default="", max_length=1024)
    report: str = text_column()


class PolicyValue(SQLModel, table=True):
    __tablename__ = "policies"
    scope: str = Field(primary_key=True, max_length=64)
    key: str = Field(primary_key=True, max_length=64)
    value: str = Field(max_length=256)


class FraudReport(SQLModel, table=True):
    __tablename__ = "fraud_reports"
    __table_args__ = (Index("ix_fraud_reports_state", "state"),)
    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", ondelete="CASCADE")
    challenge_id: str = Field(max_length=64)
    device_id: str | None = Field(default=None, max_length=64)
    client_name: str = Field(default="", max_length=128)
    client_ip: str = Field(default="", max_length=64)
    state: str = Field(default="open", max_length=16)
    created_at: datetime = utc_column()
    # The e-mail to the support address: none (not configured), pending, sent or failed.
    notify_state: str = Field(
        default="none", max_length=16, sa_column_kwargs={"server_default": "none"}
    )
    notify_attempts: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    notified_at: datetime | None = utc_column(nullable=True)
    reviewed_at: datetime | None = utc_column(nullable=True)
    reviewed_by: str = Field(default="", max_length=128, sa_column_kwargs={"server_default": ""})


class AuditEvent(SQLModel, table=True):
    __tablename__ = "audit_events"
    id: int | None = Field(default=None, primary_key=True)
    at: datetime = utc_column(index=True)
    actor: str = Field(max_length=128)
    user_name: str = Field(default="", max_length=128, index=True)
    source: str = Field(default="", max_length=64)
    action: str = Field(max_length=64)
    result: str = Field(max_length=32)
    detail: str = Field(default="", max_length=1024)
    request_id: str = Field(default="", max_length=64)


class UsedNonce(SQLModel, table=True):
    __tablename__ = "used_nonces"
    device_id: str = Field(primary_key=True, max_length=64)
    nonce: str = Field(primary_key=True, max_length=64)
    expires_at: datetime = utc_column(index=True)


class PiPushNonce(SQLModel, table=True):
    """The nonce a privacyIDEA Authenticator token sees for one challenge (one per challenge
    and device, so the app, which keys requests by nonce, shows each challenge once); single
    use: ``used_at`` is set by the first verified answer."""

    __tablename__ = "pipush_nonces"
    __table_args__ = (
        UniqueConstraint("challenge_id", "device_id", name="uq_pipush_nonces_challenge_device"),
        Index("ix_pipush_nonces_expires_at", "expires_at"),
    )
    nonce: str = Field(primary_key=True, max_length=64)
    challenge_id: str = Field(foreign_key="challenges.id", ondelete="CASCADE", max_length=64)
    device_id: str = Field(foreign_key="devices.id", ondelete="CASCADE", max_length=64)
    # The number-matching options shown on the phone ("42,17,93"), "" without number matching.
    options: str = Field(default="", max_length=64, sa_column_kwargs={"server_default": ""})
    created_at: datetime = utc_column()
    expires_at: datetime = utc_column()
    used_at: datetime | None = utc_column(nullable=True)


metadata = SQLModel.metadata


def now() -> datetime:
    """The current time, aware UTC (the only clock the store uses by default)."""
    return datetime.now(UTC)


def _table(model: type[SQLModel]) -> Table:
    return cast(Table, model.__table__)  # type: ignore[attr-defined]


# Core handles on the tables, for queries that stay off the ORM.
meta_t = _table(Meta)
users_t = _table(User)
devices_t = _table(Device)
activation_codes_t = _table(ActivationCode)
challenges_t = _table(Challenge)
api_tokens_t = _table(ApiToken)
radius_clients_t = _table(RadiusClient)
policies_t = _table(PolicyValue)
fraud_reports_t = _table(FraudReport)
audit_t = _table(AuditEvent)
used_nonces_t = _table(UsedNonce)
pipush_nonces_t = _table(PiPushNonce)
directories_t = _table(Directory)
directory_syncs_t = _table(DirectorySync)


# -- web portal and admin console (webportal/) --------------------------------------------------


class WebSession(SQLModel, table=True):
    """A signed-in (or about to sign in) browser of the portal or the admin console.

    The cookie holds a random value; only its SHA-256 digest (``id_hash``) is stored, so a
    copy of the database does not hand out live sessions. ``user_id`` is NULL for the
    anonymous session a sign-in form runs in (it carries the form's CSRF secret).
    """

    __tablename__ = "web_sessions"
    __table_args__ = (Index("ix_web_sessions_last_seen_at", "last_seen_at"),)
    id_hash: str = Field(primary_key=True, max_length=64)
    kind: str = Field(max_length=16)  # "portal" or "admin"
    user_id: int | None = Field(default=None, foreign_key="users.id", ondelete="CASCADE")
    csrf_secret: str = Field(max_length=64)
    # Admin sessions: the second factor was checked (or the admin has none to check).
    second_factor_done: bool = False
    # Admin sign-in by push: the challenge this session waits for.
    challenge_id: str | None = Field(default=None, max_length=64)
    # Portal sessions: when the session last proved a live factor (step-up), and until when
    # the invitation it accepted lets it enrol a first factor.
    stepped_up_at: datetime | None = utc_column(nullable=True)
    enrol_until: datetime | None = utc_column(nullable=True)
    flash: str = text_column()  # JSON list of [category, message], shown on the next page
    source: str = Field(default="", max_length=64)
    created_at: datetime = utc_column()
    last_seen_at: datetime = utc_column()


class Invitation(SQLModel, table=True):
    """A one-time link (``/portal/invite/<token>``) where a user sets their password."""

    __tablename__ = "invitations"
    id: int | None = Field(default=None, primary_key=True)
    token_hash: str = Field(max_length=64, unique=True)
    user_id: int = Field(foreign_key="users.id", ondelete="CASCADE")
    created_at: datetime = utc_column()
    expires_at: datetime = utc_column()
    used_at: datetime | None = utc_column(nullable=True)
    created_by: str = Field(default="", max_length=128)


web_sessions_t = _table(WebSession)
invitations_t = _table(Invitation)


class AccountNotice(SQLModel, table=True):
    """An e-mail telling a user about a change to their sign-in methods (an outbox row).

    Written in the service call that made the change, sent by the mail worker of a running
    server (``openmfa`` commands only write it). ``next_attempt_at`` is both the backoff and
    the claim: a worker takes a due row by moving it into the future, so two nodes never send
    one notice at once, and one that died mid-send leaves it due again later.
    """

    __tablename__ = "account_notices"
    __table_args__ = (Index("ix_account_notices_due", "state", "next_attempt_at"),)
    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", ondelete="CASCADE")
    change: str = Field(max_length=32)
    recipient: str = Field(max_length=320)
    actor: str = Field(max_length=128)
    source: str = Field(default="", max_length=64)
    detail: str = Field(default="", max_length=512)  # the device concerned; never a secret
    created_at: datetime = utc_column()
    state: str = Field(default="pending", max_length=16)  # pending, sent, failed
    attempts: int = 0
    next_attempt_at: datetime = utc_column()
    sent_at: datetime | None = utc_column(nullable=True)


account_notices_t = _table(AccountNotice)


class Node(SQLModel, table=True):
    """One ``openmfa run`` process serving this database (``openmfa nodes``). Alive while
    ``seen_at`` (its heartbeat) is recent; ``stopped_at`` is set by a clean shutdown."""

    __tablename__ = "nodes"
    id: str = Field(primary_key=True, max_length=64)
    name: str = Field(max_length=128)
    host: str = Field(default="", max_length=255)
    pid: int = 0
    version: str = Field(default="", max_length=32)
    started_at: datetime = utc_column()
    seen_at: datetime = utc_column()
    stopped_at: datetime | None = utc_column(nullable=True)


nodes_t = _table(Node)


class Lease(SQLModel, table=True):
    """A duty that must run on one node at a time (fraud-mail resend, directory sync,
    retention...), held by ``node_id`` until ``expires_at`` unless renewed."""

    __tablename__ = "leases"
    name: str = Field(primary_key=True, max_length=64)
    node_id: str = Field(max_length=64)
    acquired_at: datetime = utc_column()
    expires_at: datetime = utc_column()


leases_t = _table(Lease)


class AddressLimit(SQLModel, table=True):
    """Failed web sign-in steps from one source address in its current window (see
    backend/services/address_limits.py): shared by every node, pruned once the window ends."""

    __tablename__ = "address_limits"
    address: str = Field(primary_key=True, max_length=64)
    failures: int = 0
    window_started_at: datetime = utc_column(index=True)


address_limits_t = _table(AddressLimit)
