"""Apple Push Notification service transport, on the ``aioapns`` HTTP/2 client.

Token-based authentication: the team's ``.p8`` signing key (EC P-256) signs a short ES256 JWT
(``iss`` = team id, ``iat``, header ``kid`` = key id) that ``aioapns`` puts in the
``authorization`` header and renews every 30 minutes. The key is read and checked when the
transport is built, so a bad key stops the server at start, not at the first push.

What is sent (docs/push.md): an alert push, priority 10, topic = the app's bundle id,
collapse id = the challenge id (a re-sent push replaces the earlier banner), expiration = the
challenge's expiry, and a payload holding only the challenge id and the display string with
``mutable-content`` so the app can fetch the details over the signed app API. Never a code,
a seed or a number to match.

How ``aioapns`` 4.0 is adapted, and why (it has no endpoint option, retries internally and
mishandles a few cases that matter here); everything else is its ordinary code path:

* **Endpoint.** The host and port it connects to are class attributes (``APNS_SERVER``,
  ``APNS_PORT``) of the protocol class its pool instantiates, ``pool.protocol_class``. We set
  that attribute to a subclass carrying our host and port (Apple's production or development
  host, or ``apns_url``). The TLS context is the client's public ``ssl_context`` argument:
  system trust store plus ``apns_ca_file`` when given, and ALPN ``h2`` offered as RFC 9113
  asks (``aioapns`` offers none by default).
* **One attempt.** ``max_connection_attempts=1``. ``aioapns`` still sleeps a second after a
  failed connect before giving up, so :meth:`ApnsTransport.send` first opens (or reuses) a
  connection through ``pool.acquire()`` - the same call the pool makes - and classifies a
  failure at once. The dispatcher owns retrying.
* **Time limit.** Each send runs under ``asyncio.timeout``: a service that hangs (in TCP, the
  TLS handshake or the answer) gives ``RETRY``, never a stuck task. Cancelling a request
  inside ``aioapns`` would leave its future in the connection's table, and the late answer
  would raise inside ``data_received`` and take the connection, and every request on it,
  down; the subclass forgets the request and resets its stream (RST_STREAM CANCEL) instead.
* **Dead connections.** A connection that went silent (a dropped path, a NAT that forgot
  it) would stay in the pool and time out every push sent on it, since ``aioapns`` only
  notices after TCP gives up. After a timeout the subclass sends an HTTP/2 PING; a
  connection that does not answer within ``liveness_timeout`` is dropped, and a connection
  that is closing is never handed out again.
* **Flow control.** ``aioapns`` never gives HTTP/2 receive window back, so after ~64 KiB of
  error bodies on one connection Apple could not answer any more; the subclass acknowledges
  every DATA frame.
* **Retry-After.** ``aioapns`` drops response headers; the subclass keeps ``retry-after``.
* **One provider token.** ``aioapns`` signs a separate token for every connection it opens;
  Apple wants a provider's token to change at most every 20 minutes and answers
  ``TooManyProviderTokenUpdates`` otherwise, so all connections of a transport share one
  ``aioapns`` token provider (still renewed every 30 minutes).
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final
from urllib.parse import urlsplit

from aioapns import APNs, NotificationRequest, PushType
from aioapns.common import NotificationResult
from aioapns.connection import (
    APNsDevelopmentClientProtocol,
    APNsProductionClientProtocol,
    APNsTLSClientProtocol,
    AuthorizationHeaderProvider,
    JWTAuthorizationHeaderProvider,
)
from aioapns.exceptions import ConnectionClosed, MaxAttemptsExceeded
from aioapns.exceptions import ConnectionError as ApnsConnectionError
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import DataReceived, Event
from h2.exceptions import H2Error

from backend.errors import ConfigurationError
from backend.push.base import PushMessage, PushOutcome, PushResult, retry_after_seconds

if TYPE_CHECKING:
    from typing_extensions import Buffer

    from backend.config import Settings

logger = logging.getLogger(__name__)

#: Seconds one send may take, connecting included, before it counts as a RETRY.
DEFAULT_TIMEOUT: Final = 10.0
#: HTTP/2 connections to APNs; each carries up to the server's stream limit (1000 at Apple).
DEFAULT_MAX_CONNECTIONS: Final = 10
#: How long close() waits for a TLS goodbye before it drops the connections.
CLOSE_TIMEOUT: Final = 2.0
#: After a send timed out, how long its connection has to answer a PING before it is dropped.
DEFAULT_LIVENESS_TIMEOUT: Final = 3.0

ALERT_TITLE: Final = "OpenMFA"
PRIORITY_IMMEDIATE: Final = 10

# APNs answers that mean the device token itself is dead: the device must get a new one.
# (410 always does: "Unregistered" or "ExpiredToken".)
_DEAD_TOKEN_REASONS: Final = frozenset(
    {"BadDeviceToken", "Unregistered", "DeviceTokenNotForTopic", "ExpiredToken"}
)
# Apple's device tokens are hexadecimal (32 bytes today, longer allowed). Anything else
# would be refused by Apple, and must never reach the request path unescaped.
_DEVICE_TOKEN = re.compile(r"[0-9A-Fa-f]{8,512}")
_APPLE_ID = re.compile(r"[A-Z0-9]{10}")  # key ids and team ids
_TOPIC = re.compile(r"[A-Za-z0-9][A-Za-z0-9.\-]{0,254}")
_KEY_FILE_NAME = re.compile(r"AuthKey_([A-Za-z0-9]+)\.p8")


class ApnsTransport:
    """One APNs client (a pool of HTTP/2 connections) for one team key and one app topic.

    Build it with :meth:`from_settings`; it raises :class:`ConfigurationError` for anything
    wrong with the key, the ids, the topic, the endpoint or the CA file. Connections open on
    the first send, in the running event loop, and stay open (Apple asks providers to keep
    them) until idle for a while or :meth:`close`.
    """

    name = "apns"

    def __init__(
        self,
        *,
        key_file: Path,
        key_id: str,
        team_id: str,
        topic: str,
        sandbox: bool = False,
        url: str = "",
        ca_file: Path | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        liveness_timeout: float = DEFAULT_LIVENESS_TIMEOUT,
    ) -> None:
        if not _APPLE_ID.fullmatch(key_id):
            raise ConfigurationError(
                f"apns_key_id {key_id!r} is not an APNs key id (10 upper-case letters or "
                "digits, shown next to the key in the Apple developer account)"
            )
        if not _APPLE_ID.fullmatch(team_id):
            raise ConfigurationError(
                f"apns_team_id {team_id!r} is not an Apple team id (10 upper-case letters or "
                "digits, shown under Membership in the Apple developer account)"
            )
        if not _TOPIC.fullmatch(topic):
            raise ConfigurationError(
                f"apns_topic {topic!r} is not a bundle id (letters, digits, '.' and '-', "
                "such as org.example.authenticator)"
            )
        if not (timeout > 0 and liveness_timeout > 0):
            raise ConfigurationError("the APNs timeouts must be positive")
        if max_connections < 1:
            raise ConfigurationError("the APNs transport needs at least one connection")
        self._key_pem = _load_key(key_file, key_id)
        self.host, self.port = _endpoint(url, sandbox)
        self._ssl_context = _ssl_context(ca_file)
        self._key_id = key_id
        self._team_id = team_id
        self._topic = topic
        self._sandbox = sandbox
        self._timeout = timeout
        self._liveness_timeout = liveness_timeout
        self._max_connections = max_connections
        self._client: APNs | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # retry-after values by apns-id, filled by the protocol, taken by send()
        self._retry_after: dict[str, str] = {}
        self._closed = False

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        liveness_timeout: float = DEFAULT_LIVENESS_TIMEOUT,
    ) -> ApnsTransport:
        """Build the transport from ``apns_*`` settings; raise :class:`ConfigurationError`
        naming every missing setting, or what is wrong with the key file."""
        key_file = settings.apns_key_file
        missing = [
            name
            for name, value in (
                ("apns_key_file", key_file),
                ("apns_key_id", settings.apns_key_id),
                ("apns_team_id", settings.apns_team_id),
                ("apns_topic", settings.apns_topic),
            )
            if not value
        ]
        if missing or key_file is None:
            raise ConfigurationError(
                "APNs needs apns_key_file, apns_key_id, apns_team_id and apns_topic; "
                f"missing: {', '.join(missing)}"
            )
        return cls(
            key_file=key_file,
            key_id=settings.apns_key_id,
            team_id=settings.apns_team_id,
            topic=settings.apns_topic,
            sandbox=settings.apns_sandbox,
            url=settings.apns_url,
            ca_file=settings.apns_ca_file,
            timeout=timeout,
            max_connections=max_connections,
            liveness_timeout=liveness_timeout,
        )

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran; later sends answer FAILED."""
        return self._closed

    @property
    def endpoint(self) -> str:
        """Where pushes go, ``https://host:port``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    async def send(self, message: PushMessage) -> PushResult:
        """One attempt to hand ``message`` to APNs, classified; never raises for a service or
        network failure."""
        if self._closed:
            return PushResult(PushOutcome.FAILED, reason="the APNs transport is closed")
        if not _DEVICE_TOKEN.fullmatch(message.token):
            return PushResult(PushOutcome.INVALID_TOKEN, reason="malformed device token")
        expires = int(message.expires_at.timestamp())
        if expires <= int(time.time()):
            return PushResult(PushOutcome.FAILED, reason="the challenge expired before sending")
        client = self._client_for_running_loop()
        retry_after: str | None = None
        try:
            async with asyncio.timeout(self._timeout):
                try:
                    # Connect first, so that a failure is classified now instead of after
                    # aioapns's one-second pause (see the module docstring).
                    await client.pool.acquire()
                except ApnsConnectionError as exc:
                    cause = exc.__context__ or exc
                    return PushResult(
                        PushOutcome.RETRY,
                        reason=f"cannot connect to {self.endpoint}: {_describe(cause)}",
                    )
                request = NotificationRequest(
                    device_token=message.token,
                    message=_payload(message),
                    # aioapns sends apns-expiration = now + time_to_live; computed here,
                    # next to its own clock reading, this is the challenge's expiry.
                    time_to_live=expires - int(time.time()),
                    priority=PRIORITY_IMMEDIATE,
                    collapse_key=message.challenge_id,
                    push_type=PushType.ALERT,
                )
                try:
                    result = await client.send_notification(request)
                finally:
                    retry_after = self._retry_after.pop(request.notification_id, None)
        except TimeoutError:
            return PushResult(
                PushOutcome.RETRY, reason=f"no answer from APNs within {self._timeout:g} s"
            )
        except (MaxAttemptsExceeded, ConnectionClosed):
            return PushResult(PushOutcome.RETRY, reason="connection to APNs lost before the answer")
        except (OSError, H2Error) as exc:
            return PushResult(PushOutcome.RETRY, reason=f"APNs connection error: {_describe(exc)}")
        finally:
            if self.closed and client is not self._client:
                # close() ran while this send was connecting: do not leave its connection.
                client.pool.close()
        return self._classify(result, retry_after)

    async def close(self) -> None:
        """Close every connection (TLS goodbye, then drop after a short wait)."""
        self._closed = True
        client, self._client = self._client, None
        if client is None:
            return
        connections = [c for c in client.pool.connections if isinstance(c, _ApnsProtocol)]
        client.pool.close()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                for connection in connections:
                    await connection.closed.wait()
        except TimeoutError:
            for connection in connections:
                if not connection.closed.is_set() and connection.transport is not None:
                    connection.transport.abort()
            async with asyncio.timeout(CLOSE_TIMEOUT):
                for connection in connections:
                    await connection.closed.wait()

    def _client_for_running_loop(self) -> APNs:
        # aioapns binds its pool to the event loop current at construction, so the client is
        # made here, in the loop that sends, rather than when the settings are read.
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            client = APNs(
                key=self._key_pem,
                key_id=self._key_id,
                team_id=self._team_id,
                topic=self._topic,
                use_sandbox=self._sandbox,
                ssl_context=self._ssl_context,
                max_connections=self._max_connections,
                max_connection_attempts=1,
                err_func=_leave_errors_to_the_dispatcher,
            )
            # One token for every connection of this client, renewed every 30 minutes.
            provider = JWTAuthorizationHeaderProvider(
                key=self._key_pem, key_id=self._key_id, team_id=self._team_id
            )
            client.pool.protocol_class = _protocol_class(
                self.host, self.port, self._retry_after, provider, self._liveness_timeout
            )
            self._client, self._loop = client, loop
        return self._client

    def _classify(self, result: NotificationResult, retry_after: str | None) -> PushResult:
        status = int(result.status) if result.status.isdigit() else None
        reason = result.description or ""
        if status == 200:
            return PushResult(PushOutcome.DELIVERED, status=200, reason="Success")
        if status is None:
            detail = f": {reason}" if reason else ""
            return PushResult(PushOutcome.FAILED, reason=f"APNs answered without a status{detail}")
        reason = reason or f"HTTP {status}"
        if status == 410 or reason in _DEAD_TOKEN_REASONS:
            return PushResult(PushOutcome.INVALID_TOKEN, status=status, reason=reason)
        if status == 429 or status >= 500:
            return PushResult(
                PushOutcome.RETRY,
                status=status,
                reason=reason,
                retry_after=retry_after_seconds(retry_after),
            )
        if status == 403:
            # Every push fails the same way until the key settings are fixed: say so once more
            # in the log, next to the audited result.
            logger.warning(
                "APNs refused our provider token (%s): check apns_key_file, apns_key_id and "
                "apns_team_id",
                reason,
            )
        return PushResult(PushOutcome.FAILED, status=status, reason=reason)


def _payload(message: PushMessage) -> dict[str, Any]:
    # The challenge id and the display string, nothing secret (docs/push.md).
    return {
        "aps": {
            "alert": {"title": ALERT_TITLE, "body": message.display},
            "mutable-content": 1,
        },
        "challenge_id": message.challenge_id,
    }


async def _leave_errors_to_the_dispatcher(
    request: NotificationRequest, result: NotificationResult
) -> None:
    # aioapns logs every refused push at ERROR unless given this hook; the dispatcher audits
    # each result already, with the device and challenge it concerns.
    return None


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _load_key(path: Path, key_id: str) -> str:
    """The key file's EC P-256 private key as PKCS#8 PEM text, or a ConfigurationError."""
    named = _KEY_FILE_NAME.fullmatch(path.name)
    if named is not None and named[1] != key_id:
        raise ConfigurationError(
            f"apns_key_file {path} is the key {named[1]}, but apns_key_id is {key_id}"
        )
    try:
        data = path.read_bytes()
        if path.stat().st_mode & 0o077:
            logger.warning("apns_key_file %s can be read by other users; chmod 600 it", path)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read apns_key_file {path}: {exc.strerror or exc}"
        ) from None
    expected = (
        "the PEM private key (-----BEGIN PRIVATE KEY-----) downloaded as AuthKey_<KEYID>.p8 "
        "from the Apple developer account"
    )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigurationError(
            f"apns_key_file {path} is encrypted; APNs keys are used unencrypted: {expected}"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigurationError(
            f"apns_key_file {path} is not an APNs auth key: {expected}"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        if isinstance(key, ec.EllipticCurvePrivateKey):
            kind = f"EC {key.curve.name}"
        else:
            kind = "RSA" if isinstance(key, rsa.RSAPrivateKey) else type(key).__name__
        raise ConfigurationError(
            f"apns_key_file {path} holds a key of type {kind}; APNs tokens are signed with ES256, "
            f"which needs an EC P-256 key: {expected}"
        )
    # Sign once now: a key that cannot sign fails here and not at the first push.
    key.sign(b"openmfa apns key check", ec.ECDSA(hashes.SHA256()))
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def _endpoint(url: str, sandbox: bool) -> tuple[str, int]:
    if not url:
        protocol = APNsDevelopmentClientProtocol if sandbox else APNsProductionClientProtocol
        return protocol.APNS_SERVER, 443
    problem = f"apns_url must be https://host[:port] with no path, got {url!r}"
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        raise ConfigurationError(problem) from None
    if (
        parts.scheme != "https"
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username is not None
    ):
        raise ConfigurationError(problem)
    return parts.hostname, port or 443


def _ssl_context(ca_file: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as exc:
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise ConfigurationError(
                f"cannot use apns_ca_file {ca_file}: {detail} (expected PEM CA certificates)"
            ) from None
    context.set_alpn_protocols(["h2"])
    return context


class _AckingH2Connection(H2Connection):
    """Gives receive window back for every DATA frame, which ``aioapns`` never does."""

    def receive_data(self, data: Buffer) -> list[Event]:
        events = super().receive_data(data)
        for event in events:
            if (
                isinstance(event, DataReceived)
                and event.flow_controlled_length
                and event.stream_id is not None
            ):
                self.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        return events


class _ApnsProtocol(APNsTLSClientProtocol):
    """``aioapns``'s connection protocol, made safe for cancellation; see the module docs."""

    retry_after_by_id: ClassVar[dict[str, str]]
    shared_auth_provider: ClassVar[AuthorizationHeaderProvider]
    liveness_timeout: ClassVar[float]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.auth_provider = self.shared_auth_provider  # not the pool's per-connection one
        self.conn = _AckingH2Connection()
        self.closed = asyncio.Event()
        self._probe: asyncio.TimerHandle | None = None

    @property
    def is_busy(self) -> bool:
        # The pool hands out any connection that is not busy, even one shutting down (its
        # writes would vanish); make it look busy so the pool picks or opens another.
        closing = self.transport is None or self.transport.is_closing()
        return closing or super().is_busy

    def data_received(self, data: bytes) -> None:
        if self._probe is not None:  # anything from the server shows the connection lives
            self._probe.cancel()
            self._probe = None
        super().data_received(data)

    def _check_alive(self) -> None:
        if self._probe is not None or self.transport is None or self.transport.is_closing():
            return
        self.conn.ping(b"openmfa?")
        self.flush()
        self._probe = self.loop.call_later(self.liveness_timeout, self._silent)

    def _silent(self) -> None:
        self._probe = None
        logger.warning(
            "APNs connection to %s:%d did not answer a PING within %g s; dropping it",
            self.APNS_SERVER,
            self.APNS_PORT,
            self.liveness_timeout,
        )
        if self.inactivity_timer:
            self.inactivity_timer.cancel()
        if self.transport is not None:
            # abort, not close: a TLS goodbye would wait on the silent peer
            self.transport.abort()

    async def send_notification(self, request: NotificationRequest) -> NotificationResult:
        try:
            return await super().send_notification(request)
        except asyncio.CancelledError:
            self._abandon(request.notification_id)
            raise

    def _abandon(self, notification_id: str) -> None:
        # Forget the request and tell the server so; a late answer then finds nothing.
        self.requests.pop(notification_id, None)
        self.request_statuses.pop(notification_id, None)
        for stream_id in [s for s, n in self.request_streams.items() if n == notification_id]:
            del self.request_streams[stream_id]
            try:
                self.conn.reset_stream(stream_id, ErrorCodes.CANCEL)
            except H2Error:  # already closed on both sides: its channel was released
                continue
            self.free_channels.release()
        if self.transport is not None and not self.transport.is_closing():
            self.flush()
            self._check_alive()

    def on_response_received(self, headers: dict[bytes, bytes]) -> None:
        notification_id = headers.get(b"apns-id", b"").decode("utf-8", "replace")
        if notification_id not in self.requests:
            return  # the answer to a request given up on: nobody waits for it
        retry_after = headers.get(b"retry-after")
        if retry_after is not None:
            self.retry_after_by_id[notification_id] = retry_after.decode("latin-1")
        super().on_response_received(headers)

    def on_data_received(self, data: bytes, stream_id: int) -> None:
        try:
            super().on_data_received(data, stream_id)
        except (ValueError, KeyError, AttributeError):
            # Not the JSON {"reason": ...} APNs sends: on_stream_ended answers with the status.
            logger.debug("APNs answer on stream %d has an unexpected body", stream_id)

    def on_stream_ended(self, stream_id: int) -> None:
        # aioapns keeps successful streams in request_streams forever and leaves an error
        # answer without a reason waiting; settle both when the stream ends.
        notification_id = self.request_streams.pop(stream_id, None)
        if notification_id is not None:
            waiter = self.requests.pop(notification_id, None)
            status = self.request_statuses.pop(notification_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(NotificationResult(notification_id, status or ""))
        super().on_stream_ended(stream_id)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None
        try:
            super().connection_lost(exc)
        finally:
            self.closed.set()


def _protocol_class(
    host: str,
    port: int,
    retry_after: dict[str, str],
    provider: AuthorizationHeaderProvider,
    liveness: float,
) -> type[_ApnsProtocol]:
    """A protocol class that connects to ``host:port``, signs with ``provider``, files
    retry-after values in ``retry_after`` and gives a PING ``liveness`` seconds."""

    class _EndpointProtocol(_ApnsProtocol):
        APNS_SERVER = host
        APNS_PORT = port
        retry_after_by_id = retry_after
        shared_auth_provider = provider
        liveness_timeout = liveness

    return _EndpointProtocol
