"""The re-attach state of a cut long-poll (:mod:`radius_bridge.protocol.reattach`), pure."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from radius_bridge.protocol.reattach import PAUSES, Reattach


def run_of_cuts(retry: Reattach, start: float, end: float, attempt_cost: float) -> list[float]:
    """Times at which the poll is cut, until the state gives up (each attempt costs time)."""
    now, cuts = start, []
    for _ in range(10_000):
        cuts.append(now)
        pause = retry.cut(now, end)
        if pause is None:
            return cuts
        assert pause >= 0
        now += pause + attempt_cost
    raise AssertionError("the retry loop did not end")


def test_gives_up_at_the_end_of_the_grace_with_growing_pauses() -> None:
    retry = Reattach(grace=5.0)
    pauses = []
    now = 100.0
    while (pause := retry.cut(now, end=1000.0)) is not None:
        pauses.append(pause)
        now += pause
    assert pauses[: len(PAUSES)] == list(PAUSES)
    assert abs(now - 105.0) < 1e-9  # the last attempt right at the end of the grace
    assert retry.cutting


def test_a_zero_grace_gives_up_at_the_first_cut() -> None:
    assert Reattach(grace=0.0).cut(1.0, end=100.0) is None


def test_never_pauses_past_the_push_deadline() -> None:
    retry = Reattach(grace=5.0)
    assert retry.cut(10.0, end=10.04) is None  # the first pause (0.05) would end after it


def test_reaching_the_backend_starts_a_fresh_grace() -> None:
    retry = Reattach(grace=1.0)
    assert retry.cut(0.0, end=100.0) is not None
    assert retry.cut(0.9, end=100.0) is not None
    retry.reached()
    assert not retry.cutting
    assert retry.cut(50.0, end=100.0) == PAUSES[0]  # counted from the new cut, pauses anew


@given(
    grace=st.floats(0.0, 30.0),
    start=st.floats(0.0, 1e6),
    push_left=st.floats(0.0, 120.0),
    attempt_cost=st.floats(0.0, 3.0),
)
def test_gives_up_within_the_grace_and_the_deadline_after_few_attempts(
    grace: float, start: float, push_left: float, attempt_cost: float
) -> None:
    retry = Reattach(grace=grace)
    end = start + push_left
    cuts = run_of_cuts(retry, start, end, attempt_cost)
    last = cuts[-1]
    # Giving up comes no later than the grace (plus one attempt's own time) ...
    assert last <= start + grace + attempt_cost + 1e-6
    # ... and every pause taken ends before the push's own deadline.
    assert all(c < end for c in cuts[:-1]) or len(cuts) == 1
    # Bounded: the short pauses first, then at most one attempt per second of grace.
    assert len(cuts) <= len(PAUSES) + int(grace / PAUSES[-1]) + 2


@given(
    grace=st.floats(0.5, 10.0),
    back_after=st.floats(0.0, 0.45),
)
def test_a_backend_back_within_the_grace_is_tried_before_giving_up(
    grace: float, back_after: float
) -> None:
    """A restart shorter than the grace passes unnoticed: an attempt follows the backend's
    return within the longest pause, and before the state gives up."""
    retry = Reattach(grace=grace)
    back = back_after * grace * 2  # anywhere within the grace, up to 90% of it
    cuts = run_of_cuts(retry, 0.0, 1000.0, 0.0)
    assert any(back <= t <= back + PAUSES[-1] + 1e-9 for t in cuts[1:])
