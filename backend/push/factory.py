"""Build the push transports from the settings, once, at start.

A transport whose settings are all empty is *not configured*: its devices are served by
polling, and :func:`push_summary` says so in the start-up log. A transport that is configured
half-way (a key file without its key id, say), or whose key / service-account file is
unreadable or malformed, is a :class:`~backend.errors.ConfigurationError` raised here, so the
server refuses to start instead of failing at the first push.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from backend.config import Settings
from backend.errors import ConfigurationError
from backend.push.base import PushTransport
from backend.push.dispatcher import close_transports

if TYPE_CHECKING:
    from backend.push.vapid import VapidKey

APNS_REQUIRED = ("apns_key_file", "apns_key_id", "apns_team_id", "apns_topic")
APNS_OPTIONAL = ("apns_url", "apns_ca_file")
FCM_OPTIONAL = ("fcm_url", "fcm_ca_file")


def _set(settings: Settings, names: tuple[str, ...]) -> list[str]:
    return [name for name in names if getattr(settings, name) not in (None, "")]


def apns_configured(settings: Settings) -> bool:
    """True when APNs is to be used; a half-done APNs configuration is an error."""
    given = _set(settings, APNS_REQUIRED)
    if not given:
        extra = _set(settings, APNS_OPTIONAL)
        if extra:
            raise ConfigurationError(
                f"{', '.join(extra)} set without the APNs key: also set "
                + ", ".join(APNS_REQUIRED)
                + " (docs/push.md)"
            )
        return False
    missing = [name for name in APNS_REQUIRED if name not in given]
    if missing:
        raise ConfigurationError(
            f"APNs is half configured: {', '.join(given)} set but {', '.join(missing)} "
            "missing (docs/push.md)"
        )
    return True


def fcm_configured(settings: Settings) -> bool:
    """True when FCM is to be used (a service-account file is set)."""
    if settings.fcm_service_account_file is not None:
        return True
    extra = _set(settings, FCM_OPTIONAL)
    if extra:
        raise ConfigurationError(
            f"{', '.join(extra)} set without fcm_service_account_file (docs/push.md)"
        )
    return False


def push_summary(settings: Settings) -> list[str]:
    """One line per transport for the start-up log: on (and where to), or not configured."""
    lines = []
    if apns_configured(settings):
        where = settings.apns_url or (
            "Apple's development endpoint" if settings.apns_sandbox else "Apple's endpoint"
        )
        lines.append(f"APNs on: topic {settings.apns_topic}, {where}")
    else:
        lines.append("APNs not configured: iOS devices are served by polling")
    if fcm_configured(settings):
        where = settings.fcm_url or "https://fcm.googleapis.com"
        lines.append(f"FCM on: {where}, {settings.fcm_workers} worker thread(s)")
    else:
        lines.append("FCM not configured: Android devices are served by polling")
    if settings.webpush_enabled:
        from backend.push.webpush import subject_of

        line = (
            f"Web Push on: VAPID subject {subject_of(settings)}, "
            f"{len(settings.webpush_allowed_origins)} allowed push service origin(s)"
        )
        if not settings.resolved_public_url.startswith("https://"):
            line += "; the web app needs HTTPS: set public_url to its https:// address"
        lines.append(line)
    else:
        lines.append("Web Push off (webpush_enabled = false): web devices are served by polling")
    return lines


async def build_transports(
    settings: Settings, vapid: VapidKey | None = None
) -> dict[str, PushTransport]:
    """The configured transports by name ("apns", "fcm", "webpush"); raises
    ConfigurationError (and closes whatever it built before the failure). Web Push is built
    when it is enabled and the server's VAPID key is given (it lives in the database)."""
    transports: dict[str, PushTransport] = {}
    try:
        if apns_configured(settings):
            transports["apns"] = _apns(settings)
        if fcm_configured(settings):
            transports["fcm"] = _fcm(settings)
        if settings.webpush_enabled and vapid is not None:
            transports["webpush"] = _webpush(settings, vapid)
    except BaseException as exc:
        await close_transports(transports)
        if isinstance(exc, (OSError, ValueError)):
            # The transports raise ConfigurationError themselves; anything else still has
            # to stop the start with one clear line.
            raise ConfigurationError(f"the push configuration is unusable: {exc}") from exc
        raise
    return transports


def _apns(settings: Settings) -> PushTransport:
    # Imported here: aioapns and h2 are loaded only where APNs is configured.
    from backend.push.apns import ApnsTransport

    return ApnsTransport.from_settings(settings)


def _fcm(settings: Settings) -> PushTransport:
    # Imported here: pyfcm, requests and google-auth are loaded only where FCM is configured.
    from backend.push.fcm import FcmTransport

    return FcmTransport.from_settings(settings)


def _webpush(settings: Settings, vapid: VapidKey) -> PushTransport:
    from backend.push.webpush import WebPushTransport

    return WebPushTransport.from_settings(settings, vapid)
