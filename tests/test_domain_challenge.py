"""The challenge state machine: every (state, event) pair, then random event sequences."""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from backend.domain.challenge import (
    Answer,
    Answered,
    Cancelled,
    ChallengeState,
    ChallengeStatus,
    Event,
    Tick,
    Transition,
    apply,
)
from backend.errors import ChallengeClosed, ChallengeExpired

EXPIRES = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
EARLY = EXPIRES - timedelta(seconds=30)
LATE = EXPIRES + timedelta(seconds=30)
DEV_A = "dev_a"
DEV_B = "dev_b"

# -- the explicit table ------------------------------------------------------------------------

EVENTS: dict[str, Event] = {
    "approve by A": Answered(Answer.APPROVE, DEV_A, EARLY),
    "deny by A": Answered(Answer.DENY, DEV_A, EARLY),
    "fraud by A": Answered(Answer.FRAUD, DEV_A, EARLY),
    "approve by B": Answered(Answer.APPROVE, DEV_B, EARLY),
    "deny by B": Answered(Answer.DENY, DEV_B, EARLY),
    "fraud by B": Answered(Answer.FRAUD, DEV_B, EARLY),
    "approve by A at expiry": Answered(Answer.APPROVE, DEV_A, EXPIRES),
    "deny by A at expiry": Answered(Answer.DENY, DEV_A, EXPIRES),
    "fraud by A at expiry": Answered(Answer.FRAUD, DEV_A, EXPIRES),
    "approve by A late": Answered(Answer.APPROVE, DEV_A, LATE),
    "approve by A 1µs early": Answered(Answer.APPROVE, DEV_A, EXPIRES - timedelta(microseconds=1)),
    "cancel": Cancelled(EARLY),
    "cancel at expiry": Cancelled(EXPIRES),
    "cancel late": Cancelled(LATE),
    "tick": Tick(EARLY),
    "tick 1µs early": Tick(EXPIRES - timedelta(microseconds=1)),
    "tick at expiry": Tick(EXPIRES),
    "tick late": Tick(LATE),
}

# What a status looks like in each state before the event (final answers were given by A).
BEFORE: dict[ChallengeState, ChallengeStatus] = {
    ChallengeState.PENDING: ChallengeStatus(ChallengeState.PENDING, EXPIRES),
    ChallengeState.APPROVED: ChallengeStatus(ChallengeState.APPROVED, EXPIRES, DEV_A),
    ChallengeState.DENIED: ChallengeStatus(ChallengeState.DENIED, EXPIRES, DEV_A),
    ChallengeState.FRAUD: ChallengeStatus(ChallengeState.FRAUD, EXPIRES, DEV_A),
    ChallengeState.EXPIRED: ChallengeStatus(ChallengeState.EXPIRED, EXPIRES),
    ChallengeState.CANCELLED: ChallengeStatus(ChallengeState.CANCELLED, EXPIRES),
}


@dataclass(frozen=True)
class Goes:
    """The event makes the transition to ``state`` (answered by ``by``)."""

    state: ChallengeState
    by: str | None = None


SAME = "unchanged"
EXPIRED = ChallengeExpired
CLOSED = ChallengeClosed
S = ChallengeState
Outcome = Goes | str | type[Exception]

TABLE: dict[ChallengeState, dict[str, Outcome]] = {
    S.PENDING: {
        "approve by A": Goes(S.APPROVED, DEV_A),
        "deny by A": Goes(S.DENIED, DEV_A),
        "fraud by A": Goes(S.FRAUD, DEV_A),
        "approve by B": Goes(S.APPROVED, DEV_B),
        "deny by B": Goes(S.DENIED, DEV_B),
        "fraud by B": Goes(S.FRAUD, DEV_B),
        "approve by A at expiry": EXPIRED,
        "deny by A at expiry": EXPIRED,
        "fraud by A at expiry": EXPIRED,
        "approve by A late": EXPIRED,
        "approve by A 1µs early": Goes(S.APPROVED, DEV_A),
        "cancel": Goes(S.CANCELLED),
        "cancel at expiry": Goes(S.EXPIRED),
        "cancel late": Goes(S.EXPIRED),
        "tick": SAME,
        "tick 1µs early": SAME,
        "tick at expiry": Goes(S.EXPIRED),
        "tick late": Goes(S.EXPIRED),
    },
    S.APPROVED: {
        "approve by A": SAME,
        "deny by A": CLOSED,
        "fraud by A": CLOSED,
        "approve by B": CLOSED,
        "deny by B": CLOSED,
        "fraud by B": CLOSED,
        # The app retrying its own answer after the expiry time learns it was taken.
        "approve by A at expiry": SAME,
        "deny by A at expiry": CLOSED,
        "fraud by A at expiry": CLOSED,
        "approve by A late": SAME,
        "approve by A 1µs early": SAME,
        "cancel": SAME,
        "cancel at expiry": SAME,
        "cancel late": SAME,
        "tick": SAME,
        "tick 1µs early": SAME,
        "tick at expiry": SAME,
        "tick late": SAME,
    },
    S.DENIED: {
        "approve by A": CLOSED,
        "deny by A": SAME,
        "fraud by A": CLOSED,
        "approve by B": CLOSED,
        "deny by B": CLOSED,
        "fraud by B": CLOSED,
        "approve by A at expiry": CLOSED,
        "deny by A at expiry": SAME,
        "fraud by A at expiry": CLOSED,
        "approve by A late": CLOSED,
        "approve by A 1µs early": CLOSED,
        "cancel": SAME,
        "cancel at expiry": SAME,
        "cancel late": SAME,
        "tick": SAME,
        "tick 1µs early": SAME,
        "tick at expiry": SAME,
        "tick late": SAME,
    },
    S.FRAUD: {
        "approve by A": CLOSED,
        "deny by A": CLOSED,
        "fraud by A": SAME,
        "approve by B": CLOSED,
        "deny by B": CLOSED,
        "fraud by B": CLOSED,
        "approve by A at expiry": CLOSED,
        "deny by A at expiry": CLOSED,
        "fraud by A at expiry": SAME,
        "approve by A late": CLOSED,
        "approve by A 1µs early": CLOSED,
        "cancel": SAME,
        "cancel at expiry": SAME,
        "cancel late": SAME,
        "tick": SAME,
        "tick 1µs early": SAME,
        "tick at expiry": SAME,
        "tick late": SAME,
    },
    S.EXPIRED: {
        "approve by A": EXPIRED,
        "deny by A": EXPIRED,
        "fraud by A": EXPIRED,
        "approve by B": EXPIRED,
        "deny by B": EXPIRED,
        "fraud by B": EXPIRED,
        "approve by A at expiry": EXPIRED,
        "deny by A at expiry": EXPIRED,
        "fraud by A at expiry": EXPIRED,
        "approve by A late": EXPIRED,
        "approve by A 1µs early": EXPIRED,
        "cancel": SAME,
        "cancel at expiry": SAME,
        "cancel late": SAME,
        "tick": SAME,
        "tick 1µs early": SAME,
        "tick at expiry": SAME,
        "tick late": SAME,
    },
    S.CANCELLED: {
        "approve by A": CLOSED,
        "deny by A": CLOSED,
        "fraud by A": CLOSED,
        "approve by B": CLOSED,
        "deny by B": CLOSED,
        "fraud by B": CLOSED,
        "approve by A at expiry": CLOSED,
        "deny by A at expiry": CLOSED,
        "fraud by A at expiry": CLOSED,
        "approve by A late": CLOSED,
        "approve by A 1µs early": CLOSED,
        "cancel": SAME,
        "cancel at expiry": SAME,
        "cancel late": SAME,
        "tick": SAME,
        "tick 1µs early": SAME,
        "tick at expiry": SAME,
        "tick late": SAME,
    },
}


def test_the_table_covers_every_state_and_event() -> None:
    assert set(TABLE) == set(ChallengeState)
    for state, row in TABLE.items():
        assert set(row) == set(EVENTS), state


@pytest.mark.parametrize(
    ("state", "event_name"), list(itertools.product(ChallengeState, EVENTS)), ids=str
)
def test_every_state_and_event(state: ChallengeState, event_name: str) -> None:
    before = BEFORE[state]
    event = EVENTS[event_name]
    expected = TABLE[state][event_name]

    if isinstance(expected, type):
        with pytest.raises(expected):
            apply(before, event)
        return
    result = apply(before, event)
    if expected == SAME:
        assert result == Transition(before, changed=False)
        return
    assert isinstance(expected, Goes)
    assert result.changed is True
    assert result.status == ChallengeStatus(expected.state, EXPIRES, expected.by)


def test_only_pending_is_not_final() -> None:
    assert [s for s in ChallengeState if not s.is_final] == [ChallengeState.PENDING]


def test_refusals_explain_themselves() -> None:
    with pytest.raises(ChallengeClosed, match="approved"):
        apply(BEFORE[S.APPROVED], EVENTS["deny by B"])
    with pytest.raises(ChallengeClosed, match="cancelled"):
        apply(BEFORE[S.CANCELLED], EVENTS["approve by A"])
    with pytest.raises(ChallengeExpired, match="expired"):
        apply(BEFORE[S.PENDING], EVENTS["approve by A late"])


def test_times_compare_as_instants_whatever_their_zone() -> None:
    """An answer stamped in another zone is judged by the instant, not the wall clock."""
    plus_two = timezone(timedelta(hours=2))
    just_before = (EXPIRES - timedelta(seconds=1)).astimezone(plus_two)
    just_at = EXPIRES.astimezone(plus_two)
    pending = BEFORE[S.PENDING]
    assert apply(pending, Answered(Answer.APPROVE, DEV_A, just_before)).changed
    with pytest.raises(ChallengeExpired):
        apply(pending, Answered(Answer.APPROVE, DEV_A, just_at))


# -- random event sequences against an independent model ---------------------------------------

ZONES = [UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-7, minutes=-30))]

offsets = st.one_of(
    st.sampled_from([0, -1, 1]),  # microseconds around the boundary
    st.integers(-120_000_000, 120_000_000),
)


@st.composite
def events(draw: st.DrawFn) -> Event:
    at = (EXPIRES + timedelta(microseconds=draw(offsets))).astimezone(draw(st.sampled_from(ZONES)))
    kind = draw(st.sampled_from(["answer", "answer", "answer", "cancel", "tick"]))
    if kind == "cancel":
        return Cancelled(at)
    if kind == "tick":
        return Tick(at)
    return Answered(
        draw(st.sampled_from(list(Answer))), draw(st.sampled_from([DEV_A, DEV_B, "otp"])), at
    )


def model(status: ChallengeStatus, event: Event) -> tuple[ChallengeStatus, bool] | type[Exception]:
    """The rules of issue 3, written out independently of the code under test."""
    late = event.at >= status.expires_at
    if status.state is S.PENDING:
        if isinstance(event, Answered):
            if late:
                return ChallengeExpired
            state = {
                Answer.APPROVE: S.APPROVED,
                Answer.DENY: S.DENIED,
                Answer.FRAUD: S.FRAUD,
            }[event.answer]
            return ChallengeStatus(state, status.expires_at, event.by), True
        if isinstance(event, Cancelled):
            return ChallengeStatus(S.EXPIRED if late else S.CANCELLED, status.expires_at), True
        if late:
            return ChallengeStatus(S.EXPIRED, status.expires_at), True
        return status, False
    if not isinstance(event, Answered):
        return status, False
    if status.state is S.EXPIRED:
        return ChallengeExpired
    if status.state is S.CANCELLED:
        return ChallengeClosed
    same_answer = (
        status.state.value
        == {
            Answer.APPROVE: "approved",
            Answer.DENY: "denied",
            Answer.FRAUD: "fraud",
        }[event.answer]
    )
    if same_answer and status.answered_by == event.by:
        return status, False
    return ChallengeClosed


@settings(max_examples=400, deadline=None)
@given(st.lists(events(), max_size=12))
def test_random_sequences_follow_the_model_and_the_invariants(seq: list[Event]) -> None:
    status = ChallengeStatus(S.PENDING, EXPIRES)
    transitions = 0
    first_final: ChallengeStatus | None = None
    for event in seq:
        expected = model(status, event)
        if isinstance(expected, type):
            with pytest.raises(expected):
                apply(status, event)
            # Refusals are only ever for answers, never for time passing or a cancel.
            assert isinstance(event, Answered)
            if expected is ChallengeExpired:
                assert status.state is S.EXPIRED or (
                    status.state is S.PENDING and event.at >= EXPIRES
                )
            else:
                assert status.state.is_final
                assert status.state is not S.EXPIRED
            continue
        result = apply(status, event)
        assert (result.status, result.changed) == expected
        # changed is exactly "the status is different"; unchanged means the very same status.
        assert result.changed == (result.status != status)
        assert result.status.expires_at == EXPIRES
        if result.changed:
            transitions += 1
            assert status.state is S.PENDING
            assert result.status.state.is_final
            new = result.status.state
            if new is S.EXPIRED:
                assert event.at >= EXPIRES
                assert result.status.answered_by is None
            elif new is S.CANCELLED:
                assert isinstance(event, Cancelled)
                assert event.at < EXPIRES
            else:
                assert isinstance(event, Answered)
                assert event.at < EXPIRES
                assert result.status.answered_by == event.by
            first_final = result.status
        status = result.status
        if first_final is not None:
            assert status == first_final  # final never changes
    assert transitions <= 1
    assert (status.state is S.PENDING) == (transitions == 0)


@settings(max_examples=200, deadline=None)
@given(st.lists(events(), max_size=8), events())
def test_a_refused_event_leaves_the_status_alone(prefix: list[Event], last: Event) -> None:
    """The machine is pure: a refusal returns nothing and the caller's status is untouched."""
    status = ChallengeStatus(S.PENDING, EXPIRES)
    for event in prefix:
        with contextlib.suppress(ChallengeExpired, ChallengeClosed):
            status = apply(status, event).status
    snapshot = ChallengeStatus(status.state, status.expires_at, status.answered_by)
    with contextlib.suppress(ChallengeExpired, ChallengeClosed):
        apply(status, last)
    assert status == snapshot


class ChallengeMachine(RuleBasedStateMachine):
    """Drives one challenge with a clock that only moves forward, as the service does."""

    def __init__(self) -> None:
        super().__init__()
        self.status = ChallengeStatus(S.PENDING, EXPIRES)
        self.now = EXPIRES - timedelta(seconds=60)
        self.transitions = 0
        self.final: ChallengeStatus | None = None
        self.winner: Answered | None = None

    @initialize(start=st.integers(0, 120))
    def start(self, start: int) -> None:
        self.now = EXPIRES - timedelta(seconds=start)

    def _apply(self, event: Event) -> None:
        before = self.status
        try:
            result = apply(before, event)
        except ChallengeExpired:
            assert self.now >= EXPIRES or before.state is S.EXPIRED
            return
        except ChallengeClosed:
            assert before.state in {S.APPROVED, S.DENIED, S.FRAUD, S.CANCELLED}
            return
        if result.changed:
            self.transitions += 1
            self.final = result.status
            if isinstance(event, Answered):
                self.winner = event
        self.status = result.status

    @rule(seconds=st.integers(0, 40))
    def time_passes(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)

    @rule(answer=st.sampled_from(list(Answer)), by=st.sampled_from([DEV_A, DEV_B]))
    def answer(self, answer: Answer, by: str) -> None:
        self._apply(Answered(answer, by, self.now))

    @rule()
    def repeat_the_winning_answer(self) -> None:
        if self.winner is None:
            return
        again = Answered(self.winner.answer, self.winner.by, self.now)
        assert apply(self.status, again) == Transition(self.status, changed=False)

    @rule()
    def cancel(self) -> None:
        self._apply(Cancelled(self.now))

    @rule()
    def tick(self) -> None:
        self._apply(Tick(self.now))

    @invariant()
    def at_most_one_transition(self) -> None:
        assert self.transitions <= 1

    @invariant()
    def final_never_changes(self) -> None:
        if self.final is not None:
            assert self.status == self.final

    @invariant()
    def expired_only_when_time_is_up(self) -> None:
        if self.status.state is S.EXPIRED:
            assert self.now >= EXPIRES

    @invariant()
    def pending_means_untouched(self) -> None:
        if self.status.state is S.PENDING:
            assert self.transitions == 0
            assert self.status.answered_by is None

    @invariant()
    def answered_by_only_for_answers(self) -> None:
        has_answer = self.status.state in {S.APPROVED, S.DENIED, S.FRAUD}
        assert (self.status.answered_by is not None) == has_answer


ChallengeMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=25, deadline=None
)
test_challenge_machine = ChallengeMachine.TestCase
