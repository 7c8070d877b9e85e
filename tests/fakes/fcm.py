"""A local stand-in for Google's OAuth token endpoint and FCM's HTTP v1 ``messages:send``.

The real ``pyfcm`` / ``google-auth`` code talks to it over HTTPS on 127.0.0.1, so everything
on the wire is checked the way Google would see it:

* ``POST /token`` (the service account's ``token_uri``): a JWT-bearer grant whose assertion
  must be RS256-signed by the test service account's key (``kid`` = its ``private_key_id``),
  with ``iss`` = ``client_email``, ``aud`` = the ``token_uri``, a scope that includes
  ``firebase.messaging`` and a lifetime of at most an hour. It answers a bearer token.
* ``POST /v1/projects/<project>/messages:send``: ``Authorization: Bearer <a token it
  issued>``, a JSON body with exactly the fields OpenMFA may send (see ``_check_message``).

Anything else is recorded in :attr:`FcmFake.violations` (and answered with an error); a test
calls :meth:`FcmFake.assert_clean` to fail on them. Errors can be injected per token
(:meth:`FcmFake.fail_token`), for the next sends (:meth:`FcmFake.fail_next`) and for the
token exchange (:meth:`FcmFake.fail_token_exchange`); :meth:`FcmFake.slow` delays answers.

Usage::

    fake = FcmFake(tmp_path)
    await fake.start()
    account = make_service_account(tmp_path, fake.token_uri)
    fake.accept_service_account(account)
    transport = FcmTransport(account, url=fake.url, ca_file=fake.ca_file)
    ...
    await fake.stop()
    fake.assert_clean()
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.fakes.base import Reply as _Reply
from tests.fakes.base import StreamPushFake
from tests.fakes.tls import TlsFiles

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_PATH = "/token"
TEST_PROJECT = "openmfa-test"
_SEND_PATH = re.compile(r"^/v1/projects/([^/]+)/messages:send$")
_DURATION = re.compile(r"^\d+(\.\d{1,9})?s$")
_FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
_CANONICAL = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
# Reasons Google reports as google.rpc.ErrorInfo (authentication), not as an FcmError code.
_AUTH_REASONS = {"ACCESS_TOKEN_EXPIRED", "ACCESS_TOKEN_TYPE_UNSUPPORTED", "CREDENTIALS_MISSING"}
_MAX_BODY = 1 << 20


# -- test key material --------------------------------------------------------------------


def make_service_account(
    directory: Path,
    token_uri: str,
    *,
    project_id: str = TEST_PROJECT,
    name: str = "service-account.json",
) -> Path:
    """Write a Firebase service-account key file (Google's format, a fresh RSA key) whose
    ``token_uri`` is ``token_uri``; return its path."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    email = f"firebase-adminsdk-test@{project_id}.iam.gserviceaccount.com"
    info = {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": secrets.token_hex(20),
        "private_key": pem,
        "client_email": email,
        "client_id": str(secrets.randbelow(10**21)),
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": f"https://www.googleapis.com/robot/v1/metadata/x509/{email}",
        "universe_domain": "googleapis.com",
    }
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(json.dumps(info, indent=2))
    return path


# -- what the fake records ----------------------------------------------------------------


@dataclass
class FcmRequest:
    """One ``messages:send`` as received (recorded on arrival, ``status`` once answered)."""

    project: str
    token: str  # the device registration token in the body ("" when missing)
    body: dict[str, Any]
    headers: dict[str, str]
    status: int = 0


@dataclass
class TokenRequest:
    """One token exchange: the verified assertion's header and claims, and the answer."""

    header: dict[str, Any]
    claims: dict[str, Any]
    status: int = 0
    access_token: str = ""


@dataclass
class _Failure:
    status: int
    reason: str
    retry_after: str | None = None
    field: str | None = None


@dataclass
class _Account:
    client_email: str
    project_id: str
    private_key_id: str
    public_key: rsa.RSAPublicKey
    token_uri: str


@dataclass
class _Issued:
    account: _Account
    expires: float
    expired: bool = False


class FcmFake(StreamPushFake[FcmRequest]):
    """Google's token endpoint and FCM ``messages:send`` on https://127.0.0.1:<port>; see the
    module docstring. The shape follows :class:`tests.fakes.apns.ApnsFake`."""

    label = "FCM fake"
    tls_folder = "fcm-fake-tls"

    def __init__(
        self, directory: Path, *, tls: TlsFiles | None = None, token_lifetime: int = 3600
    ) -> None:
        super().__init__(directory, tls)
        #: ``expires_in`` of the tokens it issues
        self.token_lifetime = token_lifetime
        self.token_requests: list[TokenRequest] = []
        #: :attr:`delay` for the token endpoint
        self.token_delay = 0.0
        self._accounts: dict[str, _Account] = {}
        self._issued: dict[str, _Issued] = {}
        self._token_failures: dict[str, _Failure] = {}
        self._next_failures: list[_Failure] = []
        self._exchange_failures: list[_Failure] = []
        self._holding: set[str] = set()
        self._held = 0
        self._released: asyncio.Event | None = None
        self._message_ids = 0

    # -- life cycle --------------------------------------------------------------------------

    @property
    def token_uri(self) -> str:
        """The ``token_uri`` to put into a service-account file."""
        if not self.url:
            raise RuntimeError("start() the fake first")
        return f"{self.url}{TOKEN_PATH}"

    @property
    def open_connections(self) -> int:
        """HTTP connections currently open."""
        return len(self._writers)

    async def start(self) -> None:
        """Listen on an ephemeral port of 127.0.0.1 with TLS."""
        self._released = asyncio.Event()
        await self._listen()

    async def stop(self, *, check: bool = True, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Drop held answers, close every connection and the listener; with ``check``, raise
        on violations."""
        await super().stop(check=check, timeout=timeout)

    # -- behaviour ---------------------------------------------------------------------------

    def accept_service_account(self, path: Path) -> None:
        """Trust the key in a service-account file written by :func:`make_service_account`."""
        info = json.loads(Path(path).read_text())
        key = serialization.load_pem_private_key(info["private_key"].encode(), password=None)
        assert isinstance(key, rsa.RSAPrivateKey)
        self._accounts[info["client_email"]] = _Account(
            client_email=info["client_email"],
            project_id=info["project_id"],
            private_key_id=info["private_key_id"],
            public_key=key.public_key(),
            token_uri=info["token_uri"],
        )

    def service_account(self, directory: Path, name: str = "service-account.json") -> Path:
        """:func:`make_service_account` for this fake's ``token_uri``, already accepted."""
        path = make_service_account(directory, self.token_uri, name=name)
        self.accept_service_account(path)
        return path

    def fail_token(
        self, token: str, status: int, reason: str, retry_after: str | None = None
    ) -> None:
        """Answer every send to device ``token`` with ``status`` / FCM error ``reason``."""
        self._token_failures[token] = _Failure(status, reason, retry_after)

    def fail_next(
        self,
        n: int,
        status: int,
        reason: str,
        retry_after: str | None = None,
        *,
        field: str | None = None,
    ) -> None:
        """Answer the next ``n`` sends (any token) with an error. ``reason`` is the FCM error
        code (``UNREGISTERED``, ``QUOTA_EXCEEDED``, ...) or, for a 401, the ErrorInfo reason
        (``ACCESS_TOKEN_EXPIRED``). ``field`` names the offending field of an
        ``INVALID_ARGUMENT`` (default ``message.token``: a bad registration token)."""
        self._next_failures.extend(_Failure(status, reason, retry_after, field) for _ in range(n))

    def fail_token_exchange(
        self, n: int, status: int, error: str, retry_after: str | None = None
    ) -> None:
        """Answer the next ``n`` token exchanges with an OAuth ``error`` (``invalid_grant``,
        ``temporarily_unavailable``, ...)."""
        self._exchange_failures.extend(_Failure(status, error, retry_after) for _ in range(n))

    def clear_failures(self) -> None:
        """Forget every injected failure."""
        self._token_failures.clear()
        self._next_failures.clear()
        self._exchange_failures.clear()

    def expire_tokens(self) -> None:
        """Make every token issued so far expired: sends with it get 401
        ``ACCESS_TOKEN_EXPIRED`` (which is not a violation)."""
        for issued in self._issued.values():
            issued.expired = True

    def hold(self, *, token_exchange: bool = False) -> None:
        """Keep answers to ``messages:send`` (or to the token endpoint) from now on back until
        :meth:`release` or :meth:`stop` (a hung service). Requests are still recorded."""
        self._holding.add(TOKEN_PATH if token_exchange else "send")

    def release(self) -> None:
        """Send every held answer (to clients still listening) and stop holding."""
        self._holding.clear()
        if self._released is not None:
            self._released.set()
            self._released = asyncio.Event()

    @property
    def held(self) -> int:
        """Answers currently held back."""
        return self._held

    # -- HTTP/1.1 over TLS (h11)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = self._opened(writer)
        self._notify()
        try:
            await self._serve_h11(
                reader,
                writer,
                max_event_size=_MAX_BODY,
                max_body=_MAX_BODY,
                headers=[("content-type", "application/json; charset=UTF-8")],
            )
        except (h11.ProtocolError, ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass  # the client went away or spoke garbage; nothing to answer
        except asyncio.CancelledError:
            pass  # stop()
        finally:
            await self._closed(writer, task)

    async def _dispatch(self, request: h11.Request, body: bytes) -> _Reply:
        target = request.target.decode("ascii", "replace")
        headers = {k.decode().lower(): v.decode("latin-1") for k, v in request.headers}
        if request.method != b"POST":
            self._violation(f"{request.method.decode()} {target}: only POST is used")
            return _google_error(405, "METHOD_NOT_ALLOWED")
        if urlsplit(target).path == TOKEN_PATH:
            await self._pause(self.token_delay, TOKEN_PATH)
            return await self._token(headers, body)
        match = _SEND_PATH.match(urlsplit(target).path)
        if match is None:
            self._violation(f"POST {target}: no such endpoint")
            return _google_error(404, "NOT_FOUND")
        return await self._send(match.group(1), headers, body)

    async def _pause(self, delay: float, kind: str) -> None:
        """Wait ``delay`` seconds, then while answers of ``kind`` are held; both end at stop."""
        assert self._stopping is not None
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
        if kind not in self._holding or self._stopping.is_set():
            return
        self._held += 1
        self._notify()
        try:
            assert self._released is not None
            released = asyncio.ensure_future(self._released.wait())
            stopping = asyncio.ensure_future(self._stopping.wait())
            try:
                await asyncio.wait({released, stopping}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                released.cancel()
                stopping.cancel()
        finally:
            self._held -= 1
            self._notify()

    # -- the token endpoint

    async def _token(self, headers: dict[str, str], body: bytes) -> _Reply:
        content_type = headers.get("content-type", "")
        if not content_type.startswith("application/x-www-form-urlencoded"):
            return self._grant_violation(f"token request with content-type {content_type!r}")
        form = parse_qs(body.decode("utf-8", "replace"), strict_parsing=False)
        if form.get("grant_type") != [JWT_BEARER]:
            return self._grant_violation(f"grant_type {form.get('grant_type')!r}")
        assertions = form.get("assertion", [])
        if len(assertions) != 1:
            return self._grant_violation("no single assertion in the token request")
        assertion = assertions[0]
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            return self._grant_violation(f"the assertion is not a JWT: {exc}")
        account = self._accounts.get(str(unverified.get("iss")))
        if account is None:
            return self._grant_violation(f"assertion iss {unverified.get('iss')!r} is unknown")
        record = TokenRequest(header=header, claims=unverified)
        self.token_requests.append(record)
        problems = []
        if header.get("alg") != "RS256":
            problems.append(f"alg {header.get('alg')!r}, expected RS256")
        if header.get("typ") != "JWT":
            problems.append(f"typ {header.get('typ')!r}, expected JWT")
        if header.get("kid") != account.private_key_id:
            problems.append("kid is not the key file's private_key_id")
        try:
            claims = jwt.decode(
                assertion,
                account.public_key,
                algorithms=["RS256"],
                audience=account.token_uri,
                issuer=account.client_email,
                options={"require": ["iss", "aud", "iat", "exp", "scope"]},
                leeway=60,
            )
        except jwt.PyJWTError as exc:
            problems.append(f"assertion rejected: {type(exc).__name__}: {exc}")
            claims = {}
        if claims:
            scopes = str(claims.get("scope", "")).split()
            if FCM_SCOPE not in scopes:
                problems.append(f"scope {claims.get('scope')!r} lacks {FCM_SCOPE}")
            lifetime = int(claims["exp"]) - int(claims["iat"])
            if not 0 < lifetime <= 3600:
                problems.append(f"assertion lifetime {lifetime} s is not within (0, 3600]")
        if problems:
            record.status = 400
            for problem in problems:
                self._violation(f"token exchange: {problem}")
            return _json_reply(
                400, {"error": "invalid_grant", "error_description": "; ".join(problems)}
            )
        if self._exchange_failures:
            failure = self._exchange_failures.pop(0)
            record.status = failure.status
            extra = [("retry-after", failure.retry_after)] if failure.retry_after else []
            return _json_reply(
                failure.status,
                {"error": failure.reason, "error_description": "injected by the test"},
                extra,
            )
        token = f"ya29.fake-{secrets.token_urlsafe(24)}"
        self._issued[token] = _Issued(account, time.time() + self.token_lifetime)
        record.status = 200
        record.access_token = token
        return _json_reply(
            200, {"access_token": token, "expires_in": self.token_lifetime, "token_type": "Bearer"}
        )

    def _grant_violation(self, problem: str) -> _Reply:
        self._violation(f"token exchange: {problem}")
        return _json_reply(400, {"error": "invalid_request", "error_description": problem})

    # -- messages:send

    async def _send(self, project: str, headers: dict[str, str], body: bytes) -> _Reply:
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        message = parsed.get("message") if isinstance(parsed, dict) else None
        token = message.get("token") if isinstance(message, dict) else None
        record = FcmRequest(
            project=project,
            token=token if isinstance(token, str) else "",
            body=parsed if isinstance(parsed, dict) else {},
            headers=headers,
        )
        self.requests.append(record)
        self._notify()
        reply = self._answer(project, headers, body, parsed)
        await self._pause(self.delay, "send")
        record.status = reply.status
        self._notify()
        return reply

    def _answer(self, project: str, headers: dict[str, str], raw: bytes, parsed: Any) -> _Reply:
        authorization = headers.get("authorization", "")
        issued = self._issued.get(authorization.removeprefix("Bearer "))
        if not authorization.startswith("Bearer ") or issued is None:
            self._violation("messages:send without a bearer token the fake issued")
            return _google_error(401, "ACCESS_TOKEN_TYPE_UNSUPPORTED")
        if issued.expired or issued.expires < time.time():
            return _google_error(401, "ACCESS_TOKEN_EXPIRED")
        if project != issued.account.project_id:
            self._violation(f"messages:send for project {project!r}, token is for another")
            return _google_error(403, "PERMISSION_DENIED")
        if not headers.get("content-type", "").startswith("application/json"):
            self._violation(f"messages:send with content-type {headers.get('content-type')!r}")
            return _google_error(400, "INVALID_ARGUMENT", field="content-type")
        if parsed is None:
            self._violation(f"messages:send body is not JSON: {raw[:80]!r}")
            return _google_error(400, "INVALID_ARGUMENT", field="body")
        problems = _check_body(parsed)
        if problems:
            for problem in problems:
                self._violation(f"messages:send: {problem}")
            return _google_error(400, "INVALID_ARGUMENT", field="message")
        token = parsed["message"]["token"]
        failure = self._token_failures.get(token)
        if failure is None and self._next_failures:
            failure = self._next_failures.pop(0)
        if failure is not None:
            return _google_error(
                failure.status, failure.reason, retry_after=failure.retry_after, field=failure.field
            )
        self._message_ids += 1
        return _json_reply(200, {"name": f"projects/{project}/messages/0:{self._message_ids}"})


def _check_body(body: Any) -> list[str]:
    """What is wrong with a ``messages:send`` body against OpenMFA's push contract."""
    if not isinstance(body, dict):
        return ["the body is not a JSON object"]
    problems = []
    if set(body) - {"message", "validate_only"}:
        problems.append(
            f"unexpected top-level fields {sorted(set(body) - {'message', 'validate_only'})}"
        )
    if body.get("validate_only", False) is not False:
        problems.append("validate_only is set: FCM would deliver nothing")
    message = body.get("message")
    if not isinstance(message, dict):
        return [*problems, "no message object"]
    expected = {"token", "data", "notification", "android"}
    if set(message) != expected:
        problems.append(f"message fields {sorted(message)}, expected {sorted(expected)}")
    token = message.get("token")
    if not isinstance(token, str) or not token:
        problems.append("message.token is not a non-empty string")
    data = message.get("data")
    if not isinstance(data, dict) or set(data) != {"challenge_id", "display"}:
        problems.append(f"message.data is {data!r}, expected exactly challenge_id and display")
        return problems
    if not all(isinstance(v, str) and v for v in data.values()):
        problems.append("message.data values must be non-empty strings")
    notification = message.get("notification")
    if notification != {"title": "OpenMFA", "body": data.get("display")}:
        problems.append(
            f"message.notification is {notification!r}, expected title OpenMFA and the display"
        )
    android = message.get("android")
    if not isinstance(android, dict) or set(android) != {"priority", "ttl", "collapse_key"}:
        problems.append(f"message.android is {android!r}, expected priority, ttl, collapse_key")
        return problems
    if android.get("priority") != "HIGH":
        problems.append(f"android.priority {android.get('priority')!r}, expected HIGH")
    ttl = android.get("ttl")
    if not isinstance(ttl, str) or not _DURATION.match(ttl):
        problems.append(f"android.ttl {ttl!r} is not a duration like '30s'")
    if android.get("collapse_key") != data.get("challenge_id"):
        problems.append("android.collapse_key is not the challenge id")
    return problems


def _google_error(
    status: int, reason: str, *, retry_after: str | None = None, field: str | None = None
) -> _Reply:
    """An error body the way Google's APIs shape it."""
    canonical = _CANONICAL.get(status, "UNKNOWN")
    details: list[dict[str, Any]]
    if reason in _AUTH_REASONS:
        details = [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": reason,
                "domain": "googleapis.com",
            }
        ]
        message = "Request had invalid authentication credentials."
    else:
        details = [{"@type": _FCM_ERROR, "errorCode": reason}]
        message = f"injected {reason}"
        if reason == "INVALID_ARGUMENT":
            where = field or "message.token"
            details.append(
                {
                    "@type": "type.googleapis.com/google.rpc.BadRequest",
                    "fieldViolations": [{"field": where, "description": f"bad {where}"}],
                }
            )
            message = (
                "The registration token is not a valid FCM registration token"
                if where == "message.token"
                else f"Invalid value at '{where}'"
            )
        elif reason == "UNREGISTERED":
            message = "Requested entity was not found."
    error = {"code": status, "message": message, "status": canonical, "details": details}
    extra = [("retry-after", retry_after)] if retry_after is not None else []
    return _json_reply(status, {"error": error}, extra)


def _json_reply(
    status: int, body: dict[str, Any], headers: list[tuple[str, str]] | None = None
) -> _Reply:
    return _Reply(status, json.dumps(body).encode(), headers or [])
