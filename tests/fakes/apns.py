"""A local APNs provider endpoint: HTTP/2 over TLS on 127.0.0.1, built on the sans-IO ``h2``
state machine and an asyncio protocol, that the real ``aioapns`` client talks to.

It checks what Apple checks and what our contract promises (docs/push.md): ALPN ``h2``,
``POST /3/device/<hex token>``, ``apns-topic``, ``apns-push-type: alert``, ``apns-priority: 10``,
a numeric ``apns-expiration``, ``apns-collapse-id``, an ES256 provider token in
``authorization: bearer ...`` whose signature verifies against the test key's public half
(verified here with ``cryptography``, not with the PyJWT that signed it) and which carries
``iss`` (team id), ``iat`` and the ``kid`` (key id) header, and a JSON payload of exactly
``{"aps": {"alert": {"title", "body"}, "mutable-content": 1}, "challenge_id"}``.
A request that breaks a rule is answered the way Apple would answer it *and* recorded in
:attr:`ApnsFake.violations`; :meth:`ApnsFake.stop` raises when any were recorded, so a test
that forgot to look still fails.

    key = make_apns_key(tmp_path)
    fake = ApnsFake(tmp_path, key=key, topic="org.openmfa.app")
    await fake.start()            # fake.url, fake.ca_file
    fake.fail_token(token, 410, "Unregistered")
    fake.fail_next(1, 429, "TooManyRequests", retry_after="3")
    fake.hold() / fake.release()  # keep answers back (timeouts); fake.delay = 0.2
    fake.frozen = True            # ignore every byte, PINGs included (a dead path)
    await fake.wait_for(1)        # fake.requests[0].headers, .payload, .jwt_claims
    await fake.stop()
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import re
import secrets
import string
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    PingReceived,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import H2Error, ProtocolError
from h2.settings import SettingCodes

from tests.fakes.base import PushFake
from tests.fakes.tls import TlsFiles

#: Apple's limit for a regular (non-VoIP) notification payload.
MAX_PAYLOAD_BYTES = 4096
#: Apple refuses provider tokens issued more than an hour ago.
MAX_TOKEN_AGE_SECONDS = 3600

_TOKEN_PATH = re.compile(r"/3/device/(?P<token>[^/?#]+)")
_HEX = re.compile(r"[0-9A-Fa-f]+")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


class ApnsKey(NamedTuple):
    """A test APNs auth key as Apple hands it out, plus what the fake needs to check it."""

    p8_path: Path
    key_id: str
    team_id: str
    public_key: ec.EllipticCurvePublicKey


def make_apns_key(directory: Path) -> ApnsKey:
    """Write a fresh ``AuthKey_<KEYID>.p8`` (PKCS#8 PEM, EC P-256) into ``directory``.

    The key id and team id are random 10-character identifiers in Apple's alphabet.
    """
    alphabet = string.ascii_uppercase + string.digits
    key_id = "".join(secrets.choice(alphabet) for _ in range(10))
    team_id = "".join(secrets.choice(alphabet) for _ in range(10))
    private = ec.generate_private_key(ec.SECP256R1())
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"AuthKey_{key_id}.p8"
    path.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return ApnsKey(path, key_id, team_id, private.public_key())


@dataclass
class ApnsRequest:
    """One request as the fake parsed it, and how it was answered."""

    connection: int
    stream_id: int
    headers: dict[str, str]
    body: bytes
    received_at: float  # time.monotonic()
    method: str = ""
    path: str = ""
    token: str = ""
    payload: Any = None  # the parsed JSON body, or None when it was not JSON
    jwt_header: dict[str, Any] | None = None
    jwt_claims: dict[str, Any] | None = None
    violations: list[str] = field(default_factory=list)
    status: int | None = None  # what the fake answered; None while held back or dropped
    reason: str = ""
    reset: bool = False  # the client cancelled the stream (RST_STREAM) before an answer


@dataclass(frozen=True, slots=True)
class _Failure:
    status: int
    reason: str
    retry_after: str | None = None


class _JwtError(Exception):
    pass


def _b64url(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def verify_es256(token: str, public_key: ec.EllipticCurvePublicKey) -> tuple[Any, Any]:
    """Verify a compact JWS signed with ES256; return its (header, claims) or raise."""
    parts = token.split(".")
    if len(parts) != 3:
        raise _JwtError("the provider token is not a compact JWS (three dot-separated parts)")
    try:
        header = json.loads(_b64url(parts[0]))
        claims = json.loads(_b64url(parts[1]))
        signature = _b64url(parts[2])
    except (ValueError, binascii.Error) as exc:
        raise _JwtError(f"the provider token does not decode: {exc}") from None
    if not isinstance(header, dict) or header.get("alg") != "ES256":
        raise _JwtError(f"the provider token's alg is not ES256: {header!r}")
    if len(signature) != 64:  # JWS uses raw r || s, 32 bytes each for P-256
        raise _JwtError(f"the ES256 signature is {len(signature)} bytes, not 64 (r || s)")
    der = encode_dss_signature(
        int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    )
    try:
        public_key.verify(der, f"{parts[0]}.{parts[1]}".encode("ascii"), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise _JwtError("the provider token's signature does not verify") from None
    return header, claims


class ApnsFake(PushFake[ApnsRequest]):
    """An APNs endpoint on 127.0.0.1 that checks the wire format; see the module docstring."""

    label = "APNs fake"
    tls_folder = "apns-fake-tls"

    def __init__(
        self,
        directory: Path,
        *,
        key: ApnsKey,
        topic: str,
        tls: TlsFiles | None = None,
        check_payload: bool = True,
        max_concurrent_streams: int = 1000,
    ) -> None:
        super().__init__(directory, tls)
        self.key = key
        self.topic = topic
        self.check_payload = check_payload
        self.max_concurrent_streams = max_concurrent_streams
        #: True: every byte received is ignored, as on a path that silently died
        self.frozen = False
        #: HTTP/2 PINGs received (and answered)
        self.pings = 0
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._next: list[_Failure] = []
        self._tokens: dict[str, _Failure] = {}
        self._drop = 0
        self._holding = False
        self._held: list[Callable[[], None]] = []
        self._timers: set[asyncio.TimerHandle] = set()

    # -- life cycle --------------------------------------------------------------------------

    @property
    def open_connections(self) -> int:
        """HTTP/2 connections currently open."""
        return len(self._connections)

    async def start(self) -> None:
        """Listen on an ephemeral port of 127.0.0.1 with TLS and ALPN ``h2``."""
        tls = self._starting()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self),
            host="127.0.0.1",
            port=0,
            ssl=tls.server_context(alpn=["h2"]),
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"https://127.0.0.1:{self.port}"

    async def stop(self, *, check: bool = True, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Close the listener and every connection; with ``check``, raise on violations."""
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        self._held.clear()
        if self._server is not None:
            self._server.close()
            for connection in list(self._connections):
                connection.close()
            try:
                await self.wait_until(lambda: not self._connections, timeout, "connections closed")
            except AssertionError:
                for connection in list(self._connections):
                    connection.abort()
                await self.wait_until(lambda: not self._connections, timeout, "connections aborted")
            await self._server.wait_closed()
            self._server = None
        if check:
            self.assert_clean()

    # -- behaviour ---------------------------------------------------------------------------

    def fail_token(
        self, token: str, status: int, reason: str, retry_after: str | None = None
    ) -> None:
        """Answer every request for ``token`` with ``status`` / ``reason`` from now on."""
        self._tokens[token.lower()] = _Failure(status, reason, retry_after)

    def fail_next(self, n: int, status: int, reason: str, retry_after: str | None = None) -> None:
        """Answer the next ``n`` requests (any token) with ``status`` / ``reason``."""
        self._next.extend([_Failure(status, reason, retry_after)] * n)

    def drop_next(self, n: int = 1) -> None:
        """Record the next ``n`` requests, then drop their connection without an answer."""
        self._drop += n

    def clear_failures(self) -> None:
        """Forget every :meth:`fail_token` / :meth:`fail_next` / :meth:`drop_next`."""
        self._tokens.clear()
        self._next.clear()
        self._drop = 0

    def hold(self) -> None:
        """Keep the answers to requests from now on back until :meth:`release`."""
        self._holding = True

    def release(self) -> None:
        """Send every held answer (those whose stream the client reset are dropped)."""
        self._holding = False
        held, self._held = self._held, []
        for send in held:
            send()

    @property
    def held(self) -> int:
        """Answers currently held back."""
        return len(self._held)

    # -- request handling (called by _Connection) --------------------------------------------

    def _connected(self, connection: _Connection) -> None:
        self.connections_made += 1
        connection.number = self.connections_made
        self._connections.add(connection)
        self._notify()

    def _disconnected(self, connection: _Connection) -> None:
        self._connections.discard(connection)
        self._notify()

    def _request(self, connection: _Connection, stream: _Stream) -> None:
        request = ApnsRequest(
            connection=connection.number,
            stream_id=stream.stream_id,
            headers=stream.headers,
            body=bytes(stream.body),
            received_at=time.monotonic(),
        )
        stream.request = request
        problems = self._check(request) + stream.problems
        for text, _, _ in problems:
            request.violations.append(text)
            self._violation(f"{request.method} {request.path}: {text}")
        self.requests.append(request)
        self._notify()

        if self._drop:
            self._drop -= 1
            connection.abort()
            return
        if problems:
            answer = _Failure(problems[0][1], problems[0][2])
        elif self._next:
            answer = self._next.pop(0)
        else:
            answer = self._tokens.get(request.token.lower(), _Failure(200, ""))

        def send() -> None:
            connection.answer(stream, answer)
            self._notify()

        if self._holding:
            self._held.append(send)
        elif self.delay > 0:
            loop = asyncio.get_running_loop()
            timer: asyncio.TimerHandle

            def fire() -> None:
                self._timers.discard(timer)
                send()

            timer = loop.call_later(self.delay, fire)
            self._timers.add(timer)
        else:
            send()

    def _check(self, request: ApnsRequest) -> list[tuple[str, int, str]]:
        """Every rule the request breaks: (what, the status and reason Apple would answer)."""
        problems: list[tuple[str, int, str]] = []
        headers = request.headers

        def bad(text: str, status: int, reason: str) -> None:
            problems.append((text, status, reason))

        request.method = headers.get(":method", "")
        request.path = headers.get(":path", "")
        if request.method != "POST":
            bad(f":method is {request.method!r}, expected 'POST'", 405, "MethodNotAllowed")
        if headers.get(":scheme") != "https":
            bad(f":scheme is {headers.get(':scheme')!r}, expected 'https'", 400, "BadRequest")
        match = _TOKEN_PATH.fullmatch(request.path)
        if match is None:
            bad(f":path {request.path!r} is not /3/device/<token>", 404, "BadPath")
        else:
            request.token = match["token"]
            if not _HEX.fullmatch(request.token):
                bad("the device token is not hexadecimal", 400, "BadDeviceToken")

        topic = headers.get("apns-topic")
        if topic is None:
            bad("apns-topic is missing", 400, "MissingTopic")
        elif topic != self.topic:
            bad(f"apns-topic is {topic!r}, expected {self.topic!r}", 400, "TopicDisallowed")
        push_type = headers.get("apns-push-type")
        if push_type != "alert":
            bad(f"apns-push-type is {push_type!r}, expected 'alert'", 400, "InvalidPushType")
        priority = headers.get("apns-priority")
        if priority != "10":
            bad(f"apns-priority is {priority!r}, expected '10'", 400, "BadPriority")
        expiration = headers.get("apns-expiration")
        if expiration is None or not expiration.isdigit():
            bad(
                f"apns-expiration is {expiration!r}, expected epoch seconds",
                400,
                "BadExpirationDate",
            )
        collapse = headers.get("apns-collapse-id")
        if not collapse or len(collapse.encode()) > 64:
            bad(f"apns-collapse-id is {collapse!r}, expected 1-64 bytes", 400, "BadCollapseId")
        apns_id = headers.get("apns-id")
        if apns_id is not None and not _UUID.fullmatch(apns_id):
            bad(f"apns-id {apns_id!r} is not a UUID", 400, "BadMessageId")

        self._check_token(request, bad)
        self._check_body(request, collapse, bad)
        return problems

    def _check_token(self, request: ApnsRequest, bad: Callable[[str, int, str], None]) -> None:
        authorization = request.headers.get("authorization")
        if authorization is None:
            bad("authorization is missing", 403, "MissingProviderToken")
            return
        scheme, _, token = authorization.partition(" ")
        if scheme != "bearer" or not token:
            bad("authorization is not 'bearer <token>'", 403, "InvalidProviderToken")
            return
        try:
            header, claims = verify_es256(token, self.key.public_key)
        except _JwtError as exc:
            bad(str(exc), 403, "InvalidProviderToken")
            return
        request.jwt_header, request.jwt_claims = header, claims
        if header.get("kid") != self.key.key_id:
            bad(
                f"the provider token's kid is {header.get('kid')!r}, expected {self.key.key_id!r}",
                403,
                "InvalidProviderToken",
            )
        if not isinstance(claims, dict):
            bad("the provider token's claims are not an object", 403, "InvalidProviderToken")
            return
        if claims.get("iss") != self.key.team_id:
            bad(
                f"the provider token's iss is {claims.get('iss')!r}, "
                f"expected the team id {self.key.team_id!r}",
                403,
                "InvalidProviderToken",
            )
        iat = claims.get("iat")
        now = time.time()
        if not isinstance(iat, int) or isinstance(iat, bool):
            bad(f"the provider token's iat is {iat!r}, not an integer", 403, "InvalidProviderToken")
        elif iat < now - MAX_TOKEN_AGE_SECONDS:
            bad("the provider token is older than an hour", 403, "ExpiredProviderToken")
        elif iat > now + 60:
            bad("the provider token is issued in the future", 403, "InvalidProviderToken")

    def _check_body(
        self, request: ApnsRequest, collapse: str | None, bad: Callable[[str, int, str], None]
    ) -> None:
        body = request.body
        if not body:
            bad("the payload is empty", 400, "PayloadEmpty")
            return
        if len(body) > MAX_PAYLOAD_BYTES:
            bad(f"the payload is {len(body)} bytes (> {MAX_PAYLOAD_BYTES})", 413, "PayloadTooLarge")
        try:
            request.payload = json.loads(body.decode("utf-8"))
        except ValueError:
            bad("the payload is not UTF-8 JSON", 400, "BadRequest")
            return
        payload = request.payload
        if not isinstance(payload, dict) or not isinstance(payload.get("aps"), dict):
            bad("the payload has no 'aps' dictionary", 400, "BadRequest")
            return
        if not self.check_payload:
            return
        # Our contract (docs/push.md): nothing but the challenge id and the display string.
        contract = "FakeContractViolation"
        if set(payload) != {"aps", "challenge_id"}:
            bad(f"top-level keys are {sorted(payload)}, not aps and challenge_id", 400, contract)
        aps = payload["aps"]
        if set(aps) != {"alert", "mutable-content"}:
            bad(f"aps keys are {sorted(aps)}, expected alert and mutable-content", 400, contract)
        if aps.get("mutable-content") != 1:
            bad(f"mutable-content is {aps.get('mutable-content')!r}, expected 1", 400, contract)
        alert = aps.get("alert")
        if (
            not isinstance(alert, dict)
            or set(alert) != {"title", "body"}
            or alert.get("title") != "OpenMFA"
            or not isinstance(alert.get("body"), str)
        ):
            bad(f"alert is {alert!r}, expected title 'OpenMFA' and a body", 400, contract)
        challenge_id = payload.get("challenge_id")
        if not isinstance(challenge_id, str) or not challenge_id:
            bad(f"challenge_id is {challenge_id!r}, expected a string", 400, contract)
        elif collapse is not None and challenge_id != collapse:
            bad("apns-collapse-id is not the challenge id", 400, contract)


@dataclass
class _Stream:
    stream_id: int
    headers: dict[str, str]
    problems: list[tuple[str, int, str]]
    body: bytearray = field(default_factory=bytearray)
    request: ApnsRequest | None = None
    reset: bool = False
    pending: bytes = b""  # answer body waiting for flow-control window


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class _Connection(asyncio.Protocol):
    """One client connection: bytes in, h2 events, answers out."""

    def __init__(self, fake: ApnsFake) -> None:
        self.fake = fake
        self.number = 0  # set once connected: 1 for the fake's first connection
        self.h2 = H2Connection(H2Configuration(client_side=False, header_encoding="utf-8"))
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, _Stream] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.fake._connected(self)
        ssl_object = transport.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        if alpn != "h2":
            self.fake._violation(f"connection {self.number}: ALPN negotiated {alpn!r}, not 'h2'")
        self.h2.initiate_connection()
        self.h2.update_settings(
            {SettingCodes.MAX_CONCURRENT_STREAMS: self.fake.max_concurrent_streams}
        )
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.fake._disconnected(self)

    def data_received(self, data: bytes) -> None:
        if self.fake.frozen:
            return
        try:
            events = self.h2.receive_data(data)
        except ProtocolError as exc:
            self.fake._violation(f"connection {self.number}: HTTP/2 protocol error: {exc}")
            self.flush()
            self.close()
            return
        for event in events:
            if isinstance(event, RequestReceived):
                headers: dict[str, str] = {}
                problems: list[tuple[str, int, str]] = []
                for name, value in event.headers:
                    key = _text(name)
                    if key in headers:
                        problems.append((f"header {key} sent twice", 400, "BadRequest"))
                    headers[key] = _text(value)
                self.streams[event.stream_id] = _Stream(event.stream_id, headers, problems)
            elif isinstance(event, DataReceived):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.body += event.data
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, StreamEnded):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    self.fake._request(self, stream)
            elif isinstance(event, StreamReset):
                stream = self.streams.pop(event.stream_id, None)
                if stream is not None:
                    stream.reset = True
                    if stream.request is not None:
                        stream.request.reset = True
                    self.fake._notify()
            elif isinstance(event, WindowUpdated):
                for stream in list(self.streams.values()):
                    if stream.pending:
                        self._send_body(stream)
            elif isinstance(event, PingReceived):
                self.fake.pings += 1  # h2 queues the PING ACK itself
                self.fake._notify()
            elif isinstance(event, ConnectionTerminated):
                self.close()
        self.flush()

    def answer(self, stream: _Stream, failure: _Failure) -> None:
        """Send the answer for ``stream`` unless the client gave up on it or left."""
        request = stream.request
        assert request is not None
        if stream.reset or self.transport is None or self.transport.is_closing():
            return
        request.status, request.reason = failure.status, failure.reason
        headers = [
            (":status", str(failure.status)),
            ("apns-id", request.headers.get("apns-id") or str(uuid.uuid4())),
        ]
        body = b""
        if failure.status != 200:
            document: dict[str, Any] = {"reason": failure.reason}
            if failure.status == 410:
                document["timestamp"] = int(time.time() * 1000)
            body = json.dumps(document).encode()
            headers.append(("content-type", "application/json"))
            headers.append(("content-length", str(len(body))))
        if failure.retry_after is not None:
            headers.append(("retry-after", failure.retry_after))
        try:
            self.h2.send_headers(stream.stream_id, headers, end_stream=not body)
        except H2Error:  # the stream went away meanwhile
            self.streams.pop(stream.stream_id, None)
            return
        if body:
            stream.pending = body
            self._send_body(stream)
        else:
            self.streams.pop(stream.stream_id, None)
        self.flush()

    def _send_body(self, stream: _Stream) -> None:
        # A body goes out whole or waits for window: a peer that never returns window (no
        # WINDOW_UPDATE) then visibly stalls, as it would against Apple.
        if self.h2.local_flow_control_window(stream.stream_id) < len(stream.pending):
            return
        body, stream.pending = stream.pending, b""
        size = self.h2.max_outbound_frame_size
        chunks = [body[i : i + size] for i in range(0, len(body), size)]
        for index, chunk in enumerate(chunks):
            self.h2.send_data(stream.stream_id, chunk, end_stream=index == len(chunks) - 1)
        self.streams.pop(stream.stream_id, None)

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        """Say GOAWAY and close gracefully (TLS close_notify)."""
        if self.transport is None or self.transport.is_closing():
            return
        with contextlib.suppress(H2Error):
            self.h2.close_connection(error_code=ErrorCodes.NO_ERROR)
        self.flush()
        self.transport.close()

    def abort(self) -> None:
        """Drop the TCP connection at once."""
        if self.transport is not None:
            self.transport.abort()
