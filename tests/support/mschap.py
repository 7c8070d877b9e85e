"""An MS-CHAPv2 client as RFC 2759 describes it, and the MPPE key derivation of RFC 3079,
for testing the bridge's MS-CHAPv2 relay without any other MS-CHAP code in the loop.

Written from the RFCs' pseudo-code (function names as there) and checked against their test
vectors (RFC 2759 section 9.2, RFC 3079 section 3.5.3) in tests/test_radius_mschap_relay.py.
MD4 is written out here: OpenSSL 3 leaves it to the legacy provider, which Python's hashlib
does not load; DES comes from ``cryptography`` (three equal keys: 3DES-EDE is then DES).
"""

from __future__ import annotations

import hashlib
import struct

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

MAGIC1 = b"Magic server to client signing constant"
MAGIC2 = b"Pad to make it do more than one iteration"
KEY_MAGIC1 = b"This is the MPPE Master Key"
KEY_MAGIC2 = b"On the client side, this is the send key; on the server side, it is the receive key."
KEY_MAGIC3 = b"On the client side, this is the receive key; on the server side, it is the send key."
SHS_PAD1 = bytes(40)
SHS_PAD2 = b"\xf2" * 40


def md4(data: bytes) -> bytes:
    """MD4 (RFC 1320)."""

    def rotl(x: int, n: int) -> int:
        x &= 0xFFFFFFFF
        return ((x << n) | (x >> (32 - n))) & 0xFFFFFFFF

    message = data + b"\x80" + bytes((55 - len(data)) % 64) + struct.pack("<Q", len(data) * 8)
    h = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476]
    for start in range(0, len(message), 64):
        x = struct.unpack("<16I", message[start : start + 64])
        a, b, c, d = h

        def f(x_: int, y: int, z: int) -> int:
            return (x_ & y) | (~x_ & z)

        def g(x_: int, y: int, z: int) -> int:
            return (x_ & y) | (x_ & z) | (y & z)

        for i in range(16):
            k = i
            s = (3, 7, 11, 19)[i % 4]
            a, b, c, d = d, rotl(a + f(b, c, d) + x[k], s), b, c
        for i in range(16):
            k = (i % 4) * 4 + i // 4
            s = (3, 5, 9, 13)[i % 4]
            a, b, c, d = d, rotl(a + g(b, c, d) + x[k] + 0x5A827999, s), b, c
        for i in range(16):
            k = (0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15)[i]
            s = (3, 9, 11, 15)[i % 4]
            a, b, c, d = d, rotl(a + (b ^ c ^ d) + x[k] + 0x6ED9EBA1, s), b, c
        h = [(v + w) & 0xFFFFFFFF for v, w in zip(h, (a, b, c, d), strict=True)]
    return struct.pack("<4I", *h)


def _sha1(*parts: bytes) -> bytes:
    return hashlib.sha1(b"".join(parts)).digest()  # noqa: S324 - the protocol's hash


def challenge_hash(peer_challenge: bytes, authenticator_challenge: bytes, user: str) -> bytes:
    """ChallengeHash (RFC 2759 8.2)."""
    return _sha1(peer_challenge, authenticator_challenge, user.encode())[:8]


def nt_password_hash(password: str) -> bytes:
    """NtPasswordHash (RFC 2759 8.3): MD4 of the UTF-16LE password."""
    return md4(password.encode("utf-16-le"))


def _des_key(seven: bytes) -> bytes:
    """A 7-octet key spread over 8 octets (the parity bits are ignored by DES)."""
    bits = int.from_bytes(seven, "big")
    return bytes(((bits >> (49 - 7 * i)) & 0x7F) << 1 for i in range(8))


def _des(key7: bytes, block: bytes) -> bytes:
    key = _des_key(key7)
    encryptor = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()  # noqa: S305 - RFC 2759
    return encryptor.update(block) + encryptor.finalize()


def challenge_response(challenge: bytes, password_hash: bytes) -> bytes:
    """ChallengeResponse (RFC 2759 8.5): DES of the challenge under three 7-octet slices
    of the zero-padded hash."""
    z = password_hash + bytes(5)
    return _des(z[0:7], challenge) + _des(z[7:14], challenge) + _des(z[14:21], challenge)


def generate_nt_response(
    authenticator_challenge: bytes, peer_challenge: bytes, user: str, password: str
) -> bytes:
    """GenerateNTResponse (RFC 2759 8.1)."""
    challenge = challenge_hash(peer_challenge, authenticator_challenge, user)
    return challenge_response(challenge, nt_password_hash(password))


def generate_authenticator_response(
    password: str,
    nt_response: bytes,
    peer_challenge: bytes,
    authenticator_challenge: bytes,
    user: str,
) -> str:
    """GenerateAuthenticatorResponse (RFC 2759 8.7): ``S=`` and 40 upper-case hex digits."""
    hash_hash = md4(nt_password_hash(password))
    digest = _sha1(hash_hash, nt_response, MAGIC1)
    challenge = challenge_hash(peer_challenge, authenticator_challenge, user)
    return "S=" + _sha1(digest, challenge, MAGIC2).hex().upper()


def master_key(password: str, nt_response: bytes) -> bytes:
    """GetMasterKey (RFC 3079 3.4) from the password."""
    return _sha1(md4(nt_password_hash(password)), nt_response, KEY_MAGIC1)[:16]


def asymmetric_start_key(master: bytes, length: int, *, send: bool, server: bool) -> bytes:
    """GetAsymmetricStartKey (RFC 3079 3.4)."""
    magic = (
        (KEY_MAGIC3 if server else KEY_MAGIC2) if send else (KEY_MAGIC2 if server else KEY_MAGIC3)
    )
    return _sha1(master, SHS_PAD1, magic, SHS_PAD2)[:length]


def client_keys(password: str, nt_response: bytes) -> tuple[bytes, bytes]:
    """``(send, receive)`` 128-bit start keys as the *client* derives them. The RADIUS server
    speaks for the NAS side: its MS-MPPE-Send-Key is the client's receive key, its
    MS-MPPE-Recv-Key the client's send key."""
    master = master_key(password, nt_response)
    return (
        asymmetric_start_key(master, 16, send=True, server=False),
        asymmetric_start_key(master, 16, send=False, server=False),
    )


def ms_chap2_response(ident: int, peer_challenge: bytes, nt_response: bytes) -> bytes:
    """The MS-CHAP2-Response value (RFC 2548 2.3.2): Ident, Flags, Peer-Challenge, 8
    reserved octets, NT-Response."""
    return bytes((ident, 0)) + peer_challenge + bytes(8) + nt_response
