"""A directory in memory that speaks :class:`~backend.directory.reader.DirectoryReader`.

The sync's tests drive it like an administrator drives AD: add, rename, disable, expire,
remove, fail. Pages come in ``page_size`` entries, in a stable order (by external id), from a
snapshot taken when the read starts, as a paged LDAP search would give them.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import replace

from backend.directory.entries import (
    DISABLED_IN_DIRECTORY,
    EXPIRED_IN_DIRECTORY,
    DirectoryEntry,
)
from backend.directory.reader import BindResult, TestReport
from backend.errors import DirectoryUnavailable


class FakeDirectory:
    """A :class:`DirectoryReader` over a dict of entries by external id."""

    def __init__(self, page_size: int = 3, base_dn: str = "DC=corp,DC=example") -> None:
        self.page_size = page_size
        self.base_dn = base_dn
        self.entries: dict[str, DirectoryEntry] = {}
        self.pages_read = 0
        self.open_reads = 0
        self.closed = False
        #: set to make the next reads fail as an unreachable DC would (after this many pages)
        self.fail_after_pages: int | None = None

    # -- what an administrator does -------------------------------------------------------------

    def add(
        self,
        name: str,
        *,
        email: str = "",
        display_name: str = "",
        phone: str = "",
        admin: bool = False,
        external_id: str | None = None,
    ) -> DirectoryEntry:
        """A new user (a fresh GUID unless given)."""
        entry = DirectoryEntry(
            external_id=external_id or str(uuid.uuid4()),
            dn=f"CN={name},OU=Staff,{self.base_dn}",
            name=name,
            email=email,
            display_name=display_name,
            phone=phone,
            admin=admin,
        )
        self.entries[entry.external_id] = entry
        return entry

    def by_name(self, name: str) -> DirectoryEntry:
        """The entry named ``name`` (KeyError when none)."""
        for entry in self.entries.values():
            if entry.name == name:
                return entry
        raise KeyError(name)

    def change(self, who: str, **fields: object) -> DirectoryEntry:
        """Change attributes of the entry named ``who``."""
        entry = replace(self.by_name(who), **fields)  # type: ignore[arg-type]
        self.entries[entry.external_id] = entry
        return entry

    def rename(self, old: str, new: str) -> DirectoryEntry:
        """``samba-tool user rename``: same GUID, new name and DN."""
        entry = self.by_name(old)
        return self.change(old, name=new, dn=entry.dn.replace(f"CN={old},", f"CN={new},"))

    def disable(self, name: str) -> DirectoryEntry:
        """userAccountControl ACCOUNTDISABLE."""
        return self.change(name, enabled=False, inactive_reason=DISABLED_IN_DIRECTORY)

    def expire(self, name: str) -> DirectoryEntry:
        """accountExpires in the past."""
        return self.change(name, enabled=False, inactive_reason=EXPIRED_IN_DIRECTORY)

    def enable(self, name: str) -> DirectoryEntry:
        """Enabled again."""
        return self.change(name, enabled=True, inactive_reason="")

    def remove(self, name: str) -> DirectoryEntry:
        """Deleted, or out of the group: no longer in the selection."""
        return self.entries.pop(self.by_name(name).external_id)

    def put(self, entry: DirectoryEntry) -> None:
        """Back in the selection (as it was)."""
        self.entries[entry.external_id] = entry

    # -- DirectoryReader ------------------------------------------------------------------------

    async def test(self) -> TestReport:
        """The selection's size, as ``directory test`` reports it."""
        return TestReport(
            "ldaps://fake.invalid",
            "ad",
            "fake",
            len(self.entries),
            sum(e.admin for e in self.entries.values()),
            0.0,
        )

    async def user_pages(self) -> AsyncIterator[list[DirectoryEntry]]:
        """The snapshot's entries, ``page_size`` at a time."""
        snapshot = [self.entries[key] for key in sorted(self.entries)]
        self.open_reads += 1  # a paged search holds a connection until it ends or is closed
        try:
            for start in range(0, len(snapshot), self.page_size):
                if self.fail_after_pages is not None and self.pages_read >= self.fail_after_pages:
                    raise DirectoryUnavailable("no directory server answered (fake)")
                self.pages_read += 1
                yield snapshot[start : start + self.page_size]
        finally:
            self.open_reads -= 1

    async def authenticate(
        self, user_name: str, password: str, *, external_id: str | None = None
    ) -> BindResult:
        """Not used by the sync: every bind is refused."""
        return BindResult("wrong-password" if password else "empty-password")

    async def close(self) -> None:
        """Nothing to release."""
        self.closed = True


class FakeDirectories:
    """What the sync asks for readers (``services.directories``), over fakes by id."""

    def __init__(self) -> None:
        self.readers: dict[int, FakeDirectory] = {}

    async def reader(self, directory_id: int) -> FakeDirectory:
        """The fake for ``directory_id`` (a new, empty one the first time)."""
        return self.readers.setdefault(directory_id, FakeDirectory())
