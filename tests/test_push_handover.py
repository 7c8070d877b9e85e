"""Each push sent once across nodes: ``push_node`` / ``push_sent_at`` and the handover of a
dead node's unsent pushes (backend/push/handover.py), on SQLite and PostgreSQL.

A *node* here is what ``openmfa run`` builds: its own :class:`Services` (its own database
pool) on the shared database, a dispatcher on its own in-memory push service
(:class:`FakeTransport`, the real transport interface), a challenge service that stamps its
node id, and a handover pass. Heartbeats are ``nodes`` rows written on the fake clock, so a
node "dies" when the clock moves past the timeout without it beating. Sends are counted at
each node's fake.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import insert, select, update

from backend.app import _duties
from backend.config import Settings
from backend.domain.stepup import ADMINISTRATOR
from backend.errors import Conflict
from backend.metrics import BackendMetrics
from backend.push.dispatcher import Backoff, PushDispatcher
from backend.push.handover import PushHandover
from backend.services import Services
from backend.services.challenges import ChallengeService
from backend.services.context import Actor, SignInContext
from backend.services.leases import Leases
from backend.store.tables import challenges_t, nodes_t
from backend.store.urls import asyncpg_dsn
from tests.support.clock import FakeClock
from tests.test_push_dispatcher import FakeTransport

pytestmark = pytest.mark.anyio
ADMIN = Actor("test:admin")
PUSH = Actor("system:push")
FAST = Backoff(0.001, 0.004)
TIMEOUT = 20.0  # settings.node_timeout_seconds' default


@dataclass
class Node:
    """One node on the shared database."""

    id: str
    services: Services
    apns: FakeTransport
    dispatcher: PushDispatcher
    challenges: ChallengeService
    handover: PushHandover
    clock: FakeClock

    async def beat(self) -> None:
        """A heartbeat: this node's ``nodes`` row seen now."""
        async with self.services.db.write() as conn:
            done = await conn.execute(
                update(nodes_t).where(nodes_t.c.id == self.id).values(seen_at=self.clock())
            )
            if done.rowcount == 0:
                now = self.clock()
                await conn.execute(
                    insert(nodes_t).values(
                        id=self.id, name=self.id, started_at=now, seen_at=now, pid=0
                    )
                )

    async def start(self, user: str) -> str:
        view = await self.challenges.start(ADMIN, user, "push", SignInContext("vpn"))
        return view.id

    async def die(self) -> None:
        """Stop sending at once (what is in flight is cut, as by kill -9 at that moment)."""
        await self.dispatcher.close()


async def open_node(settings: Settings, clock: FakeClock, name: str) -> Node:
    services = await Services.open(settings, clock=clock, push=False, notify=False)
    s = services
    apns = FakeTransport("apns")
    dispatcher = PushDispatcher(
        s.db, s.audit, clock, PUSH, {"apns": apns}, 10, FAST, drain_seconds=0.0
    )
    challenges = ChallengeService(
        s.db, s.bus, s.users, s.otp, s.audit, clock, push=dispatcher, node_id=name
    )
    handover = PushHandover(s.db, dispatcher, s.audit, clock, PUSH, name, TIMEOUT, interval=0.02)
    services.push, services.handover = dispatcher, handover  # closed with the services
    node = Node(name, services, apns, dispatcher, challenges, handover, clock)
    await node.beat()
    return node


@pytest.fixture
async def nodes(settings: Settings, clock: FakeClock) -> AsyncIterator[tuple[Node, Node]]:
    first = await open_node(settings, clock, "n_a")
    try:
        second = await open_node(settings, clock, "n_b")
        try:
            # The push-fatigue guard has tests of its own; here every push must go out.
            await first.services.policies.set(ADMIN, "push_limit", "0")
            await first.services.policies.set(ADMIN, "push_max_unanswered", "0")
            yield first, second
        finally:
            await second.services.close()
    finally:
        await first.services.close()


async def device(services: Services, user: str, platform: str, token: str | None) -> str:
    """An app device for ``user`` (the user is added first when new)."""
    with contextlib.suppress(Conflict):  # already there
        await services.users.add(ADMIN, user)
    offer = await services.activation.create_code(ADMIN, ADMINISTRATOR, user)
    public = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    activated = await services.activation.activate(
        ADMIN, offer.code, public, platform, push_token=token
    )
    return activated.device_id


async def delivery(services: Services, challenge_id: str) -> tuple[str | None, datetime | None]:
    """The challenge's ``push_node`` and ``push_sent_at``."""
    async with services.db.read() as conn:
        row = (
            await conn.execute(
                select(challenges_t.c.push_node, challenges_t.c.push_sent_at).where(
                    challenges_t.c.id == challenge_id
                )
            )
        ).one()
    return row.push_node, row.push_sent_at


async def delivered_recorded(services: Services, count: int) -> None:
    """Until ``count`` deliveries are on record: the journal writes in the background, and
    the database is the observable condition (polled, bounded, like tests/support/process.py's
    wait_for)."""
    async with asyncio.timeout(10):
        while [r for r, _ in await audit_rows(services, "push.send")].count("delivered") < count:  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def audit_rows(services: Services, action: str) -> list[tuple[str, str]]:
    rows = await services.audit.query(action=action, limit=1000)
    return [(row.result, row.detail) for row in reversed(rows)]


# -- push_node and push_sent_at -----------------------------------------------------------------


async def test_push_sent_at_is_recorded_once_every_device_finished(
    nodes: tuple[Node, Node],
) -> None:
    a, _ = nodes
    await device(a.services, "alice", "ios", "tok-iphone")
    await device(a.services, "alice", "ios", "tok-ipad")
    release = a.apns.hold("tok-ipad")
    challenge = await a.start("alice")
    await a.apns.wait_for(2)
    await delivered_recorded(a.services, 1)  # the iPhone's
    # One device still in flight: not sent yet, and this node is delivering it.
    assert await delivery(a.services, challenge) == ("n_a", None)
    release.set()
    await a.dispatcher.wait_idle()
    node, sent_at = await delivery(a.services, challenge)
    assert (node, sent_at) == ("n_a", a.clock())


async def test_a_challenge_with_nothing_to_send_is_marked_sent_at_load(
    nodes: tuple[Node, Node],
) -> None:
    a, _ = nodes
    await device(a.services, "alice", "reference", "tok-reference")  # no push service: polls
    challenge = await a.start("alice")
    await a.dispatcher.wait_idle()
    assert await delivery(a.services, challenge) == ("n_a", a.clock())
    assert a.apns.sent == []


async def test_a_push_still_in_flight_at_shutdown_is_not_marked_sent(
    nodes: tuple[Node, Node],
) -> None:
    a, _ = nodes
    await device(a.services, "alice", "ios", "tok")
    a.apns.hold("tok")  # never answers
    challenge = await a.start("alice")
    await a.apns.wait_for(1)
    await a.die()
    assert a.apns.cancelled != []
    assert await delivery(a.services, challenge) == ("n_a", None)


async def test_where_no_dispatcher_runs_the_challenge_is_left_to_a_node(
    nodes: tuple[Node, Node], clock: FakeClock
) -> None:
    a, _ = nodes
    s = a.services
    await device(s, "alice", "ios", "tok")
    command = ChallengeService(s.db, s.bus, s.users, s.otp, s.audit, clock, node_id="n_cli")
    challenge = (await command.start(ADMIN, "alice", "push", SignInContext())).id
    assert await delivery(s, challenge) == (None, None)
    # A dispatcher with no push service configured can never send: sent at once.
    silent = PushDispatcher(s.db, s.audit, clock, PUSH, {})
    polling = ChallengeService(
        s.db, s.bus, s.users, s.otp, s.audit, clock, push=silent, node_id="n_a"
    )
    challenge = (await polling.start(ADMIN, "alice", "push", SignInContext())).id
    assert await delivery(s, challenge) == (None, clock())
    # A code challenge is no push at all.
    challenge = (await a.challenges.start(ADMIN, "alice", "otp", SignInContext())).id
    assert await delivery(s, challenge) == (None, None)


async def test_services_stamp_their_own_node_id(services: Services) -> None:
    await services.policies.set(ADMIN, "push_max_unanswered", "0")
    await device(services, "alice", "reference", "tok")
    view = await services.challenges.start(ADMIN, "alice", "push", SignInContext())
    assert services.push is not None
    await services.push.wait_idle()
    node, sent_at = await delivery(services, view.id)
    assert node == services.node_id
    assert sent_at is not None  # nothing to send to a reference app: over at load


# -- handover -----------------------------------------------------------------------------------


async def test_a_dead_nodes_unsent_push_is_taken_over_and_sent_once(
    nodes: tuple[Node, Node],
) -> None:
    a, b = nodes
    await device(a.services, "alice", "ios", "tok")
    a.apns.hold("tok")  # A's push service stalls: the send never finishes on A
    challenge = await a.start("alice")
    await a.apns.wait_for(1)
    assert await b.handover.run_once() == []  # A is alive: its pushes are its own
    await a.die()
    a.clock.advance(TIMEOUT + 1)
    await b.beat()  # A beats no more
    assert await b.handover.run_once() == [challenge]
    await b.dispatcher.wait_idle()
    assert [m.challenge_id for m in b.apns.sent] == [challenge]
    assert await delivery(b.services, challenge) == ("n_b", b.clock())
    assert await audit_rows(b.services, "push.handover") == [("ok", "1 from n_a to n_b")]
    metrics = BackendMetrics()
    metrics.attach(b.services)
    assert b"openmfa_push_handover_total 1.0" in metrics.render()
    # Sent now: no further pass takes it, on either node.
    assert await b.handover.run_once() == []
    assert len(a.apns.sent) + len(b.apns.sent) == 2  # A's cut attempt and B's


async def test_a_stopped_node_is_dead_at_once(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    await device(a.services, "alice", "ios", "tok")
    a.apns.hold("tok")
    challenge = await a.start("alice")
    await a.apns.wait_for(1)
    await a.die()
    async with a.services.db.write() as conn:  # a clean shutdown marks the row stopped
        await conn.execute(
            update(nodes_t).where(nodes_t.c.id == "n_a").values(stopped_at=a.clock())
        )
    assert await b.handover.run_once() == [challenge]
    await b.dispatcher.wait_idle()
    assert len(b.apns.sent) == 1


async def test_a_challenge_the_dead_node_recorded_sent_is_never_resent(
    nodes: tuple[Node, Node],
) -> None:
    a, b = nodes
    await device(a.services, "alice", "ios", "tok")
    challenge = await a.start("alice")
    await a.dispatcher.wait_idle()
    assert (await delivery(a.services, challenge))[1] is not None
    await a.die()
    a.clock.advance(TIMEOUT + 1)
    await b.beat()
    assert await b.handover.run_once() == []
    assert b.apns.sent == []
    assert await audit_rows(b.services, "push.handover") == []


async def test_devices_the_dead_node_delivered_to_are_skipped(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    await device(a.services, "alice", "ios", "tok-iphone")
    await device(a.services, "alice", "ios", "tok-ipad")
    a.apns.hold("tok-ipad")
    challenge = await a.start("alice")
    await a.apns.wait_for(2)
    await delivered_recorded(a.services, 1)  # the iPhone's
    await a.die()
    a.clock.advance(TIMEOUT + 1)
    await b.beat()
    assert await b.handover.run_once() == [challenge]
    await b.dispatcher.wait_idle()
    assert [m.token for m in b.apns.sent] == ["tok-ipad"]
    assert (await delivery(b.services, challenge))[1] is not None


async def test_expired_answered_and_code_challenges_are_never_claimed(
    nodes: tuple[Node, Node], clock: FakeClock
) -> None:
    a, b = nodes
    s = a.services
    await device(s, "alice", "ios", "tok")
    command = ChallengeService(s.db, s.bus, s.users, s.otp, s.audit, clock)  # no dispatcher
    expiring = (await command.start(ADMIN, "alice", "push", SignInContext())).id
    clock.advance(61)  # past the 60 s default lifetime
    await b.beat()
    cancelled = (await command.start(ADMIN, "alice", "push", SignInContext())).id
    await command.cancel(ADMIN, cancelled)
    await command.start(ADMIN, "alice", "otp", SignInContext())
    assert await b.handover.run_once() == []
    live = (await command.start(ADMIN, "alice", "push", SignInContext())).id
    assert await b.handover.run_once() == [live]
    await b.dispatcher.wait_idle()
    assert [m.challenge_id for m in b.apns.sent] == [live]
    assert expiring != live
    assert await audit_rows(s, "push.handover") == [("ok", "1 from - to n_b")]


async def test_a_node_never_takes_its_own_challenges_back(nodes: tuple[Node, Node]) -> None:
    a, _ = nodes
    await device(a.services, "alice", "ios", "tok")
    release = a.apns.hold("tok")
    await a.start("alice")
    await a.apns.wait_for(1)
    a.clock.advance(TIMEOUT + 1)  # A's own row looks dead (its heartbeat stalled)
    assert await a.handover.run_once() == []
    release.set()
    await a.dispatcher.wait_idle()
    assert len(a.apns.sent) == 1


async def test_concurrent_passes_on_two_nodes_claim_each_challenge_once(
    nodes: tuple[Node, Node], clock: FakeClock
) -> None:
    a, b = nodes
    s = a.services
    users = [f"user{i:02d}" for i in range(30)]
    for user in users:
        await device(s, user, "ios", f"tok-{user}")
    command = ChallengeService(s.db, s.bus, s.users, s.otp, s.audit, clock)  # no dispatcher
    started = [(await command.start(ADMIN, user, "push", SignInContext())).id for user in users]
    passes = [node.handover.run_once() for node in (a, b) for _ in range(20)]
    claimed = [cid for ids in await asyncio.gather(*passes) for cid in ids]
    assert sorted(claimed) == sorted(started)  # each once, none left
    await asyncio.gather(a.dispatcher.wait_idle(), b.dispatcher.wait_idle())
    sent = [m.challenge_id for m in a.apns.sent + b.apns.sent]
    assert sorted(sent) == sorted(started)
    handed = await audit_rows(s, "push.handover")
    assert sum(int(detail.split()[0]) for _, detail in handed) == len(started)


async def test_a_pass_where_nothing_can_be_sent_claims_nothing(
    nodes: tuple[Node, Node], clock: FakeClock
) -> None:
    a, _ = nodes
    s = a.services
    await device(s, "alice", "ios", "tok")
    command = ChallengeService(s.db, s.bus, s.users, s.otp, s.audit, clock)
    await command.start(ADMIN, "alice", "push", SignInContext())
    silent = PushDispatcher(s.db, s.audit, clock, PUSH, {})
    idle = PushHandover(s.db, silent, s.audit, clock, PUSH, "n_c", TIMEOUT)
    assert await idle.run_once() == []


async def test_the_leased_duty_sweeps_on_one_node_and_moves_when_it_goes(
    nodes: tuple[Node, Node], clock: FakeClock
) -> None:
    a, b = nodes
    s = a.services
    duties = {
        node.id: node.handover.leased(
            Leases(node.services.db, clock, node.id), ttl=TIMEOUT, retry=0.02
        )
        for node in (a, b)
    }
    try:
        await duties["n_a"].start()
        await duties["n_a"].wait_held()
        await duties["n_b"].start()
        await device(s, "alice", "ios", "tok")
        command = ChallengeService(s.db, s.bus, s.users, s.otp, s.audit, clock)  # no dispatcher
        first = (await command.start(ADMIN, "alice", "push", SignInContext())).id
        await a.apns.wait_for(1)  # A holds the lease: A's sweeper sends it
        assert [m.challenge_id for m in a.apns.sent] == [first]
        a.apns.hold("tok")
        second = await a.start("alice")
        await a.apns.wait_for(2)
        # A goes: its sends, its sweeper and its heartbeat stop (the lease running out instead
        # of being released is tests/test_leases.py's); its node row turns dead.
        await a.die()
        await duties["n_a"].close()
        clock.advance(TIMEOUT + 1)
        await b.beat()
        await b.apns.wait_for(1)
        await duties["n_b"].wait_held()
        assert [m.challenge_id for m in b.apns.sent] == [second]
        await b.dispatcher.wait_idle()
        assert await delivery(s, second) == ("n_b", clock())
        assert len(a.apns.sent) + len(b.apns.sent) == 3  # the first, A's cut one, B's
    finally:
        for duty in duties.values():
            await duty.close()


async def test_the_app_runs_the_handover_as_a_leased_duty(
    settings: Settings, clock: FakeClock
) -> None:
    services = await Services.open(settings, clock=clock, node=True, notify=False)
    try:
        assert services.handover is not None
        names = [d.name for d in _duties(services, clock)]
        assert "push-handover" in names
        # The challenges this node starts carry the id its heartbeat row has.
        assert services.nodes is not None
        assert services.nodes.node_id == services.node_id
    finally:
        await services.close()


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)  # row locks: PG only
async def test_recording_a_delivery_never_deadlocks_with_an_answer(
    nodes: tuple[Node, Node], database_url: str
) -> None:
    """The journal takes the challenge row before the device row, the order an answer takes
    them in. The other way round, an answer arriving while the first push to a device is
    recorded deadlocked on PostgreSQL (seen with two real nodes: the answer got a 503)."""
    import asyncpg

    a, _ = nodes
    device_id = await device(a.services, "alice", "ios", "tok-fresh")  # push_status "": written
    release = a.apns.hold("tok-fresh")
    challenge = await a.start("alice")
    await a.apns.wait_for(1)
    answer = await asyncpg.connect(asyncpg_dsn(database_url))
    watcher = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        tx = answer.transaction()
        await tx.start()
        # What an answer does first: the challenge row, locked until it commits.
        await answer.execute(
            "UPDATE challenges SET answered_by = answered_by WHERE id = $1", challenge
        )
        release.set()  # the delivery is recorded now, and waits for the challenge row

        async def journal_waits() -> None:
            while not await watcher.fetchval(  # noqa: ASYNC110 - polling the database itself
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()"
            ):
                await asyncio.sleep(0.01)

        async with asyncio.timeout(10):
            await journal_waits()
        # ... then the device row, which the journal must not be holding meanwhile.
        await answer.execute("UPDATE devices SET last_used_at = now() WHERE id = $1", device_id)
        await tx.commit()
    finally:
        await answer.close()
        await watcher.close()
    await a.dispatcher.wait_idle()
    assert (await delivery(a.services, challenge))[1] is not None
