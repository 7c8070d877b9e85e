"""Request signatures of the app protocol (``/app/v1``): Ed25519 or ECDSA P-256.

The app signs, with its device key, the canonical form of every request::

    OPENMFA-V2\\n<METHOD>\\n<path and query>\\n<device id>\\n<unix timestamp>\\n<nonce>\\n
    <sha256 hex of body>

and sends it in four headers. The server checks the signature, that the timestamp is within
the allowed skew and that the nonce was never seen for this device. Shared by the server and
the reference authenticator so both sides build the same bytes.

The device id is signed (``OPENMFA-V1`` did not sign it): a request signed by one device
cannot be re-sent under another device's id, even one that shares its key. The server also
registers a public key for one device only, so nonces, remembered per device, are per key.

Two key types, told apart by the public key alone (no field names the type, so nothing a
request says can switch the algorithm for a stored key):

* a raw 32-byte **Ed25519** key (the reference authenticator, native apps, browsers with
  Ed25519 in WebCrypto); the signature is the 64-byte Ed25519 signature;
* a 65-byte uncompressed **P-256** point ``0x04 || X || Y`` (browsers whose WebCrypto lacks
  Ed25519); the signature is ECDSA with SHA-256 in the IEEE P1363 form WebCrypto produces,
  ``r || s``, 32 bytes each, 64 bytes in all. DER is refused: exactly 64 bytes are read as
  ``r || s`` and nothing else, so a DER signature has the wrong length or does not verify;
  one signature value has one encoding.

ECDSA signatures are malleable: ``(r, n - s)`` verifies whenever ``(r, s)`` does. Both are
accepted, not normalised to low S: WebCrypto makes high-S signatures half the time, and no
part of the protocol identifies a request by its signature: replay is stopped by the signed
nonce, remembered per device, so a re-signed copy of a request is refused as a replay.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

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
    refused first. Canonical only: the decoder also ignores the unused low bits of the last
    character, so several strings would decode to one key or signature; only the one
    :func:`b64u_encode` makes (optionally padded correctly) is taken.
    """
    if not _B64URL.fullmatch(text):
        raise BadSignature("not valid base64url")
    bare = text.rstrip("=")
    if text != bare and len(text) % 4:  # padding, when given, fills the last quantum exactly
        raise BadSignature("not valid base64url")
    try:
        data = base64.urlsafe_b64decode(bare + "=" * (-len(bare) % 4))
    except (binascii.Error, ValueError) as exc:
        raise BadSignature("not valid base64url") from exc
    if b64u_encode(data) != bare:
        raise BadSignature("not valid base64url: not in canonical form")
    return data


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
    if len(signature) != SIGNATURE_BYTES:
        raise BadSignature("a signature is 64 bytes (Ed25519, or P-256 r||s; DER is refused)")
    return SignedHeaders(device, int(timestamp), nonce, signature)


#: Both key types sign with 64 bytes: Ed25519, and P-256 ECDSA as r||s (IEEE P1363).
SIGNATURE_BYTES = 64
ED25519 = "ed25519"
P256 = "p256"
_P256_POINT_BYTES = 65
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

PublicKey = Ed25519PublicKey | ec.EllipticCurvePublicKey
SigningKey = Ed25519PrivateKey | ec.EllipticCurvePrivateKey


def key_type(raw: bytes) -> str:
    """``ed25519`` or ``p256``, decided by the raw public key's length and prefix alone."""
    if len(raw) == 32:
        return ED25519
    if len(raw) == _P256_POINT_BYTES and raw[0] == 0x04:
        return P256
    raise BadSignature(
        "a device public key is a raw 32-byte Ed25519 key or a 65-byte uncompressed P-256 "
        "point (0x04 || X || Y)"
    )


def load_public_key(raw: bytes) -> PublicKey:
    """Parse and check a device public key (see :func:`key_type`); refuse weak or bad ones.

    Ed25519: the encoding must be canonical and the point must not be of small order (such a
    key, the identity among them, lets anyone forge a signature that verifies for every
    message; OpenSSL's verify does not refuse it). P-256: the point must lie on the curve
    (``cryptography`` checks it; the identity has no uncompressed form, and the curve's
    cofactor is 1, so there are no other low-order points); compressed points are refused so
    that one key has one stored form (the unique index on ``devices.public_key``).
    """
    if key_type(raw) == ED25519:
        if _ed25519_small_order_or_bad(raw):
            raise BadSignature("the Ed25519 public key is not a valid point of large order")
        return Ed25519PublicKey.from_public_bytes(raw)
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
    except ValueError as exc:
        raise BadSignature("the P-256 public key is not a point on the curve") from exc


def verify(public_key: bytes, signature: bytes, message: bytes) -> None:
    """Raise :class:`BadSignature` unless ``signature`` is valid for ``message`` under
    ``public_key`` (whose type, from :func:`key_type`, decides the algorithm)."""
    key = load_public_key(public_key)
    if len(signature) != SIGNATURE_BYTES:
        raise BadSignature("a signature is 64 bytes (Ed25519, or P-256 r||s; DER is refused)")
    try:
        if isinstance(key, Ed25519PublicKey):
            key.verify(signature, message)
            return
        r = int.from_bytes(signature[:32], "big")
        s = int.from_bytes(signature[32:], "big")
        if not (0 < r < _P256_ORDER and 0 < s < _P256_ORDER):
            raise InvalidSignature  # out of range: never a valid ECDSA signature
        key.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise BadSignature("the signature does not verify") from exc


def public_bytes(key: SigningKey) -> bytes:
    """The raw public key the server stores: 32 bytes (Ed25519) or 65 (P-256, uncompressed)."""
    if isinstance(key, Ed25519PrivateKey):
        return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def sign(key: SigningKey, message: bytes) -> bytes:
    """The 64-byte signature of ``message``: Ed25519, or P-256 ECDSA/SHA-256 as r||s (the
    form WebCrypto makes)."""
    if isinstance(key, Ed25519PrivateKey):
        return key.sign(message)
    if not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("only P-256 ECDSA keys sign app requests")
    r, s = decode_dss_signature(key.sign(message, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


# -- Ed25519 small-order keys -------------------------------------------------------------

_P = 2**255 - 19
_Y8 = 2707385501144840649318225287225658788936804267575313519463743609750303402022
#: The y coordinates of the eight points of order 1, 2, 4 and 8 (each y with both signs of x
#: is one of them): the identity (1), order 2 (-1), order 4 (0), order 8 (±_Y8).
_SMALL_ORDER_Y = frozenset({1, _P - 1, 0, _Y8, _P - _Y8})


def _ed25519_small_order_or_bad(raw: bytes) -> bool:
    """Whether ``raw`` encodes y non-canonically (y >= p) or a point of small order.

    A look-up, not curve arithmetic: it runs on every signed request. Points off the curve
    need no check here: OpenSSL refuses to decode them and nothing verifies.
    """
    y = int.from_bytes(raw, "little") & ((1 << 255) - 1)
    return y >= _P or y in _SMALL_ORDER_Y


def sign_request(
    key: SigningKey,
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
        HEADER_SIGNATURE: b64u_encode(sign(key, message)),
    }
