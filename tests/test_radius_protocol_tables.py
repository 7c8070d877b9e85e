"""The bridge's bounded in-memory tables on an explicit clock: RFC 5080 duplicates, challenge
States, pending pushes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from radius_bridge.model import ChallengeRound
from radius_bridge.protocol.dedup import IN_PROGRESS, DuplicateCache
from radius_bridge.protocol.pending import PendingPushes
from radius_bridge.protocol.shares import GroupIndex, HeldShares
from radius_bridge.protocol.state import STATE_BYTES, StateTable, new_state
from radius_vocabulary.dictionary import Attribute

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


# -- fair shares: one client flooding cannot starve another (issue 13 finding 17) -----------------


def test_a_client_flooding_challenges_evicts_its_own_states_only() -> None:
    table = StateTable(max_entries=10)
    kept = [new_state() for _ in range(3)]
    for state in kept:
        table.put(state, "wifi", "bob", ROUND, 0.0)
    for index in range(100):
        table.put(new_state(), "vpn", f"user{index}", ROUND, 0.0)
    assert len(table) == 10
    assert table.count("vpn") == 7
    assert [table.take(state, "wifi", "bob", 1.0) for state in kept] == [ROUND] * 3


def test_one_user_holds_at_most_max_per_user_states() -> None:
    table = StateTable(max_per_user=2)
    states = [new_state() for _ in range(3)]
    other = new_state()
    table.put(other, "vpn", "bob", ROUND, 0.0)
    for state in states:
        table.put(state, "vpn", "Alice", ROUND, 0.0)
    assert table.count("vpn", "alice") == 2
    assert table.take(states[0], "vpn", "alice", 1.0) is None  # the oldest made room
    assert table.take(states[2], "vpn", "alice", 1.0) == ROUND
    assert table.take(other, "vpn", "bob", 1.0) == ROUND
    with pytest.raises(ValueError, match="at least 1"):
        StateTable(max_per_user=0)


def test_a_client_flooding_pushes_evicts_its_own_entries_only() -> None:
    pushes = PendingPushes(max_entries=10)
    for index in range(3):
        pushes.add("wifi", f"staff{index}", f"ch_w{index}", None, 100.0)
    for index in range(100):
        pushes.add("vpn", f"user{index}", f"ch_v{index}", None, 100.0)
    assert len(pushes) == 10
    assert pushes.count("vpn") == 7
    assert all(pushes.find("wifi", f"staff{index}", 1.0) is not None for index in range(3))


def test_held_pool_leaves_room_for_a_second_client() -> None:
    shares = HeldShares(8)
    flooded = sum(shares.claim("vpn", f"user{index}") for index in range(100))
    assert flooded == 6  # three quarters: the headroom stays for others
    assert shares.claim("wifi", "bob")
    assert shares.claim("wifi", "carol")
    assert not shares.claim("wifi", "dave")  # the pool is full now
    shares.release("vpn", "user0")
    assert not shares.claim("vpn", "user0")  # over its share (4) while the headroom is used
    assert shares.claim("wifi", "dave")  # below its share: may take the free slot
    for index in range(1, 6):
        shares.release("vpn", f"user{index}")
    assert shares.held("vpn") == 0
    assert shares.claim("vpn", "user0")


def test_held_pool_per_user_cap() -> None:
    shares = HeldShares(1000, per_user=3)
    assert [shares.claim("vpn", "Alice") for _ in range(4)] == [True, True, True, False]
    assert shares.claim("vpn", "bob")
    assert shares.claim("wifi", "alice")  # the cap is per client and user
    shares.release("vpn", "alice")
    assert shares.claim("vpn", "ALICE")
    shares.release("vpn", "nobody")  # never claimed: ignored
    assert shares.total == 5
    with pytest.raises(ValueError, match="at least 1"):
        HeldShares(0)


operations = st.lists(
    st.tuples(
        st.sampled_from(["claim", "release"]),
        st.sampled_from(["vpn", "wifi", "lab"]),
        st.sampled_from(["alice", "bob", "carol", "dave"]),
    ),
    max_size=200,
)


@given(st.integers(1, 40), st.integers(1, 5), operations)
def test_held_pool_invariants(
    capacity: int, per_user: int, ops: list[tuple[str, str, str]]
) -> None:
    """Never more than the pool or the per-user cap; a client below its fair share is never
    refused while a slot is free; release gives back exactly what claim took."""
    shares = HeldShares(capacity, per_user=per_user)
    claimed: dict[tuple[str, str], int] = {}
    for op, client, user in ops:
        if op == "claim":
            below_share = shares.held(client) < shares.fair_share(client)
            user_room = claimed.get((client, user), 0) < per_user
            free = shares.total < capacity
            took = shares.claim(client, user)
            if took:
                claimed[(client, user)] = claimed.get((client, user), 0) + 1
            elif below_share and user_room and free:
                raise AssertionError(f"{client} refused below its fair share")
        elif claimed.get((client, user)):
            shares.release(client, user)
            claimed[(client, user)] -= 1
        assert shares.total == sum(claimed.values()) <= capacity
        assert all(count <= per_user for count in claimed.values())
    for (client, user), count in claimed.items():
        for _ in range(count):
            shares.release(client, user)
    assert shares.total == 0


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["put", "take", "expire"]),
            st.sampled_from(["vpn", "wifi"]),
            st.sampled_from(["alice", "bob"]),
            st.integers(0, 30),
        ),
        max_size=150,
    )
)
def test_state_table_evicts_only_from_the_largest_client(
    ops: list[tuple[str, str, str, int]],
) -> None:
    table = StateTable(lifetime=20.0, max_entries=6, max_per_user=3)
    live: dict[bytes, tuple[str, str, float]] = {}
    now = 0.0
    for op, client, user, step in ops:
        now += step / 10
        live = {s: v for s, v in live.items() if v[2] > now}
        if op == "put":
            counts = {c: sum(v[0] == c for v in live.values()) for c in ("vpn", "wifi")}
            state = new_state()
            table.put(state, client, user, ROUND, now)
            live[state] = (client, user, now + 20.0)
            for gone in [s for s in list(live) if s != state and not _present(table, s)]:
                owner, owner_user, _ = live.pop(gone)
                # Only the same user's oldest, or a round of the client holding the most.
                assert (owner, owner_user) == (client, user) or counts[owner] == max(
                    counts.values()
                )
        elif op == "take" and live:
            state = next(iter(live))
            owner, owner_user, _ = live.pop(state)
            assert table.take(state, owner, owner_user, now) == ROUND
        else:
            table.expire(now)
        assert len(table) <= 6
        assert table.count(client, user) <= 3


def _present(table: StateTable, state: bytes) -> bool:
    return state in table._entries


def test_group_index() -> None:
    index: GroupIndex[str, int] = GroupIndex()
    assert index.victim() is None
    assert index.oldest("vpn") is None
    index.add("vpn", 1)
    index.add("wifi", 2)
    index.add("wifi", 3)
    assert index.victim() == ("wifi", 2)
    index.discard("wifi", 9)  # not recorded: nothing happens
    index.discard("lab", 1)
    index.discard("wifi", 2)
    index.discard("wifi", 3)
    assert (index.count("wifi"), index.victim()) == (0, ("vpn", 1))


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["add", "remove", "expire"]),
            st.sampled_from(["vpn", "wifi", "lab"]),
            st.sampled_from(["alice", "bob", "carol", "dave"]),
        ),
        max_size=120,
    )
)
def test_push_registry_evicts_only_from_the_largest_client(
    ops: list[tuple[str, str, str]],
) -> None:
    pushes = PendingPushes(max_entries=5)
    live: set[tuple[str, str]] = set()
    for number, (op, client, user) in enumerate(ops):
        if op == "add":
            counts = {c: sum(owner == c for owner, _ in live) for c in ("vpn", "wifi", "lab")}
            pushes.add(client, user, f"ch_{number}", None, 1000.0)
            live.add((client, user))
            for gone in [key for key in live if pushes.find(*key, 0.0) is None]:
                live.remove(gone)
                assert counts[gone[0]] == max(counts.values())
        elif op == "remove" and (client, user) in live:
            entry = pushes.find(client, user, 0.0)
            assert entry is not None
            pushes.remove(entry)
            live.remove((client, user))
        else:
            pushes.expire(0.0)  # nothing is due: nothing goes
        assert len(pushes) == len(live) <= 5
        assert sum(pushes.count(c) for c in ("vpn", "wifi", "lab")) == len(live)
