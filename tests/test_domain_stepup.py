"""The step-up rule (backend/domain/stepup.py): the table row by row, then properties over
every proof, state, action and time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backend.domain.stepup import (
    ADMINISTRATOR,
    DeviceProof,
    FactorAction,
    FactorState,
    Outcome,
    Proof,
    SessionProof,
    decide,
    is_live_factor,
)

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
WINDOW = timedelta(minutes=5)
ADDING = [
    FactorAction.ENROL_APP,
    FactorAction.ENROL_OATH,
    FactorAction.ENROL_PIPUSH,
    FactorAction.SET_PIN,
]
CHANGING = [
    FactorAction.RENAME_DEVICE,
    FactorAction.REMOVE_DEVICE,
    FactorAction.MARK_LOST,
    FactorAction.RESET_DEVICES,
]


def state(live: bool, grant: datetime | None = None, device: str | None = "dev_1") -> FactorState:
    return FactorState(user_id=7, has_live_factor=live, enrol_until=grant, device_id=device)


def outcome(action: FactorAction, proof: Proof, subject: FactorState) -> Outcome:
    return decide(action, proof, subject, NOW, WINDOW).outcome


@pytest.mark.parametrize("action", list(FactorAction))
@pytest.mark.parametrize("live", [True, False])
def test_an_administrator_may_do_anything(action: FactorAction, live: bool) -> None:
    assert outcome(action, ADMINISTRATOR, state(live)) is Outcome.ALLOWED


@pytest.mark.parametrize("action", list(FactorAction))
def test_a_device_acts_on_itself_only_and_never_adds(action: FactorAction) -> None:
    own = outcome(action, DeviceProof("dev_1"), state(True, device="dev_1"))
    other = outcome(action, DeviceProof("dev_1"), state(True, device="dev_2"))
    expected = (
        Outcome.ALLOWED
        if action
        in (FactorAction.RENAME_DEVICE, FactorAction.REMOVE_DEVICE, FactorAction.MARK_LOST)
        else Outcome.NOT_ALLOWED
    )
    assert own is expected
    assert other is Outcome.NOT_ALLOWED


@pytest.mark.parametrize("action", list(FactorAction))
def test_a_password_only_session_of_a_user_with_a_factor_must_step_up(
    action: FactorAction,
) -> None:
    session = SessionProof(7)
    assert outcome(action, session, state(True)) is Outcome.STEP_UP_REQUIRED
    # An enrolment grant changes nothing once the user has a factor: the factor decides.
    granted = SessionProof(7, enrol_until=NOW + timedelta(hours=1))
    assert outcome(action, granted, state(True, NOW + timedelta(hours=1))) is (
        Outcome.STEP_UP_REQUIRED
    )


@pytest.mark.parametrize("action", list(FactorAction))
def test_a_fresh_step_up_allows_for_the_window_only(action: FactorAction) -> None:
    just = SessionProof(7, stepped_up_at=NOW)
    late = SessionProof(7, stepped_up_at=NOW - WINDOW + timedelta(microseconds=1))
    stale = SessionProof(7, stepped_up_at=NOW - WINDOW)
    future = SessionProof(7, stepped_up_at=NOW + timedelta(seconds=1))  # a clock gone back
    assert outcome(action, just, state(True)) is Outcome.ALLOWED
    assert outcome(action, late, state(True)) is Outcome.ALLOWED
    assert outcome(action, stale, state(True)) is Outcome.STEP_UP_REQUIRED
    assert outcome(action, future, state(True)) is Outcome.STEP_UP_REQUIRED


@pytest.mark.parametrize("action", ADDING)
def test_without_a_factor_only_a_grant_lets_a_session_enrol(action: FactorAction) -> None:
    later = NOW + timedelta(minutes=30)
    assert outcome(action, SessionProof(7), state(False)) is Outcome.ENROLMENT_NOT_ALLOWED
    invited = SessionProof(7, enrol_until=later)
    assert outcome(action, invited, state(False)) is Outcome.ALLOWED
    assert outcome(action, SessionProof(7), state(False, grant=later)) is Outcome.ALLOWED
    # A grant ends at its time; a step-up proves nothing when there is no factor.
    assert outcome(action, SessionProof(7, enrol_until=NOW), state(False)) is (
        Outcome.ENROLMENT_NOT_ALLOWED
    )
    assert outcome(action, SessionProof(7), state(False, grant=NOW)) is (
        Outcome.ENROLMENT_NOT_ALLOWED
    )
    assert outcome(action, SessionProof(7, stepped_up_at=NOW), state(False)) is (
        Outcome.ENROLMENT_NOT_ALLOWED
    )


@pytest.mark.parametrize("action", CHANGING)
def test_without_a_factor_changes_protect_nothing(action: FactorAction) -> None:
    assert outcome(action, SessionProof(7), state(False)) is Outcome.ALLOWED


@pytest.mark.parametrize("action", list(FactorAction))
def test_a_session_never_acts_for_another_user(action: FactorAction) -> None:
    everything = SessionProof(8, stepped_up_at=NOW, enrol_until=NOW + timedelta(hours=1))
    assert outcome(action, everything, state(True)) is Outcome.NOT_ALLOWED
    assert outcome(action, everything, state(False)) is Outcome.NOT_ALLOWED


@pytest.mark.parametrize(
    ("kind", "state_", "live"),
    [
        ("app", "active", True),
        ("oath", "active", True),
        ("pipush", "active", True),
        ("app", "pending", False),
        ("oath", "pending", False),
        ("pipush", "pending", False),
        ("app", "lost", False),
        ("oath", "removed", False),
        ("sms", "active", False),
    ],
)
def test_only_an_active_device_of_a_factor_kind_is_live(kind: str, state_: str, live: bool) -> None:
    assert is_live_factor(kind, state_) is live


# -- properties -----------------------------------------------------------------------------------

times = st.none() | st.integers(-3600, 3600).map(lambda s: NOW + timedelta(seconds=s))
sessions = st.builds(SessionProof, st.sampled_from([7, 8]), times, times)
proofs: st.SearchStrategy[Proof] = st.one_of(
    st.just(ADMINISTRATOR), st.builds(DeviceProof, st.sampled_from(["dev_1", "dev_2"])), sessions
)
states = st.builds(
    FactorState,
    st.just(7),
    st.booleans(),
    times,
    st.sampled_from([None, "dev_1", "dev_2"]),
)


@given(st.sampled_from(list(FactorAction)), sessions, states)
def test_a_session_with_neither_step_up_nor_grant_never_adds_or_changes_a_live_factor(
    action: FactorAction, proof: SessionProof, subject: FactorState
) -> None:
    """The issue's sentence, as a property: a password alone never adds or changes a factor."""
    password_only = SessionProof(proof.user_id)
    decision = decide(action, password_only, subject, NOW, WINDOW)
    if subject.has_live_factor or action.adds:
        allowed_by_grant = (
            not subject.has_live_factor
            and subject.enrol_until is not None
            and subject.enrol_until > NOW
            and proof.user_id == subject.user_id
        )
        assert decision.allowed is allowed_by_grant


@given(st.sampled_from(list(FactorAction)), proofs, states)
def test_the_decision_is_total_and_explained(
    action: FactorAction, proof: Proof, subject: FactorState
) -> None:
    decision = decide(action, proof, subject, NOW, WINDOW)
    assert decision.outcome in Outcome
    assert decision.reason
    assert decision.allowed is (decision.outcome is Outcome.ALLOWED)


@given(st.sampled_from(list(FactorAction)), sessions, states)
def test_a_live_factor_is_changed_only_within_the_window_of_a_step_up(
    action: FactorAction, proof: SessionProof, subject: FactorState
) -> None:
    decision = decide(action, proof, subject, NOW, WINDOW)
    if subject.has_live_factor and decision.allowed:
        assert proof.user_id == subject.user_id
        assert proof.stepped_up_at is not None
        assert proof.stepped_up_at <= NOW < proof.stepped_up_at + WINDOW
