"""The push dispatcher: transport choice, retries bounded by expiry, invalid tokens, audit,
concurrency and shutdown, on SQLite and PostgreSQL.

The push services are stood in for by :class:`FakeTransport`, an honest in-memory
implementation of :class:`backend.push.base.PushTransport` (like httpx's MockTransport): the
dispatcher runs its real code paths against it. The APNs and FCM transports themselves are
tested against wire-level fakes in tests/test_push_apns.py and tests/test_push_fcm.py, and
all of it together in tests/test_push_end_to_end.py.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from backend.cli import admin
from backend.domain.challenge import ChallengeState
from backend.domain.stepup import ADMINISTRATOR
from backend.push.base import PushMessage, PushOutcome, PushResult
from backend.push.dispatcher import Backoff, PushDispatcher
from backend.services import Services
from backend.services.audit import AuditEntry
from backend.services.challenges import ChallengeService
from backend.services.context import Actor, SignInContext
from backend.services.devices import DeviceRecord
from tests.support.clock import FakeClock

pytestmark = pytest.mark.anyio
ADMIN = Actor("test:admin")
PUSH = Actor("system:push")
FAST = Backoff(0.001, 0.004)  # real waits stay tiny; expiry runs on the fake clock


class FakeTransport:
    """An in-memory push service behind the real interface.

    It records every message and answers from a per-token script (the last entry repeats;
    DELIVERED when there is none). A token can be *held*: its sends wait until the test
    releases them. A *hook* runs just before a token's answer, so a test can change the world
    at an exact point of the dispatcher's work without sleeping.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.sent: list[PushMessage] = []
        self.cancelled: list[PushMessage] = []
        self.closed = False
        self._scripts: dict[str, list[PushResult | Exception]] = {}
        self._held: dict[str, asyncio.Event] = {}
        self._hooks: dict[str, Callable[[PushMessage], Awaitable[None]]] = {}
        self._arrived = asyncio.Condition()

    def answer(self, token: str, *results: PushResult | Exception) -> None:
        self._scripts[token] = list(results)

    def hold(self, token: str) -> asyncio.Event:
        """Sends to ``token`` wait until the returned event is set."""
        gate = asyncio.Event()
        self._held[token] = gate
        return gate

    def hook(self, token: str, hook: Callable[[PushMessage], Awaitable[None]]) -> None:
        self._hooks[token] = hook

    def to(self, token: str) -> list[PushMessage]:
        return [m for m in self.sent if m.token == token]

    async def wait_for(self, count: int) -> None:
        """Until ``count`` messages have arrived (not necessarily been answered)."""
        async with asyncio.timeout(10), self._arrived:
            await self._arrived.wait_for(lambda: len(self.sent) >= count)

    async def send(self, message: PushMessage) -> PushResult:
        self.sent.append(message)
        async with self._arrived:
            self._arrived.notify_all()
        gate = self._held.get(message.token)
        if gate is not None:
            try:
                await gate.wait()
            except asyncio.CancelledError:
                self.cancelled.append(message)
                raise
        hook = self._hooks.get(message.token)
        if hook is not None:
            await hook(message)
        script = self._scripts.get(message.token)
        if script:
            item = script.pop(0) if len(script) > 1 else script[0]
            if isinstance(item, Exception):
                raise item
            return item
        return PushResult(PushOutcome.DELIVERED, status=200)

    async def close(self) -> None:
        self.closed = True


@dataclass
class Env:
    services: Services
    clock: FakeClock
    apns: FakeTransport
    fcm: FakeTransport
    dispatcher: PushDispatcher
    challenges: ChallengeService
    users: set[str] = field(default_factory=set)

    async def start(self, user: str) -> str:
        view = await self.challenges.start(ADMIN, user, "push", SignInContext("vpn", "203.0.113.7"))
        return view.id

    async def device(self, user: str, platform: str, token: str | None) -> str:
        """An app device for ``user`` (added as a user first if need be)."""
        if user not in self.users:
            await self.services.users.add(ADMIN, user)
            self.users.add(user)
        offer = await self.services.activation.create_code(ADMIN, ADMINISTRATOR, user)
        public = (
            Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        )
        activated = await self.services.activation.activate(
            ADMIN, offer.code, public, platform, push_token=token
        )
        return activated.device_id

    async def device_record(self, device_id: str) -> DeviceRecord:
        return await self.services.devices.get(device_id)

    async def audit(self, action: str) -> list[AuditEntry]:
        """Rows of ``action``, oldest first."""
        return list(reversed(await self.services.audit.query(action=action, limit=1000)))

    def dispatcher_with(
        self,
        concurrency: int = 10,
        backoff: Backoff = FAST,
        send_timeout: float = 30.0,
        drain_seconds: float = 5.0,
    ) -> PushDispatcher:
        """Another dispatcher on the same fakes (for shutdown and concurrency settings)."""
        return PushDispatcher(
            self.services.db,
            self.services.audit,
            self.clock,
            PUSH,
            {"apns": self.apns, "fcm": self.fcm},
            concurrency,
            backoff,
            send_timeout,
            drain_seconds,
        )

    def challenges_with(self, dispatcher: PushDispatcher) -> ChallengeService:
        s = self.services
        return ChallengeService(s.db, s.bus, s.users, s.otp, s.audit, self.clock, push=dispatcher)


@pytest.fixture
async def env(services: Services, clock: FakeClock) -> AsyncIterator[Env]:
    # The push-fatigue guard has tests of its own; here every push must go out.
    await services.policies.set(ADMIN, "push_limit", "0")
    await services.policies.set(ADMIN, "push_max_unanswered", "0")
    apns, fcm = FakeTransport("apns"), FakeTransport("fcm")
    dispatcher = PushDispatcher(
        services.db, services.audit, clock, PUSH, {"apns": apns, "fcm": fcm}, 10, FAST
    )
    s = services
    challenges = ChallengeService(s.db, s.bus, s.users, s.otp, s.audit, clock, push=dispatcher)
    try:
        yield Env(services, clock, apns, fcm, dispatcher, challenges)
    finally:
        await dispatcher.close()


# -- transport choice and payload ---------------------------------------------------------------


async def test_each_eligible_device_gets_one_push_through_its_platforms_transport(
    env: Env,
) -> None:
    iphone = await env.device("alice", "ios", "tok-iphone")
    pixel = await env.device("alice", "android", "tok-pixel")
    await env.device("alice", "reference", "tok-reference")  # no push service: polls
    await env.device("alice", "ios", None)  # no token: polls
    removed = await env.device("alice", "ios", "tok-removed")
    await env.services.devices.remove(ADMIN, ADMINISTRATOR, removed)
    await env.services.activation.enrol_oath(ADMIN, ADMINISTRATOR, "alice")  # codes only
    await env.device("bob", "ios", "tok-bob")  # someone else's phone

    challenge = await env.start("alice")
    await env.dispatcher.wait_idle()

    view = await env.challenges.get(challenge)
    assert [m.token for m in env.apns.sent] == ["tok-iphone"]
    assert [m.token for m in env.fcm.sent] == ["tok-pixel"]
    message = env.apns.sent[0]
    # Only the id, the display string and the expiry: nothing to match, nothing secret.
    assert message == PushMessage(
        challenge, "tok-iphone", view.display, view.expires_at, user="alice"
    )
    assert view.display == "Sign-in to vpn from 203.0.113.7"
    assert env.fcm.sent[0].challenge_id == challenge
    assert (await env.device_record(iphone)).push_status == "ok"
    assert (await env.device_record(pixel)).push_summary == "push ok"


async def test_only_push_challenges_are_delivered_and_otp_ones_are_not(env: Env) -> None:
    await env.device("alice", "ios", "tok-iphone")
    await env.challenges.start(ADMIN, "alice", "otp", SignInContext("vpn"))
    await env.dispatcher.wait_idle()
    assert env.apns.sent == []


async def test_a_platform_without_a_configured_transport_is_served_by_polling(
    env: Env,
) -> None:
    iphone = await env.device("alice", "ios", "tok-iphone")
    await env.device("alice", "android", "tok-pixel")
    fcm_only = PushDispatcher(
        env.services.db, env.services.audit, env.clock, PUSH, {"fcm": env.fcm}
    )
    challenges = env.challenges_with(fcm_only)
    try:
        challenge = (await challenges.start(ADMIN, "alice", "push", SignInContext())).id
        await fcm_only.wait_idle()
    finally:
        await fcm_only.close()
    assert env.apns.sent == []
    assert [m.token for m in env.fcm.sent] == ["tok-pixel"]
    pending = await challenges.pending_for_device(await env.device_record(iphone))
    assert [v.id for v in pending] == [challenge]


async def test_a_dispatcher_without_transports_does_nothing(env: Env) -> None:
    await env.device("alice", "ios", "tok-iphone")
    idle = PushDispatcher(env.services.db, env.services.audit, env.clock, PUSH, {})
    await env.challenges_with(idle).start(ADMIN, "alice", "push", SignInContext())
    await idle.wait_idle()
    await idle.close()
    assert await env.audit("push.send") == []


async def test_a_burst_of_challenges_is_loaded_in_batches_and_each_sent_once(env: Env) -> None:
    users = [f"user{i:02d}" for i in range(40)]
    for user in users:
        await env.device(user, "ios" if len(user) % 2 else "android", f"tok-{user}")
    started = await asyncio.gather(*(env.start(user) for user in users))
    await env.dispatcher.wait_idle()
    sent = sorted(m.challenge_id for m in env.apns.sent + env.fcm.sent)
    assert sent == sorted(started)
    assert len(await env.audit("push.send")) == len(users)


# -- retries ------------------------------------------------------------------------------------


def test_backoff_doubles_up_to_its_cap_and_honours_retry_after() -> None:
    backoff = Backoff(0.5, 30)
    assert [backoff.delay(n, None) for n in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert backoff.delay(0, 5.0) == 5.0  # the service asked for longer
    assert backoff.delay(3, 1.0) == 4  # never shorter than our own backoff
    assert backoff.delay(1000, None) == 30
    assert backoff.delay(0, float("inf")) == 0.5  # a nonsense header is ignored


async def test_retry_then_delivered_audits_every_attempt(env: Env) -> None:
    device = await env.device("alice", "ios", "tok")
    env.apns.answer(
        "tok",
        PushResult(PushOutcome.RETRY, 503, "ServiceUnavailable"),
        PushResult(PushOutcome.RETRY, 429, "TooManyRequests", retry_after=0.01),
        PushResult(PushOutcome.DELIVERED, 200),
    )
    challenge = await env.start("alice")
    await env.dispatcher.wait_idle()

    assert len(env.apns.sent) == 3
    rows = await env.audit("push.send")
    assert [r.result for r in rows] == ["retry", "retry", "delivered"]
    assert all(r.actor == "system:push" and r.user_name == "alice" for r in rows)
    first = rows[0].detail.split()
    assert first[:3] == [challenge, device, "apns"]
    assert first[3].endswith("ms")
    assert first[3][:-2].isdigit()
    assert first[4] == "ServiceUnavailable"
    assert rows[1].detail.endswith(" TooManyRequests")
    assert rows[2].detail.endswith(" 200")  # no reason given: the status stands in
    assert (await env.device_record(device)).push_status == "ok"


async def test_retries_stop_when_the_challenge_would_have_expired(env: Env) -> None:
    await env.device("alice", "android", "tok")
    env.fcm.answer("tok", PushResult(PushOutcome.RETRY, 500, "INTERNAL"))

    async def ten_seconds_pass(_: PushMessage) -> None:
        env.clock.advance(10)

    env.fcm.hook("tok", ten_seconds_pass)
    await env.start("alice")  # lives 60 s (the default policy)
    await env.dispatcher.wait_idle()
    # Attempts at 0, 10, ... 50 s; after the sixth the challenge has run out.
    assert len(env.fcm.sent) == 6
    assert [r.result for r in await env.audit("push.send")] == ["retry"] * 6


async def test_a_retry_after_beyond_the_expiry_ends_the_retries_at_once(env: Env) -> None:
    await env.device("alice", "ios", "tok")
    env.apns.answer("tok", PushResult(PushOutcome.RETRY, 429, "TooManyRequests", 3600.0))
    await env.start("alice")
    await env.dispatcher.wait_idle()
    assert len(env.apns.sent) == 1


async def test_no_retry_once_the_challenge_is_answered_or_cancelled(env: Env) -> None:
    await env.device("alice", "ios", "tok")
    env.apns.answer("tok", PushResult(PushOutcome.RETRY, 503, "ServiceUnavailable"))
    challenges = env.challenges

    async def the_gateway_gives_up(message: PushMessage) -> None:
        await challenges.cancel(ADMIN, message.challenge_id)

    env.apns.hook("tok", the_gateway_gives_up)
    challenge = await env.start("alice")
    await env.dispatcher.wait_idle()
    assert len(env.apns.sent) == 1
    assert (await env.challenges.get(challenge)).state is ChallengeState.CANCELLED


async def test_failed_is_not_retried(env: Env) -> None:
    await env.device("alice", "ios", "tok")
    env.apns.answer("tok", PushResult(PushOutcome.FAILED, 403, "InvalidProviderToken"))
    await env.start("alice")
    await env.dispatcher.wait_idle()
    assert len(env.apns.sent) == 1
    [row] = await env.audit("push.send")
    assert (row.result, row.detail.split()[-1]) == ("failed", "InvalidProviderToken")


# -- invalid tokens -----------------------------------------------------------------------------


async def test_an_invalid_token_is_marked_and_the_device_falls_back_to_polling(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    device = await env.device("alice", "android", "tok-dead")
    env.fcm.answer("tok-dead", PushResult(PushOutcome.INVALID_TOKEN, 404, "UNREGISTERED"))
    first = await env.start("alice")
    await env.dispatcher.wait_idle()

    record = await env.device_record(device)
    assert (record.push_status, record.push_error) == ("invalid", "UNREGISTERED")
    assert record.push_status_at == env.clock()
    assert record.push_summary == "polling (push token invalid: UNREGISTERED)"
    [marked] = await env.audit("push.token_invalid")
    assert (marked.result, marked.user_name) == ("invalid", "alice")
    assert marked.detail == f"{device} fcm UNREGISTERED"
    assert [r.result for r in await env.audit("push.send")] == ["invalid-token"]

    # The admin sees it.
    code = await admin.user_show(env.services, argparse.Namespace(name="alice"), ADMIN)
    assert code == 0
    assert "polling (push token invalid: UNREGISTERED)" in capsys.readouterr().out

    # No more pushes to that token; the app's pending list still serves the device.
    second = await env.start("alice")
    await env.dispatcher.wait_idle()
    assert len(env.fcm.sent) == 1
    pending = await env.challenges.pending_for_device(record)
    assert [v.id for v in pending] == [first, second]

    # A new token from the app starts afresh and gets pushes again.
    await env.services.devices.update_push_token(ADMIN, record, "tok-new")
    fresh = await env.device_record(device)
    assert (fresh.push_status, fresh.push_error, fresh.push_status_at) == ("", "", None)
    third = await env.start("alice")
    await env.dispatcher.wait_idle()
    assert [(m.token, m.challenge_id) for m in env.fcm.sent[1:]] == [("tok-new", third)]
    assert (await env.device_record(device)).push_status == "ok"


async def test_a_token_replaced_during_the_send_is_not_marked_invalid(env: Env) -> None:
    device = await env.device("alice", "ios", "tok-old")
    env.apns.answer("tok-old", PushResult(PushOutcome.INVALID_TOKEN, 410, "Unregistered"))
    services = env.services

    async def the_app_sends_a_new_token(_: PushMessage) -> None:
        await services.devices.update_push_token(
            ADMIN, await services.devices.get(device), "tok-fresh"
        )

    env.apns.hook("tok-old", the_app_sends_a_new_token)
    await env.start("alice")
    await env.dispatcher.wait_idle()
    record = await env.device_record(device)
    assert (record.push_token, record.push_status) == ("tok-fresh", "")
    assert await env.audit("push.token_invalid") == []
    assert [r.result for r in await env.audit("push.send")] == ["invalid-token"]


async def test_delivered_writes_the_status_only_when_it_changes(env: Env) -> None:
    device = await env.device("alice", "ios", "tok")
    await env.start("alice")
    await env.dispatcher.wait_idle()
    first = (await env.device_record(device)).push_status_at
    assert first == env.clock()
    env.clock.advance(5)
    await env.start("alice")
    await env.dispatcher.wait_idle()
    assert (await env.device_record(device)).push_status_at == first


# -- robustness and concurrency -----------------------------------------------------------------


async def test_a_transport_that_raises_is_logged_as_failed_and_others_still_go(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    await env.device("alice", "ios", "tok-broken")
    await env.device("alice", "android", "tok-fine")
    env.apns.answer("tok-broken", RuntimeError("bug in the transport"))
    with caplog.at_level(logging.ERROR, logger="openmfa.push"):
        challenge = await env.start("alice")
        await env.dispatcher.wait_idle()
    assert len(env.apns.sent) == 1  # not retried
    results = {r.detail.split()[2]: r for r in await env.audit("push.send")}
    assert results["apns"].result == "failed"
    assert results["apns"].detail.endswith(" transport-error")
    assert results["fcm"].result == "delivered"
    [record] = [r for r in caplog.records if r.name == "openmfa.push"]
    assert challenge in record.getMessage()
    assert record.exc_info is not None
    assert "tok-broken" not in caplog.text  # tokens stay out of the log

    # The dispatcher keeps working.
    env.apns.answer("tok-broken", PushResult(PushOutcome.DELIVERED, 200))
    await env.start("alice")
    await env.dispatcher.wait_idle()
    assert len(env.apns.sent) == 2


async def test_a_slow_push_service_does_not_delay_another_device(env: Env) -> None:
    await env.device("alice", "ios", "tok-slow")
    await env.device("bob", "ios", "tok-quick")
    await env.device("carol", "android", "tok-android")
    # Two slots in all: one per transport. The stuck APNs send takes APNs' only slot.
    dispatcher = env.dispatcher_with(concurrency=2)
    challenges = env.challenges_with(dispatcher)
    release = env.apns.hold("tok-slow")
    try:
        await challenges.start(ADMIN, "alice", "push", SignInContext())
        await env.apns.wait_for(1)
        await challenges.start(ADMIN, "carol", "push", SignInContext())
        await env.fcm.wait_for(1)  # FCM went out while APNs is stuck
        assert len(env.apns.sent) == 1

        release.set()
        await challenges.start(ADMIN, "bob", "push", SignInContext())
        await dispatcher.wait_idle()
    finally:
        await dispatcher.close()
    assert [m.token for m in env.apns.sent] == ["tok-slow", "tok-quick"]


async def test_a_push_still_waiting_for_a_slot_when_its_challenge_expires_is_not_sent(
    env: Env,
) -> None:
    await env.device("alice", "ios", "tok-stuck")
    await env.device("bob", "ios", "tok-late")
    dispatcher = env.dispatcher_with(concurrency=2)  # one APNs slot
    challenges = env.challenges_with(dispatcher)
    release = env.apns.hold("tok-stuck")
    try:
        await challenges.start(ADMIN, "alice", "push", SignInContext())
        await env.apns.wait_for(1)
        await challenges.start(ADMIN, "bob", "push", SignInContext())
        env.clock.advance(61)  # both challenges are past their 60 s
        release.set()
        await dispatcher.wait_idle()
    finally:
        await dispatcher.close()
    assert [m.token for m in env.apns.sent] == ["tok-stuck"]
    assert len(await env.audit("push.send")) == 1


async def test_one_slow_device_does_not_delay_another_on_the_same_service(env: Env) -> None:
    await env.device("alice", "ios", "tok-slow")
    await env.device("bob", "ios", "tok-quick")
    release = env.apns.hold("tok-slow")
    await env.start("alice")
    await env.apns.wait_for(1)
    bob = await env.start("bob")
    await env.apns.wait_for(2)
    # Bob's push is answered and recorded while Alice's is still in flight.
    [row] = await eventually(lambda: env.audit("push.send"))
    assert row.detail.startswith(bob)
    assert row.result == "delivered"
    assert env.apns.cancelled == []
    release.set()
    await env.dispatcher.wait_idle()
    assert len(await env.audit("push.send")) == 2


async def eventually(probe: Callable[[], Awaitable[list[AuditEntry]]]) -> list[AuditEntry]:
    """Poll ``probe`` until it returns rows: the journal writes in the background, and the
    database is the observable condition (as tests/support/process.py's wait_for polls)."""
    async with asyncio.timeout(10):
        while not (rows := await probe()):  # noqa: ASYNC110 - polls the database, bounded
            await asyncio.sleep(0.01)
    return rows


async def test_close_lets_a_send_in_flight_finish_and_records_it(env: Env) -> None:
    await env.device("alice", "ios", "tok")
    dispatcher = env.dispatcher_with(drain_seconds=30)
    challenges = env.challenges_with(dispatcher)
    release = env.apns.hold("tok")
    await challenges.start(ADMIN, "alice", "push", SignInContext())
    await env.apns.wait_for(1)
    closing = asyncio.create_task(dispatcher.close())
    async with asyncio.timeout(10):  # close() has begun once it stops taking challenges
        while not dispatcher.closing:  # noqa: ASYNC110 - a bounded wait on its own flag
            await asyncio.sleep(0)
    assert not closing.done()
    release.set()
    await closing
    assert [r.result for r in await env.audit("push.send")] == ["delivered"]
    # Closed: later challenges are not taken any more (the app's polling still serves them).
    await challenges.start(ADMIN, "alice", "push", SignInContext())
    assert len(env.apns.sent) == 1


async def test_close_cancels_what_outlives_the_drain_bound_and_records_it(env: Env) -> None:
    await env.device("alice", "ios", "tok")
    dispatcher = env.dispatcher_with(drain_seconds=0.05)
    challenges = env.challenges_with(dispatcher)
    env.apns.hold("tok")  # never released
    await challenges.start(ADMIN, "alice", "push", SignInContext())
    await env.apns.wait_for(1)
    async with asyncio.timeout(10):
        await dispatcher.close()
    assert len(env.apns.cancelled) == 1
    [row] = await env.audit("push.send")
    assert (row.result, row.detail.split()[-1]) == ("failed", "cancelled-at-shutdown")


async def test_close_ends_backoff_waits_at_once(env: Env) -> None:
    await env.device("alice", "ios", "tok")
    env.apns.answer("tok", PushResult(PushOutcome.RETRY, 503, "ServiceUnavailable"))
    dispatcher = env.dispatcher_with(backoff=Backoff(20, 20), drain_seconds=30)
    challenges = env.challenges_with(dispatcher)
    await challenges.start(ADMIN, "alice", "push", SignInContext())
    await env.apns.wait_for(1)
    async with asyncio.timeout(10):  # not the 20 s backoff, nor the 30 s drain bound
        await dispatcher.close()
    assert len(env.apns.sent) == 1
    assert [r.result for r in await env.audit("push.send")] == ["retry"]


async def test_a_hung_send_is_bounded_and_counted_as_a_retry(env: Env) -> None:
    await env.device("alice", "ios", "tok")
    env.apns.hold("tok")  # the service never answers
    dispatcher = env.dispatcher_with(send_timeout=0.05, backoff=Backoff(3600, 3600))
    challenges = env.challenges_with(dispatcher)
    try:
        await challenges.start(ADMIN, "alice", "push", SignInContext())
        await dispatcher.wait_idle()
    finally:
        await dispatcher.close()
    [row] = await env.audit("push.send")
    assert (row.result, row.detail.split()[-1]) == ("retry", "timeout")


async def test_services_wire_a_dispatcher_unless_push_is_off(services: Services) -> None:
    assert services.push is not None
    # Nothing configured in the test settings: only Web Push, which needs no account.
    assert sorted(services.push.transports) == ["webpush"]
    assert services.webpush_key is not None
    cli = await Services.open(services.settings, push=False)
    try:
        assert cli.push is None
    finally:
        await cli.close()
