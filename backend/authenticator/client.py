"""Speak the app protocol: activate, list / fetch / answer challenges, show offline codes."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from backend.domain import signing, totp

ACTIVATION_DEVICE = "activation"
#: Device key types: ``ed25519`` (the default) or ``p256`` (ECDSA, as the web app makes where
#: the browser's WebCrypto lacks Ed25519).
KEY_TYPES = (signing.ED25519, signing.P256)


class AuthenticatorError(Exception):
    """The server refused, or the store / URI is unusable. ``type`` is the problem slug."""

    def __init__(self, message: str, type_: str = "client-error", status: int = 0) -> None:
        super().__init__(message)
        self.type = type_
        self.status = status


@dataclass(slots=True)
class StoredDevice:
    """What the app keeps after activation."""

    url: str
    device_id: str
    user: str
    private_key: str  # raw Ed25519 seed or P-256 private scalar (32 bytes), base64url
    totp_secret: str
    platform: str = "reference"
    key_type: str = signing.ED25519  # stores from before P-256 have no key_type: Ed25519

    def key(self) -> signing.SigningKey:
        """The device's private key."""
        raw = signing.b64u_decode(self.private_key)
        if self.key_type == signing.P256:
            return ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1())
        if self.key_type != signing.ED25519:
            raise AuthenticatorError(f"unknown key type {self.key_type!r} in the store")
        return Ed25519PrivateKey.from_private_bytes(raw)


def new_key(key_type: str) -> tuple[signing.SigningKey, bytes]:
    """A fresh device key and its private bytes (what the store keeps)."""
    if key_type == signing.P256:
        p256 = ec.generate_private_key(ec.SECP256R1())
        return p256, p256.private_numbers().private_value.to_bytes(32, "big")
    if key_type != signing.ED25519:
        raise AuthenticatorError(f"key type must be one of {', '.join(KEY_TYPES)}")
    ed = Ed25519PrivateKey.generate()
    return ed, ed.private_bytes_raw()


def save_store(path: Path, device: StoredDevice) -> None:
    """Write the store atomically with mode 0600 (it holds the device key and seed).

    Through a new file of a random name (``mkstemp``: O_EXCL, mode 0600) renamed over the
    store: a link planted at a predictable temporary name would receive the key.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(asdict(device), handle, indent=2)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def load_store(path: Path) -> StoredDevice:
    """Read a store written by :func:`save_store`."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return StoredDevice(**data)
    except FileNotFoundError:
        raise AuthenticatorError(f"no authenticator store at {path}; activate first") from None
    except (OSError, ValueError, TypeError) as exc:
        raise AuthenticatorError(f"the store {path} is unreadable: {exc}") from exc


def parse_activation_uri(uri: str) -> tuple[str, str]:
    """``openmfa://activate?url=...&code=...`` -> (backend URL, code)."""
    parts = urlsplit(uri.strip())
    if parts.scheme != "openmfa" or parts.netloc != "activate":
        raise AuthenticatorError("not an OpenMFA activation URI (openmfa://activate?...)")
    query = parse_qs(parts.query)
    url, code = query.get("url", [""])[0], query.get("code", [""])[0]
    if not url.startswith(("http://", "https://")) or not code:
        raise AuthenticatorError("the activation URI lacks the backend url or the code")
    return url.rstrip("/"), code


def _raise_for_problem(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        problem = response.json()
        type_ = str(problem.get("type", "")).rsplit("/", 1)[-1] or "http-error"
        detail = str(problem.get("detail") or problem.get("title") or response.reason_phrase)
    except ValueError:
        type_, detail = "http-error", response.text[:200] or response.reason_phrase
    raise AuthenticatorError(f"{detail} ({type_})", type_, response.status_code)


class AppClient:
    """One device talking to one backend. ``transport`` lets tests plug in httpx transports."""

    def __init__(
        self, device: StoredDevice | None = None, transport: httpx.BaseTransport | None = None
    ) -> None:
        self.device = device
        self._transport = transport

    def _http(self, base_url: str) -> httpx.Client:
        return httpx.Client(base_url=base_url, timeout=30.0, transport=self._transport)

    def _send(
        self,
        method: str,
        path: str,
        payload: dict[str, Any] | None = None,
        key: signing.SigningKey | None = None,
        device_id: str | None = None,
        base_url: str | None = None,
    ) -> httpx.Response:
        body = b"" if payload is None else json.dumps(payload).encode()
        if key is None or device_id is None or base_url is None:
            if self.device is None:
                raise AuthenticatorError("this authenticator is not activated")
            key, device_id, base_url = self.device.key(), self.device.device_id, self.device.url
        target = urlsplit(base_url).path.rstrip("/") + path
        headers = signing.sign_request(key, device_id, method, target, body, int(time.time()))
        if payload is not None:
            headers["content-type"] = "application/json"
        try:
            with self._http(base_url) as http:
                response = http.request(method, path, content=body, headers=headers)
        except httpx.TransportError as exc:
            raise AuthenticatorError(
                f"cannot reach the OpenMFA server at {base_url}: {exc or type(exc).__name__}",
                "unreachable",
            ) from exc
        _raise_for_problem(response)
        return response

    def activate(
        self,
        uri: str,
        name: str = "",
        platform: str = "reference",
        pin: str | None = None,
        push_token: str | None = None,
        key_type: str = signing.ED25519,
    ) -> StoredDevice:
        """Create a key pair (``key_type``: ed25519 or p256), redeem the code, and remember
        what the server answered."""
        base_url, code = parse_activation_uri(uri)
        key, private = new_key(key_type)
        public = signing.public_bytes(key)
        payload: dict[str, Any] = {
            "code": code,
            "public_key": signing.b64u_encode(public),
            "platform": platform,
            "name": name,
        }
        if pin is not None:
            payload["pin"] = pin
        if push_token is not None:
            payload["push_token"] = push_token
        response = self._send("POST", "/app/v1/activate", payload, key, ACTIVATION_DEVICE, base_url)
        data = response.json()
        self.device = StoredDevice(
            url=base_url,
            device_id=data["device_id"],
            user=data["user"],
            private_key=signing.b64u_encode(private),
            totp_secret=data["totp"]["secret"],
            platform=platform,
            key_type=key_type,
        )
        return self.device

    def pending(self) -> list[dict[str, Any]]:
        """Challenges waiting for an answer."""
        challenges: list[dict[str, Any]] = self._send("GET", "/app/v1/challenges").json()[
            "challenges"
        ]
        return challenges

    def challenge(self, challenge_id: str) -> dict[str, Any]:
        """One challenge with its context."""
        data: dict[str, Any] = self._send("GET", f"/app/v1/challenges/{challenge_id}").json()
        return data

    def answer(
        self, challenge_id: str, answer: str, pin: str | None = None, number: int | None = None
    ) -> str:
        """Approve / deny / fraud; returns the challenge's new state."""
        payload: dict[str, Any] = {"answer": answer}
        if pin is not None:
            payload["pin"] = pin
        if number is not None:
            payload["number"] = number
        response = self._send("POST", f"/app/v1/challenges/{challenge_id}/answer", payload)
        return str(response.json()["state"])

    def update_push_token(self, token: str | None) -> None:
        """Tell the server about a new push token."""
        self._send("PUT", "/app/v1/device/push-token", {"push_token": token})

    def deactivate(self) -> None:
        """Remove this device on the server."""
        self._send("DELETE", "/app/v1/device")

    def code(self, at: datetime | None = None) -> str:
        """The offline code shown now (computed locally, no network)."""
        if self.device is None:
            raise AuthenticatorError("this authenticator is not activated")
        return totp.current_code(self.device.totp_secret, at or datetime.now(UTC))
