"""Property tests of the decision flow: whatever the runner answers, in whatever order, the
flow ends with a decision, never raises, never leaves a push held, never leaks a password
or code into an audit, and never accepts without the evidence its reason claims."""

from __future__ import annotations

import ipaddress
from typing import Any, get_args

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from radius_bridge.model import (
    Accept,
    Audit,
    Challenge,
    ChallengeRound,
    Checked,
    Decision,
    Done,
    Effect,
    Outcome,
    Refused,
    RefusedKind,
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
from radius_bridge.protocol.flow import FlowLimits
from radius_bridge.protocol.pending import PendingPushes, SignIn
from radius_bridge.protocol.state import new_state
from radius_vocabulary.dictionary import Attribute
from tests.test_radius_flow import Env, make_client, make_request

PASSWORD_TEXT = "Sup3r-s3cret"
CODE = "482913"
REFUSALS = list(get_args(RefusedKind))  # every refusal the backend client can return
STATES = ["pending", "approved", "denied", "fraud", "expired", "cancelled"]
#: What the backend answers a password check with (local, and directory outcomes).
PASSWORD_REASONS = ["ok", "wrong-password", "no-password", "not-in-directory",
                    "directory-unavailable", "disabled", "locked", "password-expired",
                    "must-change", "no-such-user"]  # fmt: skip

any_result: st.SearchStrategy[Result] = st.one_of(
    st.builds(Checked, st.booleans(), st.sampled_from(["ok", "wrong-code", "locked",
                                                       "wrong-password", "no-password",
                                                       "directory-unavailable",
                                                       "password-expired"])),
    st.builds(UpstreamAnswer, st.booleans(), st.just((Attribute("Class", b"up"),)),
              st.sampled_from([None, "upstream says no"])),
    st.builds(Started, st.sampled_from(["ch_1", "ch_2"]), st.sampled_from(["push", "otp"]),
              st.sampled_from(STATES), st.sampled_from([None, 42])),
    st.builds(Refused, st.sampled_from(REFUSALS), st.just("detail")),
    st.builds(Outcome, st.sampled_from(STATES)),
    st.builds(Unavailable, st.just("down")),
    st.just(Done()),
)  # fmt: skip


def plausible(effect: Effect) -> st.SearchStrategy[Result]:
    """Results a correct runner could give for ``effect`` (drawn most of the time, so the
    exploration reaches deep paths instead of ending on the first odd answer)."""
    if isinstance(effect, VerifyPassword):
        return st.one_of(
            st.builds(Checked, st.booleans(), st.sampled_from(PASSWORD_REASONS)),
            st.builds(Refused, st.sampled_from(REFUSALS), st.just("-")),
            st.just(Unavailable("down")),
        )
    if isinstance(effect, VerifyCode | SubmitCode):
        return st.one_of(
            st.builds(Checked, st.booleans(), st.sampled_from(["ok", "wrong-code", "locked"])),
            st.builds(Refused, st.sampled_from(REFUSALS), st.just("-")),
            st.just(Unavailable("down")),
        )
    if isinstance(effect, UpstreamAuthenticate):
        return st.one_of(
            st.builds(UpstreamAnswer, st.booleans(), st.just((Attribute("Class", b"up"),))),
            st.just(Unavailable("upstream down")),
        )
    if isinstance(effect, StartAuthentication):
        return st.one_of(
            st.builds(Started, st.just("ch_1"), st.sampled_from(["push", "otp"]),
                      st.sampled_from(STATES), st.sampled_from([None, 42])),
            st.builds(Refused, st.sampled_from(REFUSALS), st.just("-")),
            st.just(Unavailable("down")),
        )  # fmt: skip
    if isinstance(effect, WaitOutcome):
        return st.one_of(st.builds(Outcome, st.sampled_from(STATES)), st.just(Unavailable("x")))
    return st.sampled_from([Done(), Unavailable("audit not stored")])


clients = st.builds(
    lambda mode, primary, failmode, unenrolled, exempt_user, exempt_net, timeout: make_client(
        mode=mode,
        primary=primary,
        failmode=failmode,
        unenrolled=unenrolled,
        exempt_users=frozenset({"alice"}) if exempt_user else frozenset(),
        exempt_networks=(ipaddress.ip_network("203.0.113.0/24"),) if exempt_net else (),
        push_timeout=timeout,
    ),
    st.sampled_from(["push", "challenge", "otp"]),
    st.sampled_from(["none", "local", "radius", "ldap"]),
    st.sampled_from(["secure", "safe"]),
    st.sampled_from(["reject", "allow"]),
    st.booleans(),
    st.booleans(),
    st.sampled_from([5.0, 55.0]),
)
passwords = st.sampled_from(
    [None, b"", PASSWORD_TEXT.encode(), f"{PASSWORD_TEXT},{CODE}".encode(), CODE.encode(),
     b"\xff\xfe", b"push", f"{CODE[:3]} {CODE[3:]}".encode()]
)  # fmt: skip
rounds = st.builds(
    ChallengeRound,
    st.sampled_from([None, "ch_1"]),
    st.sampled_from(["push", "otp"]),
    st.sampled_from([None, 7]),
    st.just((Attribute("Class", b"first-round"),)),
    st.integers(0, 2),
)


def run(data: st.DataObject, env: Env, flow: Any) -> tuple[Decision, list[tuple[Effect, Result]]]:
    trace: list[tuple[Effect, Result]] = []
    result: Result | None = None
    for _ in range(2000):
        try:
            effect = flow.send(result)
        except StopIteration as stop:
            return stop.value, trace
        if data.draw(st.integers(0, 9)) == 0:
            result = data.draw(any_result)
        else:
            result = data.draw(plausible(effect))
        if isinstance(effect, WaitOutcome):
            env.clock.advance(data.draw(st.sampled_from([0.0, 1.0, effect.seconds])))
        trace.append((effect, result))
    raise AssertionError("flow did not end")


def answered(trace: list[tuple[Effect, Result]], kinds: tuple[type, ...], result: Result) -> bool:
    return any(isinstance(e, kinds) and r == result for e, r in trace)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), clients, passwords, st.sampled_from(["none", "recorded", "unknown"]), rounds,
       st.booleans())  # fmt: skip
def test_flow_always_decides_safely(
    data: st.DataObject,
    client: Any,
    password: bytes | None,
    state_kind: str,
    round_: ChallengeRound,
    pending_push: bool,
) -> None:
    env = Env()
    if pending_push:
        env.pushes.add(
            client.name,
            "alice",
            "ch_1",
            data.draw(st.sampled_from([None, 9])),
            env.clock() + 30,
            origin=SignIn(
                data.draw(st.sampled_from(["203.0.113.7", "198.51.100.1", None])), "asa1-nas"
            ),
        )
    state: bytes | None = None
    if state_kind != "none":
        state = new_state()
        if state_kind == "recorded":
            env.states.put(state, client.name, "alice", round_, env.clock())
    request = make_request(client, "CONTOSO\\alice", password, state=state)
    decision, trace = run(data, env, env.flow(request, FlowLimits(max_waits=20)))

    assert isinstance(decision, Accept | Reject | Challenge)
    assert env.pushes.holders == 0
    effects = [effect for effect, _ in trace]

    # A password check always names the client (its directory, for ldap) and never carries
    # an empty password (an anonymous bind); only primaries local and ldap check one here.
    for effect in effects:
        if isinstance(effect, VerifyPassword):
            assert client.primary in ("local", "ldap")
            assert effect.client_name == client.name
            assert effect.password
    # A refused password check ends the flow there, whatever the failmode: nothing follows.
    for index, (effect, result) in enumerate(trace):
        if isinstance(effect, VerifyPassword) and not (
            isinstance(result, Checked) and result.accepted
        ):
            assert index == len(trace) - 1
            assert isinstance(decision, Reject)

    # Secrets only go where they are checked.
    for effect in effects:
        text = repr(effect)
        if not isinstance(effect, VerifyPassword | UpstreamAuthenticate):
            assert PASSWORD_TEXT not in text
        if isinstance(effect, Audit):
            assert CODE not in text
            assert CODE[:3] + " " not in text

    if isinstance(decision, Challenge):
        assert len(decision.state) >= 16
        assert len(decision.reply_message.encode()) <= 253
        assert decision.next_round is not None
        return
    if isinstance(decision, Reject):
        if decision.reply_message is not None:
            assert len(decision.reply_message.encode()) <= 253
        return

    # An Accept: the evidence its reason claims must be in the trace.
    if state is None:
        if client.primary in ("local", "ldap"):
            assert answered(trace, (VerifyPassword,), Checked(True, "ok")) or any(
                isinstance(e, VerifyPassword) and isinstance(r, Checked) and r.accepted
                for e, r in trace
            )
        elif client.primary == "radius":
            assert any(
                isinstance(e, UpstreamAuthenticate) and isinstance(r, UpstreamAnswer) and r.accepted
                for e, r in trace
            )
    else:
        assert state_kind == "recorded"
        assert decision.attributes == round_.attributes
    audits = [effect.action for effect in effects if isinstance(effect, Audit)]
    reason = decision.reason
    if reason == "approved":
        assert any(
            (isinstance(r, Outcome) and r.state == "approved")
            or (isinstance(r, Started) and r.state == "approved")
            for _, r in trace
        )
    elif reason == "ok":
        assert any(
            isinstance(e, VerifyCode | SubmitCode) and isinstance(r, Checked) and r.accepted
            for e, r in trace
        )
    elif reason == "exempt-user":
        assert "alice" in client.exempt_users
        assert audits == ["radius.exempt_user"]
    elif reason == "exempt-network":
        assert client.exempt_networks
        assert audits == ["radius.exempt_network"]
    elif reason == "unenrolled-allowed":
        assert client.unenrolled == "allow"
        assert audits == ["radius.unenrolled_allowed"]
        assert any(
            isinstance(r, Refused) and r.kind in ("unknown-user", "user-not-enrolled")
            for _, r in trace
        )
    elif reason == "failsafe":
        assert client.failmode == "safe"
        assert audits == ["radius.failsafe_accept"]
        assert any(isinstance(r, Unavailable) for _, r in trace)
    else:
        raise AssertionError(f"unexpected accept reason {reason}")


sign_ins = st.builds(
    SignIn,
    st.sampled_from([None, "", " ", "203.0.113.7", "198.51.100.1"]),
    st.sampled_from([None, "nas-a", "nas-b"]),
    st.sampled_from([None, "10.0.0.1", "10.0.0.2"]),
)


@given(
    sign_ins, sign_ins, st.sampled_from(["alice", "ALICE", "bob"]), st.sampled_from(["c1", "c2"])
)
def test_a_request_joins_only_a_provably_same_sign_in(
    started_by: SignIn, joining: SignIn, user: str, client: str
) -> None:
    """Issue 13 finding 4, as a property of the pending-push table."""
    pushes = PendingPushes()
    entry = pushes.add("c1", "alice", "ch_1", None, 100.0, origin=started_by)
    joined = pushes.joinable(client, user, 0.0, joining)
    same = (
        client == "c1"
        and user.casefold() == "alice"
        and bool((joining.calling_station_id or "").strip())
        and joining == started_by
    )
    assert (joined is entry) == same
