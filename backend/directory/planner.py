"""The sync as a pure planner: directory entries and our users in, a plan of changes out.

No I/O: the executor (:mod:`backend.services.directory_sync`) reads the directory one page at a
time, looks up the users that page concerns, asks :func:`plan_page` what to do, applies it and
moves on. Across pages it keeps only the external ids seen so far; after the last page
:func:`plan_gone` disables the tied users the answer did not contain, and :func:`over_threshold`
decides whether the whole sync may disable that many.

The rules, each a test in tests/test_directory_planner.py:

* users are tied by the directory's stable id (``external_id``), never by name, so a rename
  in the directory renames here;
* a local user (no directory) and another directory's user are never touched: an entry
  whose name one of them holds is a :class:`NameClash`, reported, not merged;
* a sync enables only users it disabled itself (``disabled_by == "directory"``); a user an
  administrator disabled stays disabled whatever the directory says;
* entries without a usable name or id, and an id twice in one answer, are :class:`Error`\\ s;
  the first entry with an id counts as seen, so a bad duplicate never disables its user.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass, field
from typing import Final

from backend.directory.entries import (
    DISABLED_IN_DIRECTORY,
    GONE_FROM_DIRECTORY,
    INACTIVE_REASONS,
    DirectoryEntry,
)
from backend.domain.emails import email_problem
from backend.domain.names import user_key
from backend.errors import InvalidName

#: ``users.disabled_by`` of a user a sync disabled (and a later sync may enable).
BY_DIRECTORY: Final = "directory"

# Column sizes (backend/store/tables.py): longer values are cut, not refused, except the DN,
# which the directory password sign-in may need whole.
_DISPLAY_NAME_MAX: Final = 256
_PHONE_MAX: Final = 64
_DN_MAX: Final = 1024
_EXTERNAL_ID_MAX: Final = 64


@dataclass(frozen=True, slots=True)
class LocalUser:
    """One of our users as the planner needs it (no hashes, no secrets)."""

    id: int
    name: str
    email: str = ""
    display_name: str = ""
    phone: str = ""
    is_admin: bool = False
    disabled: bool = False
    disabled_by: str = ""  # "admin", "directory" or ""
    disabled_reason: str = ""
    directory_id: int | None = None  # None: a local user
    directory_name: str = ""  # for a clash message about another directory's user
    external_id: str | None = None
    directory_dn: str = ""

    @property
    def name_key(self) -> str:
        """The case-folded name users are looked up by."""
        return self.name.casefold()


@dataclass(frozen=True, slots=True)
class Profile:
    """The fields a sync keeps in step with the directory."""

    email: str
    display_name: str
    phone: str
    is_admin: bool
    directory_dn: str


@dataclass(frozen=True, slots=True)
class Create:
    """A new directory user: created as a directory user, without a local password."""

    name: str
    external_id: str
    profile: Profile


@dataclass(frozen=True, slots=True)
class Update:
    """Fields that changed (``fields`` names them, for the audit), with all new values."""

    user_id: int
    name: str  # the name after any rename in the same plan
    profile: Profile
    fields: tuple[str, ...]
    disabled_reason: str | None = None  # a directory-disabled user's reason changed


@dataclass(frozen=True, slots=True)
class Rename:
    """The directory renamed the user (tied by id): ``old`` becomes ``new``."""

    user_id: int
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class Disable:
    """Disable with a reason: disabled or expired in the directory, or gone from it."""

    user_id: int
    name: str
    reason: str


@dataclass(frozen=True, slots=True)
class Enable:
    """Back in the directory's selection and enabled there: undo a sync's disable."""

    user_id: int
    name: str


@dataclass(frozen=True, slots=True)
class NameClash:
    """The entry's name is held by a user the sync may not touch (or by another entry)."""

    name: str
    external_id: str
    holder: str  # who holds it, in words: "a local user", "a user of directory hr", ...


@dataclass(frozen=True, slots=True)
class Error:
    """An entry the sync cannot use; it is skipped (its user, if tied, is left alone)."""

    external_id: str
    dn: str
    name: str
    reason: str


@dataclass(frozen=True, slots=True)
class Dropped:
    """Something the sync did not take from an entry (an invalid e-mail address)."""

    name: str
    reason: str


Change = Create | Update | Rename | Disable | Enable | NameClash | Error | Dropped


@dataclass(frozen=True, slots=True)
class PagePlan:
    """What to do about one page; ``seen``: the external ids to add to the seen set."""

    changes: tuple[Change, ...] = ()
    unchanged: int = 0
    seen: tuple[str, ...] = ()

    def of(self, kind: type[Change]) -> list[Change]:
        """The changes of one kind, in order."""
        return [change for change in self.changes if isinstance(change, kind)]


@dataclass(slots=True)
class _Page:
    """The planner's working state for one page (local to :func:`plan_page`)."""

    changes: list[Change] = field(default_factory=list)
    unchanged: int = 0
    seen: set[str] = field(default_factory=set)
    claimed: dict[str, str] = field(default_factory=dict)  # name_key -> external id


def profile_of(entry: DirectoryEntry, current_admin: bool, manage_admin: bool) -> Profile:
    """The entry's fields as we store them. ``manage_admin`` false (no admin group set):
    the administrator flag stays as it is here."""
    email = entry.email.strip()
    if email and email_problem(email) is not None:
        email = ""  # reported by plan_page as a Dropped
    return Profile(
        email=email,
        display_name=entry.display_name.strip()[:_DISPLAY_NAME_MAX],
        phone=entry.phone.strip()[:_PHONE_MAX],
        is_admin=entry.admin if manage_admin else current_admin,
        directory_dn=entry.dn,
    )


def _entry_problem(entry: DirectoryEntry) -> str | None:
    if not entry.external_id or len(entry.external_id) > _EXTERNAL_ID_MAX:
        return "no usable stable id (objectGUID / entryUUID)"
    if not entry.name:
        return "no user name (the mapped user-name attribute is empty)"
    try:
        user_key(entry.name)
    except InvalidName as exc:
        return f"the name {entry.name!r} is not allowed here: {exc.detail}"
    if len(entry.dn) > _DN_MAX:
        return f"the DN is longer than {_DN_MAX} characters"
    if not entry.enabled and entry.inactive_reason not in ("", *INACTIVE_REASONS):
        return f"unknown inactive reason {entry.inactive_reason!r}"
    return None


def _holder_words(holder: LocalUser, directory_id: int) -> str:
    if holder.directory_id is None:
        return "a local user"
    if holder.directory_id != directory_id:
        return f"a user of directory {holder.directory_name or holder.directory_id}"
    return f"another user of this directory ({holder.name}, id {holder.external_id})"


def plan_page(
    entries: Iterable[DirectoryEntry],
    tied: Mapping[str, LocalUser],
    holders: Mapping[str, LocalUser],
    *,
    directory_id: int,
    seen: Set[str],
    manage_admin: bool,
) -> PagePlan:
    """Plan one page of the directory's answer.

    ``tied``: our users of this directory, by external id, for the page's ids (those found).
    ``holders``: our users by ``name_key`` for the page's names (whoever holds them, tied or
    not). ``seen``: external ids of earlier pages (read only; the plan's ``seen`` has this
    page's). ``manage_admin``: the directory has an admin group, so it decides ``is_admin``.
    """
    page = _Page()
    entries = list(entries)
    released = _released(entries, tied, holders, directory_id, seen)
    for entry in entries:
        _plan_entry(page, entry, tied, holders, released, directory_id, seen, manage_admin)
    return PagePlan(tuple(page.changes), page.unchanged, tuple(page.seen))


def _released(
    entries: list[DirectoryEntry],
    tied: Mapping[str, LocalUser],
    holders: Mapping[str, LocalUser],
    directory_id: int,
    seen: Set[str],
) -> set[str]:
    """The names this page's tied users give up by a rename that will happen: free for
    another entry of the page (names swapped or passed along a chain within one page).

    A rename happens when its new name is wanted by no other entry of the page and is free,
    or held by a user whose own rename happens; the largest such set (a swap depends on
    itself) is found by dropping renames that fail until none does.
    """
    valid: list[DirectoryEntry] = []
    ids: set[str] = set()
    for entry in entries:
        if entry.external_id in seen or entry.external_id in ids:
            continue
        ids.add(entry.external_id)
        if _entry_problem(entry) is None:
            valid.append(entry)
    wanted: dict[str, int] = {}
    for entry in valid:
        wanted[entry.name.casefold()] = wanted.get(entry.name.casefold(), 0) + 1
    renames: dict[str, str] = {}  # old name key -> new name key
    for entry in valid:
        user = tied.get(entry.external_id)
        if user is not None and entry.name.casefold() != user.name_key:
            renames[user.name_key] = entry.name.casefold()
    changed = True
    while changed:
        changed = False
        for old, new in list(renames.items()):
            holder = holders.get(new)
            free = holder is None or (
                holder.directory_id == directory_id and holder.name_key in renames
            )
            if wanted[new] > 1 or not free:
                del renames[old]
                changed = True
    return set(renames)


def _plan_entry(
    page: _Page,
    entry: DirectoryEntry,
    tied: Mapping[str, LocalUser],
    holders: Mapping[str, LocalUser],
    released: Set[str],
    directory_id: int,
    seen: Set[str],
    manage_admin: bool,
) -> None:
    if entry.external_id and (entry.external_id in seen or entry.external_id in page.seen):
        page.changes.append(
            Error(entry.external_id, entry.dn, entry.name, "the same stable id twice in one answer")
        )
        return
    if entry.external_id and len(entry.external_id) <= _EXTERNAL_ID_MAX:
        page.seen.add(entry.external_id)  # seen even when unusable: never "gone" for it
    problem = _entry_problem(entry)
    if problem is not None:
        page.changes.append(Error(entry.external_id, entry.dn, entry.name, problem))
        return
    key = entry.name.casefold()
    user = tied.get(entry.external_id)
    clash = _clash(page, entry, key, user, holders, released, directory_id)
    if (
        clash is None
        and user is not None
        and key != user.name_key
        and user.name_key not in released
    ):
        # Another entry of the page wants the same name: neither rename happens (as
        # _released decided, so that the name this user keeps is not handed out).
        clash = NameClash(entry.name, entry.external_id, "another entry of the same answer")
    if clash is None and (user is not None or entry.enabled):
        page.claimed[key] = entry.external_id
    if entry.email.strip() and email_problem(entry.email.strip()) is not None:
        page.changes.append(
            Dropped(entry.name, f"the e-mail address {entry.email.strip()!r} is not valid")
        )
    if user is None:
        if not entry.enabled:
            page.unchanged += 1  # disabled or expired and not ours: nothing to create
        elif clash is not None:
            page.changes.append(clash)
        else:
            profile = profile_of(entry, False, manage_admin)
            page.changes.append(Create(entry.name, entry.external_id, profile))
        return
    _plan_tied(page, entry, user, clash, manage_admin)


def _clash(
    page: _Page,
    entry: DirectoryEntry,
    key: str,
    user: LocalUser | None,
    holders: Mapping[str, LocalUser],
    released: Set[str],
    directory_id: int,
) -> NameClash | None:
    """Who else holds the entry's name, or None when it is free for this entry."""
    claimant = page.claimed.get(key)
    if claimant is not None and claimant != entry.external_id:
        return NameClash(entry.name, entry.external_id, "another entry of the same answer")
    holder = holders.get(key)
    if holder is None or (user is not None and holder.id == user.id):
        return None
    if holder.directory_id == directory_id and key in released:
        return None  # its owner is renamed away in this same plan
    return NameClash(entry.name, entry.external_id, _holder_words(holder, directory_id))


def _plan_tied(
    page: _Page, entry: DirectoryEntry, user: LocalUser, clash: NameClash | None, manage_admin: bool
) -> None:
    name = user.name
    changed = False
    if entry.name != user.name:
        if clash is None:
            page.changes.append(Rename(user.id, user.name, entry.name))
            name = entry.name
            changed = True
        else:
            page.changes.append(clash)
    profile = profile_of(entry, user.is_admin, manage_admin)
    fields = _changed_fields(user, profile)
    reason: str | None = None
    inactive = entry.inactive_reason or DISABLED_IN_DIRECTORY
    if (
        not entry.enabled
        and user.disabled
        and user.disabled_by == BY_DIRECTORY
        and user.disabled_reason != inactive
    ):
        reason = inactive
        fields = (*fields, "disabled_reason")
    if fields:
        page.changes.append(Update(user.id, name, profile, fields, reason))
        changed = True
    if not entry.enabled and not user.disabled:
        page.changes.append(Disable(user.id, name, inactive))
        changed = True
    elif entry.enabled and user.disabled and user.disabled_by == BY_DIRECTORY:
        page.changes.append(Enable(user.id, name))
        changed = True
    if not changed:
        page.unchanged += 1


def _changed_fields(user: LocalUser, profile: Profile) -> tuple[str, ...]:
    fields = []
    if profile.email != user.email:
        fields.append("email")
    if profile.display_name != user.display_name:
        fields.append("display_name")
    if profile.phone != user.phone:
        fields.append("phone")
    if profile.is_admin != user.is_admin:
        fields.append("admin")
    if profile.directory_dn != user.directory_dn:
        fields.append("dn")
    return tuple(fields)


def plan_gone(tied: Iterable[LocalUser], seen: Set[str]) -> tuple[Change, ...]:
    """After the last page: this directory's users the answer did not contain are gone.

    ``tied``: a batch of users tied to this directory (the executor streams them all)."""
    changes: list[Change] = []
    for user in tied:
        if user.external_id is None or user.external_id in seen:
            continue
        if not user.disabled:
            changes.append(Disable(user.id, user.name, GONE_FROM_DIRECTORY))
        elif user.disabled_by == BY_DIRECTORY and user.disabled_reason != GONE_FROM_DIRECTORY:
            profile = Profile(
                user.email, user.display_name, user.phone, user.is_admin, user.directory_dn
            )
            changes.append(
                Update(user.id, user.name, profile, ("disabled_reason",), GONE_FROM_DIRECTORY)
            )
    return tuple(changes)


def disable_limit(tied: int, percent: int, minimum: int) -> int:
    """How many users one sync may disable without ``--force``: ``percent`` % of the users
    tied to the directory, and at least ``minimum`` ("10% and at least 5 users")."""
    return max(minimum, tied * percent // 100)


def over_threshold(disables: int, tied: int, percent: int, minimum: int) -> bool:
    """A sync disabling ``disables`` of ``tied`` users stops unless forced."""
    return disables > disable_limit(tied, percent, minimum)
