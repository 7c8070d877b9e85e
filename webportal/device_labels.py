"""How a device's platform and push state read to people, the same in the portal's "My
devices" and the admin console's user page."""

from __future__ import annotations

from dataclasses import dataclass

from backend.services.devices import DeviceRecord

#: The ``platform`` an app declared at activation, in words.
PLATFORM_LABELS = {
    "web": "Web app (browser)",
    "ios": "iPhone / iPad",
    "android": "Android",
    "reference": "reference authenticator",
}


def platform_label(platform: str) -> str:
    """``web`` -> "Web app (browser)"; unknown values are shown as stored."""
    return PLATFORM_LABELS.get(platform, platform)


@dataclass(frozen=True, slots=True)
class PushState:
    """One of three states of an app's push channel: ``ok`` (a subscription or token is
    registered and not known dead), ``lost`` (the push service called it dead: the app polls
    until it registers a new one) or ``none`` (never registered or cleared: it polls)."""

    state: str
    label: str
    error: str = ""


def push_state(device: DeviceRecord) -> PushState | None:
    """The push state of one of our apps; ``None`` for other kinds (they never get pushes)."""
    if device.kind != "app":
        return None
    if not device.push_token:
        return PushState("none", "no push (polling)")
    if device.push_status == "invalid":
        return PushState("lost", "push lost — open the app to renew", device.push_error)
    return PushState("ok", "push on")
