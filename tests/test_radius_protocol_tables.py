"""The bridge's bounded in-memory tables on an explicit clock: RFC 5080 duplicates, challenge
States, pending pushes."""

from __future__ import annotations

import pytest

from radius_bridge.model import Attribute, ChallengeRound
from radius_bridge.protocol.dedup import IN_PROGRESS, DuplicateCache
from radius_bridge.protocol.pending import PendingPushes
from radius_bridge.protocol.state import STATE_BYTES, StateTable, new_state

KEY = ("10.0.0.1", 40000, 7, b"A" * 16)


# -- duplicates ---------------------------------------------------------------------------------


def test_new_then_in_progress_then_cached_bytes() -> None:
    cache = DuplicateCache(lifetime=30.0)
    assert cache.begin(KEY, 0.0) is None
    assert cache.begin(KEY, 1.0) is IN_PROGRESS
    assert cache.in_progress == 1
    cache.answer(KEY, b"response", 2.0)
    assert cache.in_progress == 0
    assert cache.begin(KEY, 31.9) == b"response"
    # After the lifetime the key is new again (the gateway gave up long ago).
    assert cache.begin(KEY, 32.0) is None
    assert len(cache) == 1


def test_key_parts_all_count() -> None:
    cache = DuplicateCache()
    assert cache.begin(KEY, 0.0) is None
    for other in (
        ("10.0.0.2", 40000, 7, b"A" * 16),
        ("10.0.0.1", 40001, 7, b"A" * 16),
        ("10.0.0.1", 40000, 8, b"A" * 16),
        ("10.0.0.1", 40000, 7, b"B" * 16),
    ):
        assert cache.begin(other, 0.0) is None


def test_forget_lets_a_retransmission_start_over() -> None:
    cache = DuplicateCache()
    cache.begin(KEY, 0.0)
    cache.forget(KEY)
    assert cache.begin(KEY, 1.0) is None


def test_in_progress_mark_expires() -> None:
    cache = DuplicateCache(in_progress_lifetime=100.0)
    cache.begin(KEY, 0.0)
    assert cache.begin(KEY, 99.0) is IN_PROGRESS
    assert cache.begin(KEY, 100.0) is None


def test_bounded_oldest_evicted() -> None:
    cache = DuplicateCache(max_entries=3)
    keys = [("10.0.0.1", 1, i, bytes(16)) for i in range(5)]
    for key in keys:
        cache.begin(key, 0.0)
    assert cache.in_progress == 3
    assert cache.begin(keys[4], 0.0) is IN_PROGRESS
    assert cache.begin(keys[0], 0.0) is None  # evicted, so new again
    for index, key in enumerate(keys):
        cache.answer(key, bytes([index]), 1.0)
    assert len(cache) == 3
    assert cache.begin(keys[4], 1.0) == b"\x04"
    assert cache.begin(keys[1], 1.0) is None


def test_expire_drops_old_answers_and_stale_marks() -> None:
    cache = DuplicateCache(lifetime=10.0, in_progress_lifetime=50.0)
    cache.begin(KEY, 0.0)
    cache.answer(KEY, b"r", 0.0)
    other = ("10.0.0.1", 1, 1, bytes(16))
    cache.begin(other, 0.0)
    cache.expire(9.0)
    assert len(cache) == 2
    cache.expire(10.0)
    assert len(cache) == 1
    cache.expire(50.0)
    assert len(cache) == 0


def test_reanswer_keeps_expiry_order() -> None:
    cache = DuplicateCache(lifetime=10.0)
    first, second = ("a", 1, 1, bytes(16)), ("b", 1, 1, bytes(16))
    cache.answer(first, b"1", 0.0)
    cache.answer(second, b"2", 5.0)
    cache.answer(first, b"1'", 6.0)  # moves to the back
    cache.expire(15.0)
    assert cache.begin(first, 15.0) == b"1'"
    assert cache.begin(second, 15.0) is None


def test_bad_settings_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        DuplicateCache(lifetime=0)
    with pytest.raises(ValueError, match="positive"):
        DuplicateCache(max_entries=0)


# -- States -------------------------------------------------------------------------------------

ROUND = ChallengeRound("ch_1", "push", 42, (Attribute("Class", b"c"),), 0)


def test_state_values_are_random_and_long_enough() -> None:
    values = {new_state() for _ in range(100)}
    assert len(values) == 100
    assert all(len(value) == STATE_BYTES >= 16 for value in values)


def test_state_single_use_and_bound() -> None:
    table = StateTable()
    state = new_state()
    table.put(state, "asa1", "Alice", ROUND, 0.0)
    assert table.take(state, "asa1", "alice", 10.0) == ROUND  # user compared casefolded
    assert table.take(state, "asa1", "alice", 10.0) is None  # replay

    for client, user in (("asa2", "alice"), ("asa1", "bob")):
        table.put(state, "asa1", "alice", ROUND, 0.0)
        assert table.take(state, client, user, 1.0) is None
        # A foreign presentation uses it up: the real owner cannot use it after that.
        assert table.take(state, "asa1", "alice", 1.0) is None


def test_state_lifetime() -> None:
    table = StateTable(lifetime=300.0)
    state = new_state()
    table.put(state, "asa1", "alice", ROUND, 0.0)
    assert table.take(state, "asa1", "alice", 300.0) is None
    table.put(state, "asa1", "alice", ROUND, 0.0)
    assert table.take(state, "asa1", "alice", 299.9) == ROUND


def test_state_table_bounded_and_expiring() -> None:
    table = StateTable(lifetime=10.0, max_entries=2)
    states = [new_state() for _ in range(3)]
    for index, state in enumerate(states):
        table.put(state, "c", "u", ROUND, float(index))
    assert len(table) == 2
    assert table.take(states[0], "c", "u", 3.0) is None
    table.expire(11.0)
    assert len(table) == 1
    assert table.take(states[2], "c", "u", 11.0) == ROUND
    with pytest.raises(ValueError, match="16"):
        table.put(b"short", "c", "u", ROUND, 0.0)
    with pytest.raises(ValueError, match="positive"):
        StateTable(lifetime=-1)


# -- pending pushes -----------------------------------------------------------------------------


def test_push_registry_join_hold_release() -> None:
    pushes = PendingPushes()
    assert pushes.find("asa1", "alice", 0.0) is None
    entry = pushes.add("asa1", "Alice", "ch_1", 17, expires_at=55.0)
    found = pushes.find("asa1", "ALICE", 10.0)
    assert found is entry
    assert found.number == 17
    assert pushes.find("asa2", "alice", 10.0) is None
    pushes.hold(entry)
    pushes.hold(entry)
    assert pushes.holders == 2
    assert not pushes.release(entry)
    assert pushes.release(entry)
    assert pushes.release(entry)  # never below zero
    assert entry.holders == 0
    pushes.remove(entry)
    assert pushes.find("asa1", "alice", 10.0) is None
    assert len(pushes) == 0


def test_push_registry_expiry_and_replacement() -> None:
    pushes = PendingPushes()
    old = pushes.add("asa1", "alice", "ch_1", None, expires_at=55.0)
    assert pushes.find("asa1", "alice", 55.0) is None  # expired
    new = pushes.add("asa1", "alice", "ch_2", None, expires_at=120.0)
    old2 = pushes.add("asa1", "bob", "ch_3", None, expires_at=60.0)
    pushes.remove(old)  # a stale entry does not remove the newer one
    assert pushes.find("asa1", "alice", 60.0) is new
    pushes.hold(old2)
    pushes.expire(100.0)  # bob's has expired but is still held
    assert len(pushes) == 2
    pushes.release(old2)
    pushes.expire(100.0)
    assert len(pushes) == 1


def test_push_registry_bounded() -> None:
    pushes = PendingPushes(max_entries=2)
    for index in range(3):
        pushes.add("c", f"user{index}", f"ch_{index}", None, 100.0)
    assert len(pushes) == 2
    assert pushes.find("c", "user0", 0.0) is None
    with pytest.raises(ValueError, match="at least 1"):
        PendingPushes(max_entries=0)
