"""State values of challenge rounds (RFC 2865 5.24).

An Access-Challenge carries a State; the Access-Request that answers it must send it back.
Ours is 16 random octets (``secrets.token_bytes``) that mean nothing by themselves: the bridge
keeps what the round needs (the pending authentication, the attributes granted in the first
round, wrong answers so far) in memory under it, bound to the client and the user, for 300 s,
and forgets it the first time it is presented. A State replayed, presented by another
client or for another user, or too old, finds nothing and the request is rejected.

Kept in memory: a bridge that restarts forgets its rounds and the user starts over, which is
what gateways do anyway when a round fails. Bounded, fairly: one user holds at most
``max_per_user`` rounds at a client (a new one replaces that user's oldest), and a full
table gives up the oldest round *of the client holding the most*, so a client flooding
challenges evicts its own rounds, never another gateway's users' (:mod:`.shares`).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Final

from radius_bridge.model import ChallengeRound
from radius_bridge.protocol.shares import GroupIndex

STATE_BYTES: Final = 16
DEFAULT_LIFETIME: Final = 300.0
DEFAULT_MAX_ENTRIES: Final = 100_000
DEFAULT_MAX_PER_USER: Final = 16


def new_state() -> bytes:
    """A fresh State value: 16 octets from the OS's CSPRNG."""
    return secrets.token_bytes(STATE_BYTES)


@dataclass(frozen=True, slots=True)
class _Entry:
    client: str
    user: str  # casefolded
    round: ChallengeRound
    expires_at: float


class StateTable:
    """Pending challenge rounds by State value; single use; explicit clock."""

    def __init__(
        self,
        *,
        lifetime: float = DEFAULT_LIFETIME,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_per_user: int = DEFAULT_MAX_PER_USER,
    ) -> None:
        if lifetime <= 0 or max_entries < 1 or max_per_user < 1:
            raise ValueError(
                "lifetime must be positive and max_entries and max_per_user at least 1"
            )
        self.lifetime = lifetime
        self.max_entries = max_entries
        self.max_per_user = max_per_user
        self._entries: dict[bytes, _Entry] = {}  # insertion order == expiry order
        self._by_client: GroupIndex[str, bytes] = GroupIndex()
        self._by_user: GroupIndex[tuple[str, str], bytes] = GroupIndex()

    def __len__(self) -> int:
        return len(self._entries)

    def count(self, client: str, user: str | None = None) -> int:
        """Rounds recorded for ``client`` (and ``user``, when given)."""
        if user is None:
            return self._by_client.count(client)
        return self._by_user.count((client, user.casefold()))

    def put(self, state: bytes, client: str, user: str, round_: ChallengeRound, now: float) -> None:
        """Record ``round_`` under ``state`` for ``client`` and ``user`` until now + lifetime."""
        if len(state) < STATE_BYTES:
            raise ValueError(f"a State must be at least {STATE_BYTES} random octets")
        self.expire(now)
        self._remove(state)
        folded = user.casefold()
        if self._by_user.count((client, folded)) >= self.max_per_user:
            oldest = self._by_user.oldest((client, folded))
            assert oldest is not None  # noqa: S101 - the count says there is one
            self._remove(oldest)
        if len(self._entries) >= self.max_entries:
            victim = self._by_client.victim()
            assert victim is not None  # noqa: S101 - a full table has a largest client
            self._remove(victim[1])
        self._entries[state] = _Entry(client, folded, round_, now + self.lifetime)
        self._by_client.add(client, state)
        self._by_user.add((client, folded), state)

    def take(self, state: bytes, client: str, user: str, now: float) -> ChallengeRound | None:
        """The round recorded under ``state`` if it is still valid *and* belongs to this
        client and user; None otherwise. Removed either way: a State is good for one
        presentation, so a stolen or guessed one cannot be tried twice."""
        entry = self._remove(state)
        if entry is None or entry.expires_at <= now:
            return None
        if entry.client != client or entry.user != user.casefold():
            return None
        return entry.round

    def expire(self, now: float) -> None:
        """Drop rounds whose time is up."""
        entries = self._entries
        while entries:
            state = next(iter(entries))
            if entries[state].expires_at > now:
                break
            self._remove(state)

    def _remove(self, state: bytes) -> _Entry | None:
        entry = self._entries.pop(state, None)
        if entry is not None:
            self._by_client.discard(entry.client, state)
            self._by_user.discard((entry.client, entry.user), state)
        return entry
