"""The session of the current request: its cookie, loading, starting and ending it.

One cookie per area: ``omfa_portal`` (``Path=/portal``) and ``omfa_admin`` (``Path=/admin``),
HttpOnly, SameSite=Lax, Secure over HTTPS, without an expiry (the server enforces the idle
and absolute timeouts, see :mod:`backend.services.web_sessions`). The browser never sends
the portal cookie to the admin console, and a portal session's value is refused there anyway
(sessions are looked up by kind).

Before sign-in no session row exists (a page view must not cost a database write): the cookie
then holds ``pre.<random>``, a pre-session value, and the CSRF token of the sign-in form is
derived from it (:func:`csrf_token`). It is replaced by a session cookie at sign-in. The
value is random and HttpOnly, and the cookie SameSite=Lax: another site can neither read it
nor send a form with the token that matches it.

Handlers never touch cookies: :func:`start_session` and :func:`end_session` leave the
``Set-Cookie`` line on ``request.state`` and :class:`~webportal.middleware.AreaMiddleware`
adds it to whatever response the handler returns.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

from starlette.requests import Request

from backend.services.web_sessions import WebSessionRecord
from webportal.security import is_https
from webportal.state import Area, area_of, client_address, services_of

_UNSET = object()
PRE_SESSION = "pre."
_PRE_NONCE = re.compile(r"[A-Za-z0-9_-]{43}")


def cookie_name(area: Area) -> str:
    """``omfa_portal`` or ``omfa_admin``."""
    return f"omfa_{area}"


def _cookie_line(request: Request, value: str, clear: bool = False) -> str:
    area = area_of(request)
    parts = [f"{cookie_name(area)}={value}", f"Path=/{area}", "HttpOnly", "SameSite=Lax"]
    if clear:
        parts += ["Max-Age=0", "Expires=Thu, 01 Jan 1970 00:00:00 GMT"]
    if is_https(request.scope):
        parts.append("Secure")
    return "; ".join(parts)


async def current_session(request: Request) -> WebSessionRecord | None:
    """The live session of this area named by the request's cookie (loaded once a request)."""
    cached = getattr(request.state, "web_session", _UNSET)
    if cached is not _UNSET:
        return cached if isinstance(cached, WebSessionRecord) else None
    area = area_of(request)
    value = request.cookies.get(cookie_name(area))
    session = None
    if value and not value.startswith(PRE_SESSION):
        session = await services_of(request).web_sessions.load(area, value)
    request.state.web_session = session
    return session


def pre_session_token(nonce: str, area: Area) -> str:
    """The CSRF token of forms shown before sign-in, for the pre-session value ``nonce``.

    Keyed by the nonce, which only the browser holding the cookie knows; the area is part of
    it, so a portal token does not pass in the admin console. It differs from the cookie
    value, so a page showing the token does not show the cookie.
    """
    mac = hmac.new(nonce.encode(), f"openmfa-csrf:{area}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).decode().rstrip("=")


def pre_session_nonce(request: Request) -> str | None:
    """The pre-session value of this request's cookie (set by :func:`csrf_token`), if any."""
    fresh = getattr(request.state, "pre_session_nonce", None)
    if isinstance(fresh, str):
        return fresh
    value = request.cookies.get(cookie_name(area_of(request))) or ""
    nonce = value.removeprefix(PRE_SESSION)
    if value.startswith(PRE_SESSION) and _PRE_NONCE.fullmatch(nonce):
        return nonce
    return None


async def csrf_token(request: Request) -> str:
    """The CSRF token for the forms of this page: the session's, or before sign-in one
    derived from the pre-session cookie (set now if the browser has none). No row is
    written: the session row is made at sign-in."""
    session = await current_session(request)
    if session is not None:
        return session.csrf_secret
    nonce = pre_session_nonce(request)
    if nonce is None:
        nonce = secrets.token_urlsafe(32)
        request.state.pre_session_nonce = nonce
        request.state.web_cookie = _cookie_line(request, PRE_SESSION + nonce)
    return pre_session_token(nonce, area_of(request))


def _remember(request: Request, session: WebSessionRecord | None, cookie_line: str) -> None:
    request.state.web_session = session
    request.state.web_cookie = cookie_line


async def ensure_session(request: Request) -> WebSessionRecord:
    """The current session, or a new anonymous one (for a flash message after sign-out: only
    after an unsafe request that passed the CSRF check, never for a page view)."""
    session = await current_session(request)
    if session is not None:
        return session
    cookie, session = await services_of(request).web_sessions.create(
        area_of(request), client_address(request)
    )
    _remember(request, session, _cookie_line(request, cookie))
    return session


async def start_session(
    request: Request, user_id: int, second_factor_done: bool = False, keep_started: bool = False
) -> WebSessionRecord:
    """Sign in: a new session (new cookie value, new CSRF secret) replaces the current one."""
    old = await current_session(request)
    cookie, session = await services_of(request).web_sessions.rotate(
        area_of(request),
        old,
        user_id,
        second_factor_done=second_factor_done,
        source=client_address(request),
        keep_started=keep_started,
    )
    _remember(request, session, _cookie_line(request, cookie))
    return session


async def end_session(request: Request) -> None:
    """Sign out: delete the session row and clear the cookie."""
    session = await current_session(request)
    if session is not None:
        await services_of(request).web_sessions.destroy(session.id_hash)
    _remember(request, None, _cookie_line(request, "", clear=True))


async def flash(request: Request, message: str, category: str = "info") -> None:
    """Show ``message`` on the next page this browser sees (after a redirect).

    ``category``: ``info``, ``success``, ``warning`` or ``error``.
    """
    session = await ensure_session(request)
    await services_of(request).web_sessions.add_flash(session.id_hash, category, message)
