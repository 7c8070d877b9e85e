"""Ed25519 request signatures: the canonical bytes, a round trip, tampering, bad headers."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from backend.domain import signing
from backend.domain.signing import (
    HEADER_DEVICE,
    HEADER_NONCE,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    b64u_decode,
    b64u_encode,
    canonical_request,
    parse_headers,
    sign_request,
)
from backend.errors import AuthenticationRequired, BadSignature

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PUBLIC = KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
OTHER_PUBLIC = (
    Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
)
DEVICE = "dev_abc"
TS = 1767225600
BODY = b'{"answer":"approve"}'
TARGET = "/app/v1/challenges/ch_1/answer"
DOC_ANSWER_SIGNATURE = (
    "hFY8thfHD--m5OY5u2AZsP1_nWTRidI8c8rqXrRHfqjTRQOjLcAxVibwsuQqKaMo-ER9VLO7Tl19tU3rA_yMBA"
)
DOC_LIST_SIGNATURE = (
    "dawjmq12GRNC7aBFydNHiMLAsqzR_6wSPIZfz0dbF3ca-505wZUwOjukAGD039IKrMUGZkK5cWgom33BWTw6Dg"
)


def test_canonical_request_is_exactly_the_documented_bytes() -> None:
    message = canonical_request(
        "post", "/app/v1/x?a=1&b=2", "dev_abc", "1767225600", "n" * 16, b"{}"
    )
    assert message == (
        b"OPENMFA-V2\nPOST\n/app/v1/x?a=1&b=2\ndev_abc\n1767225600\nnnnnnnnnnnnnnnnn\n"
        + hashlib.sha256(b"{}").hexdigest().encode()
    )


@pytest.mark.parametrize(
    ("method", "target", "device", "body", "nonce", "signature"),
    [
        (
            "POST",
            "/app/v1/challenges/ch_kIos3zCGyF8YGxFM-WFrHQ/answer",
            "dev_W7-7AKI1EPyIyCkSjWNTLA",
            b'{"answer":"approve"}',
            "q7X2mS9dLk3vPz8wRt5yUa",
            DOC_ANSWER_SIGNATURE,
        ),
        (
            "GET",
            "/app/v1/challenges",
            "dev_W7-7AKI1EPyIyCkSjWNTLA",
            b"",
            "bW9uZGF5LW1vcm5pbmc",
            DOC_LIST_SIGNATURE,
        ),
    ],
    ids=["answer", "list"],
)
def test_the_test_vectors_in_the_app_api_docs(
    method: str, target: str, device: str, body: bytes, nonce: str, signature: str
) -> None:
    """docs/app-api.md, "Test vector": Ed25519 is deterministic, so these are exact."""
    assert b64u_encode(PUBLIC) == "A6EHv_POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg"
    message = canonical_request(method, target, device, "1767225600", nonce, body)
    assert b64u_encode(KEY.sign(message)) == signature


def test_the_device_id_is_signed() -> None:
    """A request signed for one device fails for another id, even with the same key."""
    headers = sign_request(KEY, DEVICE, "POST", TARGET, BODY, TS)
    headers[HEADER_DEVICE] = "dev_other"
    with pytest.raises(BadSignature, match="does not verify"):
        server_check(headers)  # the same public key: only the signed id tells them apart


@pytest.mark.parametrize("value", ["dev a", "dev_a\nb", "x" * 65, "dév", "dev_a;b", "dev/a"])
def test_malformed_device_ids(value: str) -> None:
    headers = sign_request(KEY, DEVICE, "POST", TARGET, BODY, TS)
    headers[HEADER_DEVICE] = value
    with pytest.raises(BadSignature, match="device"):
        parse_headers(headers)


def test_canonical_request_of_an_empty_body_hashes_nothing() -> None:
    message = canonical_request("GET", "/", "dev_abc", "0", "n" * 16, b"")
    assert message.endswith(b"\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")


def server_check(
    headers: dict[str, str],
    method: str = "POST",
    target: str = TARGET,
    body: bytes = BODY,
    public: bytes = PUBLIC,
) -> signing.SignedHeaders:
    """What the server does with a request: parse the headers, rebuild the bytes, verify."""
    signed = parse_headers(headers)
    message = canonical_request(
        method, target, signed.device, str(signed.timestamp), signed.nonce, body
    )
    signing.verify(public, signed.signature, message)
    return signed


def test_round_trip() -> None:
    headers = sign_request(KEY, DEVICE, "POST", TARGET, BODY, TS)

    signed = server_check(headers)

    assert signed.device == DEVICE
    assert signed.timestamp == TS
    assert signed.nonce == headers[HEADER_NONCE]
    assert len(signed.signature) == 64


def test_method_case_does_not_matter() -> None:
    headers = sign_request(KEY, DEVICE, "post", TARGET, BODY, TS)
    server_check(headers, method="POST")


def test_every_request_gets_a_fresh_valid_nonce() -> None:
    nonces = {sign_request(KEY, DEVICE, "GET", "/", b"", TS)[HEADER_NONCE] for _ in range(200)}
    assert len(nonces) == 200
    for nonce in nonces:
        assert signing._NONCE.fullmatch(nonce)


@pytest.mark.parametrize(
    "tamper",
    [
        {"method": "PUT"},
        {"method": "GET"},
        {"target": "/app/v1/challenges/ch_2/answer"},
        {"target": TARGET + "?x=1"},
        {"target": TARGET + "/"},
        {"body": b'{"answer":"deny"}'},
        {"body": BODY + b" "},
        {"body": b""},
        {"public": OTHER_PUBLIC},
    ],
    ids=lambda t: next(iter(t)),
)
def test_tampered_request_fails(tamper: dict[str, object]) -> None:
    headers = sign_request(KEY, DEVICE, "POST", TARGET, BODY, TS)
    with pytest.raises(BadSignature, match="does not verify"):
        server_check(headers, **tamper)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("header", "value"),
    [
        (HEADER_TIMESTAMP, str(TS + 1)),
        (HEADER_TIMESTAMP, str(TS - 300)),
        (HEADER_NONCE, "A" * 24),
    ],
)
def test_tampered_timestamp_or_nonce_fails(header: str, value: str) -> None:
    headers = sign_request(KEY, DEVICE, "POST", TARGET, BODY, TS)
    headers[header] = value
    with pytest.raises(BadSignature, match="does not verify"):
        server_check(headers)


def test_a_flipped_signature_bit_fails() -> None:
    headers = sign_request(KEY, DEVICE, "POST", TARGET, BODY, TS)
    raw = bytearray(b64u_decode(headers[HEADER_SIGNATURE]))
    raw[10] ^= 0x01
    headers[HEADER_SIGNATURE] = b64u_encode(bytes(raw))
    with pytest.raises(BadSignature, match="does not verify"):
        server_check(headers)


def test_the_device_header_selects_the_key() -> None:
    """Swapping the device id makes the server check against that device's key: it fails."""
    headers = sign_request(KEY, DEVICE, "POST", TARGET, BODY, TS)
    headers[HEADER_DEVICE] = "dev_other"
    with pytest.raises(BadSignature):
        server_check(headers, public=OTHER_PUBLIC)


# -- malformed headers ------------------------------------------------------------------------


def good_headers() -> dict[str, str]:
    return sign_request(KEY, DEVICE, "POST", TARGET, BODY, TS)


@pytest.mark.parametrize("name", [HEADER_DEVICE, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE])
def test_each_missing_header_is_named(name: str) -> None:
    headers = good_headers()
    del headers[name]
    with pytest.raises(BadSignature, match=f"missing headers: {name}"):
        parse_headers(headers)
    headers[name] = ""
    with pytest.raises(BadSignature, match=f"missing headers: {name}"):
        parse_headers(headers)


def test_all_missing_headers_are_named() -> None:
    with pytest.raises(BadSignature) as caught:
        parse_headers({})
    for name in (HEADER_DEVICE, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE):
        assert name in str(caught.value)


@pytest.mark.parametrize(
    "value",
    [
        "-1767225600",
        "1767225600.5",
        "1e9",
        " 1767225600",
        "abc",
        "".join(chr(0xFF10 + int(d)) for d in "1767225600"),
        "9" * 13,
    ],
)
def test_malformed_timestamps(value: str) -> None:
    headers = good_headers()
    headers[HEADER_TIMESTAMP] = value
    with pytest.raises(BadSignature, match="timestamp"):
        parse_headers(headers)


@pytest.mark.parametrize(
    "value",
    ["short", "A" * 15, "A" * 65, "A" * 16 + "!", "A" * 16 + "=", "A" * 16 + "\n", "Ä" * 20],
)
def test_malformed_nonces(value: str) -> None:
    headers = good_headers()
    headers[HEADER_NONCE] = value
    with pytest.raises(BadSignature, match="nonce"):
        parse_headers(headers)


def test_nonce_limits_are_accepted() -> None:
    for nonce in ("A" * 16, "a-_9" * 16):
        headers = good_headers()
        headers[HEADER_NONCE] = nonce
        assert parse_headers(headers).nonce == nonce


@pytest.mark.parametrize(
    "mangle",
    [
        lambda s: s[:-4],  # 61 bytes
        lambda s: s + "AAAA",  # 67 bytes
        lambda s: "A",  # not base64 at all (one character left over)
        lambda s: s[:40] + "!" + s[40:],  # a character outside the alphabet
        lambda s: s[:40] + "!!!!" + s[40:],  # ... four of them keep the padding right
        lambda s: s[:40] + " " + s[40:],
        lambda s: s.replace("-", "+").replace("_", "/") + "+/",  # standard alphabet, 65 bytes
        lambda s: s[:-2] + "+/",  # standard alphabet, 64 bytes
        lambda s: s[:40] + "\u00e9" + s[40:],
    ],
    ids=[
        "short",
        "long",
        "one-char",
        "bang",
        "bang4",
        "space",
        "std-alphabet",
        "std-64",
        "non-ascii",
    ],
)
def test_malformed_signatures(mangle: object) -> None:
    headers = good_headers()
    headers[HEADER_SIGNATURE] = mangle(headers[HEADER_SIGNATURE])  # type: ignore[operator]
    with pytest.raises(BadSignature):
        parse_headers(headers)


def test_b64u_round_trip_and_strictness() -> None:
    for data in (b"", b"\x00", b"\xff\xfe", bytes(range(64))):
        encoded = b64u_encode(data)
        assert "=" not in encoded
        assert set(encoded) <= set(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        )
        assert b64u_decode(encoded) == data
        # Padding is optional (some encoders add it by default).
        assert b64u_decode(encoded + "=" * (-len(encoded) % 4)) == data
    for garbage in ("A", "AB!C", "AB C", "AB+/", "AB\nCD", "ÄÄÄÄ", "A=BC", "AB===", "=AB"):
        with pytest.raises(BadSignature, match="base64url"):
            b64u_decode(garbage)


def test_public_keys_must_be_32_bytes() -> None:
    """Or 65 (P-256, tests/test_domain_signing_p256.py): no other length is a key."""
    for raw in (b"", PUBLIC[:31], PUBLIC + b"\x00"):
        with pytest.raises(BadSignature, match="32-byte Ed25519"):
            signing.load_public_key(raw)
    message = canonical_request("GET", "/", "dev_abc", "1", "n" * 16, b"")
    with pytest.raises(BadSignature, match="32-byte Ed25519"):
        signing.verify(PUBLIC[:31], KEY.sign(message), message)


def test_bad_signatures_are_authentication_errors() -> None:
    assert issubclass(BadSignature, AuthenticationRequired)
    assert BadSignature.status == 401
    assert BadSignature.type == "bad-signature"
