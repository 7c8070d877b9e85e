"""The sync's pure planner: one rule per test, then properties over generated directories.

The properties run a whole sync in memory, as the executor does (plan a page, apply it, next
page, then the "gone" step), over generated users and entries with few names so that clashes,
renames onto taken names and swaps happen often.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from backend.directory.entries import DirectoryEntry
from backend.directory.planner import (
    BY_DIRECTORY,
    Change,
    Create,
    Disable,
    Dropped,
    Enable,
    Error,
    LocalUser,
    NameClash,
    PagePlan,
    Rename,
    Update,
    disable_limit,
    over_threshold,
    plan_gone,
    plan_page,
)

D = 1  # the directory being synced
OTHER = 2  # another directory


def entry(name: str, guid: str = "", **fields: object) -> DirectoryEntry:
    return DirectoryEntry(
        external_id=guid or f"guid-{name}",
        dn=str(fields.pop("dn", f"CN={name},DC=corp")),
        name=name,
        **fields,  # type: ignore[arg-type]
    )


def tied(user_id: int, name: str, guid: str = "", **fields: object) -> LocalUser:
    return LocalUser(
        id=user_id,
        name=name,
        directory_id=D,
        external_id=guid or f"guid-{name}",
        directory_dn=str(fields.pop("directory_dn", f"CN={name},DC=corp")),
        **fields,  # type: ignore[arg-type]
    )


def plan(
    entries: Sequence[DirectoryEntry],
    users: Sequence[LocalUser] = (),
    seen: frozenset[str] = frozenset(),
    manage_admin: bool = False,
) -> PagePlan:
    ids = {e.external_id for e in entries}
    keys = {e.name.casefold() for e in entries}
    return plan_page(
        entries,
        {u.external_id: u for u in users if u.directory_id == D and u.external_id in ids},
        {u.name_key: u for u in users if u.name_key in keys},
        directory_id=D,
        seen=seen,
        manage_admin=manage_admin,
    )


# -- rules ------------------------------------------------------------------------------------


def test_new_enabled_entries_are_created_disabled_ones_are_not() -> None:
    result = plan([entry("alice", email="a@x.example"), entry("bob", enabled=False)])
    assert [type(c) for c in result.changes] == [Create]
    create = result.changes[0]
    assert isinstance(create, Create)
    assert (create.name, create.external_id, create.profile.email) == (
        "alice",
        "guid-alice",
        "a@x.example",
    )
    assert result.unchanged == 1
    assert set(result.seen) == {"guid-alice", "guid-bob"}


def test_an_unchanged_user_is_counted_not_changed() -> None:
    result = plan([entry("alice")], [tied(1, "alice")])
    assert (result.changes, result.unchanged) == ((), 1)


def test_changed_fields_are_named() -> None:
    result = plan(
        [entry("alice", email="new@x.example", phone="1", admin=True)],
        [tied(1, "alice", email="old@x.example")],
        manage_admin=True,
    )
    assert result.changes == (
        Update(
            1,
            "alice",
            dataclasses.replace(
                result.changes[0].profile,  # type: ignore[union-attr]
            ),
            ("email", "phone", "admin"),
        ),
    )


def test_without_an_admin_group_the_admin_flag_stays() -> None:
    result = plan([entry("alice", admin=False)], [tied(1, "alice", is_admin=True)])
    assert result.changes == ()


def test_a_rename_follows_the_stable_id_and_a_clash_blocks_it() -> None:
    result = plan([entry("robert", guid="g1", dn="CN=bob,DC=corp")], [tied(1, "bob", guid="g1")])
    assert result.changes == (Rename(1, "bob", "robert"),)
    local = LocalUser(id=9, name="Robert")
    clash = plan(
        [entry("robert", guid="g1", dn="CN=bob,DC=corp")], [tied(1, "bob", guid="g1"), local]
    )
    assert clash.changes == (NameClash("robert", "g1", "a local user"),)


def test_a_case_only_rename_is_a_rename_not_a_clash() -> None:
    result = plan([entry("Alice", guid="g1", dn="CN=alice,DC=corp")], [tied(1, "alice", guid="g1")])
    assert result.changes == (Rename(1, "alice", "Alice"),)


def test_names_swapped_within_a_page_are_not_clashes() -> None:
    users = [tied(1, "anna", guid="a"), tied(2, "berta", guid="b")]
    result = plan(
        [
            entry("berta", guid="a", dn="CN=anna,DC=corp"),
            entry("anna", guid="b", dn="CN=berta,DC=corp"),
        ],
        users,
    )
    assert set(result.changes) == {Rename(1, "anna", "berta"), Rename(2, "berta", "anna")}


def test_clashes_with_local_and_other_directories_users_are_reported() -> None:
    users = [
        LocalUser(id=1, name="dave"),
        LocalUser(id=2, name="erin", directory_id=OTHER, directory_name="hr", external_id="x"),
        tied(3, "frank", guid="old-frank"),
    ]
    result = plan([entry("dave"), entry("erin"), entry("frank", guid="new-frank")], users)
    assert result.changes == (
        NameClash("dave", "guid-dave", "a local user"),
        NameClash("erin", "guid-erin", "a user of directory hr"),
        NameClash("frank", "new-frank", "another user of this directory (frank, id old-frank)"),
    )


def test_two_entries_with_one_name_the_second_clashes() -> None:
    result = plan([entry("gus", guid="1"), entry("GUS", guid="2")])
    assert result.changes[1] == NameClash("GUS", "2", "another entry of the same answer")


def test_errors_bad_names_missing_names_duplicate_ids() -> None:
    result = plan(
        [
            entry("", guid="g0"),
            entry("a b", guid="g1"),
            entry("ok", guid="g2"),
            entry("ok2", guid="g2"),
        ],
        seen=frozenset(),
    )
    errors = [c for c in result.changes if isinstance(c, Error)]
    assert [e.reason.split(" ")[0:2] for e in errors] == [
        ["no", "user"],
        ["the", "name"],
        ["the", "same"],
    ]
    assert set(result.seen) == {"g0", "g1", "g2"}
    again = plan([entry("ok", guid="g2")], seen=frozenset({"g2"}))
    assert isinstance(again.changes[0], Error)


def test_an_invalid_email_is_dropped_not_stored() -> None:
    result = plan([entry("hal", email="not an address")])
    assert isinstance(result.changes[0], Dropped)
    create = result.changes[1]
    assert isinstance(create, Create)
    assert create.profile.email == ""


def test_disable_with_the_directory_reason_and_enable_only_own_disables() -> None:
    disabled = plan([entry("ann", enabled=False, inactive_reason="expired")], [tied(1, "ann")])
    assert disabled.changes == (Disable(1, "ann", "expired"),)
    own = tied(1, "ann", disabled=True, disabled_by=BY_DIRECTORY, disabled_reason="gone")
    assert plan([entry("ann")], [own]).changes == (Enable(1, "ann"),)
    admins = tied(1, "ann", disabled=True, disabled_by="admin")
    assert plan([entry("ann")], [admins]).changes == ()
    legacy = tied(1, "ann", disabled=True, disabled_by="")  # disabled before 0009: a person
    assert plan([entry("ann")], [legacy]).changes == ()


def test_gone_users_are_disabled_once_and_local_users_never() -> None:
    users = [
        tied(1, "ann", guid="a"),
        tied(2, "ben", guid="b"),
        tied(3, "cy", guid="c", disabled=True, disabled_by=BY_DIRECTORY, disabled_reason="gone"),
        tied(4, "di", guid="d", disabled=True, disabled_by="admin"),
        tied(5, "ed", guid="e", disabled=True, disabled_by=BY_DIRECTORY, disabled_reason="expired"),
    ]
    changes = plan_gone(users, {"a"})
    assert [type(c) for c in changes] == [Disable, Update]
    assert changes[0] == Disable(2, "ben", "gone")
    assert isinstance(changes[1], Update)
    assert changes[1].disabled_reason == "gone"


def test_the_threshold_is_a_share_with_a_floor() -> None:
    assert disable_limit(0, 10, 5) == 5
    assert disable_limit(2000, 10, 5) == 200
    assert not over_threshold(5, 10, 10, 5)
    assert over_threshold(6, 10, 10, 5)
    assert not over_threshold(200, 2000, 10, 5)
    assert over_threshold(201, 2000, 10, 5)


# -- properties ---------------------------------------------------------------------------------

NAMES = st.sampled_from(["ann", "Ann", "bob", "cy", "dee", "eve", "a b", ""])
GUIDS = st.sampled_from([f"g{n}" for n in range(8)])
REASONS = st.sampled_from(["", "disabled", "expired"])


@st.composite
def entries(draw: st.DrawFn) -> DirectoryEntry:
    reason = draw(REASONS)
    return DirectoryEntry(
        external_id=draw(GUIDS),
        dn=f"CN={draw(NAMES)},DC=corp",
        name=draw(NAMES),
        email=draw(st.sampled_from(["", "x@corp.example", "bad address"])),
        phone=draw(st.sampled_from(["", "1"])),
        admin=draw(st.booleans()),
        enabled=reason == "",
        inactive_reason=reason,
    )


@st.composite
def our_users(draw: st.DrawFn) -> list[LocalUser]:
    users: dict[str, LocalUser] = {}
    for number in range(draw(st.integers(0, 6))):
        name = draw(NAMES.filter(bool).filter(lambda n: " " not in n))
        if name.casefold() in users:
            continue
        kind = draw(st.sampled_from(["local", "other", "tied"]))
        disabled_by = draw(st.sampled_from(["", "admin", BY_DIRECTORY]))
        users[name.casefold()] = LocalUser(
            id=number + 1,
            name=name,
            email=draw(st.sampled_from(["", "x@corp.example"])),
            is_admin=draw(st.booleans()),
            disabled=disabled_by != "",
            disabled_by=disabled_by if kind != "local" else ("admin" if disabled_by else ""),
            disabled_reason="gone" if disabled_by == BY_DIRECTORY else "",
            directory_id={"local": None, "other": OTHER, "tied": D}[kind],
            external_id=None
            if kind == "local"
            else draw(GUIDS) + ("-other" if kind == "other" else ""),
        )
    # external ids are unique per directory
    unique: dict[tuple[int | None, str | None], LocalUser] = {}
    for user in users.values():
        key = (user.directory_id, user.external_id if user.directory_id else str(user.id))
        unique.setdefault(key, user)
    return list(unique.values())


def _apply(users: dict[int, LocalUser], changes: Sequence[Change]) -> None:
    for change in changes:
        if isinstance(change, Rename):
            users[change.user_id] = dataclasses.replace(users[change.user_id], name=change.new)
    for change in changes:
        if isinstance(change, Update):
            user = users[change.user_id]
            p = change.profile
            users[change.user_id] = dataclasses.replace(
                user,
                email=p.email,
                display_name=p.display_name,
                phone=p.phone,
                is_admin=p.is_admin,
                directory_dn=p.directory_dn,
                disabled_reason=change.disabled_reason
                if change.disabled_reason is not None and user.disabled_by == BY_DIRECTORY
                else user.disabled_reason,
            )
        elif isinstance(change, Create):
            new_id = max(users, default=0) + 1
            p = change.profile
            users[new_id] = LocalUser(
                id=new_id,
                name=change.name,
                email=p.email,
                display_name=p.display_name,
                phone=p.phone,
                is_admin=p.is_admin,
                directory_id=D,
                external_id=change.external_id,
                directory_dn=p.directory_dn,
            )
        elif isinstance(change, Enable):
            users[change.user_id] = dataclasses.replace(
                users[change.user_id], disabled=False, disabled_by="", disabled_reason=""
            )
        elif isinstance(change, Disable):
            users[change.user_id] = dataclasses.replace(
                users[change.user_id],
                disabled=True,
                disabled_by=BY_DIRECTORY,
                disabled_reason=change.reason,
            )
    names = [u.name_key for u in users.values()]
    assert len(names) == len(set(names)), "two users with one name"


def _sync(
    users: dict[int, LocalUser], answer: Sequence[DirectoryEntry], page_size: int, manage: bool
) -> list[Change]:
    """A whole sync as the executor runs it (forced: disables applied whatever their number)."""
    seen: set[str] = set()
    everything: list[Change] = []
    disables: list[Change] = []
    for start in range(0, len(answer), page_size):
        page = answer[start : start + page_size]
        result = plan(page, list(users.values()), frozenset(seen), manage)
        seen.update(result.seen)
        _apply(users, [c for c in result.changes if not isinstance(c, Disable)])
        disables += [c for c in result.changes if isinstance(c, Disable)]
        everything += result.changes
    gone = plan_gone([u for u in users.values() if u.directory_id == D], seen)
    _apply(users, [c for c in gone if not isinstance(c, Disable)])
    disables += [c for c in gone if isinstance(c, Disable)]
    _apply(users, disables)
    return everything + list(gone)


CHANGES = (Create, Update, Rename, Disable, Enable)


@settings(max_examples=300, deadline=None)
@given(our_users(), st.lists(entries(), max_size=10), st.booleans())
def test_property_idempotent(
    users: list[LocalUser], answer: list[DirectoryEntry], manage: bool
) -> None:
    state = {u.id: u for u in users}
    _sync(state, answer, page_size=len(answer) or 1, manage=manage)
    after = dict(state)
    second = _sync(state, answer, page_size=len(answer) or 1, manage=manage)
    assert [c for c in second if isinstance(c, CHANGES)] == []
    assert state == after


@settings(max_examples=300, deadline=None)
@given(our_users(), st.lists(entries(), max_size=10), st.integers(1, 4), st.booleans())
def test_property_local_and_other_users_untouched_admin_disables_kept(
    users: list[LocalUser], answer: list[DirectoryEntry], page_size: int, manage: bool
) -> None:
    state = {u.id: u for u in users}
    _sync(state, answer, page_size, manage)
    for user in users:
        if user.directory_id != D:
            assert state[user.id] == user  # never touched
        if user.disabled and user.disabled_by != BY_DIRECTORY:
            assert state[user.id].disabled  # an administrator's disable stays


@settings(max_examples=300, deadline=None)
@given(our_users(), st.lists(entries(), max_size=10), st.integers(1, 4))
def test_property_renames_follow_the_external_id(
    users: list[LocalUser], answer: list[DirectoryEntry], page_size: int
) -> None:
    state = {u.id: u for u in users}
    before = dict(state)
    changes = _sync(state, answer, page_size, manage=False)
    by_guid: dict[str, str] = {}
    for e in answer:
        by_guid.setdefault(e.external_id, e.name)
    for change in changes:
        if isinstance(change, Rename):
            user = before[change.user_id]
            assert user.directory_id == D
            assert by_guid[str(user.external_id)] == change.new


@given(st.integers(0, 10_000), st.integers(0, 100), st.integers(0, 1000), st.integers(0, 20_000))
def test_property_threshold(tied_users: int, percent: int, minimum: int, disables: int) -> None:
    limit = disable_limit(tied_users, percent, minimum)
    assert limit >= minimum
    assert over_threshold(disables, tied_users, percent, minimum) == (disables > limit)
    if disables <= minimum:
        assert not over_threshold(disables, tied_users, percent, minimum)
