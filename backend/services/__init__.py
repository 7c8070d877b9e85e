"""Domain services and the one place that wires them together (:class:`Services`).

The HTTP app (in its lifespan) and every ``openmfa`` command open the same container, so both
work on the same database with the same rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import insert

from backend.config import Settings
from backend.crypto import SecretBox, key_fingerprint, load_or_create_key
from backend.errors import DatabaseError, ServerKeyError
from backend.events import InProcessOutcomeBus, OutcomeBus
from backend.passwords import PasswordHasher
from backend.services.activation import ActivationService
from backend.services.audit import AuditLog
from backend.services.challenges import ChallengeService
from backend.services.context import Clock
from backend.services.devices import DeviceService
from backend.services.otp import OtpService
from backend.services.policies import PolicyService
from backend.services.radius_clients import RadiusClientService
from backend.services.tokens import ApiTokenService
from backend.services.users import UserService
from backend.store import migrations
from backend.store.database import Database
from backend.store.tables import meta_t, now

KEY_ID = "server_key_id"


@dataclass(slots=True)
class Services:
    settings: Settings
    db: Database
    bus: OutcomeBus
    hasher: PasswordHasher
    audit: AuditLog
    users: UserService
    policies: PolicyService
    activation: ActivationService
    devices: DeviceService
    otp: OtpService
    challenges: ChallengeService
    tokens: ApiTokenService
    radius_clients: RadiusClientService
    clock: Clock

    @classmethod
    async def open(
        cls, settings: Settings, clock: Clock = now, bus: OutcomeBus | None = None
    ) -> Services:
        """Connect, check the schema and the server key, and build every service."""
        db = await open_database(settings)
        try:
            box = SecretBox(await _server_key(db, settings.resolved_key_file))
        except BaseException:
            await db.dispose()
            raise
        hasher = PasswordHasher(
            settings.argon2_memory_kib,
            settings.argon2_time_cost,
            settings.argon2_parallelism,
            settings.hash_workers,
        )
        bus = bus or InProcessOutcomeBus()
        audit = AuditLog(db, clock)
        users = UserService(db, hasher, audit, clock)
        otp = OtpService(db, box, audit, clock)
        return cls(
            settings=settings,
            db=db,
            bus=bus,
            hasher=hasher,
            audit=audit,
            users=users,
            policies=PolicyService(db, audit),
            activation=ActivationService(
                db, box, hasher, audit, clock, settings.resolved_public_url, settings.issuer
            ),
            devices=DeviceService(db, audit, clock, settings.signature_skew_seconds),
            otp=otp,
            challenges=ChallengeService(db, bus, users, otp, audit, clock),
            tokens=ApiTokenService(db, audit, clock),
            radius_clients=RadiusClientService(db, box, audit, clock),
            clock=clock,
        )

    async def close(self) -> None:
        """Wake waiters, stop the hash pool, close the database."""
        await self.bus.close()
        self.hasher.close()
        await self.db.dispose()


async def open_database(settings: Settings) -> Database:
    """Open the database and insist that its schema is current."""
    url = settings.resolved_database_url
    if settings.uses_sqlite:
        path = Path(url.split("///", 1)[1]) if "///" in url else None
        if path is not None and not path.exists():
            raise DatabaseError(f"the database {path} does not exist; run `openmfa db upgrade`")
    db = Database(
        url, settings.sqlite_busy_timeout_ms, settings.db_pool_size, settings.sqlite_synchronous
    )
    try:
        async with db.read() as conn:
            current = await migrations.current_revision(conn)
        head = migrations.head_revision()
        if current != head:
            raise DatabaseError(
                f"the database schema is at {current or 'nothing'}, this version needs {head}; "
                "run `openmfa db upgrade`"
            )
    except BaseException:
        await db.dispose()
        raise
    return db


async def _server_key(db: Database, path: Path) -> bytes:
    recorded = await db.get_meta(KEY_ID)
    key = load_or_create_key(path, create=recorded is None)
    fingerprint = key_fingerprint(key)
    if recorded is None:
        async with db.write() as conn:
            await conn.execute(insert(meta_t).values(key=KEY_ID, value=fingerprint))
    elif recorded != fingerprint:
        raise ServerKeyError(
            f"the server key {path} is not the key this database was encrypted with; "
            "restore the right key file (see docs/operations.md)"
        )
    return key
