"""Web Push (RFC 8030) to the browsers' push services: VAPID-signed, aes128gcm-encrypted.

One :meth:`WebPushTransport.send` is one ``POST`` to the subscription's endpoint:

* The endpoint's origin is checked against the allow-list first (it was checked when the
  subscription was stored, but the list may have shrunk since): an origin off the list gets
  no request at all and the subscription is reported dead (``INVALID_TOKEN``), so the device
  falls back to polling.
* The body is the payload of :func:`backend.domain.webpush.payload` encrypted for the
  subscription (RFC 8291 with RFC 8188 ``aes128gcm``, one record), done here with
  ``cryptography``: it is a few HMACs, one ECDH and one AES-GCM, and ``http-ece`` would add a
  dependency to do the same with the same library underneath.
* Headers: ``TTL`` = whole seconds until the challenge expires, ``Urgency: high``, ``Topic`` =
  a digest of the challenge id (a newer push for it replaces an undelivered one),
  ``Content-Encoding: aes128gcm`` and ``Authorization: vapid t=<JWT>, k=<key>``.

What the service answers is classified: 2xx delivered; 404 and 410 a dead subscription; 429
and 5xx (and timeouts, refused connections) worth a retry, with ``Retry-After``; anything else
(400, 401, 403, 413, ...) a failure with the service's reason. Retrying is the dispatcher's
job. Redirects are never followed: a push service does not redirect, and following one would
take the request off the allow-list.

One :class:`httpx.AsyncClient` serves all origins, so connections to each push service are
kept open and reused.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import json
import logging
import math
import os
import ssl
import struct
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from backend.config import Settings
from backend.domain import webpush
from backend.domain.webpush import OriginAllowList, Subscription
from backend.errors import BadRequest, ConfigurationError
from backend.push.base import PushMessage, PushOutcome, PushResult, retry_after_seconds
from backend.push.vapid import VapidKey, VapidSigner

log = logging.getLogger("openmfa.push.webpush")

DEFAULT_TIMEOUT = 10.0
#: Pushes in flight to one push service at once (HTTP/2 streams on its one connection, or
#: HTTP/1.1 connections where it speaks only that), and services sending at once before
#: httpx's pool (of both multiplied) would queue.
CONNECTIONS_PER_ORIGIN = 32
MAX_ORIGINS = 8
#: The record size we announce; push services take bodies of at most 4096 bytes.
RECORD_SIZE = 4096
MAX_BODY = 4096
_HEADER_BYTES = 16 + 4 + 1 + 65  # salt, rs, idlen, keyid (RFC 8188 section 2.1)
_TAG_BYTES = 16


def encrypt(plaintext: bytes, subscription: Subscription, salt: bytes | None = None) -> bytes:
    """``plaintext`` as an ``aes128gcm`` body for ``subscription`` (RFC 8291 section 3.4).

    A fresh ephemeral key and salt each time: a key/nonce pair is never used twice.
    """
    ua_public = subscription.p256dh
    ua_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), ua_public)
    as_private = ec.generate_private_key(ec.SECP256R1())
    as_public = as_private.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    ecdh_secret = as_private.exchange(ec.ECDH(), ua_key)
    # HKDF-SHA-256 with single-block outputs, written out as RFC 8291 does.
    prk_key = _hmac(subscription.auth, ecdh_secret)
    ikm = _hmac(prk_key, b"WebPush: info\x00" + ua_public + as_public + b"\x01")
    salt = salt if salt is not None else os.urandom(16)
    prk = _hmac(salt, ikm)
    cek = _hmac(prk, b"Content-Encoding: aes128gcm\x00\x01")[:16]
    nonce = _hmac(prk, b"Content-Encoding: nonce\x00\x01")[:12]
    # One record, the last: the plaintext, then the 0x02 delimiter, no padding.
    ciphertext = AESGCM(cek).encrypt(nonce, plaintext + b"\x02", None)
    return salt + struct.pack("!IB", RECORD_SIZE, len(as_public)) + as_public + ciphertext


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def max_plaintext() -> int:
    """The largest payload that fits one push body."""
    return MAX_BODY - _HEADER_BYTES - _TAG_BYTES - 1


@functools.lru_cache(maxsize=4096)
def _parsed(token: str) -> Subscription | None:
    """A stored token parsed once (the hot path sees the same subscriptions over and over);
    None for one that no longer parses."""
    try:
        return webpush.parse_subscription(token)
    except BadRequest:
        return None


def ssl_context(ca_file: Path | None) -> ssl.SSLContext:
    """The system's trust store, plus ``ca_file`` when given (tests, private relays)."""
    context = ssl.create_default_context()
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(f"webpush_ca_file {ca_file} is unusable: {exc}") from exc
    return context


class WebPushTransport:
    """The ``webpush`` transport (:class:`backend.push.base.PushTransport`)."""

    name = "webpush"

    def __init__(
        self,
        *,
        key: VapidKey,
        subject: str,
        allowed: OriginAllowList,
        ca_file: Path | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        per_origin: int = CONNECTIONS_PER_ORIGIN,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.signer = VapidSigner(key, webpush.check_subject(subject))
        self._clock = clock  # the challenge service's clock: TTL = its expiry minus now
        self.allowed = allowed
        self._client = httpx.AsyncClient(
            verify=ssl_context(ca_file),
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            limits=httpx.Limits(
                max_connections=per_origin * MAX_ORIGINS,
                max_keepalive_connections=per_origin * MAX_ORIGINS,
                keepalive_expiry=60.0,
            ),
            follow_redirects=False,
            # One multiplexed connection per push service where it speaks HTTP/2 (FCM, Apple
            # and Mozilla do), HTTP/1.1 otherwise.
            http2=True,
            # No proxy from the environment: pushes go straight to the allow-listed origins.
            trust_env=False,
        )
        # Requests wait here, per push service, rather than in httpx's pool: its queue is
        # scanned against every connection each time one frees up, which costs more than the
        # push itself with a few hundred waiting, and a few connections per service carry
        # more pushes per second than many (measured with bench/webpush.py).
        self._per_origin = per_origin
        self._in_flight: dict[str, asyncio.Semaphore] = {}
        self.requests_made = 0  # POSTs sent (tests: an off-list origin never gets one)

    @classmethod
    def from_settings(cls, settings: Settings, key: VapidKey) -> WebPushTransport:
        """Build from the ``webpush_*`` settings; :class:`ConfigurationError` when unusable."""
        try:
            return cls(
                key=key,
                subject=subject_of(settings),
                allowed=OriginAllowList(settings.webpush_allowed_origins),
                ca_file=settings.webpush_ca_file,
                per_origin=min(CONNECTIONS_PER_ORIGIN, settings.push_concurrency),
            )
        except ValueError as exc:
            raise ConfigurationError(f"Web Push: {exc} (docs/push.md)") from exc

    async def send(self, message: PushMessage) -> PushResult:
        """One POST to the device's push endpoint, classified."""
        subscription = _parsed(message.token)
        if subscription is None:
            return PushResult(PushOutcome.INVALID_TOKEN, reason="not-a-subscription")
        if not self.allowed.allows(subscription.host, subscription.port):
            log.warning(
                "webpush: not sending to %s: the origin is not in webpush_allowed_origins",
                subscription.origin,
            )
            return PushResult(PushOutcome.INVALID_TOKEN, reason="origin-not-allowed")
        url = httpx.URL(subscription.endpoint)
        if (url.scheme, url.host, url.port or 443) != (
            "https",
            subscription.host,
            subscription.port,
        ):
            # The HTTP client would read the URL differently from the check: never send.
            return PushResult(PushOutcome.INVALID_TOKEN, reason="endpoint-ambiguous")
        plaintext = webpush.payload(
            message.challenge_id, message.display, message.expires_at, message.user
        )
        if len(plaintext) > max_plaintext():
            return PushResult(PushOutcome.FAILED, reason="payload-too-large")
        ttl = max(0, math.floor((message.expires_at - self._clock()).total_seconds()))
        headers = {
            "TTL": str(ttl),
            "Urgency": "high",
            "Topic": webpush.topic_for(message.challenge_id),
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
            "Authorization": self.signer.authorization(subscription.origin),
        }
        body = encrypt(plaintext, subscription)
        self.requests_made += 1
        try:
            async with self._slot(subscription.origin):
                response = await self._client.post(url, content=body, headers=headers)
        except httpx.TimeoutException:
            return PushResult(PushOutcome.RETRY, reason="timeout")
        except httpx.TransportError as exc:
            if _certificate_problem(exc):
                return PushResult(PushOutcome.FAILED, reason="tls-certificate-not-trusted")
            return PushResult(PushOutcome.RETRY, reason=f"connection-{type(exc).__name__}")
        return self._classify(subscription, response)

    def _slot(self, origin: str) -> asyncio.Semaphore:
        slot = self._in_flight.get(origin)
        if slot is None:
            slot = self._in_flight[origin] = asyncio.Semaphore(self._per_origin)
        return slot

    def _classify(self, subscription: Subscription, response: httpx.Response) -> PushResult:
        status = response.status_code
        if 200 <= status < 300:
            return PushResult(PushOutcome.DELIVERED, status)
        reason = _reason(response)
        if status in (404, 410):
            return PushResult(PushOutcome.INVALID_TOKEN, status, reason or "gone")
        if status == 429 or status >= 500:
            return PushResult(
                PushOutcome.RETRY,
                status,
                reason,
                retry_after_seconds(response.headers.get("retry-after")),
            )
        if status in (401, 403):
            # Perhaps our JWT: the next send signs a fresh one.
            self.signer.forget(subscription.origin)
        return PushResult(PushOutcome.FAILED, status, reason)

    async def close(self) -> None:
        """Close the kept-open connections."""
        await self._client.aclose()


def _reason(response: httpx.Response) -> str:
    """The service's word for a refusal (Apple: ``reason``; Mozilla: ``message``/``errno``),
    cut short and printable, or the status phrase."""
    text = ""
    try:
        data = json.loads(response.content[:2048])
    except ValueError:
        data = None
    if isinstance(data, dict):
        for field in ("reason", "error", "message", "errno"):
            if isinstance(data.get(field), str | int):
                text = str(data[field])
                break
    if not text:
        text = response.reason_phrase or ""
    cleaned = "".join(ch if ch.isascii() and ch.isprintable() else "?" for ch in text)
    return cleaned.replace(" ", "-")[:64]


def _certificate_problem(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def subject_of(settings: Settings) -> str:
    """The VAPID ``sub``: the ``webpush_subject`` setting (checked), else the first valid of
    the public URL when it is https, a mailto: to ``mail_from``, ``https://`` and the public
    URL's host."""
    if settings.webpush_subject:
        return webpush.check_subject(settings.webpush_subject)
    public = settings.resolved_public_url
    host = public.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
    candidates = [public] if public.startswith("https://") else []
    if settings.mail_from:
        candidates.append(f"mailto:{settings.mail_from}")
    candidates.append(f"https://{host}")
    for candidate in candidates:
        try:
            return webpush.check_subject(candidate)
        except ValueError:
            continue
    return "https://localhost"
