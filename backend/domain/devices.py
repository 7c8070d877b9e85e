"""What a device is, as far as every layer needs to know."""

from __future__ import annotations

#: States in which a device can answer: ``pending`` until its first round trip, then ``active``.
LIVE_STATES = ("pending", "active")
#: Platforms an app declares at activation; ``reference`` is the Python reference authenticator,
#: ``web`` the web app (/app/), whose push token is a Web Push subscription.
PLATFORMS = ("ios", "android", "reference", "web")


def can_answer_push(kind: str, state: str) -> bool:
    """Whether a live device can answer push challenges: our app from its activation, a
    privacyIDEA Authenticator token once it rolled out (``active``); OATH tokens never."""
    return kind == "app" or (kind == "pipush" and state == "active")
