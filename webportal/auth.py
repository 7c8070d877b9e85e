"""Who is signed in: :func:`require_user` (portal) and :func:`require_admin` (admin console).

Both raise :class:`SignInRequired` when the request has no suitable session;
:class:`~webportal.middleware.AreaMiddleware` answers it with a 303 to the area's sign-in page,
carrying a ``next`` that :func:`safe_next` only ever lets point back into the same area.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from urllib.parse import unquote, urlencode, urlsplit

from starlette.requests import Request

from backend.domain.devices import can_answer_push
from backend.domain.stepup import is_live_factor
from backend.errors import Forbidden
from backend.services.context import Actor
from backend.services.web_sessions import WebSessionRecord
from backend.store.queries import UserRecord
from webportal.sessions import current_session, end_session
from webportal.state import Area, area_of, services_of, web_actor


class SignInRequired(Exception):
    """Answered with ``303 See Other`` to ``location`` (a sign-in page)."""

    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.location = location


@dataclass(frozen=True, slots=True)
class SignedIn:
    """The signed-in user of this request, their session and their audit actor."""

    user: UserRecord
    session: WebSessionRecord
    actor: Actor


def safe_next(value: str | None, area: Area) -> str:
    """``value`` if it is a path inside ``/area/`` on this site, else the area's home.

    Refuses absolute and scheme-relative URLs (``//evil``), backslashes (which browsers treat
    as slashes), control characters, fragments and anything outside the area: no open
    redirect. A browser resolves dot segments, percent-encoded ones too (``/portal/%2e%2e/``),
    before it asks for the page, so the path is judged as it will be resolved: no ``.`` or
    ``..`` segment (nor ``..;``, which some proxies strip to ``..``) and no encoded slash,
    backslash or percent sign (a proxy that decodes once more would see them).
    """
    home = f"/{area}/"
    if not value or len(value) > 1024 or not value.startswith(home):
        return home
    if "//" in value or "\\" in value or "#" in value or _has_control(value):
        return home
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return home
    if _ENCODED_SEPARATOR.search(parts.path):
        return home
    decoded = unquote(parts.path)
    if _has_control(decoded) or not decoded.startswith(home):
        return home
    if any(segment.split(";")[0] in (".", "..") for segment in decoded.split("/")):
        return home
    if not (posixpath.normpath(decoded) + "/").startswith(home):
        return home
    return value


# %2f (/), %5c (\) and %25 (%): never in a page path of ours, but a proxy that decodes once
# more turns them into separators or into new escapes.
_ENCODED_SEPARATOR = re.compile(r"%(2f|5c|25)", re.IGNORECASE)


def _has_control(text: str) -> bool:
    return any(ord(c) < 0x21 or 0x7F <= ord(c) < 0xA0 for c in text)


def sign_in_location(request: Request, path: str = "sign-in") -> str:
    """The area's sign-in page, with ``next`` = this page when it was a GET."""
    area = area_of(request)
    target = f"/{area}/{path}"
    if request.method == "GET":
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if safe_next(here, area) == here and here != f"/{area}/":
            target += "?" + urlencode({"next": here})
    return target


async def require_user(request: Request) -> SignedIn:
    """The portal user of this request; :class:`SignInRequired` without one."""
    if area_of(request) != "portal":
        raise RuntimeError("require_user() is for portal pages; admin pages use require_admin()")
    session = await current_session(request)
    if session is None or session.user is None:
        raise SignInRequired(sign_in_location(request))
    if session.user.disabled:
        await end_session(request)
        raise SignInRequired(sign_in_location(request))
    user = session.user
    return SignedIn(user, session, web_actor(request, f"portal:{user.name}"))


@dataclass(frozen=True, slots=True)
class LiveFactors:
    """What ``user`` can prove a factor with: any live factor, and one that answers a push."""

    any: bool
    push: bool


async def live_factors(request: Request, user: UserRecord) -> LiveFactors:
    """The user's live factors: ``active`` authenticators. A ``pending`` one (activated,
    never used) proves nothing and counts as none, for a code and for a push alike."""
    devices = await services_of(request).devices.list_for_user(user.name)
    live = [d for d in devices if is_live_factor(d.kind, d.state)]
    return LiveFactors(bool(live), any(can_answer_push(d.kind, d.state) for d in live))


async def has_second_factor(request: Request, user: UserRecord) -> bool:
    """True when ``user`` has a live factor (see :func:`live_factors`)."""
    return (await live_factors(request, user)).any


async def require_admin(request: Request) -> SignedIn:
    """The administrator of this request, with their second factor checked.

    No session (or one still at the password step): :class:`SignInRequired`. An administrator
    without a live factor (none, or only pending ones; or removed since sign-in) reaches no
    console page: :class:`SignInRequired` to the enrolment page. A session whose user is no
    longer an administrator, or is disabled: ended, and 403.
    """
    if area_of(request) != "admin":
        raise RuntimeError("require_admin() is for admin pages; portal pages use require_user()")
    session = await current_session(request)
    if session is None or session.user is None:
        raise SignInRequired(sign_in_location(request))
    user = session.user
    if not user.is_admin or user.disabled or user.blocked:
        await end_session(request)
        raise Forbidden("this account may not use the admin console")
    if not session.second_factor_done:
        raise SignInRequired(sign_in_location(request, "sign-in/verify"))
    if not await has_second_factor(request, user):
        raise SignInRequired("/admin/sign-in/enrol")
    return SignedIn(user, session, web_actor(request, f"admin:{user.name}"))
