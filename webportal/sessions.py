"""The session of the current request: its cookie, loading, starting and ending it.

One cookie per area: ``omfa_portal`` (``Path=/portal``) and ``omfa_admin`` (``Path=/admin``),
HttpOnly, SameSite=Lax, Secure over HTTPS, without an expiry (the server enforces the idle
and absolute timeouts, see :mod:`backend.services.web_sessions`). The browser never sends
the portal cookie to the admin console, and a portal session's value is refused there anyway
(sessions are looked up by kind).

Handlers never touch cookies: :func:`start_session` and :func:`end_session` leave the
``Set-Cookie`` line on ``request.state`` and :class:`~webportal.middleware.AreaMiddleware`
adds it to whatever response the handler returns.
"""

from __future__ import annotations

from starlette.requests import Request

from backend.services.web_sessions import WebSessionRecord
from webportal.security import is_https
from webportal.state import Area, area_of, client_address, services_of

_UNSET = object()


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
    session = await services_of(request).web_sessions.load(
        area, request.cookies.get(cookie_name(area))
    )
    request.state.web_session = session
    return session


def _remember(request: Request, session: WebSessionRecord | None, cookie_line: str) -> None:
    request.state.web_session = session
    request.state.web_cookie = cookie_line


async def ensure_session(request: Request) -> WebSessionRecord:
    """The current session, or a new anonymous one (a form's CSRF secret needs a session)."""
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
