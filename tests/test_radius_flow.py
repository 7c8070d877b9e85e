"""The decision flow, driven effect by effect with results of the test's choosing: every
mode, primary authentication, exemptions, refusals, failmodes, challenge rounds."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import pytest

from radius_bridge.model import (
    Accept,
    AccessRequest,
    Audit,
    CancelAuthentication,
    Challenge,
    ChallengeRound,
    Checked,
    ClientConfig,
    Decision,
    Done,
    Effect,
    NameRule,
    Outcome,
    Refused,
    Reject,
    Result,
    StartAuthentication,
    Started,
    SubmitCode,
    Unavailable,
    UpstreamAnswer,
    UpstreamAuthenticate,
    VerifyCode,
    VerifyPassword,
    WaitOutcome,
)
from radius_bridge.names import normalise
from radius_bridge.protocol.flow import (
    MESSAGES,
    OTP_PROMPT,
    Flow,
    FlowLimits,
    authenticate,
    split_code,
    truncate_message,
)
from radius_bridge.protocol.pending import PendingPushes, SignIn
from radius_bridge.protocol.state import StateTable
from radius_vocabulary.dictionary import Attribute

T0 = 1000.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_client(**changes: Any) -> ClientConfig:
    base = ClientConfig(
        name="asa1",
        networks=(ipaddress.ip_network("10.0.0.0/24"),),
        secret=b"secret",
        reply_attributes=(("Filter-Id", "vpn-users"),),
    )
    return replace(base, **changes)


_identifiers = iter(range(10**9))


def make_request(
    client: ClientConfig,
    user_name: str = "alice",
    password: bytes | None = None,
    *,
    state: bytes | None = None,
    calling: str | None = "203.0.113.7",
    nas_identifier: str | None = "asa1-nas",
    nas_ip_address: str | None = None,
) -> AccessRequest:
    number = next(_identifiers)
    return AccessRequest(
        client=client,
        source=("10.0.0.1", 40000),
        identifier=number % 256,
        authenticator=number.to_bytes(16, "big"),
        user_name=user_name,
        user=normalise(user_name, client.user_names),
        password=password,
        state=state,
        calling_station_id=calling,
        nas_identifier=nas_identifier,
        nas_ip_address=nas_ip_address,
    )


class Env:
    """Tables shared by the flows of one test, like one core's."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.states = StateTable()
        self.pushes = PendingPushes()

    def flow(self, request: AccessRequest, limits: FlowLimits | None = None) -> Flow:
        return authenticate(
            request,
            clock=self.clock,
            states=self.states,
            pushes=self.pushes,
            limits=limits or FlowLimits(),
        )

    def record(self, request: AccessRequest, decision: Decision) -> bytes:
        """What core.finish does for a Challenge: remember its round under the State."""
        assert isinstance(decision, Challenge)
        assert decision.next_round is not None
        self.states.put(
            decision.state, request.client.name, request.user, decision.next_round, self.clock()
        )
        return decision.state


Answer = Result | Callable[[Effect], Result]
Step = tuple[type[Effect] | Effect, Answer]


def drive(flow: Flow, steps: Sequence[Step]) -> tuple[Decision, list[Effect]]:
    """Run ``flow``, checking each effect against the script and answering it."""
    effects: list[Effect] = []
    result: Result | None = None
    script = iter(steps)
    while True:
        try:
            effect = flow.send(result)  # type: ignore[arg-type]
        except StopIteration as stop:
            leftover = list(script)
            assert not leftover, f"flow ended early; unused steps {leftover}"
            return stop.value, effects
        effects.append(effect)
        try:
            expected, answer = next(script)
        except StopIteration:
            raise AssertionError(f"unexpected effect {effect!r}") from None
        if isinstance(expected, type):
            assert isinstance(effect, expected), effect
        else:
            assert effect == expected
        result = answer(effect) if callable(answer) else answer


def started(
    auth_id: str = "ch_1", method: str = "push", state: str = "pending", number: int | None = None
) -> Started:
    return Started(auth_id, method, state, number)  # type: ignore[arg-type]


def waits_out(clock: Clock) -> Callable[[Effect], Result]:
    """A WaitOutcome answer that uses up the whole wait."""

    def answer(effect: Effect) -> Result:
        assert isinstance(effect, WaitOutcome)
        clock.advance(effect.seconds)
        return Outcome("pending")

    return answer


FILTER = Attribute("Filter-Id", "vpn-users")


# -- helpers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("password", "separator", "code_alone", "expected"),
    [
        (b"secret", ",", False, (b"secret", None)),
        (b"secret,123456", ",", False, (b"secret", "123456")),
        (b"se,cr,et,12345678", ",", False, (b"se,cr,et", "12345678")),
        (b"secret,123456789", ",", False, (b"secret,123456789", None)),
        (b"secret,12345", ",", False, (b"secret,12345", None)),
        (b"secret,12a456", ",", False, (b"secret,12a456", None)),
        (b"pw,123456,", ",", False, (b"pw,123456,", None)),
        (b",123456", ",", False, (b"", "123456")),
        (b"pw|123456", "|", False, (b"pw", "123456")),
        (b"pw\xc2\xa7123456", "\u00a7", False, (b"pw", "123456")),
        (b"123456", ",", True, (None, "123456")),
        (b"123456", ",", False, (b"123456", None)),
        (b"\xd9\xa1\xd9\xa2\xd9\xa3\xd9\xa4\xd9\xa5\xd9\xa6", ",", True,
         (b"\xd9\xa1\xd9\xa2\xd9\xa3\xd9\xa4\xd9\xa5\xd9\xa6", None)),
    ],
)  # fmt: skip
def test_split_code(
    password: bytes, separator: str, code_alone: bool, expected: tuple[bytes | None, str | None]
) -> None:
    assert split_code(password, separator, code_alone=code_alone) == expected


def test_truncate_message_respects_characters() -> None:
    assert truncate_message("short") == "short"
    long = "ä" * 200  # 400 octets
    cut = truncate_message(long)
    assert len(cut.encode()) <= 253
    assert cut == "ä" * 126


# -- push mode ----------------------------------------------------------------------------------


def test_push_without_password_approved() -> None:
    """RD Gateway via NPS: only User-Name, primary none, push held until approved."""
    env = Env()
    client = make_client(mode="push")
    request = make_request(client, "CONTOSO\\alice")
    decision, effects = drive(
        env.flow(request),
        [
            (StartAuthentication, started()),
            (WaitOutcome("ch_1", 55.0), Outcome("approved")),
        ],
    )
    assert decision == Accept((FILTER,), reason="approved")
    start = effects[0]
    assert start == StartAuthentication(
        user="alice",
        method="auto",
        idempotency_key=request.idempotency_key,
        client_name="asa1",
        client_ip="203.0.113.7",
        nas_identifier="asa1-nas",
        number_matching=None,
        can_show_number=False,  # push mode answers only Accept / Reject: no text to show
    )
    assert len(env.pushes) == 0  # final: nobody can join it any more


@pytest.mark.parametrize(
    ("mode", "setting", "override", "can_show"),
    [("push", "policy", None, False), ("push", "on", True, False),
     ("challenge", "off", False, True), ("challenge", "policy", None, True)],
)  # fmt: skip
def test_the_start_request_says_whether_the_gateway_can_show_a_number(
    mode: str, setting: str, override: bool | None, can_show: bool
) -> None:
    env = Env()
    client = make_client(mode=mode, number_matching=setting, primary="none")
    _, effects = drive(
        env.flow(make_request(client)), [(StartAuthentication, Refused("refused", "x"))]
    )
    start = effects[0]
    assert isinstance(start, StartAuthentication)
    assert (start.number_matching, start.can_show_number) == (override, can_show)


@pytest.mark.parametrize(
    ("state", "reason"),
    [("denied", "denied"), ("fraud", "fraud"), ("expired", "timeout"),
     ("cancelled", "cancelled"), ("weird", "denied")],
)  # fmt: skip
def test_push_final_states(state: str, reason: str) -> None:
    env = Env()
    decision, _ = drive(
        env.flow(make_request(make_client(), calling="aa-bb-cc-dd-ee-ff")),
        [(StartAuthentication, started()), (WaitOutcome, Outcome(state))],
    )
    assert decision == Reject(reason, MESSAGES[reason])


def test_push_wait_repeats_until_deadline_then_cancels() -> None:
    env = Env()
    client = make_client(push_timeout=55.0)

    def early(effect: Effect) -> Result:
        env.clock.advance(20.0)  # the runner's long-poll came back after 20 s
        return Outcome("pending")

    decision, _ = drive(
        env.flow(make_request(client)),
        [
            (StartAuthentication, started()),
            (WaitOutcome("ch_1", 55.0), early),
            (WaitOutcome("ch_1", 35.0), early),
            (WaitOutcome("ch_1", 15.0), early),
            (CancelAuthentication("ch_1"), Done()),
        ],
    )
    assert decision == Reject("timeout", MESSAGES["timeout"])
    assert len(env.pushes) == 0


def test_push_wait_is_bounded_even_if_runner_returns_at_once() -> None:
    env = Env()
    steps: list[Step] = [(StartAuthentication, started())]
    steps += [(WaitOutcome, Outcome("pending"))] * 5
    steps += [(CancelAuthentication, Done())]
    decision, _ = drive(env.flow(make_request(make_client()), FlowLimits(max_waits=5)), steps)
    assert decision.reason == "timeout"


def test_push_started_already_final() -> None:
    """Bridge restarted, gateway retransmitted: the idempotency key finds the old answer."""
    env = Env()
    decision, _ = drive(
        env.flow(make_request(make_client())),
        [(StartAuthentication, started(state="approved"))],
    )
    assert decision == Accept((FILTER,), reason="approved")


def test_push_user_with_only_codes_gets_a_challenge() -> None:
    env = Env()
    client = make_client(mode="push")
    first = make_request(client)
    decision, _ = drive(env.flow(first), [(StartAuthentication, started(method="otp"))])
    assert isinstance(decision, Challenge)
    assert decision.reply_message == OTP_PROMPT
    assert decision.next_round == ChallengeRound("ch_1", "otp", None, (FILTER,), 0)
    assert len(env.pushes) == 0
    state = env.record(first, decision)
    decision, _ = drive(
        env.flow(make_request(client, password=b"123456", state=state)),
        [(SubmitCode("ch_1", "123456"), Checked(True, "ok"))],
    )
    assert decision == Accept((FILTER,), reason="ok")


def test_push_with_number_matching_shows_the_number() -> None:
    env = Env()
    decision, _ = drive(
        env.flow(make_request(make_client(mode="push"))),
        [(StartAuthentication, started(number=42))],
    )
    assert isinstance(decision, Challenge)
    assert decision.reply_message.startswith("Pick 42 on your phone. ")
    assert decision.next_round is not None
    assert decision.next_round.number == 42


def test_new_request_joins_pending_push_and_last_holder_cancels() -> None:
    env = Env()
    client = make_client(push_timeout=50.0)
    first = env.flow(make_request(client))
    assert isinstance(first.send(None), StartAuthentication)
    wait1 = first.send(started("ch_9"))
    assert wait1 == WaitOutcome("ch_9", 50.0)

    env.clock.advance(10.0)
    second = env.flow(make_request(client, "ALICE@contoso.com"))  # new identifier, same user
    wait2 = second.send(None)
    assert wait2 == WaitOutcome("ch_9", 50.0)  # joined: no StartAuthentication
    assert env.pushes.holders == 2

    # The first copy's gateway gives up: its wait runs out, but the second still waits.
    env.clock.advance(40.0)
    with pytest.raises(StopIteration) as stop:
        first.send(Outcome("pending"))
    assert stop.value.value == Reject("timeout", MESSAGES["timeout"])
    assert env.pushes.holders == 1

    # The push is approved: the joined request gets in.
    with pytest.raises(StopIteration) as stop:
        second.send(Outcome("approved"))
    assert stop.value.value == Accept((FILTER,), reason="approved")
    assert len(env.pushes) == 0


def test_joined_requests_time_out_and_only_the_last_cancels() -> None:
    env = Env()
    client = make_client(push_timeout=30.0)
    first = env.flow(make_request(client))
    first.send(None)
    first.send(started("ch_5"))
    second = env.flow(make_request(client))
    second.send(None)
    env.clock.advance(30.0)
    with pytest.raises(StopIteration):
        first.send(Outcome("pending"))
    assert second.send(Outcome("pending")) == CancelAuthentication("ch_5")
    with pytest.raises(StopIteration) as stop:
        second.send(Done())
    assert stop.value.value.reason == "timeout"
    assert len(env.pushes) == 0


def test_dropped_flow_releases_its_hold() -> None:
    env = Env()
    flow = env.flow(make_request(make_client()))
    flow.send(None)
    flow.send(started())
    assert env.pushes.holders == 1
    flow.close()  # the runner shut down mid-wait
    assert env.pushes.holders == 0


def test_join_with_number_answers_a_challenge() -> None:
    env = Env()
    client = make_client(mode="push")
    env.pushes.add("asa1", "alice", "ch_3", 77, T0 + 55, origin=SignIn("203.0.113.7", "asa1-nas"))
    decision, _ = drive(env.flow(make_request(client)), [])
    assert isinstance(decision, Challenge)
    assert decision.next_round == ChallengeRound("ch_3", "push", 77, (FILTER,), 0)


@pytest.mark.parametrize(
    ("kind", "reason"),
    [("user-blocked", "blocked"), ("user-disabled", "disabled"), ("otp-locked", "locked"),
     ("invalid-name", "invalid-name"), ("challenge-closed", "cancelled"),
     ("push-limited", "push-limited"), ("number-matching-unavailable", "number-matching"),
     ("refused", "denied")],
)  # fmt: skip
def test_refused_users_rejected_at_once_without_push(kind: str, reason: str) -> None:
    env = Env()
    decision, effects = drive(
        env.flow(make_request(make_client(unenrolled="allow", failmode="safe"))),
        [(StartAuthentication, Refused(kind, "no"))],  # type: ignore[arg-type]
    )
    assert decision == Reject(reason, MESSAGES.get(reason))
    assert len(effects) == 1


@pytest.mark.parametrize("kind", ["unknown-user", "user-not-enrolled"])
def test_unenrolled_reject_or_allow(kind: str) -> None:
    env = Env()
    refused = Refused(kind, "none")  # type: ignore[arg-type]
    decision, _ = drive(env.flow(make_request(make_client())), [(StartAuthentication, refused)])
    assert decision == Reject("not-enrolled", MESSAGES["not-enrolled"])

    decision, effects = drive(
        env.flow(make_request(make_client(unenrolled="allow"))),
        [(StartAuthentication, refused), (Audit, Done())],
    )
    assert decision == Accept((FILTER,), reason="unenrolled-allowed")
    audit = effects[-1]
    assert isinstance(audit, Audit)
    assert (audit.action, audit.user) == ("radius.unenrolled_allowed", "alice")


@pytest.mark.parametrize("at", ["start", "wait"])
def test_failmode_on_unavailable(at: str) -> None:
    for failmode in ("secure", "safe"):
        env = Env()
        steps: list[Step] = [(StartAuthentication, Unavailable("backend down"))]
        if at == "wait":
            steps = [(StartAuthentication, started()), (WaitOutcome, Unavailable("gone"))]
        if failmode == "safe":
            steps.append((Audit, Unavailable("audit lost too")))
        decision, effects = drive(env.flow(make_request(make_client(failmode=failmode))), steps)
        if failmode == "secure":
            assert decision == Reject("backend-unavailable", MESSAGES["backend-unavailable"])
        else:
            assert decision == Accept((FILTER,), reason="failsafe")
            audit = effects[-1]
            assert isinstance(audit, Audit)
            assert audit.action == "radius.failsafe_accept"
            assert "primary authentication: none" in audit.detail


@pytest.mark.parametrize(
    "steps",
    [
        [(StartAuthentication, Checked(True, "ok"))],
        [(StartAuthentication, started()), (WaitOutcome, Checked(True, "ok"))],
    ],
)
def test_unexpected_result_never_accepts(steps: list[Step]) -> None:
    env = Env()
    decision, _ = drive(env.flow(make_request(make_client(failmode="safe"))), steps)
    assert decision == Reject("internal-error")


def test_empty_user_rejected_without_effects() -> None:
    env = Env()
    decision, effects = drive(env.flow(make_request(make_client(), "@contoso.com")), [])
    assert decision == Reject("invalid-name")
    assert effects == []


# -- primary authentication ---------------------------------------------------------------------


def test_primary_local_then_push() -> None:
    env = Env()
    decision, _ = drive(
        env.flow(make_request(make_client(primary="local"), password=b"hunter2")),
        [
            (VerifyPassword("alice", "hunter2", "asa1"), Checked(True, "ok")),
            (StartAuthentication, started()),
            (WaitOutcome, Outcome("approved")),
        ],
    )
    assert decision.reason == "approved"


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (Checked(False, "wrong-password"), Reject("wrong-password")),
        (Checked(False, "no-password"), Reject("no-password")),
        (Refused("user-blocked", "fraud"), Reject("blocked")),
        (Refused("unknown-user", "?"), Reject("unknown-user")),
        (Unavailable("down"), Reject("backend-unavailable", MESSAGES["backend-unavailable"])),
        (Outcome("approved"), Reject("internal-error")),
    ],
)
def test_primary_local_failures_end_before_second_factor(result: Result, expected: Reject) -> None:
    env = Env()
    client = make_client(primary="local", failmode="safe", unenrolled="allow")
    decision, effects = drive(
        env.flow(make_request(client, password=b"pw,123456")),
        [(VerifyPassword("alice", "pw", "asa1"), result)],
    )
    assert decision == expected
    assert len(effects) == 1


def test_primary_without_password_or_with_invalid_utf8() -> None:
    env = Env()
    decision, effects = drive(env.flow(make_request(make_client(primary="local"))), [])
    assert (decision, effects) == (Reject("no-password"), [])
    decision, effects = drive(
        env.flow(make_request(make_client(primary="local"), password=b"\xff\xfe")), []
    )
    assert (decision, effects) == (Reject("wrong-password"), [])
    decision, effects = drive(env.flow(make_request(make_client(primary="radius"))), [])
    assert (decision, effects) == (Reject("no-password"), [])


# -- primary ldap: the backend binds to the client's directory ----------------------------------


@pytest.mark.parametrize("mode", ["push", "challenge", "otp"])
def test_primary_ldap_sends_the_client_name_then_the_code(mode: str) -> None:
    env = Env()
    client = make_client(primary="ldap", mode=mode)
    decision, _ = drive(
        env.flow(make_request(client, "CONTOSO\\alice", b"Pa,ss w0rd,123456")),
        [
            (VerifyPassword("alice", "Pa,ss w0rd", "asa1"), Checked(True, "ok")),
            (VerifyCode("alice", "123456"), Checked(True, "ok")),
        ],
    )
    assert decision == Accept((FILTER,), reason="ok")


def test_primary_ldap_then_push() -> None:
    env = Env()
    decision, _ = drive(
        env.flow(make_request(make_client(primary="ldap"), password=b"hunter2")),
        [
            (VerifyPassword("alice", "hunter2", "asa1"), Checked(True, "ok")),
            (StartAuthentication, started()),
            (WaitOutcome, Outcome("approved")),
        ],
    )
    assert decision.reason == "approved"


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("wrong-password", "wrong-password"),
        ("disabled", "wrong-password"),
        ("locked", "wrong-password"),
        ("expired", "wrong-password"),
        ("password-expired", "wrong-password"),
        ("must-change", "wrong-password"),
        ("no-such-user", "wrong-password"),
        ("not-in-directory", "wrong-password"),
        ("directory-unavailable", "directory-unavailable"),
        ("something-newer", "wrong-password"),
    ],
)
def test_primary_ldap_refusals_reject_before_any_push(reason: str, expected: str) -> None:
    """Every refusal is a Reject with no message and no second-factor effect, whatever the
    failmode and unenrolled settings: an unreachable directory included."""
    env = Env()
    client = make_client(primary="ldap", failmode="safe", unenrolled="allow", mode="push")
    decision, effects = drive(
        env.flow(make_request(client, password=b"pw")),
        [(VerifyPassword("alice", "pw", "asa1"), Checked(False, reason))],
    )
    assert decision == Reject(expected)
    assert len(effects) == 1


def test_primary_ldap_backend_down_rejects_even_with_failmode_safe() -> None:
    env = Env()
    client = make_client(primary="ldap", failmode="safe")
    decision, effects = drive(
        env.flow(make_request(client, password=b"pw")),
        [(VerifyPassword, Unavailable("down"))],
    )
    assert decision == Reject("backend-unavailable", MESSAGES["backend-unavailable"])
    assert not any(isinstance(e, Audit) for e in effects)


@pytest.mark.parametrize("password", [b"", b",123456"])
@pytest.mark.parametrize("primary", ["ldap", "local"])
def test_empty_password_never_checked(primary: str, password: bytes) -> None:
    """An empty password is an anonymous bind to LDAP (a "success" that proves nothing): it
    is refused before anything is sent, also when only a code came with it."""
    env = Env()
    decision, effects = drive(
        env.flow(make_request(make_client(primary=primary), password=password)), []
    )
    assert (decision, effects) == (Reject("no-password"), [])


def test_primary_radius_attributes_kept() -> None:
    env = Env()
    granted = (Attribute("Class", b"nps"), Attribute("Vendor-Specific", b"\x00\x00\x00\x09x"))
    request = make_request(make_client(primary="radius"), "CONTOSO\\alice", b"pw")
    decision, _ = drive(
        env.flow(request),
        [
            (UpstreamAuthenticate("CONTOSO\\alice", b"pw"), UpstreamAnswer(True, granted)),
            (StartAuthentication, started()),
            (WaitOutcome, Outcome("approved")),
        ],
    )
    assert decision == Accept((*granted, FILTER), reason="approved")


def test_primary_radius_reject_and_unavailable() -> None:
    env = Env()
    client = make_client(primary="radius", failmode="safe")
    decision, _ = drive(
        env.flow(make_request(client, password=b"pw")),
        [(UpstreamAuthenticate, UpstreamAnswer(False, reply_message="x" * 300))],
    )
    assert decision == Reject("wrong-password", "x" * 253)
    decision, _ = drive(
        env.flow(make_request(client, password=b"pw")),
        [(UpstreamAuthenticate, UpstreamAnswer(False))],
    )
    assert decision == Reject("wrong-password")
    decision, _ = drive(
        env.flow(make_request(client, password=b"pw")),
        [(UpstreamAuthenticate, Unavailable("timeout"))],
    )
    assert decision == Reject("upstream-unavailable", MESSAGES["backend-unavailable"])
    decision, _ = drive(
        env.flow(make_request(client, password=b"pw")), [(UpstreamAuthenticate, Done())]
    )
    assert decision == Reject("internal-error")


# -- password,code --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["push", "challenge", "otp"])
def test_password_and_code_in_one_round(mode: str) -> None:
    env = Env()
    client = make_client(mode=mode, primary="local")
    decision, _ = drive(
        env.flow(make_request(client, password=b"pa,ss,123456")),
        [
            (VerifyPassword("alice", "pa,ss", "asa1"), Checked(True, "ok")),
            (VerifyCode("alice", "123456"), Checked(True, "ok")),
        ],
    )
    assert decision == Accept((FILTER,), reason="ok")

    decision, _ = drive(
        env.flow(make_request(client, password=b"pa,ss,123456")),
        [
            (VerifyPassword, Checked(True, "ok")),
            (VerifyCode, Checked(False, "wrong-code")),
        ],
    )
    assert decision == Reject("wrong-code", MESSAGES["wrong-code"])  # no second round


def test_code_alone_with_primary_none_and_separator() -> None:
    env = Env()
    decision, _ = drive(
        env.flow(make_request(make_client(mode="otp"), password=b"654321")),
        [(VerifyCode("alice", "654321"), Checked(True, "ok"))],
    )
    assert decision.reason == "ok"
    decision, _ = drive(
        env.flow(make_request(make_client(password_separator="|"), password=b"x|1234567")),
        [(VerifyCode("alice", "1234567"), Checked(False, "locked"))],
    )
    assert decision == Reject("locked", MESSAGES["locked"])


def test_code_with_password_refusals_and_failmode() -> None:
    env = Env()
    client = make_client(unenrolled="allow", failmode="safe")
    decision, _ = drive(
        env.flow(make_request(client, password=b"123456")),
        [(VerifyCode, Refused("user-not-enrolled", "-")), (Audit, Done())],
    )
    assert decision.reason == "unenrolled-allowed"
    decision, _ = drive(
        env.flow(make_request(client, password=b"123456")),
        [(VerifyCode, Unavailable("-")), (Audit, Done())],
    )
    assert decision.reason == "failsafe"


# -- exemptions -----------------------------------------------------------------------------------


def test_exempt_user_after_primary() -> None:
    env = Env()
    client = make_client(primary="local", exempt_users=frozenset({"svc-backup"}))
    decision, effects = drive(
        env.flow(make_request(client, "CONTOSO\\SVC-Backup", b"pw")),
        [(VerifyPassword("SVC-Backup", "pw", "asa1"), Checked(True, "ok")), (Audit, Done())],
    )
    assert decision == Accept((FILTER,), reason="exempt-user")
    audit = effects[-1]
    assert isinstance(audit, Audit)
    assert (audit.action, audit.user) == ("radius.exempt_user", "SVC-Backup")

    decision, effects = drive(
        env.flow(make_request(client, "svc-backup", b"bad")),
        [(VerifyPassword, Checked(False, "wrong-password"))],
    )
    assert decision == Reject("wrong-password")


@pytest.mark.parametrize(
    ("calling", "exempt"),
    [("192.0.2.5", True), (" 192.0.2.5 ", True), ("::ffff:192.0.2.9", True),
     ("192.0.3.1", False), ("2001:db8::5", False), ("00-11-22-33-44-55", False), (None, False),
     ("", False)],
)  # fmt: skip
def test_exempt_network_by_calling_station_id(calling: str | None, exempt: bool) -> None:
    env = Env()
    client = make_client(exempt_networks=(ipaddress.ip_network("192.0.2.0/24"),))
    request = make_request(client, calling=calling)
    if exempt:
        decision, effects = drive(env.flow(request), [(Audit, Done())])
        assert decision == Accept((FILTER,), reason="exempt-network")
        audit = effects[0]
        assert isinstance(audit, Audit)
        assert audit.action == "radius.exempt_network"
        assert "192.0.2.0/24" in audit.detail
    else:
        decision, _ = drive(
            env.flow(request),
            [(StartAuthentication, started()), (WaitOutcome, Outcome("denied"))],
        )
        assert decision.reason == "denied"


# -- challenge mode ----------------------------------------------------------------------


def challenge_round(
    env: Env, client: ClientConfig, steps: Sequence[Step], user: str = "alice"
) -> tuple[AccessRequest, Challenge]:
    request = make_request(client, user, b"pw")
    decision, _ = drive(env.flow(request), steps)
    assert isinstance(decision, Challenge)
    env.record(request, decision)
    return request, decision


def test_challenge_then_push_approved_keeps_first_round_attributes() -> None:
    env = Env()
    client = make_client(mode="challenge", primary="radius")
    granted = (Attribute("Class", b"grp-7"),)
    _, challenge = challenge_round(
        env,
        client,
        [
            (UpstreamAuthenticate, UpstreamAnswer(True, granted)),
            (StartAuthentication, started("ch_2")),
        ],
    )
    assert len(challenge.state) >= 16
    assert challenge.reply_message == client.prompt
    assert challenge.next_round == ChallengeRound("ch_2", "push", None, (*granted, FILTER), 0)
    assert env.pushes.find("asa1", "alice", env.clock()) is not None

    for placeholder in (b"", b"  ", b"push", None):
        env2_state = challenge.state
        decision, _ = drive(
            env.flow(make_request(client, password=placeholder, state=env2_state)),
            [(WaitOutcome("ch_2", 55.0), Outcome("approved"))],
        )
        assert decision == Accept((*granted, FILTER), reason="approved")
        # set the round up again for the next placeholder
        env.states.put(challenge.state, "asa1", "alice", challenge.next_round, env.clock())
        env.pushes.add("asa1", "alice", "ch_2", None, env.clock() + 55)


def test_challenge_code_answer() -> None:
    env = Env()
    client = make_client(mode="challenge")
    _, challenge = challenge_round(env, client, [(StartAuthentication, started("ch_3"))])
    decision, _ = drive(
        env.flow(make_request(client, password=b" 123 456 ", state=challenge.state)),
        [(SubmitCode("ch_3", "123456"), Checked(True, "ok"))],
    )
    assert decision == Accept((FILTER,), reason="ok")
    assert len(env.pushes) == 0


def test_wrong_code_then_right_code() -> None:
    env = Env()
    client = make_client(mode="challenge")
    _, challenge = challenge_round(env, client, [(StartAuthentication, started("ch_4", number=31))])
    assert challenge.reply_message == f"Pick 31 on your phone. {client.prompt}"
    second = make_request(client, password=b"111111", state=challenge.state)
    decision, _ = drive(env.flow(second), [(SubmitCode, Checked(False, "wrong-code"))])
    assert isinstance(decision, Challenge)
    assert (
        decision.reply_message == f"Wrong code, try again. Pick 31 on your phone. {client.prompt}"
    )
    assert decision.state != challenge.state
    assert decision.next_round is not None
    assert decision.next_round.attempts == 1
    env.record(second, decision)
    # The old State is spent.
    replay, _ = drive(env.flow(make_request(client, password=b"1", state=challenge.state)), [])
    assert replay == Reject("invalid-state", MESSAGES["invalid-state"])

    decision, _ = drive(
        env.flow(make_request(client, password=b"222222", state=decision.state)),
        [(SubmitCode("ch_4", "222222"), Checked(True, "ok"))],
    )
    assert decision == Accept((FILTER,), reason="ok")


def test_three_wrong_codes_reject_and_cancel() -> None:
    env = Env()
    client = make_client(mode="challenge")
    _, decision = challenge_round(env, client, [(StartAuthentication, started("ch_5"))])
    for attempt in range(1, 3):
        request = make_request(client, password=b"000000", state=decision.state)
        result, _ = drive(env.flow(request), [(SubmitCode, Checked(False, "wrong-code"))])
        assert isinstance(result, Challenge)
        decision = result
        env.record(request, decision)
        assert decision.next_round is not None
        assert decision.next_round.attempts == attempt
    final, _ = drive(
        env.flow(make_request(client, password=b"000000", state=decision.state)),
        [(SubmitCode, Checked(False, "wrong-code")), (CancelAuthentication("ch_5"), Done())],
    )
    assert final == Reject("too-many-attempts", MESSAGES["too-many-attempts"])
    assert len(env.pushes) == 0


def test_locked_during_challenge() -> None:
    env = Env()
    client = make_client(mode="challenge")
    _, challenge = challenge_round(env, client, [(StartAuthentication, started())])
    decision, _ = drive(
        env.flow(make_request(client, password=b"000000", state=challenge.state)),
        [(SubmitCode, Checked(False, "locked"))],
    )
    assert decision == Reject("locked", MESSAGES["locked"])


@pytest.mark.parametrize(
    ("client_name", "user", "age"),
    [("asa2", "alice", 1.0), ("asa1", "bob", 1.0), ("asa1", "alice", 300.0)],
)
def test_foreign_or_expired_state_rejected(client_name: str, user: str, age: float) -> None:
    env = Env()
    client = make_client(mode="challenge")
    _, challenge = challenge_round(env, client, [(StartAuthentication, started())])
    env.clock.advance(age)
    other = make_client(mode="challenge", name=client_name)
    decision, effects = drive(
        env.flow(make_request(other, user, b"123456", state=challenge.state)), []
    )
    assert decision == Reject("invalid-state", MESSAGES["invalid-state"])
    assert effects == []


def test_unknown_state_rejected() -> None:
    env = Env()
    decision, _ = drive(env.flow(make_request(make_client(), state=b"x" * 16)), [])
    assert decision.reason == "invalid-state"


def test_challenge_expired_falls_back_to_verify_code() -> None:
    env = Env()
    client = make_client(mode="challenge")
    _, challenge = challenge_round(env, client, [(StartAuthentication, started("ch_6"))])
    decision, _ = drive(
        env.flow(make_request(client, password=b"123456", state=challenge.state)),
        [
            (SubmitCode("ch_6", "123456"), Refused("challenge-expired", "late")),
            (VerifyCode("alice", "123456"), Checked(True, "ok")),
        ],
    )
    assert decision == Accept((FILTER,), reason="ok")


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        (Outcome("approved"), Accept((FILTER,), reason="approved")),
        (Outcome("denied"), Reject("denied", MESSAGES["denied"])),
        (Outcome("pending"), Reject("cancelled", MESSAGES["cancelled"])),
        (Unavailable("down"), Reject("backend-unavailable", MESSAGES["backend-unavailable"])),
    ],
)
def test_code_after_push_was_answered(outcome: Result, expected: Decision) -> None:
    env = Env()
    client = make_client(mode="challenge")
    _, challenge = challenge_round(env, client, [(StartAuthentication, started("ch_7"))])
    decision, _ = drive(
        env.flow(make_request(client, password=b"123456", state=challenge.state)),
        [
            (SubmitCode, Refused("challenge-closed", "answered")),
            (WaitOutcome("ch_7", 0.0), outcome),
        ],
    )
    assert decision == expected


def test_challenge_placeholder_times_out() -> None:
    env = Env()
    client = make_client(mode="challenge", push_timeout=20.0)
    _, challenge = challenge_round(env, client, [(StartAuthentication, started("ch_8"))])
    decision, _ = drive(
        env.flow(make_request(client, password=b"", state=challenge.state)),
        [(WaitOutcome("ch_8", 20.0), waits_out(env.clock)), (CancelAuthentication("ch_8"), Done())],
    )
    assert decision == Reject("timeout", MESSAGES["timeout"])


def test_challenge_wait_refused_and_unavailable() -> None:
    env = Env()
    client = make_client(mode="challenge", failmode="safe")
    _, challenge = challenge_round(env, client, [(StartAuthentication, started("ch_8"))])
    decision, _ = drive(
        env.flow(make_request(client, password=b"", state=challenge.state)),
        [(WaitOutcome, Refused("challenge-expired", "gone"))],
    )
    assert decision == Reject("timeout", MESSAGES["timeout"])

    env.states.put(challenge.state, "asa1", "alice", challenge.next_round, env.clock())  # type: ignore[arg-type]
    decision, _ = drive(
        env.flow(make_request(client, password=b"", state=challenge.state)),
        [(WaitOutcome, Unavailable("down")), (Audit, Done())],
    )
    assert decision == Accept((FILTER,), reason="failsafe")


def test_challenge_joins_pending_push() -> None:
    env = Env()
    client = make_client(mode="challenge")
    challenge_round(env, client, [(StartAuthentication, started("ch_10", number=12))])
    # The user starts over at the VPN client: a new first round, password checked again,
    # no new push, same number shown.
    client_local = replace(client, primary="local")
    request = make_request(client_local, "alice", b"pw")
    decision, _ = drive(env.flow(request), [(VerifyPassword, Checked(True, "ok"))])
    assert isinstance(decision, Challenge)
    assert decision.next_round == ChallengeRound("ch_10", "push", 12, (FILTER,), 0)


def test_challenge_for_user_with_only_codes() -> None:
    env = Env()
    client = make_client(mode="challenge", prompt="Enter your OTP or approve")
    _, challenge = challenge_round(env, client, [(StartAuthentication, started(method="otp"))])
    assert challenge.reply_message == "Enter your OTP or approve"  # operator's own text kept
    request = make_request(client, password=b"", state=challenge.state)
    decision, _ = drive(env.flow(request), [])
    assert isinstance(decision, Challenge)  # nothing to wait for: asked again, not "wrong"
    assert decision.reply_message == "Enter your OTP or approve"
    assert decision.next_round is not None
    assert decision.next_round.attempts == 1


@pytest.mark.parametrize(
    ("result", "reason"),
    [(Refused("user-blocked", "x"), "blocked"), (Unavailable("x"), "backend-unavailable"),
     (Started("ch", "push", "pending", None), "internal-error")],
)  # fmt: skip
def test_challenge_code_refusals(result: Result, reason: str) -> None:
    env = Env()
    client = make_client(mode="challenge")
    _, challenge = challenge_round(env, client, [(StartAuthentication, started())])
    decision, _ = drive(
        env.flow(make_request(client, password=b"123456", state=challenge.state)),
        [(SubmitCode, result)],
    )
    assert decision.reason == reason


def test_long_prompt_and_number_fit_253_octets() -> None:
    env = Env()
    client = make_client(mode="challenge", prompt="é" * 126)  # 252 octets
    _, challenge = challenge_round(env, client, [(StartAuthentication, started(number=99))])
    assert len(challenge.reply_message.encode()) <= 253
    assert challenge.reply_message.startswith("Pick 99")


# -- otp mode ----------------------------------------------------------------------------


def test_otp_mode_challenge_then_code() -> None:
    env = Env()
    client = make_client(mode="otp", primary="local")
    request = make_request(client, "alice", b"pw")
    decision, effects = drive(env.flow(request), [(VerifyPassword, Checked(True, "ok"))])
    assert isinstance(decision, Challenge)
    assert decision.reply_message == OTP_PROMPT
    assert decision.next_round == ChallengeRound(None, "otp", None, (FILTER,), 0)
    assert not any(isinstance(e, StartAuthentication) for e in effects)
    env.record(request, decision)

    wrong = make_request(client, password=b"999999", state=decision.state)
    decision, _ = drive(
        env.flow(wrong), [(VerifyCode("alice", "999999"), Checked(False, "wrong-code"))]
    )
    assert isinstance(decision, Challenge)
    assert decision.reply_message == "Wrong code, try again. " + OTP_PROMPT
    env.record(wrong, decision)

    decision, _ = drive(
        env.flow(make_request(client, password=b"123456", state=decision.state)),
        [(VerifyCode("alice", "123456"), Checked(True, "ok"))],
    )
    assert decision == Accept((FILTER,), reason="ok")


def test_otp_mode_attempts_bounded_without_cancel() -> None:
    env = Env()
    client = make_client(mode="otp")
    request = make_request(client)
    decision, _ = drive(env.flow(request), [])
    env.record(request, decision)
    assert isinstance(decision, Challenge)
    for _ in range(3):
        assert isinstance(decision, Challenge)
        request = make_request(client, password=b"abc", state=decision.state)
        decision, effects = drive(env.flow(request), [])
        assert effects == []
        if isinstance(decision, Challenge):
            env.record(request, decision)
    assert decision == Reject("too-many-attempts", MESSAGES["too-many-attempts"])


def test_otp_mode_unenrolled_user_typing_a_code() -> None:
    env = Env()
    client = make_client(mode="otp")
    request = make_request(client)
    decision, _ = drive(env.flow(request), [])
    state = env.record(request, decision)
    decision, _ = drive(
        env.flow(make_request(client, password=b"123456", state=state)),
        [(VerifyCode, Refused("unknown-user", "-"))],
    )
    assert decision == Reject("not-enrolled", MESSAGES["not-enrolled"])


def test_name_rule_applies_in_requests() -> None:
    client = make_client(user_names=NameRule("map", (("partner.example", "{user}.partner"),)))
    assert make_request(client, "bob@Partner.Example").user == "bob.partner"


def test_placeholder_waits_without_registry_entry_and_cancels() -> None:
    """The registry forgot the push (expired, evicted) or holds a newer one: the answer still
    waits on the push its State names, and cancels it at the end."""
    for newer in (False, True):
        env = Env()
        client = make_client(mode="challenge", push_timeout=10.0)
        _, challenge = challenge_round(env, client, [(StartAuthentication, started("ch_old"))])
        env.pushes = PendingPushes()
        if newer:
            env.pushes.add("asa1", "alice", "ch_new", None, env.clock() + 100)
        decision, _ = drive(
            env.flow(make_request(client, password=b"", state=challenge.state)),
            [
                (WaitOutcome("ch_old", 10.0), waits_out(env.clock)),
                (CancelAuthentication("ch_old"), Done()),
            ],
        )
        assert decision.reason == "timeout"
        if newer:
            found = env.pushes.find("asa1", "alice", env.clock())
            assert found is not None
            assert found.authentication_id == "ch_new"
            assert found.holders == 0


def test_request_from_another_address_does_not_join() -> None:
    """Someone else with alice's password, elsewhere, must not ride on her approval."""
    env = Env()
    client = make_client(mode="push")
    first = env.flow(make_request(client, calling="203.0.113.7"))
    first.send(None)
    assert first.send(started("ch_alice")) == WaitOutcome("ch_alice", 55.0)
    other = env.flow(make_request(client, calling="198.51.100.66"))
    start = other.send(None)
    assert isinstance(start, StartAuthentication)  # a push of its own, for alice to refuse
    assert start.client_ip == "198.51.100.66"
    assert other.send(started("ch_other")) == WaitOutcome("ch_other", 55.0)
    with pytest.raises(StopIteration) as stop:
        first.send(Outcome("approved"))
    assert stop.value.value.reason == "approved"
    with pytest.raises(StopIteration) as stop:
        other.send(Outcome("denied"))
    assert stop.value.value.reason == "denied"
    assert env.pushes.holders == 0


@pytest.mark.parametrize(
    ("first_sign_in", "second_sign_in"),
    [
        ({"calling": None}, {"calling": None}),  # neither says where the user is
        ({"calling": ""}, {"calling": ""}),
        ({"calling": " "}, {"calling": " "}),
        ({"nas_identifier": "asa-a"}, {"nas_identifier": "asa-b"}),
        ({"nas_identifier": "asa-a"}, {"nas_identifier": None}),
        ({"nas_ip_address": "10.0.0.1"}, {"nas_ip_address": "10.0.0.2"}),
        ({"nas_ip_address": None}, {"nas_ip_address": "10.0.0.2"}),
    ],
)
def test_request_not_provably_the_same_sign_in_gets_a_push_of_its_own(
    first_sign_in: dict[str, Any], second_sign_in: dict[str, Any]
) -> None:
    """Issue 13 finding 4: two requests without Calling-Station-Id (None == None) shared one
    push, so the user's approval accepted both. Only a provably same sign-in joins."""
    env = Env()
    client = make_client(mode="push")
    first = env.flow(make_request(client, **first_sign_in))
    first.send(None)
    assert first.send(started("ch_first")) == WaitOutcome("ch_first", 55.0)
    second = env.flow(make_request(client, **second_sign_in))
    assert isinstance(second.send(None), StartAuthentication)
    assert second.send(started("ch_second")) == WaitOutcome("ch_second", 55.0)
    # The user approves the push they started; the other request is decided by its own.
    with pytest.raises(StopIteration) as stop:
        first.send(Outcome("approved"))
    assert stop.value.value.reason == "approved"
    with pytest.raises(StopIteration) as stop:
        second.send(Outcome("denied"))
    assert stop.value.value.reason == "denied"
    assert env.pushes.holders == 0


def test_same_station_and_nas_still_joins() -> None:
    env = Env()
    client = make_client(mode="push")
    sign_in = {"calling": "203.0.113.7", "nas_identifier": "asa-a", "nas_ip_address": "10.0.0.1"}
    first = env.flow(make_request(client, **sign_in))
    first.send(None)
    first.send(started("ch_1"))
    second = env.flow(make_request(client, **sign_in))
    assert second.send(None) == WaitOutcome("ch_1", 55.0)
    assert env.pushes.holders == 2
    first.close()
    second.close()


def test_the_idempotency_key_names_the_sign_in_not_the_bridge_or_the_path() -> None:
    """Issue 18: the same packet reaching a second bridge (perhaps from another NAS address
    of the gateway) must give the same key, so the backend joins the first authentication;
    anything that makes it another sign-in gives another key."""
    client = make_client()
    request = make_request(client, calling="203.0.113.7")
    key = request.idempotency_key
    assert len(key) == 64
    assert int(key, 16) >= 0
    via_other_bridge = replace(
        request, source=("10.9.9.9", 1812), nas_identifier="other", nas_ip_address="10.9.9.9"
    )
    assert via_other_bridge.idempotency_key == key
    assert replace(request, identifier=(request.identifier + 1) % 256).idempotency_key == key
    others = [
        replace(request, authenticator=bytes(16)),
        replace(request, user="bob"),
        replace(request, calling_station_id="198.51.100.1"),
        replace(request, calling_station_id=None),
        replace(request, client=replace(client, name="other-gateway")),
    ]
    assert len({key, *(r.idempotency_key for r in others)}) == len(others) + 1
