"""Firebase Cloud Messaging (HTTP v1) through ``pyfcm``, one attempt per send.

``pyfcm`` is synchronous (``requests``), so every send runs in a small thread pool of its own
(``fcm_workers`` threads) and never on the event loop; a pool that is full makes sends wait
for a thread, it never makes the loop wait. Each send is bounded by ``timeout`` as a whole, so a
hung Google endpoint costs a ``RETRY`` result, not a stuck challenge.

Out of the box ``pyfcm`` and ``google-auth`` retry by themselves, which would hide the
service's answer from the dispatcher (which owns retrying and backoff, see
:mod:`backend.push.base`) and hold a worker thread for an unknown time. Each layer is turned
off where it lives, see :class:`_OneShotFCM` and :class:`_OneShotAuthRequest`:

* ``pyfcm``'s ``requests`` adapter retries connection failures and 502/503 up to ten times
  with backoff (urllib3 ``Retry``); the ``adapter=`` argument replaces it with one that does
  not retry.
* ``BaseAPI.send_request`` sleeps for ``Retry-After`` and calls itself again, without a
  bound, and re-sends after a 401 ``ACCESS_TOKEN_EXPIRED``; the subclass overrides it with a
  single POST.
* ``google-auth``'s token exchange retries 429/5xx three times with backoff sleeps; the
  request object we hand it stops that by raising on the first refusal.

The OAuth token is shared by all worker threads and exchanged again only when google-auth
says it is about to expire (``pyfcm`` would exchange one per thread every 30 minutes).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import google.auth.exceptions
import google.auth.transport.requests
import requests
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from google.oauth2 import service_account
from pyfcm import FCMNotification  # type: ignore[import-untyped]
from pyfcm.errors import (  # type: ignore[import-untyped]
    AuthenticationError,
    FCMError,
    FCMNotRegisteredError,
    FCMSenderIdMismatchError,
    FCMServerError,
    InvalidDataError,
)
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from backend.errors import ConfigurationError
from backend.push.base import PushMessage, PushOutcome, PushResult, retry_after_seconds

if TYPE_CHECKING:
    from backend.config import Settings

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
DEFAULT_URL = "https://fcm.googleapis.com"
DEFAULT_TIMEOUT = 10.0  # seconds for one whole send, token exchange included
NOTIFICATION_TITLE = "OpenMFA"
_REQUIRED_FIELDS = ("project_id", "private_key", "client_email", "token_uri")
_REASON_LIMIT = 160  # a reason ends up in an audit row; the service's prose can be long

_log = logging.getLogger(__name__)


class _TokenExchangeFailed(Exception):
    """The OAuth token exchange did not give a token; carries the classified result."""

    def __init__(self, result: PushResult) -> None:
        super().__init__(result.reason)
        self.result = result


class _TokenEndpointRefused(Exception):
    """Raised from inside google-auth's token request on any non-200 answer (see
    :class:`_OneShotAuthRequest`)."""

    def __init__(self, status: int, body: bytes, retry_after: float | None) -> None:
        super().__init__(f"token endpoint answered {status}")
        self.status = status
        self.body = body
        self.retry_after = retry_after


class _OneShotAuthRequest(google.auth.transport.requests.Request):
    """google-auth's ``requests`` transport with our timeout, our CA and no retries.

    ``google.oauth2._client`` retries a token request that got 429/500/503/504 (or an OAuth
    ``server_error``) up to three times, sleeping in between, and offers no switch on the
    service-account path. Raising on the first non-200 answer ends that loop at once; the
    transport classifies the answer itself. ``verify`` is passed per request because
    ``requests`` lets ``REQUESTS_CA_BUNDLE`` override a session's ``verify``.
    """

    def __init__(self, session: requests.Session, verify: str | bool, timeout: float) -> None:
        super().__init__(session=session)
        self._verify = verify
        self._timeout = timeout

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> google.auth.transport.requests._Response:
        kwargs.setdefault("verify", self._verify)
        response: google.auth.transport.requests._Response = super().__call__(  # type: ignore[no-untyped-call]
            url, method=method, body=body, headers=headers, timeout=self._timeout, **kwargs
        )
        if response.status != 200:
            raise _TokenEndpointRefused(
                response.status, bytes(response.data), _retry_after(response.headers)
            )
        return response


class _OneShotFCM(FCMNotification):  # type: ignore[misc]
    """``pyfcm``'s client with one POST per send, a shared OAuth token and a trusted CA.

    ``notify`` (payload building, the POST, the status-to-exception mapping) is pyfcm's own;
    only how the request is made and authorised is replaced.
    """

    def __init__(
        self,
        credentials: service_account.Credentials,
        *,
        endpoint_base: str,
        adapter: HTTPAdapter,
        auth_request: _OneShotAuthRequest,
        verify: str | bool,
    ) -> None:
        super().__init__(
            credentials=credentials, project_id=credentials.project_id, adapter=adapter
        )
        # pyfcm builds the URL as FCM_END_POINT_BASE + "/<project>/messages:send".
        self.FCM_END_POINT_BASE = f"{endpoint_base}/v1/projects"
        self._auth_request = auth_request
        self._verify = verify
        self._token_lock = threading.Lock()

    def access_token(self) -> str:
        """The current OAuth token, exchanged first when there is none or it is expiring.

        One lock for all worker threads: the first thread exchanges, the others wait and reuse
        the token instead of each doing an exchange of its own.
        """
        credentials: service_account.Credentials = self.credentials
        with self._token_lock:
            if not credentials.valid:  # no token yet, or within google-auth's refresh margin
                _refresh(credentials, self._auth_request)
            token = credentials.token
            if not isinstance(token, str):  # google-auth set no token without raising
                raise _TokenExchangeFailed(
                    PushResult(PushOutcome.FAILED, reason="token-exchange gave no token")
                )
            return token

    def forget_token(self) -> None:
        """Drop the cached token so that the next send exchanges a new one (after a 401)."""
        with self._token_lock:
            self.credentials.token = None

    def request_headers(self) -> dict[str, str]:
        """pyfcm's headers, from the shared token (pyfcm would exchange one per thread)."""
        return {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {self.access_token()}",
        }

    def send_request(self, payload: bytes | None = None, timeout: Any = None) -> requests.Response:
        """Exactly one POST; pyfcm's version sleeps for Retry-After and re-sends, unbounded.

        The headers go with the request so that a token renewed by another thread is used at
        once (pyfcm sets them on its per-thread session only every 30 minutes).
        """
        response: requests.Response = self.requests_session.post(
            self.fcm_end_point,
            data=payload,
            headers=self.request_headers(),
            timeout=timeout,
            verify=self._verify,
        )
        # notify() turns the response into a pyfcm exception without the status or FCM error
        # code; keep it (per worker thread) so the result can carry them.
        self.thread_local.last_response = response
        return response

    def last_response(self) -> requests.Response | None:
        """The response of the latest send made by this thread, if it got one."""
        response: requests.Response | None = getattr(self.thread_local, "last_response", None)
        return response

    def reset_last_response(self) -> None:
        """Forget the previous send's response before a new send on this thread."""
        self.thread_local.last_response = None


class FcmTransport:
    """:class:`backend.push.base.PushTransport` for Android devices through FCM HTTP v1."""

    name = "fcm"

    def __init__(
        self,
        service_account_file: Path,
        *,
        url: str = "",
        ca_file: Path | None = None,
        workers: int = 4,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        """Check the key file and the endpoint settings now; raise
        :class:`~backend.errors.ConfigurationError` for anything that would fail every push.

        ``url`` replaces ``https://fcm.googleapis.com`` (tests, relays); ``ca_file`` is then
        the only CA trusted for it and for the key file's ``token_uri``.
        """
        if workers < 1:
            raise ConfigurationError("fcm_workers must be at least 1")
        if timeout <= 0:
            raise ConfigurationError("the FCM timeout must be positive")
        info = load_service_account(service_account_file)
        base = _endpoint_base(url)
        verify: str | bool = True
        if ca_file is not None:
            _check_ca_file(ca_file)
            verify = str(ca_file)
        try:
            credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
                info,
                scopes=[FCM_SCOPE],
                # google-auth always puts Google's own token endpoint into the assertion's
                # audience; the audience is the endpoint the assertion is sent to, which is
                # the same URL for a real key file and the key file's token_uri otherwise.
                additional_claims={"aud": info["token_uri"]},
            )
        except (ValueError, TypeError, KeyError) as exc:
            raise ConfigurationError(
                f"the FCM service-account file {service_account_file} cannot be used: "
                f"{type(exc).__name__}"
            ) from None
        self.project_id: str = info["project_id"]
        self.endpoint = f"{base}/v1/projects/{self.project_id}/messages:send"
        self._timeout = timeout
        # No retries at the urllib3 level (pyfcm's default adapter retries 502/503 and
        # connection failures ten times with backoff); one pooled connection per worker.
        self._adapter = HTTPAdapter(
            max_retries=Retry(total=0, redirect=0, raise_on_status=False),
            pool_connections=2,
            pool_maxsize=workers,
        )
        self._auth_session = requests.Session()
        self._auth_session.mount("https://", self._adapter)
        self._auth_session.mount("http://", self._adapter)
        self._client = _OneShotFCM(
            credentials,
            endpoint_base=base,
            adapter=self._adapter,
            auth_request=_OneShotAuthRequest(self._auth_session, verify, timeout),
            verify=verify,
        )
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="openmfa-fcm")
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Settings, *, timeout: float = DEFAULT_TIMEOUT) -> FcmTransport:
        """The transport ``settings`` describe; ConfigurationError when it is not set up."""
        if settings.fcm_service_account_file is None:
            raise ConfigurationError("FCM is not configured: fcm_service_account_file is not set")
        return cls(
            settings.fcm_service_account_file,
            url=settings.fcm_url,
            ca_file=settings.fcm_ca_file,
            workers=settings.fcm_workers,
            timeout=timeout,
        )

    async def send(self, message: PushMessage) -> PushResult:
        """One attempt in the worker pool, never longer than ``timeout`` in all.

        A send still waiting for a free thread at the deadline is cancelled and never made;
        one already on the wire finishes in its thread (bounded by the same timeout) and its
        answer is dropped: the dispatcher has been told ``RETRY`` and the collapse key makes
        a second copy replace the first on the phone.
        """
        if self._closed:
            return PushResult(PushOutcome.FAILED, reason="transport closed")
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(self._pool, self._send_blocking, message)
        except RuntimeError:  # close() shut the pool down after the check above
            return PushResult(PushOutcome.FAILED, reason="transport closed")
        try:
            return await asyncio.wait_for(future, self._timeout)
        except TimeoutError:
            return PushResult(PushOutcome.RETRY, reason="timeout")

    async def close(self) -> None:
        """Cancel queued sends, wait for the threads (each bounded by ``timeout``) and close
        the pooled connections."""
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        # Joining blocks, so it happens off the loop.
        await asyncio.get_running_loop().run_in_executor(None, self._pool.shutdown, True)
        self._auth_session.close()
        self._adapter.close()

    def _send_blocking(self, message: PushMessage) -> PushResult:
        client = self._client
        client.reset_last_response()
        try:
            result = client.notify(
                fcm_token=message.token,
                notification_title=NOTIFICATION_TITLE,
                notification_body=message.display,
                # Only the challenge id and the display string: the app fetches the rest
                # (context, the number to match) over the signed app API.
                data_payload={"challenge_id": message.challenge_id, "display": message.display},
                android_config={
                    "priority": "HIGH",
                    "ttl": f"{_seconds_to(message.expires_at)}s",
                    "collapse_key": message.challenge_id,
                },
                timeout=self._timeout,
            )
        except _TokenExchangeFailed as exc:
            return exc.result
        except (FCMError, requests.RequestException) as exc:
            response = client.last_response()
            if response is not None:  # an answer pyfcm refused (or a 200 it could not parse)
                return self._refusal(exc, response)
            if isinstance(exc, requests.RequestException):
                return _network_result(exc, "")
            return PushResult(PushOutcome.FAILED, reason=type(exc).__name__)
        except Exception as exc:
            # A bug, not a service failure; the dispatcher must still get a result.
            _log.exception("FCM send failed unexpectedly")
            return PushResult(PushOutcome.FAILED, reason=f"internal error {type(exc).__name__}")
        name = result.get("name", "") if isinstance(result, dict) else ""
        return PushResult(PushOutcome.DELIVERED, status=200, reason=str(name)[:_REASON_LIMIT])

    def _refusal(self, exc: Exception, response: requests.Response) -> PushResult:
        """Classify what pyfcm raised for a non-200 answer, with the answer's details."""
        status = response.status_code
        error = _fcm_error(response)
        reason = (error.code or f"HTTP {status}")[:_REASON_LIMIT]
        retry_after = _retry_after(response.headers)

        def result(outcome: PushOutcome) -> PushResult:
            return PushResult(outcome, status=status, reason=reason, retry_after=retry_after)

        if 200 <= status < 300:  # pyfcm calls an empty or non-200 2xx an error; FCM took it
            return result(PushOutcome.DELIVERED)
        if isinstance(exc, FCMNotRegisteredError):  # 404: UNREGISTERED
            return result(PushOutcome.INVALID_TOKEN)
        if isinstance(exc, InvalidDataError):  # 400
            if error.code == "UNREGISTERED" or error.about_token:
                return result(PushOutcome.INVALID_TOKEN)
            return result(PushOutcome.FAILED)  # our message was malformed: no point retrying
        if isinstance(exc, FCMSenderIdMismatchError):  # 403
            # SENDER_ID_MISMATCH: the token belongs to another Firebase project and will
            # never take a message from this one. Any other 403 is a permission problem.
            if error.code == "SENDER_ID_MISMATCH":
                return result(PushOutcome.INVALID_TOKEN)
            return result(PushOutcome.FAILED)
        if isinstance(exc, AuthenticationError):  # 401
            self._client.forget_token()  # whatever was wrong with it, the next send renews it
            if self._client._is_access_token_expired(response):
                # pyfcm re-sends at once in this case; a renewed token fixes it, so it is
                # worth the dispatcher's retry rather than a failure.
                return PushResult(PushOutcome.RETRY, status=status, reason="ACCESS_TOKEN_EXPIRED")
            return result(PushOutcome.FAILED)
        if isinstance(exc, FCMServerError) and (status == 429 or status >= 500):
            return result(PushOutcome.RETRY)
        return result(PushOutcome.FAILED)


def load_service_account(path: Path) -> dict[str, Any]:
    """Read and check a Firebase service-account key file (the JSON Google hands out).

    Raises :class:`~backend.errors.ConfigurationError` naming the problem: unreadable, not
    JSON, not a service-account key, a missing field, a ``token_uri`` that is not HTTPS, a
    private key that is not an unencrypted RSA PEM key. The key itself never appears in it.
    """
    where = f"the FCM service-account file {path}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigurationError(f"{where} does not exist") from None
    except IsADirectoryError:
        raise ConfigurationError(f"{where} is a directory, not a file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"{where} cannot be read: {_why(exc)}") from None
    try:
        info = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(
            f"{where} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    if not isinstance(info, dict):
        raise ConfigurationError(f"{where} is not a JSON object")
    kind = info.get("type")
    if kind != "service_account":
        raise ConfigurationError(
            f'{where} is not a service-account key (its "type" is {kind!r}, expected '
            "'service_account'); download one under Project settings > Service accounts"
        )
    missing = [f for f in _REQUIRED_FIELDS if not isinstance(info.get(f), str) or not info[f]]
    if missing:
        raise ConfigurationError(f"{where} lacks {', '.join(missing)}")
    token_uri = info["token_uri"]
    parts = urlsplit(token_uri)
    if parts.scheme != "https" or not parts.hostname:
        raise ConfigurationError(f"{where} has a token_uri that is not an https:// URL")
    try:
        key = load_pem_private_key(info["private_key"].encode("utf-8"), password=None)
    except (ValueError, TypeError):
        raise ConfigurationError(
            f"{where} has a private_key that is not an unencrypted PEM private key"
        ) from None
    if not isinstance(key, RSAPrivateKey):
        raise ConfigurationError(f"{where} has a private_key that is not an RSA key")
    return info


class _FcmErrorInfo:
    """The parts of a Google API error body that decide the outcome."""

    __slots__ = ("about_token", "code")

    def __init__(self, code: str, about_token: bool) -> None:
        self.code = code
        self.about_token = about_token


def _fcm_error(response: requests.Response) -> _FcmErrorInfo:
    """``errorCode`` of the FcmError detail (else the canonical status), and whether the
    error names the registration token.

    The body looks like ``{"error": {"code": 400, "status": "INVALID_ARGUMENT", "message":
    ..., "details": [{"@type": "...FcmError", "errorCode": "INVALID_ARGUMENT"},
    {"@type": "...BadRequest", "fieldViolations": [{"field": "message.token"}]}]}}``.
    """
    try:
        body = response.json()
    except ValueError:
        return _FcmErrorInfo("", False)
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return _FcmErrorInfo("", False)
    code = ""
    about_token = False
    details = error.get("details")
    for detail in details if isinstance(details, list) else []:
        if not isinstance(detail, dict):
            continue
        if not code and isinstance(detail.get("errorCode"), str):
            code = detail["errorCode"]
        violations = detail.get("fieldViolations")
        for violation in violations if isinstance(violations, list) else []:
            if isinstance(violation, dict) and violation.get("field") == "message.token":
                about_token = True
    if not code and isinstance(error.get("status"), str):
        code = error["status"]
    message = error.get("message")
    if isinstance(message, str) and "registration token" in message.lower():
        about_token = True
    return _FcmErrorInfo(code, about_token)


def _refresh(credentials: service_account.Credentials, request: _OneShotAuthRequest) -> None:
    """One token exchange; failures become :class:`_TokenExchangeFailed` with the result."""
    try:
        credentials.refresh(request)  # type: ignore[no-untyped-call]
    except _TokenEndpointRefused as exc:
        raise _TokenExchangeFailed(_token_refusal(exc)) from None
    except google.auth.exceptions.TransportError as exc:
        cause = exc.__cause__
        if isinstance(cause, requests.RequestException):
            raise _TokenExchangeFailed(_network_result(cause, "token-exchange ")) from None
        raise _TokenExchangeFailed(
            PushResult(PushOutcome.FAILED, reason=f"token-exchange {type(exc).__name__}")
        ) from None
    except google.auth.exceptions.GoogleAuthError as exc:  # 200 without a token, bad JSON
        raise _TokenExchangeFailed(
            PushResult(
                PushOutcome.FAILED,
                status=200,
                reason=f"token-exchange {str(exc)[:_REASON_LIMIT]}",
            )
        ) from None


def _token_refusal(exc: _TokenEndpointRefused) -> PushResult:
    """429/5xx (or an OAuth ``server_error`` / ``temporarily_unavailable``) → RETRY; any
    other refusal (``invalid_grant``: wrong key, revoked account, clock skew) → FAILED."""
    error = ""
    description = ""
    try:
        body = json.loads(exc.body)
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = str(body.get("error", ""))
        description = str(body.get("error_description", ""))
    transient = exc.status == 429 or exc.status >= 500
    transient = transient or error in ("server_error", "temporarily_unavailable")
    reason = f"token-exchange {error or f'HTTP {exc.status}'}"
    if description:
        reason = f"{reason}: {description}"
    return PushResult(
        PushOutcome.RETRY if transient else PushOutcome.FAILED,
        status=exc.status,
        reason=reason[:_REASON_LIMIT],
        retry_after=exc.retry_after,
    )


def _network_result(exc: requests.RequestException, prefix: str) -> PushResult:
    """Timeouts and connection failures are worth a retry; a certificate the configured CA
    does not vouch for will not fix itself within a challenge's lifetime."""
    if isinstance(exc, requests.Timeout):
        return PushResult(PushOutcome.RETRY, reason=f"{prefix}timeout")
    if isinstance(exc, requests.exceptions.SSLError):
        if _caused_by(exc, ssl.SSLCertVerificationError):
            return PushResult(PushOutcome.FAILED, reason=f"{prefix}tls certificate not trusted")
        return PushResult(PushOutcome.RETRY, reason=f"{prefix}tls error")
    if isinstance(exc, requests.ConnectionError):
        return PushResult(PushOutcome.RETRY, reason=f"{prefix}connection error")
    return PushResult(PushOutcome.FAILED, reason=f"{prefix}{type(exc).__name__}")


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether ``kind`` is somewhere in the chain requests/urllib3 wrap around an error
    (``args``, urllib3's ``reason``, ``__cause__``, ``__context__``)."""
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        item = todo.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        if isinstance(item, kind):
            return True
        seen.add(id(item))
        todo.extend(item.args)
        todo.extend([getattr(item, "reason", None), item.__cause__, item.__context__])
    return False


def _retry_after(headers: Any) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date), ``None`` if absent/bad."""
    value = headers.get("Retry-After") if headers is not None else None
    return retry_after_seconds(value if isinstance(value, str) else None)


def _seconds_to(expires_at: datetime) -> int:
    """Whole seconds until ``expires_at`` (rounded up, never negative): the message's TTL,
    so that FCM drops a push the challenge would no longer accept."""
    if expires_at.tzinfo is None:  # the store keeps UTC without a zone
        expires_at = expires_at.replace(tzinfo=UTC)
    return max(0, math.ceil(expires_at.timestamp() - time.time()))


def _endpoint_base(url: str) -> str:
    if not url:
        return DEFAULT_URL
    parts = urlsplit(url)
    # HTTPS only: every request carries the project's OAuth token.
    if parts.scheme != "https" or not parts.hostname:
        raise ConfigurationError(f"fcm_url {url!r} is not an https://host[:port] URL")
    if parts.path.strip("/") or parts.query or parts.fragment:
        raise ConfigurationError(f"fcm_url {url!r} must be a base URL without a path")
    return url.rstrip("/")


def _check_ca_file(path: Path) -> None:
    try:
        ssl.create_default_context(cafile=str(path))
    except FileNotFoundError:
        raise ConfigurationError(f"fcm_ca_file {path} does not exist") from None
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise ConfigurationError(
            f"fcm_ca_file {path} is not a readable PEM CA file: {_why(exc)}"
        ) from None


def _why(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or type(exc).__name__
