"""The push-fatigue guard's decision (pure): worked examples, then properties over random
push histories checked against a plain counting model."""

from __future__ import annotations

import dataclasses
import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.domain.challenge import ChallengeState
from backend.domain.fatigue import GuardDecision, PushRecord, Reason, decide, explain
from backend.domain.policy import Policy, parse_value, resolve
from backend.errors import PolicyError

NOW = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
WINDOW = 300
TTL = 60
DEFAULTS = resolve()
S = ChallengeState


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def push(
    seconds_ago: float, state: S = S.APPROVED, by: str | None = None, ttl: float = TTL
) -> PushRecord:
    created = ago(seconds_ago)
    answered_by = by if by is not None else ("dev_a" if state in (S.APPROVED, S.DENIED) else None)
    return PushRecord(created, created + timedelta(seconds=ttl), state, answered_by)


def policy(**changes: object) -> Policy:
    return dataclasses.replace(DEFAULTS, **changes)  # type: ignore[arg-type]


# -- policy keys ----------------------------------------------------------------------------


def test_defaults_of_the_guard_and_the_fallback() -> None:
    assert (
        DEFAULTS.push_limit,
        DEFAULTS.push_limit_window_seconds,
        DEFAULTS.push_max_unanswered,
        DEFAULTS.deny_limit_per_device,
        DEFAULTS.number_matching_fallback,
    ) == (3, 300, 3, 3, "refuse")


@pytest.mark.parametrize(
    ("key", "raw", "expected"),
    [
        ("push_limit", "0", 0),
        ("push_limit", "10000", 10000),
        ("push_max_unanswered", "0", 0),
        ("deny_limit_per_device", "0", 0),
        ("push_limit_window_seconds", "10", 10),
        ("push_limit_window_seconds", "86400", 86400),
        ("number_matching_fallback", " Approve ", "approve"),
        ("number_matching_fallback", "refuse", "refuse"),
    ],
)
def test_guard_keys_parse(key: str, raw: str, expected: object) -> None:
    assert parse_value(key, raw) == expected


@pytest.mark.parametrize(
    ("key", "raw", "message"),
    [
        ("push_limit", "-1", "from 0 to 10000"),
        ("push_limit_window_seconds", "9", "from 10 to 86400"),
        ("deny_limit_per_device", "lots", "from 0 to 10000"),
        ("number_matching_fallback", "allow", "expected one of refuse, approve"),
        ("number_matching_fallback", "", "expected one of refuse, approve"),
    ],
)
def test_bad_guard_values_are_refused(key: str, raw: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        parse_value(key, raw)


# -- worked examples ------------------------------------------------------------------------


def test_a_quiet_user_may_get_a_push() -> None:
    decision = decide(DEFAULTS, NOW, [], fraud_report_open=False)
    assert decision.allowed
    assert (decision.reason, decision.until, decision.pushes_in_window) == (None, None, 0)


def test_the_third_push_in_the_window_stops_the_fourth_until_the_first_leaves() -> None:
    history = [push(200), push(100), push(10)]
    decision = decide(DEFAULTS, NOW, history, fraud_report_open=False)
    assert not decision.allowed
    assert decision.reason is Reason.PUSH_LIMIT
    assert decision.until == ago(200) + timedelta(seconds=WINDOW)
    # Approved pushes count too: the limit is on notifications, not on failures.
    assert decision.refused_in_window == 0
    # Two are not enough.
    assert decide(DEFAULTS, NOW, history[1:], fraud_report_open=False).allowed
    # At "until" the first push has left the window.
    assert decide(DEFAULTS, decision.until, history, fraud_report_open=False).allowed
    assert not decide(
        DEFAULTS, decision.until - timedelta(microseconds=1), history, fraud_report_open=False
    ).allowed


def test_pushes_outside_the_window_do_not_count() -> None:
    history = [push(WINDOW), push(WINDOW + 1), push(10_000), push(5)]
    decision = decide(DEFAULTS, NOW, history, fraud_report_open=False)
    assert decision.allowed
    assert decision.pushes_in_window == 1


def test_denied_or_unanswered_pushes_stop_pushes_below_the_push_limit() -> None:
    rules = policy(push_limit=10, deny_limit_per_device=0)
    history = [
        push(250, S.DENIED),
        push(200, S.EXPIRED),
        push(150, S.CANCELLED),  # the gateway gave up waiting: unanswered
        push(100, S.APPROVED),
    ]
    decision = decide(rules, NOW, history, fraud_report_open=False)
    assert decision.reason is Reason.UNANSWERED_LIMIT
    assert decision.refused_in_window == 3
    assert decision.until == ago(250) + timedelta(seconds=WINDOW)
    assert "3 denied or unanswered pushes in 5 min (limit 3)" in explain(decision.stops[0], WINDOW)


def test_a_pending_push_counts_as_unanswered_once_its_time_is_up() -> None:
    rules = policy(push_limit=10, deny_limit_per_device=0)
    history = [push(250, S.DENIED), push(200, S.EXPIRED), push(30, S.PENDING, ttl=30)]
    assert not decide(rules, NOW, history, fraud_report_open=False).allowed
    still_open = [*history[:2], push(30, S.PENDING, ttl=31)]
    assert decide(rules, NOW, still_open, fraud_report_open=False).allowed


def test_denies_from_one_device_stop_pushes() -> None:
    rules = policy(push_limit=10, push_max_unanswered=0, deny_limit_per_device=2)
    history = [
        push(200, S.DENIED, by="dev_a"),
        push(150, S.DENIED, by="dev_b"),
        push(100, S.FRAUD, by="dev_a"),  # a report is a refusal from that device too
    ]
    decision = decide(rules, NOW, history, fraud_report_open=False)
    assert decision.reason is Reason.DEVICE_DENY_LIMIT
    stop = decision.stops[0]
    assert (stop.device, stop.count, stop.limit) == ("dev_a", 2, 2)
    assert stop.until == ago(200) + timedelta(seconds=WINDOW)
    assert decision.most_denies_by_one_device == 2
    # Spread over two devices, the same number of denies does not trip the device rule.
    spread = [push(200, S.DENIED, by="dev_a"), push(150, S.DENIED, by="dev_b")]
    assert decide(rules, NOW, spread, fraud_report_open=False).allowed


def test_an_open_fraud_report_mutes_pushes_until_reviewed() -> None:
    decision = decide(DEFAULTS, NOW, [], fraud_report_open=True)
    assert not decision.allowed
    assert (decision.reason, decision.until) == (Reason.FRAUD_REPORT_OPEN, None)
    # Even with every limit off.
    off = policy(push_limit=0, push_max_unanswered=0, deny_limit_per_device=0)
    assert decide(off, NOW, [], fraud_report_open=True).reason is Reason.FRAUD_REPORT_OPEN
    # It outlasts any timed stop.
    busy = decide(DEFAULTS, NOW, [push(1), push(2), push(3)], fraud_report_open=True)
    assert busy.reason is Reason.FRAUD_REPORT_OPEN
    assert {s.reason for s in busy.stops} == {Reason.FRAUD_REPORT_OPEN, Reason.PUSH_LIMIT}


def test_the_latest_ending_stop_decides() -> None:
    rules = policy(push_limit=3, push_max_unanswered=2, deny_limit_per_device=0)
    history = [push(290, S.DENIED), push(280, S.EXPIRED), push(10, S.APPROVED)]
    decision = decide(rules, NOW, history, fraud_report_open=False)
    assert {s.reason for s in decision.stops} == {Reason.PUSH_LIMIT, Reason.UNANSWERED_LIMIT}
    # push limit: clears when the 290 s one leaves; unanswered: when the 290 s one leaves too
    # (2 refused, limit 2: the oldest must go). Both at the same instant here...
    assert decision.until == ago(290) + timedelta(seconds=WINDOW)
    # ... but with one more refusal the unanswered rule lasts longer.
    later = [*history, push(5, S.DENIED, by="dev_b")]
    decision = decide(policy(push_limit=4, push_max_unanswered=2), NOW, later, False)
    assert decision.reason is Reason.UNANSWERED_LIMIT
    assert decision.until == ago(280) + timedelta(seconds=WINDOW)


def test_zero_turns_each_limit_off() -> None:
    history = [push(i, S.DENIED, by="dev_a") for i in range(1, 50)]
    off = policy(push_limit=0, push_max_unanswered=0, deny_limit_per_device=0)
    assert decide(off, NOW, history, fraud_report_open=False).allowed


# -- properties -----------------------------------------------------------------------------

STATES = list(ChallengeState)
DEVICES = ["dev_a", "dev_b", "dev_c"]


@st.composite
def records(draw: st.DrawFn) -> PushRecord:
    created = NOW - timedelta(seconds=draw(st.integers(0, 700)))
    ttl = draw(st.integers(10, 600))
    state = draw(st.sampled_from(STATES))
    by = None
    if state in (S.APPROVED, S.DENIED, S.FRAUD):
        by = draw(st.sampled_from([*DEVICES, "otp"]))
    return PushRecord(created, created + timedelta(seconds=ttl), state, by)


policies = st.builds(
    lambda n, m, d, w: policy(
        push_limit=n, push_max_unanswered=m, deny_limit_per_device=d, push_limit_window_seconds=w
    ),
    st.integers(0, 6),
    st.integers(0, 6),
    st.integers(0, 6),
    st.sampled_from([10, 60, 300, 600]),
)
histories = st.lists(records(), max_size=25)


def model_allowed(rules: Policy, at: datetime, history: list[PushRecord], fraud: bool) -> bool:
    """The rules as an operator would state them, counted the plain way."""
    if fraud:
        return False
    window = timedelta(seconds=rules.push_limit_window_seconds)
    recent = [p for p in history if at - window < p.created_at <= at]
    refused = [
        p
        for p in recent
        if p.state in (S.DENIED, S.FRAUD, S.EXPIRED, S.CANCELLED)
        or (p.state is S.PENDING and at >= p.expires_at)
    ]
    per_device: dict[str, int] = {}
    for p in recent:
        if p.state in (S.DENIED, S.FRAUD) and p.answered_by is not None:
            per_device[p.answered_by] = per_device.get(p.answered_by, 0) + 1
    if rules.push_limit and len(recent) >= rules.push_limit:
        return False
    if rules.push_max_unanswered and len(refused) >= rules.push_max_unanswered:
        return False
    limit = rules.deny_limit_per_device
    return not (limit and any(count >= limit for count in per_device.values()))


@settings(max_examples=400, deadline=None)
@given(rules=policies, history=histories, fraud=st.booleans())
def test_the_decision_matches_the_counting_model(
    rules: Policy, history: list[PushRecord], fraud: bool
) -> None:
    decision = decide(rules, NOW, history, fraud)
    assert decision.allowed == model_allowed(rules, NOW, history, fraud)
    assert decision.allowed == (decision.reason is None)


@settings(max_examples=300, deadline=None)
@given(rules=policies, history=histories, seed=st.integers(0, 2**32 - 1))
def test_the_order_of_the_history_does_not_matter(
    rules: Policy, history: list[PushRecord], seed: int
) -> None:
    shuffled = list(history)
    random.Random(seed).shuffle(shuffled)
    assert decide(rules, NOW, history, False) == decide(rules, NOW, shuffled, False)


@settings(max_examples=300, deadline=None)
@given(rules=policies, history=histories, extra=records())
def test_one_more_push_never_lifts_a_stop(
    rules: Policy, history: list[PushRecord], extra: PushRecord
) -> None:
    if not decide(rules, NOW, history, False).allowed:
        assert not decide(rules, NOW, [*history, extra], False).allowed


@settings(max_examples=400, deadline=None)
@given(rules=policies, history=histories)
def test_until_is_exactly_when_pushes_resume(rules: Policy, history: list[PushRecord]) -> None:
    """Just before ``until`` pushes are still stopped; at ``until`` they resume, provided no
    push still pending now runs out meanwhile and adds a refusal."""
    decision: GuardDecision = decide(rules, NOW, history, False)
    if decision.allowed:
        return
    until = decision.until
    assert until is not None
    assert until > NOW
    assert not decide(rules, until - timedelta(microseconds=1), history, False).allowed
    settled = [p for p in history if not (p.state is S.PENDING and p.expires_at > NOW)]
    if len(settled) == len(history):
        assert decide(rules, until, history, False).allowed


@settings(max_examples=200, deadline=None)
@given(rules=policies, history=histories)
def test_an_open_fraud_report_always_mutes(rules: Policy, history: list[PushRecord]) -> None:
    decision = decide(rules, NOW, history, fraud_report_open=True)
    assert not decision.allowed
    assert (decision.reason, decision.until) == (Reason.FRAUD_REPORT_OPEN, None)
