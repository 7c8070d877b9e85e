"""CSRF protection: every POST (and any other unsafe method) under ``/portal`` and ``/admin``
carries the session's token (before sign-in: the token of the pre-session cookie, see
:mod:`webportal.sessions`), as the form field ``csrf_token`` or the ``X-CSRF-Token`` header
(for ``fetch``). :func:`webportal.routing.page` checks it before the handler runs, so no
handler can forget; a missing or wrong token is a 403 page and an audit row
(``request.refused`` / ``csrf-failed``, written by backend/api/problems.py).

Also refused: a request whose ``Origin`` header names another site (defence in depth beside
SameSite=Lax cookies).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.datastructures import FormData
from starlette.requests import Request

from backend.crypto import same
from backend.errors import BadRequest, CsrfFailed, PayloadTooLarge
from webportal.sessions import current_session, pre_session_nonce, pre_session_token
from webportal.state import area_of, services_of

FIELD = "csrf_token"
HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_FIELDS = 200


#: The request scope key where ``page(..., upload_bytes=N)`` allows one uploaded file.
UPLOAD_BYTES = "openmfa.upload_bytes"


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    # Absent (older browsers) or "null": browsers send "null" for every form POST from a page
    # served with Referrer-Policy: no-referrer, as ours are. The token decides then.
    if origin is None or origin == "null":
        return True
    allowed = {_origin(str(request.base_url))}
    public_url = services_of(request).settings.public_url
    if public_url:
        allowed.add(_origin(public_url))
    return origin.lower() in allowed


async def read_form(request: Request) -> FormData:
    """The request's form (parsed once and cached by Starlette), bounded in size: no files,
    at most ``max_body_bytes`` (a route made with ``page(..., upload_bytes=N)``: one file, and
    at most N bytes)."""
    upload = int(request.scope.get(UPLOAD_BYTES, 0))
    limit = max(services_of(request).settings.max_body_bytes, upload)
    declared = request.headers.get("content-length")
    if declared is None or not declared.isdigit():
        if "transfer-encoding" in request.headers:
            raise BadRequest("a form needs a Content-Length")
        declared = "0"
    if int(declared) > limit:
        raise PayloadTooLarge(f"the form may have at most {limit} bytes")
    return await request.form(max_files=1 if upload else 0, max_fields=MAX_FIELDS)


async def check_csrf(request: Request) -> None:
    """Raise :class:`~backend.errors.CsrfFailed` unless the request carries this session's
    token (and, if it says where it comes from, comes from this site)."""
    if not _same_origin(request):
        raise CsrfFailed("the form was sent from another site")
    session = await current_session(request)
    if session is not None:
        expected = session.csrf_secret
    else:
        nonce = pre_session_nonce(request)
        if nonce is None:
            raise CsrfFailed("the page expired (no session); reload it and try again")
        expected = pre_session_token(nonce, area_of(request))
    token = request.headers.get(HEADER)
    if token is None:
        value = (await read_form(request)).get(FIELD)
        token = value if isinstance(value, str) else None
    if not token:
        raise CsrfFailed("the form has no CSRF token; reload the page and try again")
    if not same(token, expected):
        raise CsrfFailed("the form's CSRF token does not match; reload the page and try again")
