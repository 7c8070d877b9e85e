"""A local stand-in for a browser push service (FCM's, Mozilla's, Apple's Web Push endpoint).

It listens on https://127.0.0.1:<port> with a throw-away CA (:mod:`tests.fakes.tls`) and hands
out subscriptions whose keys it holds, exactly as a browser would after
``pushManager.subscribe``::

    service = FakePushService(tmp_path)
    await service.start()
    token = service.subscription()          # the PushSubscription JSON a web device stores
    ... the server pushes ...
    [request] = await service.wait_for(1)
    request.payload["challenge_id"]         # decrypted with the subscription's private key
    await service.stop()                    # raises on wire-format violations

Every ``POST /push/<id>`` is checked the way a real push service checks it (RFC 8030, 8291,
8292): ``Authorization: vapid t=<JWT>, k=<key>`` with an ES256 JWT verified against ``k``
(PyJWT, not the product's own signing code), ``aud`` = this service's origin, ``exp`` in the
future and at most 24 hours ahead, a ``sub`` that is a mailto: or https: contact; ``TTL``,
``Urgency``, ``Topic`` and ``Content-Encoding: aes128gcm`` headers; and a body that *decrypts*
(with ``http-ece``, an implementation independent of the product's) for the subscription. The
plaintext is recorded. Anything off is recorded in :attr:`violations` and answered 400/401/403.

Failures can be injected: :meth:`fail_next` (429 with ``Retry-After``, 500, ...) and
:meth:`unsubscribe` (the subscription is gone: 410, or 404). Only the fakes' shape
(:class:`tests.fakes.base.PushFake`) is shared with the APNs and FCM fakes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import secrets
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import h11
import http_ece
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import ConnectionTerminated, DataReceived, RequestReceived, StreamEnded
from h2.exceptions import H2Error

from tests.fakes.base import Reply as _Reply
from tests.fakes.base import StreamPushFake
from tests.fakes.tls import TlsFiles

_PATH = re.compile(r"^/push/([A-Za-z0-9_-]{1,64})$")
_TOPIC = re.compile(r"[A-Za-z0-9_-]{1,32}")
_AUTH = re.compile(r"vapid\s+t=([A-Za-z0-9_.-]+)\s*,\s*k=([A-Za-z0-9_-]+)")
_MAX_BODY = 4096
_MAX_JWT_SECONDS = 24 * 3600


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def b64u_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class PushRequest:
    """One push as received: headers, the verified JWT claims, the decrypted payload."""

    subscription: str  # the id in the endpoint path
    headers: dict[str, str]
    claims: dict[str, Any] = field(default_factory=dict)
    vapid_key: str = ""  # the k= parameter
    plaintext: bytes = b""
    payload: dict[str, Any] = field(default_factory=dict)
    ttl: int | None = None
    topic: str = ""
    urgency: str = ""
    status: int = 0
    received_at: float = 0.0  # time.monotonic() on arrival
    body: bytes = b""  # as received (encrypted)


@dataclass
class _Subscription:
    private_key: ec.EllipticCurvePrivateKey
    auth: bytes
    gone: int = 0  # 404 or 410 once unsubscribed


@dataclass
class _Failure:
    status: int
    retry_after: str | None
    location: str | None = None


class FakePushService(StreamPushFake[PushRequest]):
    """See the module docstring."""

    label = "Web Push fake"
    tls_folder = "webpush-fake-tls"

    def __init__(self, directory: Path, *, tls: TlsFiles | None = None, http2: bool = True) -> None:
        super().__init__(directory, tls)
        #: offer HTTP/2 (ALPN h2) besides HTTP/1.1, as the browsers' push services do
        self.http2 = http2
        #: connections per negotiated protocol ("h2", "http/1.1")
        self.protocols: dict[str, int] = {}
        self._subscriptions: dict[str, _Subscription] = {}
        self._verified: dict[tuple[str, str], dict[str, Any]] = {}
        self._failures: list[_Failure] = []
        #: when set, the only VAPID public key (``k=``, base64url) accepted
        self.expected_vapid_key: str | None = None
        #: called with each request on arrival, before it is answered (a test moves its
        #: clock at an exact point this way, without sleeping)
        self.on_request: Callable[[PushRequest], None] | None = None

    # -- life cycle --------------------------------------------------------------------------

    @property
    def origin(self) -> str:
        """``https://127.0.0.1:<port>``: the JWT's ``aud`` and the allow-list entry."""
        if not self.url:
            raise RuntimeError("start() the fake first")
        return self.url

    async def start(self) -> None:
        """Listen on an ephemeral port of 127.0.0.1 with TLS (HTTP/1.1)."""
        await self._listen(alpn=["h2", "http/1.1"] if self.http2 else ["http/1.1"])

    # -- behaviour ---------------------------------------------------------------------------

    def subscription(self, sub_id: str | None = None) -> str:
        """A new subscription on this service, as the compact JSON of the browser's
        ``PushSubscription.toJSON()`` without ``expirationTime``."""
        sub_id = sub_id or secrets.token_urlsafe(16)
        key = ec.generate_private_key(ec.SECP256R1())
        auth = secrets.token_bytes(16)
        self._subscriptions[sub_id] = _Subscription(key, auth)
        public = key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        return json.dumps(
            {
                "endpoint": f"{self.origin}/push/{sub_id}",
                "keys": {"p256dh": b64u(public), "auth": b64u(auth)},
            },
            separators=(",", ":"),
        )

    @staticmethod
    def subscription_id(token: str) -> str:
        """The id in a subscription's endpoint."""
        return str(json.loads(token)["endpoint"]).rsplit("/", 1)[1]

    def unsubscribe(self, token_or_id: str, status: int = 410) -> None:
        """The subscription is gone: pushes to it are answered ``status`` (410 or 404)."""
        sub_id = self.subscription_id(token_or_id) if "{" in token_or_id else token_or_id
        self._subscriptions[sub_id].gone = status

    def fail_next(
        self, n: int, status: int, retry_after: str | None = None, location: str | None = None
    ) -> None:
        """Answer the next ``n`` well-formed pushes with ``status`` (429, 500, 503, or a
        redirect to ``location``)."""
        self._failures.extend(_Failure(status, retry_after, location) for _ in range(n))

    def received_for(self, token_or_id: str) -> list[PushRequest]:
        """The pushes received for one subscription."""
        sub_id = self.subscription_id(token_or_id) if "{" in token_or_id else token_or_id
        return [r for r in self.requests if r.subscription == sub_id]

    # -- HTTP/1.1 over TLS (h11)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = self._opened(writer)
        ssl_object = writer.get_extra_info("ssl_object")
        protocol = (ssl_object.selected_alpn_protocol() if ssl_object else None) or "http/1.1"
        self.protocols[protocol] = self.protocols.get(protocol, 0) + 1
        self._notify()
        if protocol == "h2":
            await self._h2_connection(reader, writer, task)
            return
        try:
            await self._serve_h11(
                reader,
                writer,
                max_event_size=65536,
                max_body=1 << 20,
            )
        except (h11.ProtocolError, ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass  # the client went away or spoke garbage
        except asyncio.CancelledError:
            pass  # stop()
        finally:
            await self._closed(writer, task)

    async def _h2_connection(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        task: asyncio.Task[None],
    ) -> None:
        conn = H2Connection(H2Configuration(client_side=False, header_encoding="utf-8"))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        streams: dict[int, tuple[dict[str, str], bytearray]] = {}
        answering: set[asyncio.Task[None]] = set()

        async def answer(stream_id: int, headers: dict[str, str], body: bytes) -> None:
            method, target = headers.pop(":method", ""), headers.pop(":path", "")
            for pseudo in (":scheme", ":authority"):
                headers.pop(pseudo, None)
            reply = await self._handle(method, target, headers, body)
            if writer.is_closing():
                return
            with contextlib.suppress(H2Error):
                out = [(":status", str(reply.status)), ("content-length", str(len(reply.body)))]
                conn.send_headers(stream_id, out + reply.headers, end_stream=not reply.body)
                if reply.body:
                    conn.send_data(stream_id, reply.body, end_stream=True)
                writer.write(conn.data_to_send())

        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                for event in conn.receive_data(data):
                    if isinstance(event, RequestReceived):
                        streams[event.stream_id] = (dict(event.headers), bytearray())  # type: ignore[arg-type]
                    elif isinstance(event, DataReceived):
                        if event.stream_id in streams:
                            streams[event.stream_id][1].extend(event.data)
                        conn.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                    elif isinstance(event, StreamEnded) and event.stream_id in streams:
                        headers, body = streams.pop(event.stream_id)
                        job = asyncio.ensure_future(answer(event.stream_id, headers, bytes(body)))
                        answering.add(job)
                        job.add_done_callback(answering.discard)
                    elif isinstance(event, ConnectionTerminated):
                        return
                writer.write(conn.data_to_send())
        except (H2Error, ConnectionError, ssl.SSLError):
            pass
        except asyncio.CancelledError:
            pass  # stop()
        finally:
            for job in answering:
                job.cancel()
            await self._closed(writer, task)

    async def _dispatch(self, request: h11.Request, body: bytes) -> _Reply:
        target = request.target.decode("ascii", "replace")
        headers = {k.decode().lower(): v.decode("latin-1") for k, v in request.headers}
        return await self._handle(request.method.decode("ascii", "replace"), target, headers, body)

    async def _handle(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> _Reply:
        match = _PATH.match(urlsplit(target).path)
        if method != "POST" or match is None:
            self._violation(f"{method} {target}: only POST /push/<id> exists")
            return _Reply(404)
        record = PushRequest(match.group(1), headers, received_at=time.monotonic(), body=body)
        self.requests.append(record)
        self._notify()
        if self.on_request is not None:
            self.on_request(record)
        reply = self._answer(record, body)
        if self.delay > 0:
            assert self._stopping is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.delay)
        record.status = reply.status
        self._notify()
        return reply

    def _answer(self, record: PushRequest, body: bytes) -> _Reply:
        headers = record.headers
        subscription = self._subscriptions.get(record.subscription)
        if subscription is None:
            return _Reply(404, b'{"reason":"no such subscription"}')
        problems = self._check_vapid(record)
        if problems:
            for problem in problems:
                self._violation(f"vapid: {problem}")
            return _Reply(401 if "missing" in problems[0] else 403, b'{"reason":"BadJwtToken"}')
        ttl = headers.get("ttl", "")
        if not ttl.isdigit():
            problems.append(f"TTL {ttl!r} is not a non-negative integer")
        else:
            record.ttl = int(ttl)
        record.urgency = headers.get("urgency", "")
        if record.urgency != "high":
            problems.append(f"Urgency {record.urgency!r}, expected high")
        record.topic = headers.get("topic", "")
        if not _TOPIC.fullmatch(record.topic):
            problems.append(f"Topic {record.topic!r} is not 1-32 URL-safe base64 characters")
        if headers.get("content-encoding") != "aes128gcm":
            problems.append(f"Content-Encoding {headers.get('content-encoding')!r}")
        if len(body) > _MAX_BODY:
            return _Reply(413, b'{"reason":"PayloadTooLarge"}')
        if not problems:
            try:
                record.plaintext = http_ece.decrypt(
                    body,
                    private_key=subscription.private_key,
                    auth_secret=subscription.auth,
                    version="aes128gcm",
                )
                record.payload = json.loads(record.plaintext)
            except Exception as exc:  # any failure to decrypt is the sender's fault
                problems.append(f"the body does not decrypt for the subscription: {exc!r}")
        if problems:
            for problem in problems:
                self._violation(problem)
            return _Reply(400, b'{"reason":"BadRequest"}')
        if subscription.gone:
            return _Reply(subscription.gone, b'{"reason":"Unregistered"}')
        if self._failures:
            failure = self._failures.pop(0)
            extra = [("retry-after", failure.retry_after)] if failure.retry_after else []
            if failure.location:
                extra.append(("location", failure.location))
            return _Reply(failure.status, b'{"reason":"injected"}', extra)
        location = f"{self.origin}/message/{secrets.token_urlsafe(12)}"
        return _Reply(201, headers=[("location", location)])

    def _check_vapid(self, record: PushRequest) -> list[str]:
        match = _AUTH.fullmatch(record.headers.get("authorization", "").strip())
        if match is None:
            return ["missing or malformed Authorization: vapid t=..., k=..."]
        token, key_text = match.groups()
        record.vapid_key = key_text
        if self.expected_vapid_key is not None and key_text != self.expected_vapid_key:
            return [f"k={key_text} is not the server's VAPID key"]
        try:
            public = ec.EllipticCurvePublicKey.from_encoded_point(
                ec.SECP256R1(), b64u_decode(key_text)
            )
        except ValueError:
            return ["k= is not a P-256 point"]
        cached = self._verified.get((token, key_text))
        if cached is not None:  # a push service checks a JWT once, then only its expiry
            record.claims = cached
            if int(cached["exp"]) <= time.time():
                return ["JWT expired"]
            return []
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(
                token,
                public,
                algorithms=["ES256"],
                audience=self.origin,
                options={"require": ["aud", "exp", "sub"]},
            )
        except jwt.PyJWTError as exc:
            return [f"JWT rejected: {type(exc).__name__}: {exc}"]
        record.claims = claims
        problems = []
        if header.get("alg") != "ES256":
            problems.append(f"alg {header.get('alg')!r}")
        if int(claims["exp"]) > time.time() + _MAX_JWT_SECONDS:
            problems.append("exp is more than 24 hours ahead")
        sub = str(claims["sub"])
        if not (sub.startswith("mailto:") or sub.startswith("https://")):
            problems.append(f"sub {sub!r} is neither mailto: nor https:")
        if not problems:
            self._verified[(token, key_text)] = claims
        return problems
