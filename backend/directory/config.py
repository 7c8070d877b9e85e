"""One directory's settings, as stored and as the LDAP adapter and the sync read them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

Kind = Literal["ad", "ldap"]
KINDS: Final = ("ad", "ldap")


@dataclass(frozen=True, slots=True)
class AttributeMap:
    """Which directory attribute holds each of our user fields."""

    name: str
    email: str = "mail"
    display_name: str = "displayName"
    phone: str = "telephoneNumber"


#: Defaults per kind; an administrator may override each attribute.
DEFAULT_ATTRIBUTES: Final[dict[str, AttributeMap]] = {
    "ad": AttributeMap(name="sAMAccountName"),
    "ldap": AttributeMap(name="uid"),
}

DEFAULT_SYNC_INTERVAL: Final = 3600  # seconds; 0 turns the scheduled sync off
DEFAULT_DISABLE_PERCENT: Final = 10  # a sync disabling more than this share stops ...
DEFAULT_DISABLE_MINIMUM: Final = 5  # ... when it would also disable at least this many
DEFAULT_CONNECT_TIMEOUT: Final = 5.0
DEFAULT_SEARCH_TIMEOUT: Final = 30.0
DEFAULT_PAGE_SIZE: Final = 500  # below AD's MaxPageSize (1,000)


@dataclass(frozen=True, slots=True)
class DirectoryConfig:
    """Everything needed to reach and read one directory, except the bind password (sealed
    with the server key; :class:`backend.services.directories.DirectoryService` opens it)."""

    id: int
    name: str
    kind: Kind
    urls: tuple[str, ...]  # ldaps://host[:port] or ldap://host[:port] (then StartTLS)
    ca_pem: str | None  # a private CA's certificate(s); None: the system's trust store
    bind_dn: str
    base_dn: str
    user_filter: str = ""  # an extra LDAP filter, e.g. "(department=Sales)"
    group_dn: str = ""  # only (nested) members of this group are users; "" = everyone
    admin_group_dn: str = ""  # (nested) members become console administrators
    attributes: AttributeMap = AttributeMap(name="sAMAccountName")
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    search_timeout: float = DEFAULT_SEARCH_TIMEOUT
    page_size: int = DEFAULT_PAGE_SIZE
    sync_interval: int = DEFAULT_SYNC_INTERVAL
    disable_percent: int = DEFAULT_DISABLE_PERCENT
    disable_minimum: int = DEFAULT_DISABLE_MINIMUM
