"""Whether a user may sign in, changed with everything that goes with it.

Disabling, blocking or resetting a user's devices also cancels their pending sign-ins and
ends their portal and admin sessions (through :class:`~backend.services.notices.AccountNotices`,
which also e-mails the user about a reset); unblocking deals with their open fraud reports (which
would otherwise keep their pushes muted). The CLI, the admin console and its fraud page all
come here, so no path does only half of it.
"""

from __future__ import annotations

from dataclasses import dataclass

from backend.domain.notices import ENDS_SESSIONS, AccountChange
from backend.domain.stepup import Proof
from backend.services.challenges import ChallengeService
from backend.services.context import Actor
from backend.services.fraud import FraudService
from backend.services.notices import AccountNotices
from backend.services.users import UserService
from backend.store.queries import UserRecord


@dataclass(frozen=True, slots=True)
class AccessChange:
    """What one change did, for the message shown to the administrator."""

    user: UserRecord
    cancelled: int = 0  # pending sign-ins cancelled
    sessions_ended: int = 0  # portal and admin sessions ended
    reviewed: tuple[int, ...] = ()  # open fraud reports marked reviewed
    removed_devices: tuple[str, ...] = ()


class AccessService:
    """Disable, enable, block, unblock, reset devices."""

    def __init__(
        self,
        users: UserService,
        challenges: ChallengeService,
        fraud: FraudService,
        notices: AccountNotices,
    ) -> None:
        self._users = users
        self._challenges = challenges
        self._fraud = fraud
        self._notices = notices

    async def disable(self, actor: Actor, name: str) -> AccessChange:
        """The user may no longer sign in (an administrator's decision, no reason needed)."""
        user = await self._users.set_disabled(actor, name, True)
        return await self._end_sign_ins(actor, AccessChange(user), AccountChange.DISABLED)

    async def enable(self, actor: Actor, name: str) -> AccessChange:
        """Undo :meth:`disable`."""
        return AccessChange(await self._users.set_disabled(actor, name, False))

    async def block(self, actor: Actor, name: str, reason: str = "") -> AccessChange:
        """No pushes and no sign-ins until unblocked (what a fraud report does)."""
        user = await self._users.set_blocked(actor, name, True, reason)
        return await self._end_sign_ins(actor, AccessChange(user), AccountChange.BLOCKED)

    async def unblock(self, actor: Actor, name: str, why: str = "on unblock") -> AccessChange:
        """Unblocking says the account is safe again: its open fraud reports are reviewed."""
        user = await self._users.set_blocked(actor, name, False)
        reviewed = await self._fraud.review_open_for_user(actor, user.name, why)
        return AccessChange(user, reviewed=reviewed)

    async def reset_devices(self, actor: Actor, proof: Proof, name: str) -> AccessChange:
        """Remove every device of the user; they must activate again."""
        removed = await self._users.reset_devices(actor, proof, name)
        user = await self._users.get(name)
        change = AccessChange(user, removed_devices=removed)
        return await self._end_sign_ins(actor, change, AccountChange.DEVICES_RESET)

    async def _end_sign_ins(
        self, actor: Actor, change: AccessChange, what: AccountChange
    ) -> AccessChange:
        user = change.user
        reason = ENDS_SESSIONS[what]
        cancelled = await self._challenges.cancel_pending_for_user(actor, user.name, reason)
        detail = " ".join(change.removed_devices)
        ended = await self._notices.changed(actor, user.id, what, detail)
        return AccessChange(user, cancelled, ended, change.reviewed, change.removed_devices)
