"""What several portal pages share: the signed-in user's own objects (404 for anyone else's),
QR codes as ``data:`` images, and how states read to people."""

from __future__ import annotations

import base64
import math
from datetime import datetime

from starlette.requests import Request

from backend import qr
from backend.domain.policy import Policy, resolve
from backend.errors import NotFound
from backend.services.challenges import ChallengeView
from backend.services.devices import DeviceRecord
from webportal.auth import SignedIn
from webportal.device_labels import push_state
from webportal.state import services_of

#: What a test push's state means to the person waiting for it.
PUSH_RESULTS = {
    "pending": "Waiting for your answer on the phone…",
    "approved": "Approved. Your phone answers sign-ins.",
    "denied": "Denied on the phone. Nothing else happened; send another test to approve one.",
    "fraud": "Reported as fraud on the phone. Your help desk gets a report and your account "
    "may be blocked until they unblock it.",
    "expired": "Timed out: the phone did not answer in time. Open the app and try again.",
    "cancelled": "Cancelled before the phone answered.",
}
#: The sign-in context of the portal's test pushes (the phone shows ``display``).
TEST_PUSH_CLIENT = "portal test push"


async def own_device(request: Request, me: SignedIn, device_id: str) -> DeviceRecord:
    """The signed-in user's device ``device_id``; anyone else's, a removed one or a missing one
    is the same :class:`NotFound` (no telling which ids exist)."""
    try:
        device = await services_of(request).devices.get(device_id[:64])
    except NotFound:
        raise NotFound("no such device") from None
    if device.user_id != me.user.id or device.state == "removed":
        raise NotFound("no such device")
    return device


async def own_challenge(request: Request, me: SignedIn, challenge_id: str) -> ChallengeView:
    """The signed-in user's challenge (expired when its time is up); else :class:`NotFound`."""
    view = await services_of(request).challenges.get(challenge_id[:64])
    if view.user_name.casefold() != me.user.name_key:
        raise NotFound("no such challenge")
    return view


async def policy_of(request: Request, me: SignedIn) -> Policy:
    """The signed-in user's effective policy (defaults, global values, their overrides)."""
    lines = await services_of(request).policies.show(me.user.name)
    return resolve({line.key: line.value for line in lines})


def qr_data_uri(data: str) -> str:
    """A PNG QR code of ``data`` as a ``data:`` URI (the CSP allows ``img-src data:``)."""
    return "data:image/png;base64," + base64.b64encode(qr.png_bytes(data)).decode("ascii")


def seconds_left(until: datetime, now: datetime) -> int:
    """Whole seconds from ``now`` to ``until`` (0 once passed); the page counts down from it,
    so the browser's own clock never matters."""
    return max(0, math.ceil((until - now).total_seconds()))


def push_summary(device: DeviceRecord) -> str:
    """How challenges reach this device, in words for its owner."""
    if device.kind == "oath":
        return "codes only (standard OATH app)"
    if device.kind == "pipush":
        return "push (privacyIDEA Authenticator)" if device.state == "active" else "-"
    state = push_state(device)
    return state.label if state is not None else "-"


KINDS = {"app": "OpenMFA app", "oath": "Standard OATH app", "pipush": "privacyIDEA Authenticator"}
STATES = {
    "pending": "waiting for its first use",
    "active": "active",
    "lost": "marked lost — it cannot approve anything",
}
