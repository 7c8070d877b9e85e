"""The privacyIDEA Authenticator as the tests play it, and a TLS front for the live server.

:class:`PiApp` does what the unmodified store app does on the wire (docs/dev/privacyidea-app-
protocol.md, section E), written from the app's documented behaviour, not from our server:
it parses the ``otpauth://pipush/`` QR (refusing ``v`` other than 1), rolls out with a form
POST carrying its RSA key as base64 SubjectPublicKeyInfo, parses the server key *only* as
PKCS#1 (an SPKI key fails, as in the app), polls with a raw, unescaped query signed over
``serial|timestamp`` with Dart's timestamp format, validates the whole poll answer before it
uses any of it (one malformed item drops them all, as the app does), verifies each challenge's
signature against the URL in Dart's canonical form, and the capabilities signature over their
RFC 8785 form, and answers to the challenge's own URL with padded base32 signatures. It also
sends the token update once and the iOS app's empty network-check POST when asked.

:class:`TlsFront` is the TLS-terminating reverse proxy that production puts in front of
OpenMFA: the app needs an ``https://`` URL with a certificate it verifies (``sslverify=1``),
while gateways and the RADIUS bridge talk to the backend directly.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from backend.config import Settings
from backend.domain.stepup import ADMINISTRATOR
from backend.errors import Conflict
from tests.fakes.tls import TlsFiles, make_tls
from tests.support.api import ADMIN, ApiHarness
from tests.support.clock import FakeClock

USER_AGENT = "privacyIDEA-App/4.8.0 android/14"
NO_FIREBASE_TOKEN = "no_firebase_token"  # what a poll-only token sends as its Firebase token
APP_CAPABILITIES = '["decline_reason"]'  # canonicalizeJson(['decline_reason']), unsigned
_REQUIRED = ("nonce", "question", "serial", "title", "sslverify", "url", "signature")


class RolloutExpired(Exception):
    """The app refuses to roll out after the QR's ttl and deletes the token."""


def dart_timestamp(moment: datetime) -> str:
    """``DateTime.now().toUtc().toIso8601String()``: milliseconds always, microseconds only
    when not zero, and ``Z``."""
    moment = moment.astimezone(UTC)
    millis, micros = divmod(moment.microsecond, 1000)
    tail = f"{micros:03d}" if micros else ""
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{millis:03d}{tail}Z"


def dart_uri(url: str) -> str:
    """How Dart's ``Uri.parse(url).toString()`` prints a URL: lower-case scheme and host, no
    default port (enough for the URLs this server may send; dot segments are not expected)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    default = {"https": 443, "http": 80}.get(scheme)
    netloc = host if parts.port in (None, default) else f"{host}:{parts.port}"
    return urlunsplit((scheme, netloc, parts.path, parts.query, parts.fragment))


def b32(signature: bytes) -> str:
    """The app's base32: upper case, padded."""
    return base64.b32encode(signature).decode("ascii")


def _der_length(data: bytes, at: int) -> tuple[int, int]:
    first = data[at]
    if first < 0x80:
        return first, at + 1
    count = first & 0x7F
    return int.from_bytes(data[at + 1 : at + 1 + count], "big"), at + 1 + count


def parse_pkcs1_public_key(text: str) -> rsa.RSAPublicKey:
    """``deserializeRSAPublicKeyPKCS1``: base64 DER of SEQUENCE { INTEGER n, INTEGER e }.
    A SubjectPublicKeyInfo (a SEQUENCE first) fails, as the app's cast does."""
    der = base64.b64decode(text.replace("\n", ""), validate=True)
    if der[0] != 0x30:
        raise ValueError("not a DER SEQUENCE")
    _, at = _der_length(der, 1)
    numbers: list[int] = []
    for _ in range(2):
        if der[at] != 0x02:
            raise ValueError("elements[0] is not an INTEGER: not a PKCS#1 RSAPublicKey")
        length, at = _der_length(der, at + 1)
        numbers.append(int.from_bytes(der[at : at + length], "big"))
        at += length
    return rsa.RSAPublicNumbers(numbers[1], numbers[0]).public_key()


def jcs(value: Any) -> str:
    """RFC 8785 for the small objects involved (ASCII keys, strings and booleans)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass
class PushRequest:
    """A challenge the app accepted from a poll."""

    nonce: str
    url: str
    serial: str
    question: str
    title: str
    ssl_verify: bool
    options: list[str] | None
    decline_reason: bool  # negotiated through verified capabilities
    raw: dict[str, Any] = field(repr=False, default_factory=dict)


@dataclass
class PiToken:
    """What the app keeps from the QR code and the rollout."""

    label: str
    issuer: str
    url: str
    serial: str
    credential: str
    ssl_verify: bool
    poll_only: bool
    pin: bool
    expires: datetime
    server_key: rsa.RSAPublicKey | None = None
    fb_token: str | None = None


class PiApp:
    """One phone with the privacyIDEA Authenticator and one push token in it."""

    def __init__(
        self,
        clock: Callable[[], datetime],
        trust: ssl.SSLContext,
        key: rsa.RSAPrivateKey | None = None,
        key_bits: int = 2048,
        user_agent: str = USER_AGENT,
    ) -> None:
        self.clock = clock
        self.key = key or rsa.generate_private_key(public_exponent=65537, key_size=key_bits)
        self.http = httpx.Client(verify=trust, timeout=15.0, headers={"User-Agent": user_agent})
        self.token: PiToken | None = None
        self.known: set[str] = set()  # request ids it has seen (it never shows one again)
        self.requests: dict[str, PushRequest] = {}
        self.dropped_batches = 0  # polls whose answer it threw away whole
        self.dropped_items = 0  # challenges it threw away for a bad signature or serial
        self.last_error = ""

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> PiApp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- QR and rollout -------------------------------------------------------------------------

    def scan(self, uri: str) -> PiToken:
        """Parse the QR code as the app does."""
        parts = urlsplit(uri)
        if parts.scheme.lower() != "otpauth" or parts.netloc.lower() not in ("pipush", "push"):
            raise ValueError(f"not a push token URI: {uri}")
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        if params.get("v") != "1":
            raise ValueError(f"The piauth version [{params.get('v')}] is not supported.")
        flag = {"1": True, "true": True, "True": True, "0": False, "false": False, "False": False}
        self.token = PiToken(
            label=unquote(parts.path.lstrip("/")),
            issuer=params.get("issuer", ""),
            url=params["url"],
            serial=params["serial"],
            credential=params["enrollment_credential"],
            ssl_verify=flag[params.get("sslverify", "1")],
            poll_only=params.get("poll_only") in ("True", "true", "1"),
            pin=params.get("pin") == "True",
            expires=self.clock() + timedelta(minutes=int(params.get("ttl", "3"))),
        )
        return self.token

    @property
    def serial(self) -> str:
        assert self.token is not None, "scan a QR code first"
        return self.token.serial

    def public_key_b64(self) -> str:
        """``serializeRSAPublicKeyPKCS8``: base64 of the DER SubjectPublicKeyInfo."""
        der = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(der).decode("ascii")

    def ios_network_check(self) -> httpx.Response:
        """``ioClient.post(url, body: '')``: the iOS app's empty POST before the rollout."""
        assert self.token is not None
        return self.http.post(
            self.token.url, content=b"", headers={"Content-Type": "text/plain; charset=utf-8"}
        )

    def rollout(self, ios: bool = False) -> httpx.Response:
        """Send the rollout; on success keep the server's key (PKCS#1 only)."""
        token = self.token
        assert token is not None, "scan a QR code first"
        assert token.poll_only, "a token without poll_only would need NetKnights' Firebase"
        if self.clock() > token.expires:
            raise RolloutExpired("rollout not possible anymore")
        if ios:
            self.ios_network_check()
        response = self._post(
            token.url,
            {
                "enrollment_credential": token.credential,
                "serial": token.serial,
                "fbtoken": NO_FIREBASE_TOKEN,
                "pubkey": self.public_key_b64(),
                "capabilities": APP_CAPABILITIES,
            },
        )
        if response.status_code >= 400:
            self.last_error = response.json()["result"]["error"]["message"]
            return response
        token.server_key = parse_pkcs1_public_key(response.json()["detail"]["public_key"])
        return response

    # -- signed requests ----------------------------------------------------------------------

    def sign(self, message: str) -> str:
        raw = self.key.sign(message.encode("utf-8"), padding.PKCS1v15(), hashes.SHA256())
        return b32(raw)

    def _post(self, url: str, fields: dict[str, str], verify: bool = True) -> httpx.Response:
        # package:http encodes a Map body as a form (spaces as '+'), UTF-8.
        return self.http.post(
            url,
            content=urlencode(fields).encode("utf-8"),
            headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
        )

    def token_update(self, timestamp: str | None = None) -> httpx.Response:
        """The update it sends once after rollout (``fbToken`` still null)."""
        token = self.token
        assert token is not None
        stamp = timestamp or dart_timestamp(self.clock())
        response = self._post(
            token.url,
            {
                "new_fb_token": NO_FIREBASE_TOKEN,
                "serial": token.serial,
                "timestamp": stamp,
                "signature": self.sign(f"{NO_FIREBASE_TOKEN}|{token.serial}|{stamp}"),
                "capabilities": APP_CAPABILITIES,
            },
        )
        if response.status_code < 400:
            token.fb_token = NO_FIREBASE_TOKEN
        return response

    def poll_response(
        self, timestamp: str | None = None, signature: str | None = None
    ) -> httpx.Response:
        """The poll GET, with its query joined raw as the app does (no percent-encoding of
        the values; ``Uri.parse`` escapes only the quotes and brackets)."""
        token = self.token
        assert token is not None
        stamp = timestamp or dart_timestamp(self.clock())
        signed = signature or self.sign(f"{token.serial}|{stamp}")
        query = (
            f"serial={token.serial}&timestamp={stamp}&signature={signed}"
            f"&capabilities={APP_CAPABILITIES}"
        )
        query = query.replace('"', "%22").replace("[", "%5B").replace("]", "%5D")
        return self.http.get(f"{token.url}?{query}")

    def poll(self, timestamp: str | None = None, signature: str | None = None) -> list[PushRequest]:
        """Poll and return the requests it newly accepts, as the app would show them."""
        response = self.poll_response(timestamp, signature)
        if response.status_code != 200:
            self.last_error = response.json()["result"]["error"]["message"]
            return []
        return self.accept_poll_answer(response.json())

    def accept_poll_answer(self, body: Any) -> list[PushRequest]:
        """``_getAndValidateDataFromResponse`` and the per-request checks."""
        token = self.token
        assert token is not None
        assert token.server_key is not None
        value = body["result"]["value"]
        if not isinstance(value, list) or not all(self._well_formed(item) for item in value):
            self.dropped_batches += 1
            return []
        accepted: list[PushRequest] = []
        for item in value:
            request = self._verified(item, token)
            if request is None:
                self.dropped_items += 1
                continue
            if request.nonce in self.known:
                continue
            self.known.add(request.nonce)
            self.requests[request.nonce] = request
            accepted.append(request)
        return accepted

    @staticmethod
    def _well_formed(item: Any) -> bool:
        if not isinstance(item, dict):
            return False
        if not all(isinstance(item.get(name), str) for name in _REQUIRED):
            return False
        try:
            urlsplit(item["url"])
        except ValueError:
            return False
        return True

    def _verified(self, item: dict[str, Any], token: PiToken) -> PushRequest | None:
        assert token.server_key is not None
        if item["serial"] != token.serial:
            return None  # no token has it
        ssl_verify = item["sslverify"] == "1"
        options: list[str] | None = None
        message = (
            f"{item['nonce']}|{dart_uri(item['url'])}|{item['serial']}|{item['question']}|"
            f"{item['title']}|{'1' if ssl_verify else '0'}"
        )
        if isinstance(item.get("require_presence"), str):
            options = item["require_presence"].split(",")
            message += "|" + ",".join(options)
        elif isinstance(item.get("display_code"), str):
            raise AssertionError("the server sent a code-to-phone request, which never answers")
        if not self._signed_by_server(token.server_key, message, item["signature"]):
            return None
        decline_reason = False
        capabilities = item.get("capabilities")
        if isinstance(capabilities, str):
            with contextlib.suppress(ValueError):
                capabilities = json.loads(capabilities)
        if isinstance(item.get("capabilities_signature"), str) and isinstance(capabilities, dict):
            signed = jcs({"capabilities": capabilities, "nonce": item["nonce"]})
            if not self._signed_by_server(token.server_key, signed, item["capabilities_signature"]):
                return None  # a wrong capabilities signature rejects the whole request
            decline_reason = capabilities.get("decline_reason") is True
        return PushRequest(
            nonce=item["nonce"],
            url=item["url"],
            serial=item["serial"],
            question=item["question"],
            title=item["title"],
            ssl_verify=ssl_verify,
            options=options,
            decline_reason=decline_reason,
            raw=item,
        )

    @staticmethod
    def _signed_by_server(key: rsa.RSAPublicKey, message: str, signature: str) -> bool:
        try:
            key.verify(
                base64.b32decode(signature),
                message.encode("utf-8"),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except (InvalidSignature, ValueError):
            return False
        return True

    # -- answers ------------------------------------------------------------------------------

    def accept(self, request: PushRequest, choice: str | None = None) -> httpx.Response:
        """ "Accept" (with the chosen number on a choice request)."""
        return self.answer(request, decline=False, reason=None, presence=choice)

    def decline(self, request: PushRequest, reason: str | None) -> httpx.Response:
        """Decline: "cancelled" ("Yes, but discard it") or "unknown_trigger" ("No, decline
        it"). Without negotiated capabilities the app sends a plain decline either way."""
        return self.answer(request, decline=True, reason=reason if request.decline_reason else None)

    def answer(
        self,
        request: PushRequest,
        decline: bool,
        reason: str | None,
        presence: str | None = None,
        signature: str | None = None,
    ) -> httpx.Response:
        """``getResponseData`` + ``getResponseSignMsg``, POSTed to the request's own URL."""
        fields = {"serial": request.serial, "nonce": request.nonce}
        message = f"{request.nonce}|{request.serial}"
        if decline:
            fields["decline"] = "1"
            message += "|decline"
            if reason is not None:
                fields["decline_reason"] = reason
                message += f"|{reason}"
        if presence is not None:
            fields["presence_answer"] = presence
            message += f"|{presence}"
        fields["signature"] = signature or self.sign(message)
        return self._post(request.url, fields)


# -- the server behind TLS ---------------------------------------------------------------------


class TlsFront:
    """A TLS-terminating TCP proxy on 127.0.0.1 (what nginx does in production); its port is
    known from construction on, so it can go into ``public_url`` before the app exists."""

    def __init__(self, tls: TlsFiles) -> None:
        self._tls = tls
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.port: int = self._socket.getsockname()[1]
        self.url = f"https://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, upstream_port: int) -> None:
        self._thread.start()

        async def serve() -> asyncio.Server:
            return await asyncio.start_server(
                lambda r, w: self._connection(r, w, upstream_port),
                sock=self._socket,
                ssl=self._tls.server_context(alpn=["http/1.1"]),
            )

        self._server = asyncio.run_coroutine_threadsafe(serve(), self._loop).result(10)

    async def _connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream_port: int
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                up_writer.close()
        except (OSError, asyncio.CancelledError):
            # Cancelled at close(): end normally, or asyncio's callback for the connection
            # handler logs the cancellation as an error.
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    def close(self) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._loop.close()
        self._socket.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


class PiLab:
    """A live backend (plain HTTP, as gateways and bridges reach it) behind a :class:`TlsFront`
    whose ``https://`` address is the backend's ``public_url``: what the app is given."""

    def __init__(
        self,
        settings: Settings,
        clock: FakeClock,
        directory: Path,
        harness: type[ApiHarness] = ApiHarness,  # WebHarness for the portal
    ) -> None:
        self.tls = make_tls(directory / "tls")
        self.front = TlsFront(self.tls)
        self.clock = clock
        self.settings = settings.model_copy(update={"public_url": self.front.url})
        self.api = harness(self.settings, clock)
        self._apps: list[PiApp] = []
        self._users: set[str] = set()
        self._trust = self.tls.client_context()

    def __enter__(self) -> PiLab:
        self.api.__enter__()
        try:
            self.front.start(self.api.server.port)
        except BaseException:
            self.api.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for app in self._apps:
            app.close()
        try:
            self.front.close()
        finally:
            self.api.__exit__(exc_type, exc, tb)

    def phone(self, key: rsa.RSAPrivateKey | None = None, key_bits: int = 2048) -> PiApp:
        """A phone with the app installed (trusting the test CA, as a phone trusts public CAs)."""
        app = PiApp(self.clock, self._trust, key=key, key_bits=key_bits)
        self._apps.append(app)
        return app

    def enrol(self, user: str, key: rsa.RSAPrivateKey | None = None) -> PiApp:
        """``user`` (created if new) with a rolled-out push token on a phone."""
        if user not in self._users:
            with contextlib.suppress(Conflict):  # the test may have added it with a policy
                self.api.add_user(user)
            self._users.add(user)
        offer = self.api.run(self.api.services.pipush.create_enrollment(ADMIN, ADMINISTRATOR, user))
        app = self.phone(key=key)
        app.scan(offer.uri)
        response = app.rollout()
        assert response.status_code == 200, response.text
        return app


@contextlib.contextmanager
def pi_lab(settings: Settings, clock: FakeClock, directory: Path) -> Iterator[PiLab]:
    with PiLab(settings, clock, directory) as lab:
        yield lab
