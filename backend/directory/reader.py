"""The interface of a directory connection, and what its answers mean.

The LDAP adapter (:mod:`backend.directory.ldap`) implements :class:`DirectoryReader` over
ldap3 in a bounded thread pool, so LDAP I/O never runs on the event loop; tests use fakes
that implement the same interface. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol

from backend.directory.entries import DirectoryEntry

#: The outcome of checking a user's password against the directory.
#: ``unavailable``: no server answered (or TLS failed) — always a refusal, whatever the
#: RADIUS client's failmode, which concerns only the second factor.
BindOutcome = Literal[
    "ok",
    "empty-password",  # refused before any bind: an empty password is an anonymous bind
    "no-such-user",  # not found in the directory's selection
    "wrong-password",  # AD data 52e
    "disabled",  # AD data 533
    "locked",  # AD data 775
    "expired",  # AD data 701 (account expired)
    "password-expired",  # AD data 532
    "must-change",  # AD data 773 (user must reset password)
    "not-permitted",  # AD data 530/531 (logon hours, workstation) and other refusals
    "unavailable",
]


#: Why a password was refused. ``no-password``: a local user with none set. The rest are for
#: users from a directory: the directory's answers (:data:`BindOutcome`), ``not-in-directory``
#: (a RADIUS client of primary ldap, and the user is local or from another directory) and
#: ``directory-unavailable`` (no server answered: a refusal, never the client's failmode).
PasswordReason = Literal[
    "ok",
    "wrong-password",
    "no-password",
    "not-in-directory",
    "directory-unavailable",
    "no-such-user",
    "disabled",
    "locked",
    "expired",
    "password-expired",
    "must-change",
    "not-permitted",
]


@dataclass(frozen=True, slots=True)
class BindResult:
    """What the directory said about a user's password; ``detail`` is for the audit (never
    holds the password)."""

    outcome: BindOutcome
    entry: DirectoryEntry | None = None
    detail: str = ""

    @property
    def accepted(self) -> bool:
        """True only when the bind as the user succeeded."""
        return self.outcome == "ok"


@dataclass(frozen=True, slots=True)
class TestReport:
    """What ``openmfa directory test`` shows: which server answered, and the selection."""

    __test__: ClassVar[bool] = False  # not a pytest test class, whatever its name

    url: str  # the URL that answered
    kind: Literal["ad", "ldap"]  # as detected from the root DSE
    vendor: str  # the root DSE's vendorName / AD's forest functionality, for the operator
    users: int  # how many entries the selection (base DN, filter, group) returns
    admins: int  # how many of them are in the admin group (0 when none is set)
    seconds: float


class DirectoryReader(Protocol):
    """One configured directory, reachable over LDAP (or faked in tests)."""

    async def test(self) -> TestReport:
        """Connect, bind with the service account, count the selection.

        Raises :class:`backend.errors.DirectoryUnavailable` when no URL answers and
        :class:`backend.errors.DirectoryError` for a refused bind or a bad base DN/filter."""
        ...

    def user_pages(self) -> AsyncIterator[list[DirectoryEntry]]:
        """The selection's users, one page (at most ``page_size``) at a time, so a sync of a
        large directory never holds it all; raises like :meth:`test`."""
        ...

    async def authenticate(
        self, user_name: str, password: str, *, external_id: str | None = None
    ) -> BindResult:
        """Find the user in the selection with the service account (by ``external_id`` when
        known, else by the user-name attribute), then bind as that user. Never raises for a
        directory refusal or outage: the outcome says what happened."""
        ...

    async def close(self) -> None:
        """Release connections and threads."""
        ...
