"""P-256 device keys beside Ed25519 (backend/domain/signing.py), and the attacks on having two
key types: a signature of one type under a key of the other, DER for P1363, points off the
curve or of another curve, compressed and hybrid points, small-order Ed25519 keys (a universal
forgery that OpenSSL itself accepts), high-S ECDSA signatures, non-canonical base64url."""

from __future__ import annotations

import base64

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from backend.domain import signing
from backend.domain.signing import (
    HEADER_SIGNATURE,
    b64u_decode,
    b64u_encode,
    canonical_request,
    parse_headers,
    sign_request,
)
from backend.errors import BadSignature

P256_KEY = ec.derive_private_key(0x1D2C3B4A5968778695A4B3C2D1E0F, ec.SECP256R1())
P256_PUBLIC = P256_KEY.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
ED_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
ED_PUBLIC = ED_KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
P = 2**256 - 2**224 + 2**192 + 2**96 - 1
DEVICE = "dev_web"
TS = 1767225600
TARGET = "/app/v1/challenges/ch_1/answer"
BODY = b'{"answer":"approve"}'
MESSAGE = canonical_request("POST", TARGET, DEVICE, str(TS), "n" * 16, BODY)


def server_check(headers: dict[str, str], public: bytes = P256_PUBLIC) -> None:
    """What the server does with a request: parse the headers, rebuild the bytes, verify."""
    signed = parse_headers(headers)
    message = canonical_request(
        "POST", TARGET, signed.device, str(signed.timestamp), signed.nonce, BODY
    )
    signing.verify(public, signed.signature, message)


def rs(signature: bytes) -> tuple[int, int]:
    return int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")


def p1363(r: int, s: int) -> bytes:
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


# -- the good path ----------------------------------------------------------------------------


def test_key_type_is_decided_by_the_key_alone() -> None:
    assert signing.key_type(ED_PUBLIC) == "ed25519"
    assert signing.key_type(P256_PUBLIC) == "p256"
    assert len(P256_PUBLIC) == 65
    assert P256_PUBLIC[0] == 0x04


def test_a_p256_request_round_trips_as_webcrypto_signs_it() -> None:
    headers = sign_request(P256_KEY, DEVICE, "POST", TARGET, BODY, TS)
    signature = b64u_decode(headers[HEADER_SIGNATURE])
    assert len(signature) == 64  # r || s, not DER
    server_check(headers)


def test_a_webcrypto_style_signature_made_outside_our_signer_verifies() -> None:
    """What WebCrypto's sign({name: "ECDSA", hash: "SHA-256"}) returns: r||s of an ECDSA
    signature over SHA-256 of the message, made here with cryptography's own ECDSA."""
    r, s = decode_dss_signature(P256_KEY.sign(MESSAGE, ec.ECDSA(hashes.SHA256())))
    signing.verify(P256_PUBLIC, p1363(r, s), MESSAGE)


def test_ed25519_is_unchanged() -> None:
    headers = sign_request(ED_KEY, DEVICE, "POST", TARGET, BODY, TS)
    server_check(headers, public=ED_PUBLIC)


# -- one key type's signature under the other -------------------------------------------------


def test_a_p256_signature_under_an_ed25519_key_is_refused() -> None:
    headers = sign_request(P256_KEY, DEVICE, "POST", TARGET, BODY, TS)
    with pytest.raises(BadSignature, match="does not verify"):
        server_check(headers, public=ED_PUBLIC)


def test_an_ed25519_signature_under_a_p256_key_is_refused() -> None:
    headers = sign_request(ED_KEY, DEVICE, "POST", TARGET, BODY, TS)
    with pytest.raises(BadSignature, match="does not verify"):
        server_check(headers, public=P256_PUBLIC)


def test_a_p256_key_passed_off_as_ed25519_is_useless() -> None:
    """The 32-byte X coordinate (or Y) of a P-256 key sent as an Ed25519 key: the P-256
    signature does not verify under it, and the server never reinterprets a stored key."""
    headers = sign_request(P256_KEY, DEVICE, "POST", TARGET, BODY, TS)
    for part in (P256_PUBLIC[1:33], P256_PUBLIC[33:]):
        assert signing.key_type(part) == "ed25519"
        with pytest.raises(BadSignature):
            server_check(headers, public=part)


def test_another_p256_key_does_not_verify() -> None:
    headers = sign_request(P256_KEY, DEVICE, "POST", TARGET, BODY, TS)
    other = signing.public_bytes(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(BadSignature, match="does not verify"):
        server_check(headers, public=other)


# -- encodings of the signature ---------------------------------------------------------------


def test_a_der_signature_is_refused() -> None:
    """WebCrypto never makes DER; only r||s is read, so DER is the wrong length (70-72 bytes
    nearly always) in the header and refused by verify() whatever its length."""
    der = P256_KEY.sign(MESSAGE, ec.ECDSA(hashes.SHA256()))
    P256_KEY.public_key().verify(der, MESSAGE, ec.ECDSA(hashes.SHA256()))  # it is valid DER
    headers = sign_request(P256_KEY, DEVICE, "POST", TARGET, BODY, TS)
    headers[HEADER_SIGNATURE] = b64u_encode(der)
    with pytest.raises(BadSignature, match="64 bytes"):
        parse_headers(headers)
    with pytest.raises(BadSignature):
        signing.verify(P256_PUBLIC, der, MESSAGE)
    # A DER blob cut or padded to 64 bytes is read as r||s: it does not verify.
    with pytest.raises(BadSignature, match="does not verify"):
        signing.verify(P256_PUBLIC, (der + bytes(64))[:64], MESSAGE)


@pytest.mark.parametrize(
    ("r", "s"),
    [(0, 1), (1, 0), (0, 0), (N, 1), (1, N), (N + 1, 1), (2**256 - 1, 2**256 - 1)],
    ids=["r0", "s0", "both0", "rN", "sN", "rN+1", "max"],
)
def test_out_of_range_r_and_s_are_refused(r: int, s: int) -> None:
    with pytest.raises(BadSignature, match="does not verify"):
        signing.verify(P256_PUBLIC, p1363(r, s), MESSAGE)


def test_high_s_is_accepted_and_means_the_same_request() -> None:
    """(r, n-s) verifies whenever (r, s) does. Accepted, not normalised: WebCrypto makes
    high-S half the time; nothing identifies a request by its signature, and the nonce (signed
    in both) makes the server refuse the second copy as a replay (tests/test_app_p256.py)."""
    r, s = rs(signing.sign(P256_KEY, MESSAGE))
    signing.verify(P256_PUBLIC, p1363(r, s), MESSAGE)
    signing.verify(P256_PUBLIC, p1363(r, N - s), MESSAGE)
    with pytest.raises(BadSignature, match="does not verify"):
        signing.verify(P256_PUBLIC, p1363(N - r, s), MESSAGE)


def test_our_signer_makes_both_low_and_high_s() -> None:
    """So the server's acceptance of high S is exercised by ordinary clients too."""
    halves = {rs(signing.sign(P256_KEY, MESSAGE))[1] > N // 2 for _ in range(64)}
    assert halves == {True, False}


# -- the public key ---------------------------------------------------------------------------


def off_curve() -> bytes:
    y = int.from_bytes(P256_PUBLIC[33:], "big")
    return P256_PUBLIC[:33] + ((y + 1) % P).to_bytes(32, "big")


def compressed() -> bytes:
    return P256_KEY.public_key().public_bytes(Encoding.X962, PublicFormat.CompressedPoint)


def secp256k1_point() -> bytes:
    key = ec.generate_private_key(ec.SECP256K1())
    return key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def p384_point() -> bytes:
    key = ec.generate_private_key(ec.SECP384R1())
    return key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def x_beyond_p() -> bytes:
    """X + p has the same value mod p: a second encoding of the point if not refused."""
    x = int.from_bytes(P256_PUBLIC[1:33], "big") + P
    if x >= 2**256:
        return b"\x04" + (2**256 - 1).to_bytes(32, "big") + P256_PUBLIC[33:]
    return b"\x04" + x.to_bytes(32, "big") + P256_PUBLIC[33:]


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (off_curve, "not a point on the curve"),
        (lambda: b"\x04" + bytes(64), "not a point on the curve"),
        (secp256k1_point, "not a point on the curve"),  # another curve's uncompressed point
        (x_beyond_p, "not a point on the curve"),
        (compressed, "65-byte uncompressed"),
        (lambda: b"\x06" + P256_PUBLIC[1:], "65-byte uncompressed"),  # hybrid form
        (lambda: b"\x07" + P256_PUBLIC[1:], "65-byte uncompressed"),
        (lambda: P256_PUBLIC[1:], "65-byte uncompressed"),  # X||Y without the prefix
        (lambda: b"\x00", "65-byte uncompressed"),  # the identity's only encoding
        (p384_point, "65-byte uncompressed"),
        (lambda: P256_PUBLIC + b"\x00", "65-byte uncompressed"),
        (lambda: b"", "65-byte uncompressed"),
    ],
    ids=[
        "off-curve",
        "zero-point",
        "secp256k1",
        "x-beyond-p",
        "compressed",
        "hybrid-6",
        "hybrid-7",
        "no-prefix",
        "identity",
        "p384",
        "long",
        "empty",
    ],
)
def test_bad_p256_keys_are_refused(make: object, match: str) -> None:
    raw = make()  # type: ignore[operator]
    with pytest.raises(BadSignature, match=match):
        signing.load_public_key(raw)
    with pytest.raises(BadSignature):
        signing.verify(raw, signing.sign(P256_KEY, MESSAGE), MESSAGE)


# Encodings of the eight points of small order (y = 1, -1, 0, ±y8 with either sign of x), and
# non-canonical encodings (y >= p) of the identity and of the point of order 2.
ED_P = 2**255 - 19
Y8 = 2707385501144840649318225287225658788936804267575313519463743609750303402022


def ed_encode(y: int, sign: int) -> bytes:
    return (y | (sign << 255)).to_bytes(32, "little")


SMALL_ORDER = [ed_encode(y, sign) for y in (1, ED_P - 1, 0, Y8, ED_P - Y8) for sign in (0, 1)] + [
    ed_encode(ED_P, 0),
    ed_encode(ED_P + 1, 0),
    ed_encode(2**255 - 1, 0),
]


def test_the_small_order_list_is_right() -> None:
    """Independently of the server's look-up: [8]P = 0 for each listed canonical point
    (affine Edwards arithmetic, RFC 8032), and not for a real key."""
    d = -121665 * pow(121666, -1, ED_P) % ED_P

    def times8(y: int, sign: int) -> tuple[int, int]:
        x2 = (y * y - 1) * pow(d * y * y + 1, -1, ED_P) % ED_P
        x = pow(x2, (ED_P + 3) // 8, ED_P)
        if (x * x - x2) % ED_P:
            x = x * pow(2, (ED_P - 1) // 4, ED_P) % ED_P
        assert (x * x - x2) % ED_P == 0
        if x & 1 != sign:
            x = (ED_P - x) % ED_P
        for _ in range(3):
            t = d * x * x * y * y % ED_P
            x, y = (
                2 * x * y * pow(1 + t, -1, ED_P) % ED_P,
                (y * y + x * x) * pow(1 - t, -1, ED_P) % ED_P,
            )
        return x, y

    for y in (1, ED_P - 1, 0, Y8, ED_P - Y8):
        assert times8(y, 0) == (0, 1)
    real = int.from_bytes(ED_PUBLIC, "little") & ((1 << 255) - 1)
    assert times8(real, ED_PUBLIC[31] >> 7) != (0, 1)


def test_openssl_alone_accepts_a_universal_forgery_under_the_identity_key() -> None:
    """Why the look-up exists: with public key = identity, R = identity and S = 0 verify for
    every message in OpenSSL's (cofactorless) Ed25519."""
    identity = ed_encode(1, 0)
    forged = identity + bytes(32)
    for message in (b"anything", MESSAGE):
        Ed25519PublicKey.from_public_bytes(identity).verify(forged, message)  # no exception
    with pytest.raises(BadSignature, match="large order"):
        signing.verify(identity, forged, MESSAGE)


@pytest.mark.parametrize("raw", SMALL_ORDER, ids=lambda raw: raw.hex()[:8] + raw.hex()[-2:])
def test_small_order_and_non_canonical_ed25519_keys_are_refused(raw: bytes) -> None:
    with pytest.raises(BadSignature, match="large order"):
        signing.load_public_key(raw)


def test_a_real_ed25519_key_is_not_caught_by_the_small_order_look_up() -> None:
    for _ in range(200):
        raw = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        assert isinstance(signing.load_public_key(raw), Ed25519PublicKey)


# -- base64url --------------------------------------------------------------------------------


def flip_unused_bits(text: str) -> str:
    """The last character with its unused low bits set: decodes to the same bytes in a lax
    decoder (Python's among them)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(text[-1])
    unused = {2: 0b1111, 3: 0b11}[len(text) % 4]  # 1 leftover byte: 4 bits; 2 bytes: 2 bits
    return text[:-1] + alphabet[last | unused]


# Explicit ids: an ECDSA signature differs on every run, and xdist workers must collect the
# same test names.
@pytest.mark.parametrize(
    "data",
    [P256_PUBLIC, ED_PUBLIC, signing.sign(P256_KEY, MESSAGE)],
    ids=["p256-key", "ed25519-key", "p256-signature"],
)
def test_non_canonical_base64url_is_refused(data: bytes) -> None:
    text = b64u_encode(data)
    twin = flip_unused_bits(text)
    assert twin != text
    assert base64.urlsafe_b64decode(twin + "=" * (-len(twin) % 4)) == data  # lax: same bytes
    with pytest.raises(BadSignature, match="canonical"):
        b64u_decode(twin)
    assert b64u_decode(text) == data


def test_a_non_canonical_signature_header_is_refused() -> None:
    headers = sign_request(P256_KEY, DEVICE, "POST", TARGET, BODY, TS)
    headers[HEADER_SIGNATURE] = flip_unused_bits(headers[HEADER_SIGNATURE])
    with pytest.raises(BadSignature, match="canonical"):
        parse_headers(headers)


@pytest.mark.parametrize("text", ["AAA=", "AAAAAA==", "AA==", "AAAAAAA="])
def test_correct_padding_is_still_accepted(text: str) -> None:
    assert b64u_decode(text) == b64u_decode(text.rstrip("="))


@pytest.mark.parametrize("text", ["AA=", "AA===", "AAA==", "AAAA="])
def test_wrong_padding_is_refused(text: str) -> None:
    with pytest.raises(BadSignature, match="base64url"):
        b64u_decode(text)


def test_invalid_signature_exception_is_not_leaked() -> None:
    """Every failure is a BadSignature (401), never cryptography's InvalidSignature (500)."""
    for public, signature in ((P256_PUBLIC, bytes(64)), (ED_PUBLIC, bytes(64))):
        assert not issubclass(BadSignature, InvalidSignature)
        with pytest.raises(BadSignature):  # InvalidSignature would escape this
            signing.verify(public, signature, MESSAGE)


def test_the_p256_test_vector_in_the_app_api_docs() -> None:
    """docs/app-api.md, "Test vector", P-256: the key and a signature that must verify."""
    key = ec.derive_private_key(int.from_bytes(bytes(range(1, 33)), "big"), ec.SECP256R1())
    assert b64u_encode(signing.public_bytes(key)) == (
        "BFFcPW6545a5BNP-yn9U_c0MwemXvzddylFa0KbDtANfRTa-OlDzGPv5pUdZAqIhUCvvDVfgjFOyzApW8X2fk1Q"
    )
    message = canonical_request(
        "POST",
        "/app/v1/challenges/ch_kIos3zCGyF8YGxFM-WFrHQ/answer",
        "dev_W7-7AKI1EPyIyCkSjWNTLA",
        "1767225600",
        "q7X2mS9dLk3vPz8wRt5yUa",
        b'{"answer":"approve"}',
    )
    signature = b64u_decode(
        "mh9Tt-7vHWt-wydI5rfuj5J7voTEK8pMy-Nc4-KJAklKlotP3SwHOh5C-rtItnj62A9we8-8GE7zeOjlfSCR5Q"
    )
    signing.verify(signing.public_bytes(key), signature, message)
