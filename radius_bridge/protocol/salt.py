"""Salt encryption of RADIUS attribute values (RFC 2548 section 2.4.2 / 2.4.3, the same
scheme as RFC 2868 section 3.5): how MS-MPPE-Send-Key and MS-MPPE-Recv-Key travel.

A relayed key must be *re-encrypted*: the upstream hid it with its secret and the Request
Authenticator of the bridge's upstream request; the gateway can only read it under the
gateway's secret and the gateway's own Request Authenticator. Relaying the octets as they
came would hand the gateway garbage keys (and the VPN tunnel would fail to come up after
an apparently successful sign-in).

The scheme, for a plaintext key ``K``::

    P  = len(K) (one octet) + K + zero octets up to a multiple of 16
    S  = two octets of salt, the high bit of the first set, unique per packet
    b1 = MD5(secret + R + S)          c1 = p1 xor b1
    bi = MD5(secret + c(i-1))         ci = pi xor bi
    value = S + c1 + c2 + ...

where ``R`` is the Request Authenticator of the request the reply answers. Pure functions,
no I/O; the salt comes from :mod:`secrets` unless a test passes one.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Final

#: An encrypted value is at most 253 octets (one attribute, or one VSA sub-attribute less
#: its own header); 2 of salt leave 15 blocks, and the length octet leaves 239 for a key.
MAX_PLAIN: Final = 239
_BLOCK: Final = 16


class SaltError(ValueError):
    """A value that cannot be salt-decrypted: wrong length, or a length octet that does
    not fit (what a wrong secret or authenticator almost always produces)."""


def _md5(data: bytes) -> bytes:
    # The protocol's hash (RFC 2548); not a choice this module makes.
    return hashlib.md5(data).digest()  # noqa: S324


def _xor(left: bytes, right: bytes) -> bytes:
    return (int.from_bytes(left, "big") ^ int.from_bytes(right, "big")).to_bytes(_BLOCK, "big")


def new_salt() -> bytes:
    """Two random octets with the high bit of the first set (RFC 2548 2.4.2: "The most
    significant bit (leftmost) of the Salt field MUST be set (1)")."""
    return bytes((0x80 | secrets.randbits(7), secrets.randbits(8)))


def encrypt(plain: bytes, secret: bytes, authenticator: bytes, salt: bytes | None = None) -> bytes:
    """``salt + ciphertext`` for the key ``plain`` under ``secret`` and the Request
    Authenticator ``authenticator``. ValueError for a key above :data:`MAX_PLAIN` octets, an
    authenticator that is not 16 octets, or a salt that is not 2 octets with the high bit."""
    if len(plain) > MAX_PLAIN:
        raise ValueError(f"a salt-encrypted value holds at most {MAX_PLAIN} octets")
    if len(authenticator) != _BLOCK:
        raise ValueError("the Request Authenticator is 16 octets")
    if salt is None:
        salt = new_salt()
    elif len(salt) != 2 or not salt[0] & 0x80:
        raise ValueError("the salt is 2 octets with the high bit set")
    data = bytes((len(plain),)) + plain
    data += bytes(-len(data) % _BLOCK)  # RFC 2548: pad with zeros to a multiple of 16
    out = bytearray(salt)
    chain = authenticator + salt
    for start in range(0, len(data), _BLOCK):
        block = _xor(data[start : start + _BLOCK], _md5(secret + chain))
        out += block
        chain = block
    return bytes(out)


def decrypt(value: bytes, secret: bytes, authenticator: bytes) -> bytes:
    """The key inside ``value`` (salt + ciphertext), or :class:`SaltError`. A wrong secret or
    authenticator yields a length octet that does not fit the value in about 15 of 16 cases
    and nonsense otherwise: there is no integrity check in the scheme itself, which is why
    replies are also verified by their Response Authenticator and Message-Authenticator."""
    if len(value) < 2 + _BLOCK or (len(value) - 2) % _BLOCK:
        raise SaltError("a salt-encrypted value is 2 + 16n octets")
    if len(authenticator) != _BLOCK:
        raise SaltError("the Request Authenticator is 16 octets")
    salt, cipher = value[:2], value[2:]
    plain = bytearray()
    chain = authenticator + salt
    for start in range(0, len(cipher), _BLOCK):
        block = cipher[start : start + _BLOCK]
        plain += _xor(block, _md5(secret + chain))
        chain = block
    size = plain[0]
    if size > len(plain) - 1:
        raise SaltError("the length octet does not fit: wrong secret or authenticator")
    return bytes(plain[1 : 1 + size])


def reencrypt(
    value: bytes,
    from_secret: bytes,
    from_authenticator: bytes,
    to_secret: bytes,
    to_authenticator: bytes,
    salt: bytes | None = None,
) -> bytes:
    """``value`` as the upstream sent it, encrypted again for the gateway (fresh salt)."""
    plain = decrypt(value, from_secret, from_authenticator)
    return encrypt(plain, to_secret, to_authenticator, salt)
