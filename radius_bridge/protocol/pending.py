"""Pushes in flight, per (client, user), so a *new* request joins a pending push.

Retransmissions of one request are absorbed by :mod:`.dedup`. Some gateways (old
AnyConnect clients, users pressing "connect" twice) instead send a new Access-Request, with
a new Identifier, for the same user while the phone still shows the first push. That
request joins the pending push rather than sending a second one: two pushes for one sign-in
train people to approve whatever pops up. A request joins only after its own primary
authentication succeeded, so joining never skips the password, and only when it is provably
the same sign-in as the request that started the push: the same client and user, the same
*non-empty* end-user address (Calling-Station-Id), and the same NAS-Identifier and
NAS-IP-Address (each absent in both, or equal). Otherwise someone holding the password
elsewhere could ride on the user's own approval; a request that does not say where the user
is (no Calling-Station-Id) therefore never joins and gets a push of its own, which the
backend's fatigue guard then counts.

Each flow waiting on a push *holds* it; the last holder to give up cancels it in the
backend. The entry ends when the push is final, when its time is up, or when the map is
full: then the oldest entry *of the client with the most entries* goes (the worst case is a
second push), so a client flooding pushes evicts its own, never another gateway's
(:mod:`.shares`). One entry per user and client by construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from radius_bridge.protocol.shares import GroupIndex

DEFAULT_MAX_ENTRIES: Final = 100_000


@dataclass(frozen=True, slots=True)
class SignIn:
    """Where a request comes from, as far as the gateway says: Calling-Station-Id (the
    end-user's address), NAS-Identifier and NAS-IP-Address."""

    calling_station_id: str | None
    nas_identifier: str | None = None
    nas_ip_address: str | None = None

    def same_as(self, other: SignIn | None) -> bool:
        """True only when both name the same non-empty end-user address at the same NAS: two
        requests that do not say where the user is are not provably one sign-in."""
        if other is None or not (self.calling_station_id or "").strip():
            return False
        return self == other


@dataclass(slots=True)
class PendingPush:
    """One push the backend has sent and nobody has answered yet."""

    client: str
    user: str  # casefolded
    authentication_id: str
    number: int | None  # number matching: the number to show
    expires_at: float
    holders: int = 0  # flows waiting on it right now
    origin: SignIn | None = None  # where the request that started it came from


class PendingPushes:
    """The registry; explicit clock."""

    def __init__(self, *, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._entries: dict[tuple[str, str], PendingPush] = {}
        self._by_client: GroupIndex[str, tuple[str, str]] = GroupIndex()

    def count(self, client: str) -> int:
        """Entries of ``client``."""
        return self._by_client.count(client)

    def _drop(self, key: tuple[str, str]) -> None:
        if self._entries.pop(key, None) is not None:
            self._by_client.discard(key[0], key)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def holders(self) -> int:
        """Flows waiting on a push right now, over all entries."""
        return sum(entry.holders for entry in self._entries.values())

    def find(self, client: str, user: str, now: float) -> PendingPush | None:
        """The pending push of ``user`` at ``client`` that may still be joined."""
        key = (client, user.casefold())
        entry = self._entries.get(key)
        if entry is not None and entry.expires_at <= now:
            self._drop(key)
            return None
        return entry

    def joinable(self, client: str, user: str, now: float, origin: SignIn) -> PendingPush | None:
        """The pending push a new request from ``origin`` may join: same client, same user,
        provably the same sign-in (:meth:`SignIn.same_as`)."""
        entry = self.find(client, user, now)
        if entry is None or not origin.same_as(entry.origin):
            return None
        return entry

    def add(
        self,
        client: str,
        user: str,
        authentication_id: str,
        number: int | None,
        expires_at: float,
        origin: SignIn | None = None,
    ) -> PendingPush:
        """Register a push just started (replacing any older entry for the same user)."""
        key = (client, user.casefold())
        self._drop(key)
        if len(self._entries) >= self.max_entries:
            victim = self._by_client.victim()
            assert victim is not None  # noqa: S101 - a full map has a largest client
            self._drop(victim[1])
        entry = PendingPush(client, key[1], authentication_id, number, expires_at, 0, origin)
        self._entries[key] = entry
        self._by_client.add(client, key)
        return entry

    def hold(self, entry: PendingPush) -> None:
        """A flow starts waiting on ``entry``."""
        entry.holders += 1

    def release(self, entry: PendingPush) -> bool:
        """A flow stops waiting on ``entry``. True if no flow waits on it any more (the
        caller may then cancel the push)."""
        entry.holders = max(0, entry.holders - 1)
        return entry.holders == 0

    def remove(self, entry: PendingPush) -> None:
        """Forget ``entry`` (the push is final or cancelled) if it is still the registered
        one; a newer push for the same user stays."""
        key = (entry.client, entry.user)
        if self._entries.get(key) is entry:
            self._drop(key)

    def expire(self, now: float) -> None:
        """Drop entries whose time is up and that no flow waits on."""
        for key in [k for k, e in self._entries.items() if e.expires_at <= now and not e.holders]:
            self._drop(key)
