"""Fair shares of the bridge's bounded tables, so one RADIUS client cannot starve the others.

Each table the bridge bounds is one pool for every client: requests in progress
(``max_held``), challenge States, pending pushes. A single client flooding -- a gateway gone
wrong, a user's script, or a spoofed source where the client does not require
Message-Authenticator -- used to take the whole pool, and every other gateway's requests were
dropped (or their States evicted) until it stopped. Two tools, both O(1) per request:

* :class:`HeldShares` admits a new request to the held pool. A client below its fair share
  (the pool divided by the clients holding requests right now, itself included, and by at
  least two) may always take a slot while one is free; a client at or above it may only
  take one while more than a *headroom* (a quarter of the pool) stays free. So a flood takes
  at most three quarters, and a client arriving later always finds room up to its share.
  Each user of a client may hold at most ``per_user`` requests, so one name flooded does
  not crowd out the others.
* :class:`GroupIndex` remembers which entries of an evicting table (States, pending pushes)
  belong to which client, oldest first, so that a full table evicts the oldest entry *of the
  client holding the most*, never another client's.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Final, Generic, TypeVar

#: Held requests of one user at one client at most (retransmissions are absorbed before
#: they count; a person signs in once or twice at a time).
DEFAULT_PER_USER: Final = 16

G = TypeVar("G", bound=Hashable)
K = TypeVar("K", bound=Hashable)


class HeldShares:
    """Admission to the pool of requests in progress (see the module docstring)."""

    def __init__(self, capacity: int, *, per_user: int = DEFAULT_PER_USER) -> None:
        if capacity < 1 or per_user < 1:
            raise ValueError("capacity and per_user must be at least 1")
        self.capacity = capacity
        self.per_user = per_user
        self.headroom = max(1, capacity // 4)
        self.total = 0
        self._clients: dict[str, int] = {}
        self._users: dict[tuple[str, str], int] = {}

    def held(self, client: str) -> int:
        """Requests ``client`` holds now."""
        return self._clients.get(client, 0)

    def fair_share(self, client: str) -> int:
        """The pool divided by the clients holding requests, ``client`` included, and by at
        least two: a client alone still leaves room for the next one to arrive."""
        active = len(self._clients) + (client not in self._clients)
        return max(1, self.capacity // max(2, active))

    def claim(self, client: str, user: str) -> bool:
        """Take a slot for a request of ``user`` at ``client``; False when refused."""
        if self.total >= self.capacity:
            return False
        key = (client, user.casefold())
        if self._users.get(key, 0) >= self.per_user:
            return False
        held = self._clients.get(client, 0)
        if held >= self.fair_share(client) and self.capacity - self.total <= self.headroom:
            return False
        self.total += 1
        self._clients[client] = held + 1
        self._users[key] = self._users.get(key, 0) + 1
        return True

    def release(self, client: str, user: str) -> None:
        """Give back a slot taken by :meth:`claim` with the same arguments."""
        key = (client, user.casefold())
        count = self._users.get(key, 0)
        if count == 0:
            return  # never claimed: nothing to give back
        if count == 1:
            del self._users[key]
        else:
            self._users[key] = count - 1
        held = self._clients[client]
        if held == 1:
            del self._clients[client]
        else:
            self._clients[client] = held - 1
        self.total -= 1


class GroupIndex(Generic[G, K]):
    """Keys of a table grouped (by client, or by client and user), each group oldest first."""

    def __init__(self) -> None:
        self._groups: dict[G, dict[K, None]] = {}

    def add(self, group: G, key: K) -> None:
        """Record ``key`` as the newest of ``group``."""
        self._groups.setdefault(group, {})[key] = None

    def discard(self, group: G, key: K) -> None:
        """Forget ``key`` (a no-op when it is not recorded)."""
        members = self._groups.get(group)
        if members is None or key not in members:
            return
        del members[key]
        if not members:
            del self._groups[group]

    def count(self, group: G) -> int:
        """Keys recorded for ``group``."""
        return len(self._groups.get(group, ()))

    def oldest(self, group: G) -> K | None:
        """The oldest key of ``group``, if any."""
        members = self._groups.get(group)
        return None if not members else next(iter(members))

    def victim(self) -> tuple[G, K] | None:
        """The oldest key of the largest group (ties: the group recorded first)."""
        if not self._groups:
            return None
        group = max(self._groups, key=lambda name: len(self._groups[name]))
        return group, next(iter(self._groups[group]))
