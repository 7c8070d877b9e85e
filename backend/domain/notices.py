"""What a change to an account entails, and the e-mail that tells the user (pure, no I/O).

Two rules, one table each:

* :data:`ENDS_SESSIONS` — changes after which no web session opened before may go on: the
  password was replaced (someone else may have known the old one), a device was removed or
  marked lost (it may be in the wrong hands), the account was blocked or disabled, or an
  invitation was accepted (whoever holds the link now owns the account). Every portal and
  admin session of the user ends, except the session that made the change itself (a user
  removing their own lost phone stays signed in on the computer they used).
* :data:`MAILED` — changes to the user's second factors (and the password), which the user
  is told about by e-mail so that one they did not make is noticed.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum


class AccountChange(StrEnum):
    """A change to an account that ends sessions, is mailed to the user, or both."""

    APP_ADDED = "app_added"
    OATH_ADDED = "oath_added"
    PIPUSH_ADDED = "pipush_added"
    DEVICE_REMOVED = "device_removed"
    DEVICE_LOST = "device_lost"
    DEVICES_RESET = "devices_reset"
    PIN_SET = "pin_set"
    PASSWORD_SET = "password_set"  # noqa: S105 - the name of a change, not a password
    INVITATION_ACCEPTED = "invitation_accepted"
    BLOCKED = "blocked"
    FRAUD_BLOCKED = "fraud_blocked"
    DISABLED = "disabled"


#: Why the sessions ended, as the ``web.sessions_end`` audit row says it.
ENDS_SESSIONS: dict[AccountChange, str] = {
    AccountChange.PASSWORD_SET: "password reset",
    AccountChange.INVITATION_ACCEPTED: "invitation accepted",
    AccountChange.DEVICE_REMOVED: "device removed",
    AccountChange.DEVICE_LOST: "device lost",
    AccountChange.DEVICES_RESET: "reset-devices",
    AccountChange.BLOCKED: "block",
    AccountChange.FRAUD_BLOCKED: "fraud reported",
    AccountChange.DISABLED: "disable",
}

#: The mail's subject (after ``[issuer]``) and its "What:" line.
MAILED: dict[AccountChange, tuple[str, str]] = {
    AccountChange.APP_ADDED: (
        "A new authenticator app was added to your account",
        "a new authenticator app was linked to your account",
    ),
    AccountChange.OATH_ADDED: (
        "A new OATH code app was added to your account",
        "a new OATH token (an app showing 6-digit codes) was set up for your account",
    ),
    AccountChange.PIPUSH_ADDED: (
        "A new privacyIDEA Authenticator was added to your account",
        "a privacyIDEA Authenticator app was linked to your account",
    ),
    AccountChange.DEVICE_REMOVED: (
        "A device was removed from your account",
        "a device was removed: it can no longer approve your sign-ins",
    ),
    AccountChange.DEVICE_LOST: (
        "A device was marked lost on your account",
        "a device was marked lost: it can no longer approve your sign-ins",
    ),
    AccountChange.DEVICES_RESET: (
        "All your devices were removed",
        "every device of your account was removed; you must activate an app again",
    ),
    AccountChange.PIN_SET: (
        "Your approval PIN was changed",
        "the PIN that approvals ask for was set or changed",
    ),
    AccountChange.PASSWORD_SET: (
        "Your password was changed",
        "the password of your account was replaced",
    ),
}

_WHO = {
    "portal": "you, in the user portal",
    "admin": "an administrator in the admin console",
    "cli": "an administrator, on the server's command line",
    "device": "the device itself, through the app",
    "pipush": "the privacyIDEA Authenticator app",
    "system": "the server",
}


def describe_actor(actor: str) -> str:
    """Who made a change, in words a user understands (``admin:root`` -> "an administrator
    in the admin console (root)")."""
    kind, _, name = actor.partition(":")
    who = _WHO.get(kind)
    if who is None:
        return f"the server ({_plain(kind, 32)})"
    if kind in ("admin", "cli") and name:
        return f"{who} ({_plain(name, 64)})"
    return who


def _plain(text: str, limit: int) -> str:
    """``text`` on one line, without control characters, at most ``limit`` characters."""
    cleaned = "".join(ch if ch.isprintable() else " " for ch in text)
    return " ".join(cleaned.split())[:limit]


def compose_notice(
    change: AccountChange,
    *,
    user_name: str,
    display_name: str,
    when: datetime,
    actor: str,
    source: str,
    detail: str,
    issuer: str,
) -> tuple[str, str]:
    """The subject and plain-text body of the mail for ``change``.

    ``detail`` names the device concerned (id and name); it never holds, and the mail never
    carries, a seed, a code, an activation link or a PIN.
    """
    subject, what = MAILED[change]
    lines = [
        f"Hello {_plain(display_name or user_name, 128)},",
        "",
        f"a change was made to the sign-in methods of your {_plain(issuer, 64)} account "
        f"{_plain(user_name, 128)}:",
        "",
        f"  What:    {what}",
        *([f"  Device:  {_plain(detail, 200)}"] if detail else []),
        f"  When:    {when.strftime('%Y-%m-%d %H:%M:%S UTC')}",
        f"  By:      {describe_actor(actor)}",
        f"  From:    {_plain(source, 64) or 'unknown'}",
        "",
        "If this wasn't you, contact your help desk at once: someone may know your password",
        "or have access to your account.",
        "",
        f"-- {_plain(issuer, 64)} (this message is sent automatically; it holds no secret)",
    ]
    return f"[{_plain(issuer, 64)}] {subject}", "\n".join(lines) + "\n"
