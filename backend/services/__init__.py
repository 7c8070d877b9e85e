"""Domain services and the one place that wires them together (:class:`Services`).

The HTTP app (in its lifespan) and every ``openmfa`` command open the same container, so both
work on the same database with the same rules.
"""

from __future__ import annotations

import logging
import secrets
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from sqlalchemy import insert

from backend.config import Settings
from backend.crypto import SecretBox, key_fingerprint, load_or_create_key
from backend.domain.webpush import OriginAllowList
from backend.errors import DatabaseError, ServerKeyError
from backend.events import InProcessOutcomeBus, OutcomeBus
from backend.events_postgres import PostgresOutcomeBus
from backend.notify import fraud as fraud_mail
from backend.notify import notices as notice_mail
from backend.notify.mail import MailSender
from backend.passwords import PasswordHasher
from backend.push.dispatcher import PushDispatcher, close_transports
from backend.push.factory import build_transports
from backend.push.handover import PushHandover
from backend.push.vapid import VapidKey, load_or_create_vapid_key
from backend.services.access import AccessService
from backend.services.accounts import AccountService
from backend.services.activation import ActivationService
from backend.services.audit import AuditLog
from backend.services.challenges import ChallengeService
from backend.services.context import Actor, Clock
from backend.services.devices import DeviceService
from backend.services.directories import DirectoryService
from backend.services.directory_sync import DirectorySyncService, MailInviter
from backend.services.factors import FactorGuard
from backend.services.fraud import FraudService
from backend.services.geoip import GeoIp
from backend.services.imports import ImportService
from backend.services.invitations import InvitationService
from backend.services.leases import Leases, command_holder
from backend.services.nodes import NodeRegistry
from backend.services.notices import AccountNotices
from backend.services.otp import OtpService
from backend.services.pipush import PiPushService
from backend.services.policies import PolicyService
from backend.services.radius_clients import RadiusClientService
from backend.services.reports import ReportService
from backend.services.sign_ins import SignInService
from backend.services.tokens import ApiTokenService
from backend.services.users import UserService
from backend.services.web_sessions import WebSessionService
from backend.store import migrations
from backend.store.database import Database
from backend.store.tables import meta_t, now

KEY_ID = "server_key_id"
log = logging.getLogger("openmfa.services")


def new_node_id() -> str:
    """A fresh id for this process's row in ``nodes``: a restarted node is a new node."""
    return "n_" + secrets.token_urlsafe(9)


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
    directories: DirectoryService
    fraud: FraudService
    pipush: PiPushService
    invitations: InvitationService
    web_sessions: WebSessionService
    reports: ReportService
    sign_ins: SignInService
    access: AccessService
    accounts: AccountService
    notices: AccountNotices
    factors: FactorGuard
    directory_sync: DirectorySyncService
    clock: Clock
    imports: ImportService
    # None where push is off (CLI commands): see Services.open's ``push``.
    push: PushDispatcher | None = None
    # Takes over the pushes dead nodes left unsent (run as the "push-handover" leased duty by
    # ``openmfa run``); None where push is off.
    handover: PushHandover | None = None
    # None where fraud mail is off (CLI commands, see Services.open's ``notify``) or not set up.
    fraud_mailer: fraud_mail.FraudMailer | None = None
    geoip: GeoIp | None = None  # None without settings.geoip_database
    # None where mail is off (CLI commands) or not set up; commands still queue notices.
    notice_mailer: notice_mail.NoticeMailer | None = None
    # The VAPID key the web app subscribes with; None where Web Push is off or push is off.
    webpush_key: VapidKey | None = None
    # This process among the nodes serving the database (``nodes.id``; ``openmfa nodes``).
    node_id: str = field(default_factory=new_node_id)
    # This process's row in ``nodes`` and its heartbeat: ``openmfa run`` only (``node``).
    nodes: NodeRegistry | None = None
    # Lease handle of this process: as the node (``openmfa run``) or as ``cli:<host>:<pid>``.
    leases: Leases | None = None

    @classmethod
    async def open(
        cls,
        settings: Settings,
        clock: Clock = now,
        bus: OutcomeBus | None = None,
        push: bool = True,
        notify: bool = True,
        node: bool = False,
    ) -> Services:
        """Connect, check the schema and the server key, and build every service.

        ``push``: build the push transports and dispatcher (a bad key file raises
        :class:`~backend.errors.ConfigurationError` here). ``openmfa`` commands other than
        ``run`` pass False: they start no challenges, so they open no push connections.

        ``notify``: run the fraud-mail worker, which also resends the reports an earlier
        process left pending; ``openmfa`` commands other than ``run`` pass False. The mail and
        GeoIP settings are checked either way (:class:`~backend.errors.ConfigurationError`).
        With ``node`` the resend is left to whoever holds the "fraud-mail" lease (the app's
        lifespan runs it as a :class:`~backend.tasks.LeasedDuty`), so several nodes on one
        database do not all resend.

        ``node``: register this process in ``nodes`` and keep its heartbeat (``openmfa run``
        only; :class:`~backend.services.nodes.NodeRegistry`). Without it, the process holds
        leases as ``cli:<host>:<pid>``.
        """
        mail = fraud_mail.configure(settings)
        sender = MailSender.from_settings(settings)
        async with AsyncExitStack() as on_error:  # what to release if the open fails
            geoip = GeoIp.open(settings.geoip_database)
            if geoip is not None:
                on_error.callback(geoip.close)
            db = await open_database(settings)
            on_error.push_async_callback(db.dispose)
            box = SecretBox(await _server_key(db, settings.resolved_key_file))
            webpush_key = (
                await load_or_create_vapid_key(db, box)
                if push and settings.webpush_enabled
                else None
            )
            transports = await build_transports(settings, webpush_key) if push else None
            node_id = new_node_id()
            registry = (
                NodeRegistry(
                    db,
                    clock,
                    node_id,
                    settings.node_name,
                    heartbeat=settings.node_heartbeat_seconds,
                    timeout=settings.node_timeout_seconds,
                )
                if node
                else None
            )
            leases = (
                registry.leases if registry is not None else Leases(db, clock, command_holder())
            )
            hasher = PasswordHasher(
                settings.argon2_memory_kib,
                settings.argon2_time_cost,
                settings.argon2_parallelism,
                settings.hash_workers,
                queue_limit=settings.hash_queue_limit,
                unknown_per_second=settings.unknown_user_checks_per_second,
                nice=settings.hash_nice,
            )
            if bus is None:
                bus = await _open_bus(db, node_id)
                on_error.push_async_callback(bus.close)
            audit = AuditLog(db, clock)
            notices = AccountNotices(
                db, audit, clock, mail=sender is not None and settings.notify_users
            )
            factors = FactorGuard(
                db,
                audit,
                clock,
                step_up=timedelta(minutes=settings.step_up_minutes),
                grant=timedelta(minutes=settings.first_enrolment_minutes),
            )
            push_origins = OriginAllowList(settings.webpush_allowed_origins)
            users = UserService(db, hasher, audit, clock, factors, notices=notices)
            otp = OtpService(db, box, audit, clock)
            dispatcher = (
                PushDispatcher(
                    db,
                    audit,
                    clock,
                    Actor("system:push"),
                    transports,
                    settings.push_concurrency,
                    drain_seconds=settings.shutdown_grace_seconds,  # sends in flight at shutdown
                )
                if transports is not None
                else None
            )
            mailer = (
                fraud_mail.FraudMailer(
                    db,
                    audit,
                    clock,
                    mail,
                    issuer=settings.issuer,
                    geoip=geoip,
                    close_grace=settings.shutdown_grace_seconds,
                )
                if notify and mail is not None
                else None
            )
            notice_mailer = (
                notice_mail.NoticeMailer(
                    db,
                    audit,
                    clock,
                    sender,
                    issuer=settings.issuer,
                    close_grace=settings.shutdown_grace_seconds,
                )
                if notify and sender is not None and settings.notify_users
                else None
            )
            if notice_mailer is not None:
                notices.wake = notice_mailer.wake
            if notify:
                log.info(fraud_mail.status_line(settings, mail))
                log.info(notice_mail.status_line(sender, settings.notify_users))
                if geoip is not None:
                    log.info("sign-in locations from %s (%s)", geoip.path, geoip.database_type)
            challenges = ChallengeService(
                db,
                bus,
                users,
                otp,
                audit,
                clock,
                push=dispatcher,
                fraud_notifier=mailer,
                notices=notices,
                node_id=node_id,
            )
            fraud = FraudService(db, audit, clock, challenges)
            invitations = InvitationService(
                db, hasher, audit, clock, settings.resolved_public_url, notices=notices
            )
            directories = DirectoryService(db, box, audit, clock)
            web_sessions = WebSessionService(
                db,
                clock,
                idle=timedelta(minutes=settings.web_session_idle_minutes),
                lifetime=timedelta(hours=settings.web_session_max_hours),
            )
            services = cls(
                settings=settings,
                db=db,
                bus=bus,
                hasher=hasher,
                audit=audit,
                users=users,
                policies=PolicyService(db, audit),
                activation=ActivationService(
                    db,
                    box,
                    hasher,
                    audit,
                    clock,
                    settings.resolved_public_url,
                    settings.issuer,
                    factors,
                    notices=notices,
                    push_origins=push_origins,
                ),
                devices=DeviceService(
                    db,
                    audit,
                    clock,
                    settings.signature_skew_seconds,
                    factors,
                    notices=notices,
                    push_origins=push_origins,
                ),
                otp=otp,
                challenges=challenges,
                tokens=ApiTokenService(db, audit, clock),
                radius_clients=RadiusClientService(db, box, audit, clock),
                directories=directories,
                fraud=fraud,
                pipush=PiPushService(
                    db,
                    box,
                    audit,
                    clock,
                    challenges,
                    settings.resolved_public_url,
                    settings.issuer,
                    notices=notices,
                    factors=factors,
                ),
                invitations=invitations,
                web_sessions=web_sessions,
                reports=ReportService(db, clock),
                sign_ins=SignInService(db, clock),
                access=AccessService(users, challenges, fraud, notices),
                accounts=AccountService(db, challenges, audit),
                notices=notices,
                factors=factors,
                directory_sync=DirectorySyncService(
                    db,
                    audit,
                    clock,
                    challenges,
                    notices,
                    directories,
                    None
                    if sender is None
                    else MailInviter(users, invitations, audit, sender, settings.issuer),
                    leases=leases,
                    lease_ttl=settings.node_timeout_seconds,
                ),
                clock=clock,
                imports=ImportService(db, box, audit, clock, factors, notices=notices),
                push=dispatcher,
                handover=(
                    PushHandover(
                        db,
                        dispatcher,
                        audit,
                        clock,
                        Actor("system:push"),
                        node_id,
                        settings.node_timeout_seconds,
                    )
                    if dispatcher is not None
                    else None
                ),
                fraud_mailer=mailer,
                geoip=geoip,
                notice_mailer=notice_mailer,
                webpush_key=webpush_key,
                node_id=node_id,
                nodes=registry,
                leases=leases,
            )
            users.directories = services.directories  # directory users' passwords
            on_error.pop_all()  # from here on, services.close() releases all of it
            on_error.push_async_callback(services.close)
            if registry is not None:
                await registry.start()
            if mailer is not None:
                await mailer.start(resend=registry is None)
            if notice_mailer is not None:
                await notice_mailer.start()
            on_error.pop_all()
        return services

    async def close(self) -> None:
        """Finish pushes in flight, wake waiters, stop the hash pool, close the database."""
        if self.push is not None:
            await self.push.close()  # records its last attempts: the database is still open
            await close_transports(self.push.transports)
        if self.fraud_mailer is not None:
            await self.fraud_mailer.close()  # bounded; unsent reports stay pending
        if self.notice_mailer is not None:
            await self.notice_mailer.close()  # bounded; unsent notices stay due
        await self.directories.close()  # unbinds pooled LDAP connections, stops their threads
        if self.nodes is not None:
            await self.nodes.close()  # stopped, leases released: the other nodes take over
        await self.bus.close()
        self.hasher.close()
        if self.geoip is not None:
            self.geoip.close()
        await self.db.dispose()


async def _open_bus(db: Database, node_id: str) -> OutcomeBus:
    """The in-process bus on SQLite (one node); on PostgreSQL the LISTEN/NOTIFY bus, so an
    answer arriving at any node wakes the waiter parked on any other."""
    jobs = db.postgres_jobs
    if jobs is None:
        return InProcessOutcomeBus()
    return await PostgresOutcomeBus.open(jobs.dsn, node_id, connect_timeout=jobs.connect_timeout)


async def open_database(settings: Settings) -> Database:
    """Open the database and insist that its schema is current."""
    url = settings.resolved_database_url
    if settings.uses_sqlite:
        path = Path(url.split("///", 1)[1]) if "///" in url else None
        if path is not None and not path.exists():
            raise DatabaseError(f"the database {path} does not exist; run `openmfa db upgrade`")
    db = Database(
        url,
        settings.sqlite_busy_timeout_ms,
        settings.db_pool_size,
        settings.sqlite_synchronous,
        settings.db_connect_timeout_seconds,
    )
    try:
        async with db.read() as conn:
            problem = await migrations.schema_problem(conn)
        if problem is not None:
            raise DatabaseError(problem)
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
