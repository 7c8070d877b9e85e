"""A directory user as a sync sees it: what the directory says, mapped to our vocabulary."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

#: Why a directory entry does not stand for an enabled user here. ``gone`` is never carried
#: by an entry: it is what the planner concludes when a tied user is absent from the answer.
DISABLED_IN_DIRECTORY: Final = "disabled"  # AD: userAccountControl bit 2 (ACCOUNTDISABLE)
EXPIRED_IN_DIRECTORY: Final = "expired"  # AD: accountExpires in the past
GONE_FROM_DIRECTORY: Final = "gone"  # deleted, moved out of the base DN, or left the group
INACTIVE_REASONS: Final = (DISABLED_IN_DIRECTORY, EXPIRED_IN_DIRECTORY, GONE_FROM_DIRECTORY)


@dataclass(frozen=True, slots=True)
class DirectoryEntry:
    """One user the directory's selection (base DN, filter, group) returned.

    ``external_id`` is the directory's stable id, lower-case canonical UUID text: AD's
    ``objectGUID`` (its 16 bytes read as a little-endian GUID, as AD's own tools print it) or
    LDAP's ``entryUUID``. Users are tied by it, never by name, so a rename follows.
    Disabled and expired accounts are returned too (``enabled`` false, ``inactive_reason``
    says why), so that the sync can say why it disables someone.
    """

    external_id: str
    dn: str
    name: str  # from the mapped user-name attribute; "" when the entry lacks it
    email: str = ""
    display_name: str = ""
    phone: str = ""
    enabled: bool = True
    inactive_reason: str = ""  # "" when enabled, else DISABLED_ or EXPIRED_IN_DIRECTORY
    admin: bool = False  # a (nested) member of the directory's admin group
