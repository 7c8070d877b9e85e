"""Password sign-in shared by the portal and the admin console, with both rate limits.

Per user: the users' failure counters and lockout (policy ``otp_max_failures`` /
``otp_lockout_seconds``), the same ones codes and RADIUS passwords count toward, through
:meth:`UserService.verify_password`. Per source address: :mod:`backend.services.
address_limits`. Both live in the database, shared by every node. Both count the attempt
*before* the argon2id check and give it back when the password was right, so concurrent
guesses cannot all slip past either limit. Every failure leaves a ``web.sign_in`` audit
row saying why; the page only says what the person can act on (an unknown name and a wrong
password read the same).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from starlette.requests import Request

from backend.errors import (
    HashingBusy,
    InvalidName,
    OtpLocked,
    UnknownUser,
    UserBlocked,
    UserDisabled,
)
from backend.services import address_limits
from backend.services.context import Actor
from backend.store.queries import UserRecord
from webportal.state import area_of, client_address, services_of, web_actor

WRONG = "The user name or password is wrong."
MAX_FIELD = 1024
_CANNOT = "This account cannot sign in right now. Please contact your help desk."


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a sign-in step failed, as the page shows it, and the HTTP status to show it with."""

    message: str
    status: int


#: What a directory user sees when their directory refused them. AD reports disabled,
#: expired and must-change only for the right password, and a lock as our own lock would be
#: shown: nothing here says more than the local sign-in does. A wrong password, a user the
#: directory does not select and one of another directory all read as WRONG.
_DIRECTORY_REFUSALS: dict[str, Refusal] = {
    "password-expired": Refusal(
        "Your password has expired. Change it in your directory (for example when signing in "
        "to Windows), then sign in here with the new one.",
        403,
    ),
    "must-change": Refusal(
        "You must change your password first. Change it in your directory (for example when "
        "signing in to Windows), then sign in here with the new one.",
        403,
    ),
    "locked": Refusal(
        "Your account is locked in the directory. Try again later or contact your help desk.",
        403,
    ),
    "disabled": Refusal(_CANNOT, 403),
    "expired": Refusal(_CANNOT, 403),
    "not-permitted": Refusal(_CANNOT, 403),
    "directory-unavailable": Refusal(
        "The sign-in service cannot reach the directory right now. Try again in a few minutes.",
        503,
    ),
}


def anonymous_actor(request: Request) -> Actor:
    """``web:portal`` / ``web:admin`` with the client's address."""
    return web_actor(request, f"web:{area_of(request)}")


def _window(request: Request) -> timedelta:
    return timedelta(seconds=services_of(request).settings.web_sign_in_address_window_seconds)


async def address_refusal(request: Request) -> Refusal | None:
    """A refusal while this address has failed too often, else ``None``."""
    services = services_of(request)
    now = services.clock()
    until = await address_limits.blocked_until(
        services.db,
        client_address(request),
        now,
        services.settings.web_sign_in_address_limit,
        _window(request),
    )
    return None if until is None else _address_limited(until, now)


def _address_limited(until: datetime, now: datetime) -> Refusal:
    minutes = max(1, math.ceil((until - now).total_seconds() / 60))
    return Refusal(
        f"Too many failed sign-ins from your network. Try again in {minutes} minute"
        + ("s." if minutes != 1 else "."),
        429,
    )


async def record_failure(request: Request, user_name: str, reason: str) -> None:
    """Count a failed step against the address and audit it (``web.sign_in`` / ``reject``)."""
    services = services_of(request)
    await address_limits.count_failure(
        services.db, client_address(request), services.clock(), _window(request)
    )
    await audit(request, user_name, "reject", reason)


async def audit(request: Request, user_name: str, result: str, detail: str) -> None:
    """One ``web.sign_in`` row for this area."""
    await services_of(request).audit.record(
        anonymous_actor(request),
        "web.sign_in",
        result,
        user_name=user_name[:128].casefold(),
        detail=f"{area_of(request)}: {detail}",
    )


async def claim_address(request: Request) -> Refusal | datetime:
    """Count this attempt against the address before it is checked: the time it was counted
    at (for :func:`release_address` if it succeeds), or the refusal while the address waits."""
    services = services_of(request)
    now = services.clock()
    until = await address_limits.claim(
        services.db,
        client_address(request),
        now,
        services.settings.web_sign_in_address_limit,
        _window(request),
    )
    return now if until is None else _address_limited(until, now)


async def release_address(request: Request, claimed: datetime) -> None:
    """Give back an attempt :func:`claim_address` counted: it succeeded."""
    await address_limits.release(services_of(request).db, client_address(request), claimed)


async def check_password(request: Request, name: str, password: str) -> UserRecord | Refusal:
    """The user when ``password`` is theirs, else the refusal to show (audited, counted).

    Unknown, disabled, blocked and password-less users cost the same argon2id check as a
    wrong password (:meth:`UserService.verify_password`), so the time says nothing either.
    A user from a directory is checked by a bind to it, never against a stored hash.
    """
    name = name.strip()
    if not name or not password:
        await audit(request, name, "reject", "missing-field")
        return Refusal("Enter your user name and password.", 400)
    claimed = await claim_address(request)
    if isinstance(claimed, Refusal):
        await audit(request, name, "reject", "address-limited")
        return claimed
    if len(name) > 128 or len(password) > MAX_FIELD:
        await audit(request, name[:128], "reject", "too-long")
        return Refusal(WRONG, 401)
    services = services_of(request)
    try:
        result = await services.users.verify_password(anonymous_actor(request), name, password)
    except HashingBusy:  # not the person's failure: their attempt is not spent
        await release_address(request, claimed)
        await audit(request, name, "reject", "busy")
        raise
    except (UnknownUser, InvalidName):
        await audit(request, name, "reject", "unknown-user")
        return Refusal(WRONG, 401)
    except (UserDisabled, UserBlocked) as exc:
        await audit(request, name, "reject", exc.type)
        return Refusal(_CANNOT, 403)
    except OtpLocked:
        await audit(request, name, "reject", "locked")
        return Refusal(
            "Too many failed attempts for this account; it is locked for a while. "
            "Try again later or contact your help desk.",
            429,
        )
    if not result.accepted:
        if result.reason == "directory-unavailable":  # not the person's failure
            await release_address(request, claimed)
        await audit(request, name, "reject", result.reason)
        return _DIRECTORY_REFUSALS.get(result.reason, Refusal(WRONG, 401))
    await release_address(request, claimed)
    return await services.users.get(result.user_name)
