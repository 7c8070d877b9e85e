"""Ed25519 request signatures of the app protocol (``/app/v1``).

The app signs, with its device key, the canonical form of every request::

    OPENMFA-V2\\n<METHOD>\\n<path and query>\\n<device id>\\n<unix timestamp>\\n<nonce>\\n
    <sha256 hex of body>

and sends it in four headers. The server checks the signature, that the timestamp is within
the allowed skew and that the nonce was never seen for this device. Shared by the server and
the reference authenticator so both sides build the same bytes.

The device id is signed (``OPENMFA-V1`` did not sign it): a request signed by one device
cannot be re-sent under another device's id, even one that shares its key. The server also
registers a public key for one device only, so nonces, remembered per device, are per key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from backend.errors import BadSignature

SCHEME = "OPENMFA-V2"
HEADER_DEVICE = "x-openmfa-device"
HEADER_TIMESTAMP = "x-openmfa-timestamp"
HEADER_NONCE = "x-openmfa-nonce"
HEADER_SIGNATURE = "x-openmfa-signature"

_NONCE = re.compile(r"[A-Za-z0-9_-]{16,64}")
_DEVICE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_B64URL = re.compile(r"[A-Za-z0-9_-]*={0,2}")


def b64u_encode(data: bytes) -> str:
    """Base64url without padding."""
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def b64u_decode(text: str) -> bytes:
    """Inverse of :func:`b64u_encode`; raises :class:`BadSignature` on garbage.

    Strict: the decoder in :mod:`base64` silently drops characters outside its alphabet (and
    takes ``+`` and ``/``), so anything but the base64url alphabet (padding optional) is
    refused first.
    """
    if not _B64URL.fullmatch(text):
        raise BadSignature("not valid base64url")
    text = text.rstrip("=")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise BadSignature("not valid base64url") from exc


def canonical_request(
    method: str, target: str, device: str, timestamp: str, nonce: str, body: bytes
) -> bytes:
    """The exact bytes that are signed."""
    digest = hashlib.sha256(body).hexdigest()
    return "\n".join((SCHEME, method.upper(), target, device, timestamp, nonce, digest)).encode()


@dataclass(frozen=True, slots=True)
class SignedHeaders:
    device: str
    timestamp: int
    nonce: str
    signature: bytes


def parse_headers(headers: dict[str, str]) -> SignedHeaders:
    """Read the four signature headers, refusing anything malformed."""
    missing = [
        name
        for name in (HEADER_DEVICE, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE)
        if not headers.get(name)
    ]
    if missing:
        raise BadSignature(f"missing headers: {', '.join(missing)}")
    device = headers[HEADER_DEVICE]
    if not _DEVICE.fullmatch(device):  # it is signed on a line of its own: no separators
        raise BadSignature("the device header must be 1-64 base64url characters")
    timestamp = headers[HEADER_TIMESTAMP]
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
        raise BadSignature("the timestamp header is not a unix time in seconds")
    nonce = headers[HEADER_NONCE]
    if not _NONCE.fullmatch(nonce):  # fullmatch: "$" would let a trailing newline through
        raise BadSignature("the nonce header must be 16-64 base64url characters")
    signature = b64u_decode(headers[HEADER_SIGNATURE])
    if len(signature) != 64:
        raise BadSignature("an Ed25519 signature is 64 bytes")
    return SignedHeaders(device, int(timestamp), nonce, signature)


def load_public_key(raw: bytes) -> Ed25519PublicKey:
    """A raw 32-byte Ed25519 public key."""
    if len(raw) != 32:
        raise BadSignature("an Ed25519 public key is 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


def verify(public_key: bytes, signature: bytes, message: bytes) -> None:
    """Raise :class:`BadSignature` unless ``signature`` is valid for ``message``."""
    try:
        load_public_key(public_key).verify(signature, message)
    except InvalidSignature as exc:
        raise BadSignature("the signature does not verify") from exc


def sign_request(
    key: Ed25519PrivateKey,
    device: str,
    method: str,
    target: str,
    body: bytes,
    timestamp: int,
) -> dict[str, str]:
    """The headers an app sends with one request."""
    nonce = secrets.token_urlsafe(18)
    message = canonical_request(method, target, device, str(timestamp), nonce, body)
    return {
        HEADER_DEVICE: device,
        HEADER_TIMESTAMP: str(timestamp),
        HEADER_NONCE: nonce,
        HEADER_SIGNATURE: b64u_encode(key.sign(message)),
    }
